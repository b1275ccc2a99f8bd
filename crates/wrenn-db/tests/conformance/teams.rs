//! TeamRepo: teams, memberships, the team-deletion purge.

use chrono::Duration;
use wrenn_core::auth::Role;
use wrenn_core::id::{ApiKeyId, ChannelId, TeamId, UserId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{ApiKey, Channel, MetricPoint, MetricTier, MetricsSnapshot};

use crate::fixtures::*;

async fn creating_a_team_makes_the_creator_its_owner(db: Db) {
    let owner = user(&db).await;
    let new = new_team("Acme");
    let team = db.create_team(new.clone(), owner.id, true).await.unwrap();
    assert_eq!(team.id, new.id);
    assert_eq!(team.name, "Acme");
    assert_eq!(team.slug, new.slug);
    assert!(!team.is_byoc);
    assert!(team.deleted_at.is_none());
    assert_eq!(db.get_team(team.id).await.unwrap(), team);
    assert_eq!(db.get_team_by_slug(&team.slug).await.unwrap(), team);

    let membership = db.get_membership(team.id, owner.id).await.unwrap().unwrap();
    assert_eq!(membership.role, Role::Owner);
    assert!(membership.is_default);
    assert_eq!(membership.team_id, team.id);
    assert_eq!(membership.user_id, owner.id);
}

async fn creating_a_team_for_an_unknown_owner_is_invalid_and_leaves_nothing(db: Db) {
    let new = new_team("Orphan");
    assert_invalid(db.create_team(new.clone(), UserId::new(), false).await);
    assert_not_found(db.get_team(new.id).await);
}

async fn a_new_default_team_replaces_the_previous_default(db: Db) {
    let owner = user(&db).await;
    let first = db
        .create_team(new_team("First"), owner.id, true)
        .await
        .unwrap();
    let second = db
        .create_team(new_team("Second"), owner.id, true)
        .await
        .unwrap();
    let default = db.default_team_for_user(owner.id).await.unwrap().unwrap();
    assert_eq!(default.team.id, second.id);
    assert!(default.is_default);
    assert_eq!(default.role, Role::Owner);

    let teams = db.list_teams_for_user(owner.id).await.unwrap();
    let ids: Vec<TeamId> = teams.iter().map(|t| t.team.id).collect();
    assert_eq!(ids, [first.id, second.id], "joined order");
    assert!(!teams[0].is_default);
    assert!(teams[1].is_default);
}

async fn the_login_team_falls_back_to_the_earliest_joined(db: Db) {
    let owner = user(&db).await;
    assert!(db.default_team_for_user(owner.id).await.unwrap().is_none());
    let first = team(&db, owner.id).await;
    let _second = team(&db, owner.id).await;
    let login = db.default_team_for_user(owner.id).await.unwrap().unwrap();
    assert_eq!(login.team.id, first.id);
    assert!(!login.is_default);

    db.soft_delete_team(first.id).await.unwrap();
    let login = db.default_team_for_user(owner.id).await.unwrap().unwrap();
    assert_ne!(
        login.team.id, first.id,
        "deleted teams are never the login team"
    );
}

async fn team_slugs_are_unique_and_stay_reserved_after_soft_delete(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let mut clash = new_team("Clash");
    clash.slug = team.slug.clone();
    assert_conflict(db.create_team(clash.clone(), owner.id, false).await);
    assert_not_found(db.get_team(clash.id).await);

    assert!(db.soft_delete_team(team.id).await.unwrap());
    let deleted = db.get_team_by_slug(&team.slug).await.unwrap();
    assert_eq!(deleted.id, team.id);
    assert!(deleted.deleted_at.is_some());
    assert_conflict(db.create_team(clash, owner.id, false).await);
}

async fn renaming_and_byoc_apply_to_live_teams_only(db: Db) {
    let (_, team) = owned_team(&db).await;
    let renamed = db.rename_team(team.id, "Renamed").await.unwrap();
    assert_eq!(renamed.name, "Renamed");
    assert_eq!(renamed.slug, team.slug, "slugs never change");
    let byoc = db.set_team_byoc(team.id, true).await.unwrap();
    assert!(byoc.is_byoc);
    assert_eq!(db.get_team(team.id).await.unwrap(), byoc);

    db.soft_delete_team(team.id).await.unwrap();
    assert_not_found(db.rename_team(team.id, "Again").await);
    assert_not_found(db.set_team_byoc(team.id, false).await);
    assert_not_found(db.rename_team(TeamId::new(), "Nobody").await);
}

async fn soft_deleting_a_team_twice_reports_false(db: Db) {
    let (_, team) = owned_team(&db).await;
    assert!(db.soft_delete_team(team.id).await.unwrap());
    assert!(!db.soft_delete_team(team.id).await.unwrap());
    assert!(db.get_team(team.id).await.unwrap().deleted_at.is_some());
    assert_not_found(db.soft_delete_team(TeamId::new()).await);
}

async fn unknown_teams_are_not_found(db: Db) {
    assert_not_found(db.get_team(TeamId::new()).await);
    assert_not_found(db.get_team_by_slug("nope00-nope00").await);
}

async fn list_teams_pages_newest_first_and_shows_deleted_only_when_asked(db: Db) {
    let owner = user(&db).await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(team(&db, owner.id).await);
    }
    db.soft_delete_team(created[1].id).await.unwrap();

    let all = db.list_teams(true, 100, 0).await.unwrap();
    let pos = |id: TeamId| all.iter().position(|t| t.id == id).unwrap();
    assert!(pos(created[2].id) < pos(created[1].id));
    assert!(pos(created[1].id) < pos(created[0].id));

    let live = db.list_teams(false, 100, 0).await.unwrap();
    assert!(live.iter().all(|t| t.deleted_at.is_none()));
    assert!(!live.iter().any(|t| t.id == created[1].id));

    let page = db.list_teams(true, 1, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, all[1].id);
}

