//! Account deletion (`DELETE /v1/me`) and the `account-cleanup` worker that removes
//! soft-deleted accounts for good after 15 days.

use crate::common;

use std::sync::Arc;

use chrono::{Duration, Utc};
use common::{Options, TestServer, TestUser, assert_error, make_key, member_of, online_host, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::audit::{Actor, AuditEntry, AuditQuery, AuditScope};
use wrenn_core::auth::Role;
use wrenn_core::config::Config;
use wrenn_core::id::{PLATFORM_TEAM_ID, TeamId, UserId};
use wrenn_core::lifecycle::{CreateSandbox, SandboxStatus};
use wrenn_core::model::UserStatus;
use wrenn_core::repo::{NewTeam, NewUser, RepoError, Store};
use wrenn_core::testing::{FakeAgents, Op};
use wrenn_cpserver::workers::account_cleanup::{RETENTION_DAYS, purge_expired_users};
use wrenn_db::testing::{TestStore, TestStores};

fn delete_me(s: &TestServer, u: &TestUser, confirmation: &str) -> reqwest::RequestBuilder {
    s.as_user(u, Method::DELETE, "/v1/me")
        .json(&json!({ "confirmation": confirmation }))
}

async fn is_deleted(store: &Arc<dyn Store>, user: UserId) -> bool {
    matches!(store.get_user(user).await, Err(RepoError::NotFound { .. }))
}

#[tokio::test]
async fn a_wrong_confirmation_changes_nothing() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    for bad in [
        json!({ "confirmation": "bob@x.io" }),
        json!({ "confirmation": "" }),
        json!({}),
        json!({ "confirmation": 1 }),
    ] {
        let got = send(s.as_user(&ada, Method::DELETE, "/v1/me").json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(s.as_user(&ada, Method::DELETE, "/v1/me")).await;
    assert_error(&got, 400, "invalid_request");
    let store = s.store();
    assert_eq!(
        store.get_user(ada.id).await.unwrap().status,
        UserStatus::Active
    );
    assert!(store.get_team(ada.team).await.unwrap().deleted_at.is_none());
    s.stop().await;
}

#[tokio::test]
async fn deleting_an_account_needs_its_own_token() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let got = send(
        s.req(Method::DELETE, "/v1/me")
            .json(&json!({ "confirmation": "ada@x.io" })),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    let got = send(
        s.req(Method::DELETE, "/v1/me")
            .bearer_auth("nope")
            .json(&json!({ "confirmation": "ada@x.io" })),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    let key = make_key(&s.store(), ada.team, ada.id).await;
    let got = send(
        s.req(Method::DELETE, "/v1/me")
            .header("x-api-key", key.expose_secret())
            .json(&json!({ "confirmation": "ada@x.io" })),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    // Another user cannot delete ada by typing her email.
    let eve = s.user("eve@x.io").await;
    let got = send(delete_me(&s, &eve, "ada@x.io")).await;
    assert_error(&got, 400, "invalid_request");
    assert!(!is_deleted(&s.store(), ada.id).await);
    assert!(!is_deleted(&s.store(), eve.id).await);
    s.stop().await;
}

#[tokio::test]
async fn owning_a_team_with_other_members_blocks_deletion() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let bob = member_of(&s, ada.team, "bob@x.io", Role::Member).await;
    let got = send(delete_me(&s, &ada, "ada@x.io")).await;
    assert_error(&got, 409, "owns_team_with_members");
    let store = s.store();
    assert_eq!(
        store.get_user(ada.id).await.unwrap().status,
        UserStatus::Active
    );
    assert!(store.get_team(ada.team).await.unwrap().deleted_at.is_none());

    // Once bob has left, it goes through.
    let resp = s
        .as_user(&bob, Method::POST, &format!("/v1/teams/{}/leave", ada.team))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = delete_me(&s, &ada, "ADA@x.io").send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(is_deleted(&store, ada.id).await);
    s.stop().await;
}

async fn deleting_an_account_deletes_its_sole_owned_teams(s: &TestServer) {
    let store = s.store();
    online_host(&store).await;
    let ada = s.user("ada@x.io").await;
    let other = s.user("other@x.io").await;
    store
        .add_member(other.team, ada.id, Role::Member)
        .await
        .unwrap();
    // A second team ada owns alone.
    let (status, body) = send(
        s.as_user(&ada, Method::POST, "/v1/teams")
            .json(&json!({ "name": "Side Project" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let side: TeamId = body["id"].as_str().unwrap().parse().unwrap();
    let actor = Actor::user(ada.id, "ada@x.io");
    let in_default = s
        .ctx
        .lifecycle
        .create(ada.team, &actor, CreateSandbox::default())
        .await
        .unwrap()
        .id;
    let in_side = s
        .ctx
        .lifecycle
        .create(side, &actor, CreateSandbox::default())
        .await
        .unwrap()
        .id;
    let in_other = s
        .ctx
        .lifecycle
        .create(other.team, &actor, CreateSandbox::default())
        .await
        .unwrap()
        .id;
    s.ctx.lifecycle.wait_idle().await;
    let own_key = make_key(&store, ada.team, ada.id).await;
    let other_key = make_key(&store, other.team, ada.id).await;
    let others_key = make_key(&store, other.team, other.id).await;
    for k in [&own_key, &other_key, &others_key] {
        s.ctx.auth.api_key(k.expose_secret()).await.unwrap();
    }

    let resp = delete_me(s, &ada, " ada@x.io ").send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    s.ctx.lifecycle.wait_idle().await;

    // Her sole-owned teams went through delete_team_core.
    for team in [ada.team, side] {
        assert!(
            store.get_team(team).await.unwrap().deleted_at.is_some(),
            "{team} deleted"
        );
    }
    for sb in [in_default, in_side] {
        assert_eq!(
            store.get_sandbox(sb).await.unwrap().status,
            SandboxStatus::Stopped
        );
        assert!(s.agents.calls.lock().unwrap().contains(&(Op::Destroy, sb)));
    }
    // The team she was only a member of stays, with its capsule and the owner's key.
    assert!(
        store
            .get_team(other.team)
            .await
            .unwrap()
            .deleted_at
            .is_none()
    );
    assert_eq!(
        store.get_sandbox(in_other).await.unwrap().status,
        SandboxStatus::Running
    );
    assert!(s.ctx.auth.api_key(others_key.expose_secret()).await.is_ok());
    // Her keys are gone everywhere, at once.
    for k in [&own_key, &other_key] {
        assert!(s.ctx.auth.api_key(k.expose_secret()).await.is_err());
    }
    assert_eq!(store.list_api_keys(other.team).await.unwrap().len(), 1);
    // The account is soft-deleted: the row is kept for the retention period.
    assert!(is_deleted(&store, ada.id).await);
    let row = store.get_user_by_email("ada@x.io").await.unwrap();
    assert_eq!(row.status, UserStatus::Deleted);
    assert!(row.deleted_at.is_some());
    let got = send(s.as_user(&ada, Method::GET, "/v1/teams")).await;
    assert_error(&got, 401, "unauthorized");

    // Recorded for platform admins, without the email.
    let entries = store
        .list_audit_logs(&AuditQuery {
            team_id: PLATFORM_TEAM_ID,
            scopes: vec![AuditScope::Admin],
            resource_type: None,
            action: None,
            before: None,
            limit: 50,
        })
        .await
        .unwrap();
    let user_entry = entries
        .iter()
        .find(|e| e.entry.resource_type == "user")
        .expect("user/delete");
    assert_eq!(user_entry.entry.action, "delete");
    assert_eq!(
        user_entry.entry.resource_id.as_deref(),
        Some(ada.id.to_string().as_str())
    );
    assert!(!user_entry.entry.metadata.to_string().contains("ada@x.io"));
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.entry.resource_type == "team" && e.entry.action == "delete")
            .count(),
        2
    );
}

#[tokio::test]
async fn deleting_an_account_deletes_its_sole_owned_teams_on_sqlite() {
    let s = TestServer::start().await;
    deleting_an_account_deletes_its_sole_owned_teams(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_account_deletes_its_sole_owned_teams_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    deleting_an_account_deletes_its_sole_owned_teams(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn the_user_is_told_by_email_when_a_mailer_is_configured() {
    let s = TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let ada = s.user("ada@x.io").await;
    let resp = delete_me(&s, &ada, "ada@x.io").send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let mail = s
        .mailer
        .as_ref()
        .unwrap()
        .last_to("ada@x.io")
        .expect("email sent");
    assert!(mail.body.contains("15 days"), "{}", mail.body);
    s.stop().await;
}

// ---------------------------------------------------------------------------
// the cleanup worker
// ---------------------------------------------------------------------------

/// A control plane over `db` (so the test can reach the database directly).
async fn context_over(db: &TestStore) -> (wrenn_cpserver::Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let wrenn_dir = dir.path().to_string_lossy().into_owned();
    let config = Config::from_lookup(|k| (k == "WRENN_DIR").then(|| wrenn_dir.clone())).unwrap();
    let server = wrenn_cpserver::Builder::new(config)
        .with_store(db.store())
        .with_host_agents(FakeAgents::new())
        .build()
        .await
        .unwrap();
    (server, dir)
}

async fn account(store: &Arc<dyn Store>, email: &str) -> (UserId, TeamId) {
    let id = UserId::new();
    store
        .create_user(NewUser {
            id,
            email: email.into(),
            password_hash: None,
            name: "Someone".into(),
            status: UserStatus::Active,
            is_admin: false,
        })
        .await
        .unwrap();
    let team = TeamId::new();
    store
        .create_team(
            NewTeam {
                id: team,
                name: "T".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            id,
            true,
        )
        .await
        .unwrap();
    (id, team)
}

async fn expired_accounts_are_removed_for_good(db: TestStore) {
    let (server, _dir) = context_over(&db).await;
    let ctx = server.context().clone();
    let store = db.store();
    let (old, old_team) = account(&store, "old@x.io").await;
    let (recent, _) = account(&store, "recent@x.io").await;
    let (alive, alive_team) = account(&store, "alive@x.io").await;
    // The old user left a trail in a team that lives on, and a key there.
    store
        .add_member(alive_team, old, Role::Member)
        .await
        .unwrap();
    let key = make_key(&store, alive_team, old).await;
    ctx.audit(AuditEntry::new(
        alive_team,
        Actor::user(old, "old@x.io"),
        "sandbox",
        Some("cl-x".into()),
        "create",
    ))
    .await;
    ctx.audit(
        AuditEntry::new(
            alive_team,
            Actor::user(alive, "alive@x.io"),
            "member",
            Some(old.to_string()),
            "add",
        )
        .scope(AuditScope::Admin)
        .metadata(json!({ "email": "old@x.io", "role": "member" })),
    )
    .await;
    store.hard_delete_user(UserId::new()).await.unwrap_err();

    store.soft_delete_user(old).await.unwrap();
    store.soft_delete_user(recent).await.unwrap();
    assert!(
        store
            .get_api_key_by_hash(&key.hash())
            .await
            .unwrap()
            .is_none(),
        "soft delete took her keys"
    );
    // Backdate the old one past the retention period.
    let backdated =
        (Utc::now() - Duration::days(RETENTION_DAYS + 1)).format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let changed = db
        .execute(&format!(
            "UPDATE users SET deleted_at = '{backdated}' WHERE email = 'old@x.io'"
        ))
        .await
        .unwrap();
    assert_eq!(changed, 1);

    let cutoff = Utc::now() - Duration::days(RETENTION_DAYS);
    assert_eq!(purge_expired_users(&ctx, cutoff).await.unwrap(), 1);
    assert!(
        matches!(
            store.get_user_by_email("old@x.io").await,
            Err(RepoError::NotFound { .. })
        ),
        "gone for good"
    );
    assert_eq!(
        store.get_user_by_email("recent@x.io").await.unwrap().status,
        UserStatus::Deleted,
        "kept until 15 days"
    );
    assert_eq!(
        store.get_user(alive).await.unwrap().status,
        UserStatus::Active
    );
    assert!(
        store
            .get_membership(alive_team, old)
            .await
            .unwrap()
            .is_none(),
        "memberships cascade"
    );
    assert!(store.get_team(old_team).await.is_ok(), "team rows are kept");

    // Her audit trail is anonymised.
    let trail = store
        .list_audit_logs(&AuditQuery {
            team_id: alive_team,
            scopes: vec![AuditScope::Team, AuditScope::Admin],
            resource_type: None,
            action: None,
            before: None,
            limit: 50,
        })
        .await
        .unwrap();
    let acted = trail
        .iter()
        .find(|r| r.entry.resource_type == "sandbox")
        .unwrap();
    assert_eq!(acted.entry.actor.id, None);
    assert_eq!(acted.entry.actor.name, "deleted-user");
    let added = trail
        .iter()
        .find(|r| r.entry.resource_type == "member")
        .unwrap();
    assert_eq!(added.entry.resource_id, None);
    assert!(
        added.entry.metadata.get("email").is_none(),
        "{}",
        added.entry.metadata
    );

    // Nothing more to do on the next tick; a cutoff in the future takes the recent one.
    assert_eq!(purge_expired_users(&ctx, cutoff).await.unwrap(), 0);
    assert_eq!(
        purge_expired_users(&ctx, Utc::now() + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert!(store.get_user_by_email("recent@x.io").await.is_err());
    assert!(
        store.get_user(alive).await.is_ok(),
        "live accounts are never touched"
    );
}

#[tokio::test]
async fn accounts_deleted_over_15_days_ago_are_removed_for_good_on_sqlite() {
    expired_accounts_are_removed_for_good(TestStores::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_deleted_over_15_days_ago_are_removed_for_good_on_postgres() {
    let Some(db) = TestStores::postgres().await else {
        return;
    };
    expired_accounts_are_removed_for_good(db).await;
}

#[tokio::test]
async fn the_cleanup_worker_is_a_core_worker() {
    let s = TestServer::start().await;
    let names: Vec<String> = wrenn_cpserver::workers::core_workers(&s.ctx, &[])
        .iter()
        .map(|w| w.name().to_owned())
        .collect();
    assert!(names.iter().any(|n| n == "account-cleanup"), "{names:?}");
    s.stop().await;
}
