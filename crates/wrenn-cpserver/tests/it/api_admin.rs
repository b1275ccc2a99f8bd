//! Platform administration: `/v1/admin/{users,teams,templates,audit-logs}`.

use crate::common;

use std::sync::Arc;

use common::{Options, TestServer, assert_error, make_key, member_of, online_host, send};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::audit::{Actor, AuditQuery, AuditRecord, AuditScope};
use wrenn_core::auth::Role;
use wrenn_core::id::{PLATFORM_TEAM_ID, TeamId, TemplateId, UserId};
use wrenn_core::lifecycle::{CreateSandbox, SandboxStatus};
use wrenn_core::model::{TemplateKind, UserStatus};
use wrenn_core::repo::{NewTemplate, Store};
use wrenn_core::testing::Op;

async fn platform_entry(
    store: &Arc<dyn Store>,
    resource: &str,
    action: &str,
) -> Option<AuditRecord> {
    store
        .list_audit_logs(&AuditQuery {
            team_id: PLATFORM_TEAM_ID,
            scopes: vec![AuditScope::Admin],
            resource_type: Some(resource.into()),
            action: Some(action.into()),
            before: None,
            limit: 10,
        })
        .await
        .expect("audit")
        .into_iter()
        .next()
}

fn all_routes(user: UserId, team: TeamId) -> Vec<(Method, String, Value)> {
    vec![
        (Method::GET, "/v1/admin/users".into(), Value::Null),
        (
            Method::PUT,
            format!("/v1/admin/users/{user}/active"),
            json!({ "active": false }),
        ),
        (Method::GET, "/v1/admin/teams".into(), Value::Null),
        (
            Method::PUT,
            format!("/v1/admin/teams/{team}/byoc"),
            json!({ "enabled": true }),
        ),
        (
            Method::DELETE,
            format!("/v1/admin/teams/{team}"),
            Value::Null,
        ),
        (Method::GET, "/v1/admin/templates".into(), Value::Null),
        (Method::GET, "/v1/admin/audit-logs".into(), Value::Null),
    ]
}

#[tokio::test]
async fn admin_routes_need_a_platform_admin_from_the_database() {
    let s = TestServer::start().await;
    let victim = s.user("victim@x.io").await;
    let plain = s.user("plain@x.io").await;
    // A token that claims admin for a user the database says is not one.
    let boastful = s.token_for(plain.id, plain.team, Role::Owner, "plain@x.io", true);
    for (method, path, body) in all_routes(victim.id, victim.team) {
        let got = send(s.req(method.clone(), &path).json(&body)).await;
        assert_error(&got, 401, "unauthorized");
        let got = send(s.as_user(&plain, method.clone(), &path).json(&body)).await;
        assert_error(&got, 403, "forbidden");
        let got = send(s.req(method, &path).bearer_auth(&boastful).json(&body)).await;
        assert_error(&got, 403, "forbidden");
    }
    let store = s.store();
    assert_eq!(
        store.get_user(victim.id).await.unwrap().status,
        UserStatus::Active
    );
    let team = store.get_team(victim.team).await.unwrap();
    assert!(
        !team.is_byoc && team.deleted_at.is_none(),
        "nothing changed"
    );

    // Revoking admin in the database takes effect on the next request.
    let root = s.user_with("root@x.io", true).await;
    let (status, _) = send(s.as_user(&root, Method::GET, "/v1/admin/users")).await;
    assert_eq!(status, 200);
    store.set_user_admin(plain.id, true).await.unwrap();
    store.set_user_admin(root.id, false).await.unwrap();
    let got = send(s.as_user(&root, Method::GET, "/v1/admin/users")).await;
    assert_error(&got, 403, "forbidden");
    s.stop().await;
}

