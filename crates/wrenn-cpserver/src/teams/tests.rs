use axum::http::StatusCode;
use wrenn_core::auth::{Role, RoleError};
use wrenn_core::id::{PLATFORM_TEAM_ID, TeamId};
use wrenn_extension::ApiError;

use super::*;
use crate::testing::{TestContext, caller};

fn is_role_error(r: Result<(), TeamError>) -> bool {
    matches!(r, Err(TeamError::Role(_)))
}

#[tokio::test]
async fn a_team_keeps_its_owner() {
    let t = TestContext::new().await;
    let ctx = &t.ctx;
    let (ada, team) = t.user("ada@example.com", false).await;
    let (bob, _) = t.user("bob@example.com", false).await;
    let owner = caller(&ada, team, Role::Owner);
    add_member(ctx, &owner, "bob@example.com").await.unwrap();
    change_role(ctx, &owner, bob.id, Role::Admin).await.unwrap();
    let admin = caller(&bob, team, Role::Admin);

    // Nobody removes, demotes or promotes-to-owner, and the owner does not leave.
    assert!(is_role_error(remove_member(ctx, &admin, ada.id).await));
    assert!(is_role_error(remove_member(ctx, &owner, ada.id).await));
    assert!(is_role_error(
        change_role(ctx, &admin, ada.id, Role::Member).await
    ));
    assert!(is_role_error(
        change_role(ctx, &owner, bob.id, Role::Owner).await
    ));
    assert!(matches!(
        leave(ctx, &owner).await,
        Err(TeamError::Role(RoleError::OwnerCannotLeave))
    ));
    let members = ctx.store.list_members(team).await.unwrap();
    let owners: Vec<_> = members.iter().filter(|m| m.role == Role::Owner).collect();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].user_id, ada.id);

    // The admin may leave; then they are no longer a member.
    leave(ctx, &admin).await.unwrap();
    assert!(matches!(
        remove_member(ctx, &owner, bob.id).await,
        Err(TeamError::MemberNotFound)
    ));
}

#[tokio::test]
async fn members_cannot_manage_members() {
    let t = TestContext::new().await;
    let ctx = &t.ctx;
    let (ada, team) = t.user("ada@example.com", false).await;
    let (bob, _) = t.user("bob@example.com", false).await;
    t.user("cy@example.com", false).await;
    add_member(ctx, &caller(&ada, team, Role::Owner), &bob.email)
        .await
        .unwrap();
    let member = caller(&bob, team, Role::Member);
    let e = add_member(ctx, &member, "cy@example.com")
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "your role (member) may not add members");
    assert_eq!(ApiError::from(e).status, StatusCode::FORBIDDEN);
    assert!(matches!(
        remove_member(ctx, &member, ada.id).await,
        Err(TeamError::NotAllowed { .. })
    ));
}

#[tokio::test]
async fn adding_members_needs_a_new_existing_account() {
    let t = TestContext::new().await;
    let ctx = &t.ctx;
    let (ada, team) = t.user("ada@example.com", false).await;
    t.user("bob@example.com", false).await;
    let owner = caller(&ada, team, Role::Owner);
    assert!(matches!(
        add_member(ctx, &owner, "nobody@example.com").await,
        Err(TeamError::NoSuchAccount)
    ));
    assert!(matches!(
        add_member(ctx, &owner, "not an email").await,
        Err(TeamError::Invalid(_))
    ));
    let m = add_member(ctx, &owner, "Bob@Example.com").await.unwrap();
    assert_eq!(
        (m.email.as_str(), m.role),
        ("bob@example.com", Role::Member)
    );
    assert!(matches!(
        add_member(ctx, &owner, "bob@example.com").await,
        Err(TeamError::AlreadyMember)
    ));
}

#[tokio::test]
async fn teams_are_created_renamed_and_switched_to() {
    let t = TestContext::new().await;
    let ctx = &t.ctx;
    let (ada, home) = t.user("ada@example.com", false).await;
    let (bob, _) = t.user("bob@example.com", false).await;
    let me = caller(&ada, home, Role::Owner);
    assert!(matches!(
        create(ctx, &me, "Lab", true).await,
        Err(TeamError::SlugGenerated)
    ));
    let lab = create(ctx, &me, "Lab", false).await.unwrap();
    assert_eq!(lab.role, Role::Owner);

    let session = switch(ctx, &me, lab.team.id).await.unwrap();
    assert_eq!(session.team_id, lab.team.id);
    assert!(matches!(
        switch(ctx, &caller(&bob, home, Role::Member), lab.team.id).await,
        Err(TeamError::NotMember)
    ));
    assert!(matches!(
        switch(ctx, &me, TeamId::new()).await,
        Err(TeamError::TeamNotFound)
    ));

    let in_lab = caller(&ada, lab.team.id, Role::Owner);
    assert!(matches!(
        rename(ctx, &in_lab, "Lab 2", true).await,
        Err(TeamError::SlugImmutable)
    ));
    rename(ctx, &in_lab, "Lab 2", false).await.unwrap();
    assert_eq!(ctx.store.get_team(lab.team.id).await.unwrap().name, "Lab 2");
    let as_member = caller(&ada, lab.team.id, Role::Member);
    assert!(matches!(
        rename(ctx, &as_member, "Lab 3", false).await,
        Err(TeamError::NotAllowed { .. })
    ));
    assert!(matches!(
        delete_own(ctx, &as_member).await,
        Err(TeamError::NotAllowed { .. })
    ));
    delete_own(ctx, &in_lab).await.unwrap();
    assert!(matches!(
        switch(ctx, &me, lab.team.id).await,
        Err(TeamError::TeamNotFound)
    ));
}

#[tokio::test]
async fn byoc_is_one_way_and_never_for_the_platform_team() {
    let t = TestContext::new().await;
    let (_, team) = t.user("ada@example.com", false).await;
    let admin = wrenn_core::audit::Actor::system();
    assert!(matches!(
        set_byoc(&t.ctx, &admin, team, false).await,
        Err(TeamError::ByocIrreversible)
    ));
    assert!(matches!(
        set_byoc(&t.ctx, &admin, PLATFORM_TEAM_ID, true).await,
        Err(TeamError::PlatformTeamByoc)
    ));
    set_byoc(&t.ctx, &admin, team, true).await.unwrap();
    assert!(t.ctx.store.get_team(team).await.unwrap().is_byoc);
}