async fn deleted_teams_disappear_from_their_members_views(db: Db) {
    let (owner, team) = owned_team(&db).await;
    db.soft_delete_team(team.id).await.unwrap();
    assert!(db.list_teams_for_user(owner.id).await.unwrap().is_empty());
    assert!(
        db.get_membership(team.id, owner.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(db.list_sole_owned_teams(owner.id).await.unwrap().is_empty());
}

async fn members_are_added_once_and_removed(db: Db) {
    let (_, team) = owned_team(&db).await;
    let member = user(&db).await;
    let added = db
        .add_member(team.id, member.id, Role::Member)
        .await
        .unwrap();
    assert_eq!(added.role, Role::Member);
    assert!(!added.is_default);
    assert_eq!(
        db.get_membership(team.id, member.id).await.unwrap(),
        Some(added)
    );
    assert_conflict(db.add_member(team.id, member.id, Role::Admin).await);

    assert!(db.remove_member(team.id, member.id).await.unwrap());
    assert!(!db.remove_member(team.id, member.id).await.unwrap());
    assert!(
        db.get_membership(team.id, member.id)
            .await
            .unwrap()
            .is_none()
    );
}

async fn members_cannot_be_added_as_owner_or_to_unknown_teams(db: Db) {
    let (_, team) = owned_team(&db).await;
    let member = user(&db).await;
    assert_invalid(db.add_member(team.id, member.id, Role::Owner).await);
    assert_not_found(db.add_member(TeamId::new(), member.id, Role::Member).await);
    assert_invalid(db.add_member(team.id, UserId::new(), Role::Member).await);
    db.soft_delete_team(team.id).await.unwrap();
    assert_not_found(db.add_member(team.id, member.id, Role::Member).await);
}

async fn member_roles_change_only_from_the_expected_role(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let member = user(&db).await;
    db.add_member(team.id, member.id, Role::Member)
        .await
        .unwrap();

    let promoted = db
        .update_member_role_if(team.id, member.id, Role::Member, Role::Admin)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(promoted.role, Role::Admin);
    // Stale expectation: nothing changes.
    assert!(
        db.update_member_role_if(team.id, member.id, Role::Member, Role::Admin)
            .await
            .unwrap()
            .is_none()
    );
    // The owner's role never changes, and no one becomes owner.
    assert!(
        db.update_member_role_if(team.id, owner.id, Role::Owner, Role::Admin)
            .await
            .unwrap()
            .is_none()
    );
    assert_invalid(
        db.update_member_role_if(team.id, member.id, Role::Admin, Role::Owner)
            .await,
    );
    assert_eq!(
        db.get_membership(team.id, owner.id)
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Owner
    );
    assert_not_found(
        db.update_member_role_if(team.id, UserId::new(), Role::Member, Role::Admin)
            .await,
    );
}

async fn list_members_puts_the_owner_first_then_join_order(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let a = user(&db).await;
    let b = user(&db).await;
    db.add_member(team.id, a.id, Role::Admin).await.unwrap();
    db.add_member(team.id, b.id, Role::Member).await.unwrap();
    let members = db.list_members(team.id).await.unwrap();
    let ids: Vec<UserId> = members.iter().map(|m| m.user_id).collect();
    assert_eq!(ids, [owner.id, a.id, b.id]);
    assert_eq!(members[0].role, Role::Owner);
    assert_eq!(members[1].email, a.email);
    assert_eq!(members[1].name, a.name);
    assert_eq!(members[2].role, Role::Member);
}

async fn sole_owned_teams_and_teams_with_other_members_are_told_apart(db: Db) {
    let owner = user(&db).await;
    let alone = team(&db, owner.id).await;
    let shared = team(&db, owner.id).await;
    let other = user(&db).await;
    db.add_member(shared.id, other.id, Role::Member)
        .await
        .unwrap();
    // A team the user merely belongs to counts for neither.
    let (_, foreign) = owned_team(&db).await;
    db.add_member(foreign.id, owner.id, Role::Admin)
        .await
        .unwrap();

    let sole = db.list_sole_owned_teams(owner.id).await.unwrap();
    assert_eq!(sole.iter().map(|t| t.id).collect::<Vec<_>>(), [alone.id]);
    assert_eq!(
        db.count_owned_teams_with_other_members(owner.id)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.count_owned_teams_with_other_members(other.id)
            .await
            .unwrap(),
        0
    );
}

async fn purging_a_team_removes_its_points_snapshots_keys_and_channels(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let (_, bystander) = owned_team(&db).await;
    let host = host(&db, None).await;
    let mine = sandbox(&db, team.id, host.id, SandboxStatus::Running).await;
    let theirs = sandbox(&db, bystander.id, host.id, SandboxStatus::Running).await;
    let point = MetricPoint {
        ts: 1_700_000_000,
        cpu_pct: 12.5,
        mem_bytes: 1,
        disk_bytes: 2,
    };
    for (sandbox, team_id) in [(&mine, team.id), (&theirs, bystander.id)] {
        db.insert_metric_points(
            sandbox.id,
            MetricTier::TenMinutes,
            std::slice::from_ref(&point),
        )
        .await
        .unwrap();
        db.insert_metrics_snapshots(&[MetricsSnapshot {
            team_id,
            sampled_at: now(),
            running_count: 1,
            vcpus_reserved: 2,
            memory_mb_reserved: 1024,
            period_secs: 10,
        }])
        .await
        .unwrap();
        db.create_api_key(ApiKey {
            id: ApiKeyId::new(),
            team_id,
            name: "key".into(),
            key_hash: format!("hash-{}", uuid::Uuid::new_v4()),
            key_prefix: "wrn_abcdef".into(),
            created_by: Some(owner.id),
            created_at: now(),
            last_used: None,
        })
        .await
        .unwrap();
        db.create_channel(Channel {
            id: ChannelId::new(),
            team_id,
            name: "alerts".into(),
            provider: "webhook".into(),
            config: Default::default(),
            event_types: vec!["capsule.created".into()],
            created_at: now(),
            updated_at: now(),
        })
        .await
        .unwrap();
    }

    assert_eq!(db.purge_team_data(team.id).await.unwrap(), 4);
    let window = (now() - Duration::hours(1), now() + Duration::hours(1));
    assert!(
        db.list_metric_points(mine.id, MetricTier::TenMinutes)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.list_metrics_snapshots(team.id, window.0, window.1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(db.list_api_keys(team.id).await.unwrap().is_empty());
    assert!(db.list_channels(team.id).await.unwrap().is_empty());
    // The bystander keeps everything; sandbox rows and memberships are kept too.
    assert_eq!(
        db.list_metric_points(theirs.id, MetricTier::TenMinutes)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        db.list_metrics_snapshots(bystander.id, window.0, window.1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(db.list_api_keys(bystander.id).await.unwrap().len(), 1);
    assert_eq!(db.list_channels(bystander.id).await.unwrap().len(), 1);
    assert!(
        db.get_membership(team.id, owner.id)
            .await
            .unwrap()
            .is_some()
    );
}

conformance_tests!(
    creating_a_team_makes_the_creator_its_owner,
    creating_a_team_for_an_unknown_owner_is_invalid_and_leaves_nothing,
    a_new_default_team_replaces_the_previous_default,
    the_login_team_falls_back_to_the_earliest_joined,
    team_slugs_are_unique_and_stay_reserved_after_soft_delete,
    renaming_and_byoc_apply_to_live_teams_only,
    soft_deleting_a_team_twice_reports_false,
    unknown_teams_are_not_found,
    list_teams_pages_newest_first_and_shows_deleted_only_when_asked,
    deleted_teams_disappear_from_their_members_views,
    members_are_added_once_and_removed,
    members_cannot_be_added_as_owner_or_to_unknown_teams,
    member_roles_change_only_from_the_expected_role,
    list_members_puts_the_owner_first_then_join_order,
    sole_owned_teams_and_teams_with_other_members_are_told_apart,
    purging_a_team_removes_its_points_snapshots_keys_and_channels,
);