#[tokio::test]
async fn users_are_listed_with_their_teams_in_pages() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    member_of(&s, ada.team, "bob@x.io", Role::Member).await;
    let (status, body) = send(s.as_user(&root, Method::GET, "/v1/admin/users")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 3);
    assert_eq!(body["page"], 1);
    assert_eq!(body["per_page"], 100);
    assert_eq!(body["total_pages"], 1);
    let users = body["users"].as_array().unwrap();
    assert_eq!(users[0]["email"], "bob@x.io", "newest first");
    assert_eq!(users[0]["teams_joined"], 2);
    assert_eq!(users[0]["teams_owned"], 1);
    let r = users.iter().find(|u| u["email"] == "root@x.io").unwrap();
    assert_eq!(r["is_admin"], true);
    assert_eq!(r["status"], "active");
    assert_eq!(r["id"], root.id.to_string());
    assert!(r["created_at"].is_string() && r["name"] == "root");

    let (status, body) = send(s.as_user(&root, Method::GET, "/v1/admin/users?page=2")).await;
    assert_eq!(status, 200);
    assert_eq!(body["users"], json!([]));
    for bad in ["page=0", "page=-1", "page=abc", "page=1.5"] {
        let got = send(s.as_user(&root, Method::GET, &format!("/v1/admin/users?{bad}"))).await;
        assert_error(&got, 400, "invalid_request");
        let got = send(s.as_user(&root, Method::GET, &format!("/v1/admin/teams?{bad}"))).await;
        assert_error(&got, 400, "invalid_request");
    }
    s.stop().await;
}

