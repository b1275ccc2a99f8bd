//! Members: adding accounts, changing roles and removing members within the owner
//! rules, leaving, and the same flows on Postgres.

use crate::common;

use super::{has_entry, role_of};
use common::{Options, TestServer, TestUser, assert_error, member_of, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::audit::AuditScope;
use wrenn_core::auth::Role;

#[tokio::test]
async fn admins_add_existing_accounts_by_email() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let admin = member_of(&s, owner.team, "admin@x.io", Role::Admin).await;
    let carol = s.user("carol@x.io").await;
    let path = format!("/v1/teams/{}/members", owner.team);

    let (status, body) = send(
        s.as_user(&admin, Method::POST, &path)
            .json(&json!({ "email": " Carol@X.io " })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user_id"], carol.id.to_string());
    assert_eq!(body["email"], "carol@x.io");
    assert_eq!(body["name"], "carol");
    assert_eq!(body["role"], "member");
    assert!(body["joined_at"].is_string());
    assert_eq!(role_of(&s, owner.team, &carol).await, Some(Role::Member));

    let entry = has_entry(&s.store(), owner.team, "member", "add")
        .await
        .expect("audit");
    assert_eq!(entry.entry.scope, AuditScope::Admin);
    assert_eq!(
        entry.entry.resource_id.as_deref(),
        Some(carol.id.to_string().as_str())
    );
    assert_eq!(
        entry.entry.metadata,
        json!({ "email": "carol@x.io", "role": "member" })
    );

    // Already a member: 400, per the contract.
    let got = send(
        s.as_user(&owner, Method::POST, &path)
            .json(&json!({ "email": "carol@x.io" })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    // No such account.
    let got = send(
        s.as_user(&owner, Method::POST, &path)
            .json(&json!({ "email": "nobody@x.io" })),
    )
    .await;
    assert_error(&got, 404, "not_found");
    // Malformed.
    for bad in [
        json!({ "email": "not-an-email" }),
        json!({ "email": "" }),
        json!({}),
    ] {
        let got = send(s.as_user(&owner, Method::POST, &path).json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(s.store().list_members(owner.team).await.unwrap().len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn plain_members_cannot_add_members() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    s.user("carol@x.io").await;
    let got = send(
        s.as_user(
            &member,
            Method::POST,
            &format!("/v1/teams/{}/members", owner.team),
        )
        .json(&json!({ "email": "carol@x.io" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(s.store().list_members(owner.team).await.unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn deleted_accounts_cannot_be_added() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let gone = s.user("gone@x.io").await;
    s.store().soft_delete_user(gone.id).await.unwrap();
    let got = send(
        s.as_user(
            &owner,
            Method::POST,
            &format!("/v1/teams/{}/members", owner.team),
        )
        .json(&json!({ "email": "gone@x.io" })),
    )
    .await;
    assert_error(&got, 404, "not_found");
    s.stop().await;
}

#[tokio::test]
async fn roles_change_within_the_owner_rules() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let admin = member_of(&s, owner.team, "admin@x.io", Role::Admin).await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    let other = member_of(&s, owner.team, "other@x.io", Role::Member).await;
    let path = |u: &TestUser| format!("/v1/teams/{}/members/{}", owner.team, u.id);
    let role = |r: &str| json!({ "role": r });

    // An admin promotes a member.
    let resp = s
        .as_user(&admin, Method::PATCH, &path(&member))
        .json(&role("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(role_of(&s, owner.team, &member).await, Some(Role::Admin));
    let entry = has_entry(&s.store(), owner.team, "member", "role_update")
        .await
        .expect("audit");
    assert_eq!(entry.entry.scope, AuditScope::Admin);
    assert_eq!(entry.entry.metadata["new_role"], "admin");

    // Only the owner changes an admin's role.
    let got = send(
        s.as_user(&admin, Method::PATCH, &path(&member))
            .json(&role("member")),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(role_of(&s, owner.team, &member).await, Some(Role::Admin));
    let resp = s
        .as_user(&owner, Method::PATCH, &path(&member))
        .json(&role("member"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(role_of(&s, owner.team, &member).await, Some(Role::Member));

    // Members change nothing.
    let got = send(
        s.as_user(&member, Method::PATCH, &path(&other))
            .json(&role("admin")),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(role_of(&s, owner.team, &other).await, Some(Role::Member));

    // The owner can never be demoted, not even by themself, and nobody becomes owner.
    for who in [&owner, &admin] {
        let got = send(
            s.as_user(who, Method::PATCH, &path(&owner))
                .json(&role("member")),
        )
        .await;
        assert_error(&got, 403, "forbidden");
    }
    assert_eq!(role_of(&s, owner.team, &owner).await, Some(Role::Owner));
    let got = send(
        s.as_user(&owner, Method::PATCH, &path(&other))
            .json(&role("owner")),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    for bad in [
        role("superuser"),
        role("Admin"),
        json!({}),
        json!({ "role": 1 }),
    ] {
        let got = send(s.as_user(&owner, Method::PATCH, &path(&other)).json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(role_of(&s, owner.team, &other).await, Some(Role::Member));

    // Not a member of this team.
    let stranger = s.user("stranger@x.io").await;
    let got = send(
        s.as_user(&owner, Method::PATCH, &path(&stranger))
            .json(&role("admin")),
    )
    .await;
    assert_error(&got, 404, "not_found");
    assert_eq!(role_of(&s, owner.team, &stranger).await, None);
    s.stop().await;
}

#[tokio::test]
async fn members_are_removed_within_the_owner_rules() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let admin = member_of(&s, owner.team, "admin@x.io", Role::Admin).await;
    let admin2 = member_of(&s, owner.team, "admin2@x.io", Role::Admin).await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    let other = member_of(&s, owner.team, "other@x.io", Role::Member).await;
    let path = |u: &TestUser| format!("/v1/teams/{}/members/{}", owner.team, u.id);

    // Members remove nobody; admins cannot remove admins; nobody removes the owner.
    let got = send(s.as_user(&member, Method::DELETE, &path(&other))).await;
    assert_error(&got, 403, "forbidden");
    let got = send(s.as_user(&admin, Method::DELETE, &path(&admin2))).await;
    assert_error(&got, 403, "forbidden");
    for who in [&owner, &admin] {
        let got = send(s.as_user(who, Method::DELETE, &path(&owner))).await;
        assert_error(&got, 403, "forbidden");
    }
    assert_eq!(
        s.store().list_members(owner.team).await.unwrap().len(),
        5,
        "nothing changed"
    );

    let resp = s
        .as_user(&admin, Method::DELETE, &path(&member))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(role_of(&s, owner.team, &member).await, None);
    let entry = has_entry(&s.store(), owner.team, "member", "remove")
        .await
        .expect("audit");
    assert_eq!(entry.entry.status.as_str(), "warning");
    assert_eq!(entry.entry.scope, AuditScope::Admin);
    assert_eq!(entry.entry.metadata["email"], "member@x.io");

    let resp = s
        .as_user(&owner, Method::DELETE, &path(&admin2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // Removing someone who is not (or no longer) a member.
    let got = send(s.as_user(&owner, Method::DELETE, &path(&member))).await;
    assert_error(&got, 404, "not_found");
    // The removed member's token no longer works for the team.
    let got = send(s.as_user(&member, Method::GET, &format!("/v1/teams/{}", owner.team))).await;
    assert_error(&got, 403, "forbidden");
    s.stop().await;
}

#[tokio::test]
async fn members_may_leave_but_the_owner_may_not() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    let path = format!("/v1/teams/{}/leave", owner.team);

    let got = send(s.as_user(&owner, Method::POST, &path)).await;
    assert_error(&got, 403, "forbidden");
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delete the team"),
        "{}",
        got.1
    );
    assert_eq!(role_of(&s, owner.team, &owner).await, Some(Role::Owner));

    let resp = s
        .as_user(&member, Method::POST, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(role_of(&s, owner.team, &member).await, None);
    let entry = has_entry(&s.store(), owner.team, "member", "leave")
        .await
        .expect("audit");
    assert_eq!(entry.entry.status.as_str(), "info");
    assert_eq!(entry.entry.scope, AuditScope::Admin);
    // Leaving twice: the token no longer belongs to a member.
    let got = send(s.as_user(&member, Method::POST, &path)).await;
    assert_error(&got, 403, "forbidden");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_member_flows_work_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let owner = s.user("owner@x.io").await;
    s.user("carol@x.io").await;
    let (status, body) = send(
        s.as_user(
            &owner,
            Method::POST,
            &format!("/v1/teams/{}/members", owner.team),
        )
        .json(&json!({ "email": "carol@x.io" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let carol = body["user_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/teams/{}/members/{carol}", owner.team);
    let resp = s
        .as_user(&owner, Method::PATCH, &path)
        .json(&json!({ "role": "admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let got = send(
        s.as_user(
            &owner,
            Method::PATCH,
            &format!("/v1/teams/{}/members/{}", owner.team, owner.id),
        )
        .json(&json!({ "role": "member" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    let resp = s
        .as_user(&owner, Method::PATCH, &format!("/v1/teams/{}", owner.team))
        .json(&json!({ "name": "Renamed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (_, team) =
        send(s.as_user(&owner, Method::GET, &format!("/v1/teams/{}", owner.team))).await;
    assert_eq!(team["team"]["name"], "Renamed");
    assert_eq!(team["members"][1]["role"], "admin");
    let resp = s
        .as_user(&owner, Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(s.store().list_members(owner.team).await.unwrap().len(), 1);
    let (status, created) = send(
        s.as_user(&owner, Method::POST, "/v1/teams")
            .json(&json!({ "name": "Second" })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    s.stop().await;
}