async fn deactivation_revokes_keys_and_destroys_owned_capsules(s: &TestServer) {
    let store = s.store();
    online_host(&store).await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    let other = s.user("other@x.io").await;
    // Ada is also a member of another team, where she made a key and runs a capsule.
    store
        .add_member(other.team, ada.id, Role::Member)
        .await
        .unwrap();
    let own_key = make_key(&store, ada.team, ada.id).await;
    let other_key = make_key(&store, other.team, ada.id).await;
    for k in [&own_key, &other_key] {
        s.ctx
            .auth
            .api_key(k.expose_secret())
            .await
            .expect("works before");
    }
    let actor = Actor::user(ada.id, "ada@x.io");
    let owned = s
        .ctx
        .lifecycle
        .create(ada.team, &actor, CreateSandbox::default())
        .await
        .unwrap()
        .id;
    let shared = s
        .ctx
        .lifecycle
        .create(other.team, &actor, CreateSandbox::default())
        .await
        .unwrap()
        .id;
    s.ctx.lifecycle.wait_idle().await;

    let path = format!("/v1/admin/users/{}/active", ada.id);
    let resp = s
        .as_user(&root, Method::PUT, &path)
        .json(&json!({ "active": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    s.ctx.lifecycle.wait_idle().await;

    assert_eq!(
        store.get_user(ada.id).await.unwrap().status,
        UserStatus::Disabled
    );
    let got = send(s.as_user(&ada, Method::GET, "/v1/teams")).await;
    assert_error(&got, 403, "account_deactivated");
    for k in [&own_key, &other_key] {
        assert_eq!(
            s.ctx
                .auth
                .api_key(k.expose_secret())
                .await
                .unwrap_err()
                .status
                .as_u16(),
            401,
            "key revoked at once"
        );
    }
    assert_eq!(
        store.get_sandbox(owned).await.unwrap().status,
        SandboxStatus::Stopped
    );
    assert!(
        s.agents
            .calls
            .lock()
            .unwrap()
            .contains(&(Op::Destroy, owned))
    );
    assert_eq!(
        store.get_sandbox(shared).await.unwrap().status,
        SandboxStatus::Running,
        "not her team"
    );
    let entry = platform_entry(&store, "user", "deactivate")
        .await
        .expect("audit");
    assert_eq!(
        entry.entry.resource_id.as_deref(),
        Some(ada.id.to_string().as_str())
    );
    assert_eq!(entry.entry.status.as_str(), "warning");
    assert_eq!(entry.entry.metadata["email"], "ada@x.io");

    // And back.
    let resp = s
        .as_user(&root, Method::PUT, &path)
        .json(&json!({ "active": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _) = send(s.as_user(&ada, Method::GET, "/v1/teams")).await;
    assert_eq!(status, 200);
    assert!(platform_entry(&store, "user", "activate").await.is_some());
}

#[tokio::test]
async fn deactivating_a_user_revokes_their_keys_and_destroys_their_teams_capsules() {
    let s = TestServer::start().await;
    deactivation_revokes_keys_and_destroys_owned_capsules(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deactivating_a_user_works_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    deactivation_revokes_keys_and_destroys_owned_capsules(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn bad_activation_requests_change_nothing() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    let got = send(
        s.as_user(
            &root,
            Method::PUT,
            &format!("/v1/admin/users/{}/active", root.id),
        )
        .json(&json!({ "active": false })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        s.store().get_user(root.id).await.unwrap().status,
        UserStatus::Active
    );
    let path = format!("/v1/admin/users/{}/active", ada.id);
    for bad in [
        json!({}),
        json!({ "active": "no" }),
        json!({ "active": null }),
    ] {
        let got = send(s.as_user(&root, Method::PUT, &path).json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(s.as_user(&root, Method::PUT, &path)).await;
    assert_error(&got, 400, "invalid_request");
    let got = send(
        s.as_user(&root, Method::PUT, "/v1/admin/users/nope/active")
            .json(&json!({ "active": false })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = send(
        s.as_user(
            &root,
            Method::PUT,
            &format!("/v1/admin/users/{}/active", UserId::new()),
        )
        .json(&json!({ "active": false })),
    )
    .await;
    assert_error(&got, 404, "not_found");
    assert_eq!(
        s.store().get_user(ada.id).await.unwrap().status,
        UserStatus::Active
    );
    s.stop().await;
}

#[tokio::test]
async fn activating_a_never_activated_account_gives_it_a_default_team() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let store = s.store();
    let id = UserId::new();
    store
        .create_user(wrenn_core::repo::NewUser {
            id,
            email: "late@x.io".into(),
            password_hash: None,
            name: "Late Comer".into(),
            status: UserStatus::Inactive,
            is_admin: false,
        })
        .await
        .unwrap();
    let resp = s
        .as_user(&root, Method::PUT, &format!("/v1/admin/users/{id}/active"))
        .json(&json!({ "active": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(store.get_user(id).await.unwrap().status, UserStatus::Active);
    let team = store
        .default_team_for_user(id)
        .await
        .unwrap()
        .expect("default team");
    assert_eq!(team.team.name, "Late Comer's Team");
    assert_eq!(team.role, Role::Owner);
    // Activating again does not make a second team.
    let resp = s
        .as_user(&root, Method::PUT, &format!("/v1/admin/users/{id}/active"))
        .json(&json!({ "active": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(store.list_teams_for_user(id).await.unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn teams_are_listed_with_owner_and_counts_including_deleted_ones() {
    let s = TestServer::start().await;
    online_host(&s.store()).await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    member_of(&s, ada.team, "bob@x.io", Role::Member).await;
    s.ctx
        .lifecycle
        .create(
            ada.team,
            &Actor::user(ada.id, "ada@x.io"),
            CreateSandbox::default(),
        )
        .await
        .unwrap();
    s.ctx.lifecycle.wait_idle().await;
    let gone = s.user("gone@x.io").await;
    wrenn_cpserver::teams::delete_team_core(&s.ctx, gone.team, &Actor::system())
        .await
        .unwrap();

    let (status, body) = send(s.as_user(&root, Method::GET, "/v1/admin/teams")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["per_page"], 100);
    assert_eq!(body["page"], 1);
    // root's, ada's, bob's, gone's and the platform team.
    assert_eq!(body["total"], 5);
    assert_eq!(body["total_pages"], 1);
    let teams = body["teams"].as_array().unwrap();
    let a = teams
        .iter()
        .find(|t| t["id"] == ada.team.to_string())
        .unwrap();
    assert_eq!(a["member_count"], 2);
    assert_eq!(a["owner_email"], "ada@x.io");
    assert_eq!(a["owner_name"], "ada");
    assert_eq!(a["active_sandbox_count"], 1);
    assert_eq!(a["channel_count"], 0);
    assert_eq!(a["is_byoc"], false);
    assert_eq!(a["deleted_at"], Value::Null);
    assert!(a["slug"].is_string() && a["created_at"].is_string() && a["name"].is_string());
    let g = teams
        .iter()
        .find(|t| t["id"] == gone.team.to_string())
        .unwrap();
    assert!(g["deleted_at"].is_string(), "{g}");
    let p = teams
        .iter()
        .find(|t| t["id"] == PLATFORM_TEAM_ID.to_string())
        .unwrap();
    assert_eq!(p["owner_email"], "");
    s.stop().await;
}

#[tokio::test]
async fn byoc_can_be_turned_on_but_never_off() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    let path = format!("/v1/admin/teams/{}/byoc", ada.team);
    let got = send(
        s.as_user(&root, Method::PUT, &path)
            .json(&json!({ "enabled": false })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert!(!s.store().get_team(ada.team).await.unwrap().is_byoc);

    let resp = s
        .as_user(&root, Method::PUT, &path)
        .json(&json!({ "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(s.store().get_team(ada.team).await.unwrap().is_byoc);
    let entry = platform_entry(&s.store(), "team", "set_byoc")
        .await
        .expect("audit");
    assert_eq!(entry.entry.metadata, json!({ "enabled": true }));
    assert_eq!(entry.entry.status.as_str(), "info");

    let got = send(
        s.as_user(&root, Method::PUT, &path)
            .json(&json!({ "enabled": false })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert!(
        s.store().get_team(ada.team).await.unwrap().is_byoc,
        "still on"
    );
    // Idempotent.
    let resp = s
        .as_user(&root, Method::PUT, &path)
        .json(&json!({ "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    for bad in [json!({}), json!({ "enabled": "yes" })] {
        let got = send(s.as_user(&root, Method::PUT, &path).json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(
        s.as_user(
            &root,
            Method::PUT,
            &format!("/v1/admin/teams/{}/byoc", TeamId::new()),
        )
        .json(&json!({ "enabled": true })),
    )
    .await;
    assert_error(&got, 404, "not_found");
    let got = send(
        s.as_user(
            &root,
            Method::PUT,
            &format!("/v1/admin/teams/{PLATFORM_TEAM_ID}/byoc"),
        )
        .json(&json!({ "enabled": true })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert!(!s.store().get_team(PLATFORM_TEAM_ID).await.unwrap().is_byoc);
    s.stop().await;
}

#[tokio::test]
async fn admins_delete_teams_the_same_way_owners_do() {
    let s = TestServer::start().await;
    let store = s.store();
    online_host(&store).await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    let sb = s
        .ctx
        .lifecycle
        .create(
            ada.team,
            &Actor::user(ada.id, "ada@x.io"),
            CreateSandbox::default(),
        )
        .await
        .unwrap()
        .id;
    s.ctx.lifecycle.wait_idle().await;
    let key = make_key(&store, ada.team, ada.id).await;

    let resp = s
        .as_user(
            &root,
            Method::DELETE,
            &format!("/v1/admin/teams/{}", ada.team),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    s.ctx.lifecycle.wait_idle().await;
    assert!(store.get_team(ada.team).await.unwrap().deleted_at.is_some());
    assert_eq!(
        store.get_sandbox(sb).await.unwrap().status,
        SandboxStatus::Stopped
    );
    assert_eq!(s.agents.status_on_host(sb), None);
    assert!(s.ctx.auth.api_key(key.expose_secret()).await.is_err());
    let entry = platform_entry(&store, "team", "delete")
        .await
        .expect("audit");
    assert_eq!(
        entry.entry.actor.id.as_deref(),
        Some(root.id.to_string().as_str())
    );

    let got = send(s.as_user(
        &root,
        Method::DELETE,
        &format!("/v1/admin/teams/{}", ada.team),
    ))
    .await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(
        &root,
        Method::DELETE,
        &format!("/v1/admin/teams/{}", TeamId::new()),
    ))
    .await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(&root, Method::DELETE, "/v1/admin/teams/team-nope")).await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(
        &root,
        Method::DELETE,
        &format!("/v1/admin/teams/{PLATFORM_TEAM_ID}"),
    ))
    .await;
    assert_error(&got, 400, "invalid_request");
    assert!(
        store
            .get_team(PLATFORM_TEAM_ID)
            .await
            .unwrap()
            .deleted_at
            .is_none()
    );
    s.stop().await;
}

#[tokio::test]
async fn templates_of_every_team_are_listed() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    s.store()
        .create_template(NewTemplate {
            id: TemplateId::new(),
            team_id: ada.team,
            name: "ada-snap".into(),
            kind: TemplateKind::Snapshot,
            vcpus: 2,
            memory_mb: 1024,
            size_bytes: 4096,
            default_user: "root".into(),
            default_env: Default::default(),
            metadata: Default::default(),
            start_command: String::new(),
            start_cwd: String::new(),
        })
        .await
        .unwrap();
    let (status, body) = send(s.as_user(&root, Method::GET, "/v1/admin/templates")).await;
    assert_eq!(status, 200, "{body}");
    let list = body.as_array().unwrap();
    let builtin = list
        .iter()
        .find(|t| t["name"] == "minimal")
        .expect("platform template");
    assert_eq!(builtin["team_id"], PLATFORM_TEAM_ID.to_string());
    assert_eq!(builtin["type"], "base");
    let snap = list
        .iter()
        .find(|t| t["name"] == "ada-snap")
        .expect("team template");
    assert_eq!(snap["team_id"], ada.team.to_string());
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["vcpus"], 2);
    assert_eq!(snap["memory_mb"], 1024);
    assert_eq!(snap["size_bytes"], 4096);
    assert!(snap["created_at"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn the_platform_audit_log_shows_admin_actions() {
    let s = TestServer::start().await;
    let root = s.user_with("root@x.io", true).await;
    let ada = s.user("ada@x.io").await;
    let resp = s
        .as_user(
            &root,
            Method::PUT,
            &format!("/v1/admin/teams/{}/byoc", ada.team),
        )
        .json(&json!({ "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = s
        .as_user(
            &root,
            Method::PUT,
            &format!("/v1/admin/users/{}/active", ada.id),
        )
        .json(&json!({ "active": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    let (status, body) = send(s.as_user(&root, Method::GET, "/v1/admin/audit-logs")).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["resource_type"], "user");
    assert_eq!(items[0]["action"], "deactivate");
    assert_eq!(items[0]["scope"], "admin");
    assert_eq!(items[0]["actor_id"], root.id.to_string());
    assert_eq!(items[1]["action"], "set_byoc");
    let (_, body) = send(s.as_user(&root, Method::GET, "/v1/admin/audit-logs?limit=1")).await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert!(body["next_before_id"].is_string());
    let (_, body) =
        send(s.as_user(&root, Method::GET, "/v1/admin/audit-logs?action=set_byoc")).await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let got = send(s.as_user(&root, Method::GET, "/v1/admin/audit-logs?limit=0")).await;
    assert_error(&got, 400, "invalid_request");
    // The team's own log does not show platform entries.
    let member_of_nothing = s.user("x@x.io").await;
    let (_, body) = send(s.as_user(&member_of_nothing, Method::GET, "/v1/audit-logs")).await;
    assert_eq!(body["items"], json!([]));
    s.stop().await;
}

#[tokio::test]
async fn platform_admins_drive_the_platform_teams_capsules_through_the_team_routes() {
    let s = TestServer::start().await;
    let store = s.store();
    online_host(&store).await;
    let root = s.user_with("root@x.io", true).await;
    let plain = s.user("plain@x.io").await;

    // Only platform admins, with their JWT.
    let got = send(s.req(Method::POST, "/v1/admin/capsules").json(&json!({}))).await;
    assert_error(&got, 401, "unauthorized");
    let got = send(
        s.as_user(&plain, Method::POST, "/v1/admin/capsules")
            .json(&json!({})),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    let key = make_key(&store, plain.team, plain.id).await;
    let got = send(
        s.req(Method::GET, "/v1/admin/capsules")
            .header("X-API-Key", key.expose_secret()),
    )
    .await;
    assert_error(&got, 401, "unauthorized");

    // Created for the platform team, seen through the admin routes only.
    let (status, v) = send(
        s.as_user(&root, Method::POST, "/v1/admin/capsules")
            .json(&json!({})),
    )
    .await;
    assert!(status == 201 || status == 202, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let sb = store.get_sandbox(id.parse().unwrap()).await.unwrap();
    assert_eq!(sb.team_id, PLATFORM_TEAM_ID);
    let (status, v) =
        send(s.as_user(&root, Method::GET, &format!("/v1/admin/capsules/{id}"))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], id.as_str());
    let (status, v) = send(s.as_user(&root, Method::GET, "/v1/admin/capsules")).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v.as_array().unwrap().iter().any(|c| c["id"] == id.as_str()),
        "{v}"
    );
    let got = send(s.as_user(&root, Method::GET, &format!("/v1/capsules/{id}"))).await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(&root, Method::GET, "/v1/admin/capsules/cl-nope")).await;
    assert_eq!(got.0, 400, "{:?}", got.1);

    // A snapshot makes (and then replaces) a platform template of that name.
    for _ in 0..2 {
        let (status, v) = send(
            s.as_user(
                &root,
                Method::POST,
                &format!("/v1/admin/capsules/{id}/snapshot"),
            )
            .json(&json!({ "name": "platform-snap" })),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["name"], "platform-snap");
    }
    let t = store
        .get_template_for_team(plain.team, "platform-snap")
        .await
        .unwrap();
    assert_eq!(t.team_id, PLATFORM_TEAM_ID, "every team sees it");

    let (status, v) =
        send(s.as_user(&root, Method::DELETE, &format!("/v1/admin/capsules/{id}"))).await;
    assert!(status == 202 || status == 204, "{v}");
    s.stop().await;
}
