//! Teams and members: `/v1/teams…`, owner invariants, and team deletion through
//! `delete_team_core` (capsules destroyed on their hosts, data purged).

use crate::common;

use std::sync::{Arc, Mutex};

use chrono::Utc;
use common::{Options, TestServer, TestUser, assert_error, member_of, online_host, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::agents::{AgentInventory, HostAgents, HostCallError, SandboxSpec, StartedSandbox};
use wrenn_core::audit::{Actor, AuditQuery, AuditRecord, AuditScope};
use wrenn_core::auth::{ApiKey, Role};
use wrenn_core::config::Config;
use wrenn_core::id::{
    ApiKeyId, ChannelId, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId,
};
use wrenn_core::lifecycle::{CreateSandbox, HostStatus, SandboxStatus};
use wrenn_core::model::{self, Channel, MetricPoint, MetricTier, MetricsSnapshot, TemplateKind};
use wrenn_core::repo::{NewTemplate, Store};
use wrenn_core::testing::{FakeAgents, Op};
use wrenn_cpserver::teams::{DeleteTeamError, delete_team_core};
use wrenn_db::testing::TestStores;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn actor(u: &TestUser) -> Actor {
    Actor::user(u.id, u.email.clone())
}

async fn team_audit(store: &Arc<dyn Store>, team: TeamId) -> Vec<AuditRecord> {
    store
        .list_audit_logs(&AuditQuery {
            team_id: team,
            scopes: vec![AuditScope::Team, AuditScope::Admin],
            resource_type: None,
            action: None,
            before: None,
            limit: 200,
        })
        .await
        .expect("audit")
}

async fn has_entry(
    store: &Arc<dyn Store>,
    team: TeamId,
    resource: &str,
    action: &str,
) -> Option<AuditRecord> {
    team_audit(store, team)
        .await
        .into_iter()
        .find(|r| r.entry.resource_type == resource && r.entry.action == action)
}

async fn team_name(s: &TestServer, team: TeamId) -> String {
    s.store().get_team(team).await.expect("team").name
}

async fn role_of(s: &TestServer, team: TeamId, user: &TestUser) -> Option<Role> {
    s.store()
        .get_membership(team, user.id)
        .await
        .expect("membership")
        .map(|m| m.role)
}

// ---------------------------------------------------------------------------
// listing and creating
// ---------------------------------------------------------------------------

#[tokio::test]
async fn listing_teams_shows_each_team_with_the_callers_role() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let bob = member_of(&s, owner.team, "bob@x.io", Role::Admin).await;

    let (status, body) = send(s.as_user(&bob, Method::GET, "/v1/teams")).await;
    assert_eq!(status, 200, "{body}");
    let teams = body.as_array().unwrap();
    assert_eq!(teams.len(), 2, "bob's own team and owner's team: {body}");
    let shared = teams
        .iter()
        .find(|t| t["id"] == owner.team.to_string())
        .unwrap();
    assert_eq!(shared["role"], "admin");
    assert_eq!(shared["name"], "owner@x.io's Team");
    assert_eq!(shared["is_byoc"], false);
    assert!(shared["slug"].as_str().unwrap().len() == 13, "{shared}");
    assert!(
        shared["created_at"].as_str().unwrap().ends_with('Z'),
        "{shared}"
    );
    let own = teams
        .iter()
        .find(|t| t["id"] != owner.team.to_string())
        .unwrap();
    assert_eq!(own["role"], "owner");
    s.stop().await;
}

#[tokio::test]
async fn creating_a_team_makes_the_caller_its_owner_but_not_their_default() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let (status, body) = send(
        s.as_user(&ada, Method::POST, "/v1/teams")
            .json(&json!({ "name": "Research Lab" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "Research Lab");
    assert_eq!(body["role"], "owner");
    let id: TeamId = body["id"].as_str().unwrap().parse().unwrap();
    let slug = body["slug"].as_str().unwrap();
    assert!(slug.len() == 13 && slug.as_bytes()[6] == b'-', "{slug}");

    let store = s.store();
    assert_eq!(
        store
            .get_membership(id, ada.id)
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Owner
    );
    let default = store.default_team_for_user(ada.id).await.unwrap().unwrap();
    assert_eq!(default.team.id, ada.team, "the new team is not the default");
    let entry = has_entry(&store, id, "team", "create")
        .await
        .expect("audit entry");
    assert_eq!(entry.entry.metadata["name"], "Research Lab");
    s.stop().await;
}

#[tokio::test]
async fn a_team_with_a_bad_name_is_not_created() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let long = "x".repeat(129);
    for body in [
        json!({ "name": "" }),
        json!({ "name": "   " }),
        json!({ "name": "semi;colon" }),
        json!({ "name": long }),
        json!({ "name": 7 }),
        json!({}),
        json!({ "name": "Fine", "slug": "chosen-slug" }),
    ] {
        let got = send(s.as_user(&ada, Method::POST, "/v1/teams").json(&body)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(
        s.as_user(&ada, Method::POST, "/v1/teams")
            .body("{not json")
            .header("content-type", "application/json"),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(&ada, Method::POST, "/v1/teams")).await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        s.store().list_teams_for_user(ada.id).await.unwrap().len(),
        1,
        "nothing was created"
    );
    s.stop().await;
}

#[tokio::test]
async fn team_routes_need_a_user_token() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let t = ada.team;
    let routes = [
        (Method::GET, "/v1/teams".to_string()),
        (Method::POST, "/v1/teams".to_string()),
        (Method::GET, format!("/v1/teams/{t}")),
        (Method::PATCH, format!("/v1/teams/{t}")),
        (Method::DELETE, format!("/v1/teams/{t}")),
        (Method::GET, format!("/v1/teams/{t}/members")),
        (Method::POST, format!("/v1/teams/{t}/members")),
        (Method::PATCH, format!("/v1/teams/{t}/members/{}", ada.id)),
        (Method::DELETE, format!("/v1/teams/{t}/members/{}", ada.id)),
        (Method::POST, format!("/v1/teams/{t}/leave")),
    ];
    // A team API key is not a user: it cannot manage teams.
    let key = ApiKey::generate();
    s.store()
        .create_api_key(model::ApiKey {
            id: ApiKeyId::new(),
            team_id: t,
            name: "k".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().into(),
            created_by: Some(ada.id),
            created_at: Utc::now(),
            last_used: None,
        })
        .await
        .unwrap();
    for (method, path) in routes {
        let got = send(s.req(method.clone(), &path).json(&json!({ "name": "X" }))).await;
        assert_error(&got, 401, "unauthorized");
        let got = send(
            s.req(method.clone(), &path)
                .bearer_auth("not-a-jwt")
                .json(&json!({ "name": "X" })),
        )
        .await;
        assert_error(&got, 401, "unauthorized");
        let got = send(
            s.req(method, &path)
                .header("x-api-key", key.expose_secret())
                .json(&json!({ "name": "X" })),
        )
        .await;
        assert_error(&got, 401, "unauthorized");
    }
    assert_eq!(team_name(&s, t).await, "ada@x.io's Team");
    assert!(s.store().get_team(t).await.unwrap().deleted_at.is_none());
    s.stop().await;
}

// ---------------------------------------------------------------------------
// reading and renaming
// ---------------------------------------------------------------------------

#[tokio::test]
async fn getting_the_team_shows_it_with_its_members() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let bob = member_of(&s, owner.team, "bob@x.io", Role::Member).await;
    let (status, body) =
        send(s.as_user(&bob, Method::GET, &format!("/v1/teams/{}", owner.team))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["team"]["id"], owner.team.to_string());
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["user_id"], owner.id.to_string(), "owner first");
    assert_eq!(members[0]["role"], "owner");
    assert_eq!(members[1]["email"], "bob@x.io");
    assert_eq!(members[1]["name"], "bob");
    assert!(members[1]["joined_at"].is_string());

    let (status, list) = send(s.as_user(
        &bob,
        Method::GET,
        &format!("/v1/teams/{}/members", owner.team),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(&list, &body["members"]);
    s.stop().await;
}

#[tokio::test]
async fn another_teams_id_is_refused_until_the_caller_switches_team() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let eve = s.user("eve@x.io").await;
    let victim = ada.team;
    let calls = [
        (Method::GET, format!("/v1/teams/{victim}"), json!(null)),
        (
            Method::PATCH,
            format!("/v1/teams/{victim}"),
            json!({ "name": "Pwned" }),
        ),
        (Method::DELETE, format!("/v1/teams/{victim}"), json!(null)),
        (
            Method::GET,
            format!("/v1/teams/{victim}/members"),
            json!(null),
        ),
        (
            Method::POST,
            format!("/v1/teams/{victim}/members"),
            json!({ "email": "eve@x.io" }),
        ),
        (
            Method::PATCH,
            format!("/v1/teams/{victim}/members/{}", ada.id),
            json!({ "role": "member" }),
        ),
        (
            Method::DELETE,
            format!("/v1/teams/{victim}/members/{}", ada.id),
            json!(null),
        ),
        (
            Method::POST,
            format!("/v1/teams/{victim}/leave"),
            json!(null),
        ),
    ];
    for (method, path, body) in calls {
        let got = send(s.as_user(&eve, method, &path).json(&body)).await;
        assert_error(&got, 403, "forbidden");
        assert!(
            got.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("switch-team"),
            "{}",
            got.1
        );
    }
    // A token for a team the user is not a member of is refused by the extractor.
    let forged = s.token_for(eve.id, victim, Role::Owner, "eve@x.io", false);
    let got = send(
        s.req(Method::GET, &format!("/v1/teams/{victim}"))
            .bearer_auth(forged),
    )
    .await;
    assert_error(&got, 403, "forbidden");

    assert_eq!(team_name(&s, victim).await, "ada@x.io's Team");
    assert_eq!(s.store().list_members(victim).await.unwrap().len(), 1);
    assert!(
        s.store()
            .get_team(victim)
            .await
            .unwrap()
            .deleted_at
            .is_none()
    );
    assert_eq!(role_of(&s, victim, &ada).await, Some(Role::Owner));
    s.stop().await;
}

#[tokio::test]
async fn malformed_ids_are_bad_requests() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    for (method, path) in [
        (Method::GET, "/v1/teams/nope".to_string()),
        (Method::GET, format!("/v1/teams/{}", ada.id)),
        (
            Method::PATCH,
            format!("/v1/teams/{}/members/nope", ada.team),
        ),
        (
            Method::DELETE,
            format!("/v1/teams/{}/members/{}", ada.team, ada.team),
        ),
    ] {
        let got = send(
            s.as_user(&ada, method, &path)
                .json(&json!({ "role": "member" })),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    s.stop().await;
}

#[tokio::test]
async fn owners_and_admins_rename_the_team_members_cannot() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let admin = member_of(&s, owner.team, "admin@x.io", Role::Admin).await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    let path = format!("/v1/teams/{}", owner.team);

    let got = send(
        s.as_user(&member, Method::PATCH, &path)
            .json(&json!({ "name": "Mine" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(team_name(&s, owner.team).await, "owner@x.io's Team");

    let resp = s
        .as_user(&admin, Method::PATCH, &path)
        .json(&json!({ "name": "  Blue Team " }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(team_name(&s, owner.team).await, "Blue Team");
    let resp = s
        .as_user(&owner, Method::PATCH, &path)
        .json(&json!({ "name": "Red Team" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(team_name(&s, owner.team).await, "Red Team");

    let entry = has_entry(&s.store(), owner.team, "team", "rename")
        .await
        .expect("audit");
    assert_eq!(
        entry.entry.metadata,
        json!({ "old_name": "Blue Team", "new_name": "Red Team" })
    );
    assert_eq!(entry.entry.status.as_str(), "info");
    s.stop().await;
}

#[tokio::test]
async fn a_membership_revoked_after_the_token_was_issued_is_not_trusted() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    // Bob's token says admin, but the database says member.
    let bob = member_of(&s, owner.team, "bob@x.io", Role::Member).await;
    let lying = s.token_for(bob.id, owner.team, Role::Admin, "bob@x.io", false);
    let got = send(
        s.req(Method::PATCH, &format!("/v1/teams/{}", owner.team))
            .bearer_auth(&lying)
            .json(&json!({ "name": "Bob's" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    // And once removed, the token stops working for that team.
    s.store().remove_member(owner.team, bob.id).await.unwrap();
    let got = send(s.as_user(&bob, Method::GET, &format!("/v1/teams/{}", owner.team))).await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(team_name(&s, owner.team).await, "owner@x.io's Team");
    s.stop().await;
}

#[tokio::test]
async fn the_slug_never_changes() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let before = s.store().get_team(owner.team).await.unwrap();
    let path = format!("/v1/teams/{}", owner.team);
    let got = send(
        s.as_user(&owner, Method::PATCH, &path)
            .json(&json!({ "name": "New", "slug": "my-slug" })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        s.store().get_team(owner.team).await.unwrap(),
        before,
        "nothing changed"
    );
    for bad in [
        json!({ "name": "" }),
        json!({ "name": "<script>" }),
        json!({}),
        json!({ "name": null }),
    ] {
        let got = send(s.as_user(&owner, Method::PATCH, &path).json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(
        s.store().get_team(owner.team).await.unwrap(),
        before,
        "nothing changed"
    );
    let resp = s
        .as_user(&owner, Method::PATCH, &path)
        .json(&json!({ "name": "New" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        s.store().get_team(owner.team).await.unwrap().slug,
        before.slug
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------
// members
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// deletion
// ---------------------------------------------------------------------------

#[tokio::test]
async fn only_the_owner_deletes_the_team() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let admin = member_of(&s, owner.team, "admin@x.io", Role::Admin).await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    for who in [&admin, &member] {
        let got = send(s.as_user(who, Method::DELETE, &format!("/v1/teams/{}", owner.team))).await;
        assert_error(&got, 403, "forbidden");
    }
    assert!(
        s.store()
            .get_team(owner.team)
            .await
            .unwrap()
            .deleted_at
            .is_none()
    );
    s.stop().await;
}

/// Everything a team can own, for deletion tests.
struct Estate {
    running: SandboxId,
    paused: SandboxId,
    hibernated: SandboxId,
    key: ApiKey,
    template: TemplateId,
}

async fn furnish(s: &TestServer, owner: &TestUser) -> Estate {
    let ctx = &s.ctx;
    let store = s.store();
    let who = actor(owner);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let sb = ctx
            .lifecycle
            .create(owner.team, &who, CreateSandbox::default())
            .await
            .expect("create capsule");
        ids.push(sb.id);
    }
    ctx.lifecycle.wait_idle().await;
    ctx.lifecycle
        .pause(owner.team, ids[1], &who)
        .await
        .expect("pause");
    ctx.lifecycle.wait_idle().await;
    // Hibernated: the row says so (the agent keeps the sandbox's state on disk).
    store
        .status_if(ids[2], SandboxStatus::Running, SandboxStatus::Hibernated)
        .await
        .unwrap()
        .expect("hibernate");
    for (id, want) in [
        (ids[0], SandboxStatus::Running),
        (ids[1], SandboxStatus::Paused),
        (ids[2], SandboxStatus::Hibernated),
    ] {
        assert_eq!(store.get_sandbox(id).await.unwrap().status, want);
        assert!(s.agents.status_on_host(id).is_some());
    }

    let key = ApiKey::generate();
    store
        .create_api_key(model::ApiKey {
            id: ApiKeyId::new(),
            team_id: owner.team,
            name: "ci".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().into(),
            created_by: Some(owner.id),
            created_at: Utc::now(),
            last_used: None,
        })
        .await
        .unwrap();
    ctx.auth
        .api_key(key.expose_secret())
        .await
        .expect("the key works before deletion");
    store
        .create_channel(Channel {
            id: ChannelId::new(),
            team_id: owner.team,
            name: "alerts".into(),
            provider: "webhook".into(),
            config: [("url".to_string(), "enc".to_string())].into(),
            event_types: vec!["capsule.created".into()],
            created_at: Utc::now(),
            updated_at: Utc::now(),
        })
        .await
        .unwrap();
    let point = MetricPoint {
        ts: Utc::now().timestamp(),
        cpu_pct: 12.5,
        mem_bytes: 1 << 20,
        disk_bytes: 1 << 30,
    };
    store
        .insert_metric_points(ids[0], MetricTier::TenMinutes, &[point])
        .await
        .unwrap();
    store
        .insert_metrics_snapshots(&[MetricsSnapshot {
            team_id: owner.team,
            sampled_at: Utc::now(),
            running_count: 1,
            vcpus_reserved: 1,
            memory_mb_reserved: 512,
        }])
        .await
        .unwrap();
    let template = store
        .create_template(NewTemplate {
            id: TemplateId::new(),
            team_id: owner.team,
            name: "my-snapshot".into(),
            kind: TemplateKind::Snapshot,
            vcpus: 1,
            memory_mb: 512,
            size_bytes: 4096,
            default_user: "root".into(),
            default_env: Default::default(),
            metadata: Default::default(),
        })
        .await
        .unwrap()
        .id;
    Estate {
        running: ids[0],
        paused: ids[1],
        hibernated: ids[2],
        key,
        template,
    }
}

/// The whole owner deletion flow, on whichever backend `s` runs.
async fn deleting_a_team_destroys_its_capsules_and_purges_its_data(s: &TestServer) {
    let store = s.store();
    online_host(&store).await;
    let owner = s.user("owner@x.io").await;
    let bystander = s.user("bystander@x.io").await;
    let estate = furnish(s, &owner).await;
    let kept = s
        .ctx
        .lifecycle
        .create(bystander.team, &actor(&bystander), CreateSandbox::default())
        .await
        .unwrap()
        .id;
    s.ctx.lifecycle.wait_idle().await;
    let slug = store.get_team(owner.team).await.unwrap().slug;

    let resp = s
        .as_user(&owner, Method::DELETE, &format!("/v1/teams/{}", owner.team))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    s.ctx.lifecycle.wait_idle().await;

    // Every capsule was destroyed on its host, whatever its status, and the rows end stopped.
    for id in [estate.running, estate.paused, estate.hibernated] {
        assert_eq!(s.agents.status_on_host(id), None, "{id} still on the host");
        assert_eq!(
            store.get_sandbox(id).await.unwrap().status,
            SandboxStatus::Stopped
        );
        assert!(
            s.agents.calls.lock().unwrap().contains(&(Op::Destroy, id)),
            "{id} destroyed through HostAgents"
        );
    }
    assert_eq!(s.agents.count(Op::Destroy), 3);
    // Another team's capsule is untouched.
    assert_eq!(
        store.get_sandbox(kept).await.unwrap().status,
        SandboxStatus::Running
    );
    assert!(s.agents.status_on_host(kept).is_some());

    // Keys, channels, metrics and templates are gone; the key stops working at once.
    assert!(store.list_api_keys(owner.team).await.unwrap().is_empty());
    assert!(
        store
            .get_api_key_by_hash(&estate.key.hash())
            .await
            .unwrap()
            .is_none()
    );
    let err = s
        .ctx
        .auth
        .api_key(estate.key.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.status.as_u16(), 401);
    assert!(store.list_channels(owner.team).await.unwrap().is_empty());
    assert!(
        store
            .list_metric_points(estate.running, MetricTier::TenMinutes)
            .await
            .unwrap()
            .is_empty()
    );
    let day = chrono::Duration::days(1);
    assert!(
        store
            .list_metrics_snapshots(owner.team, Utc::now() - day, Utc::now() + day)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_team_owned_templates(owner.team)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_template(estate.template).await.is_err());

    // The team is soft-deleted: row and slug kept (reserved), members can no longer use it.
    let team = store.get_team(owner.team).await.unwrap();
    assert!(team.deleted_at.is_some());
    assert_eq!(
        store.get_team_by_slug(&slug).await.unwrap().id,
        owner.team,
        "slug stays reserved"
    );
    let got = send(s.as_user(&owner, Method::GET, &format!("/v1/teams/{}", owner.team))).await;
    assert_error(&got, 403, "forbidden");
    let other_token = s.token_for(owner.id, owner.team, Role::Owner, &owner.email, false);
    let got = send(s.req(Method::GET, "/v1/teams").bearer_auth(other_token)).await;
    assert_error(&got, 403, "forbidden");

    // Recorded for platform admins.
    let entry = has_entry(&store, PLATFORM_TEAM_ID, "team", "delete")
        .await
        .expect("audit");
    assert_eq!(
        entry.entry.resource_id.as_deref(),
        Some(owner.team.to_string().as_str())
    );
    assert_eq!(entry.entry.status.as_str(), "warning");
    assert_eq!(entry.entry.scope, AuditScope::Admin);
    assert_eq!(
        entry.entry.actor.id.as_deref(),
        Some(owner.id.to_string().as_str())
    );
}

#[tokio::test]
async fn deleting_a_team_destroys_its_capsules_and_purges_its_data_on_sqlite() {
    let s = TestServer::start().await;
    deleting_a_team_destroys_its_capsules_and_purges_its_data(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_team_destroys_its_capsules_and_purges_its_data_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    deleting_a_team_destroys_its_capsules_and_purges_its_data(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_deleted_team_cannot_be_deleted_again_and_the_platform_team_never() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let ctx = &s.ctx;
    let done = delete_team_core(ctx, owner.team, &actor(&owner))
        .await
        .unwrap();
    assert!(done.soft_deleted);
    assert!(matches!(
        delete_team_core(ctx, owner.team, &actor(&owner)).await,
        Err(DeleteTeamError::NotFound)
    ));
    assert!(matches!(
        delete_team_core(ctx, TeamId::new(), &actor(&owner)).await,
        Err(DeleteTeamError::NotFound)
    ));
    assert!(matches!(
        delete_team_core(ctx, PLATFORM_TEAM_ID, &actor(&owner)).await,
        Err(DeleteTeamError::PlatformTeam)
    ));
    assert!(
        s.store()
            .get_team(PLATFORM_TEAM_ID)
            .await
            .unwrap()
            .deleted_at
            .is_none()
    );
    s.stop().await;
}

#[tokio::test]
async fn a_host_failing_to_destroy_does_not_block_team_deletion() {
    // Marking the capsule `stopping` is what the deletion waits for; the agent call
    // runs in the background (retried), and the host monitor finishes what it misses.
    let s = TestServer::start().await;
    online_host(&s.store()).await;
    let owner = s.user("owner@x.io").await;
    let sb = s
        .ctx
        .lifecycle
        .create(owner.team, &actor(&owner), CreateSandbox::default())
        .await
        .unwrap();
    s.ctx.lifecycle.wait_idle().await;
    s.agents
        .fail_next(Op::Destroy, HostCallError::Unavailable("host down".into()));
    s.agents
        .fail_next(Op::Destroy, HostCallError::Unavailable("host down".into()));
    delete_team_core(&s.ctx, owner.team, &actor(&owner))
        .await
        .expect("marking succeeded");
    s.ctx.lifecycle.wait_idle().await;
    let status = s.store().get_sandbox(sb.id).await.unwrap().status;
    assert!(
        matches!(status, SandboxStatus::Stopped | SandboxStatus::Stopping),
        "{status}"
    );
    assert!(
        s.store()
            .get_team(owner.team)
            .await
            .unwrap()
            .deleted_at
            .is_some()
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------
// template files on hosts
// ---------------------------------------------------------------------------

/// FakeAgents, also recording which template files were removed from which host.
#[derive(Default)]
struct RecordingAgents {
    inner: FakeAgents,
    removed: Mutex<Vec<(HostId, TeamId, TemplateId)>>,
}

#[async_trait::async_trait]
impl HostAgents for RecordingAgents {
    async fn create_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError> {
        self.inner.create_sandbox(host, spec).await
    }
    async fn pause_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.inner.pause_sandbox(host, id).await
    }
    async fn resume_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError> {
        self.inner.resume_sandbox(host, spec).await
    }
    async fn destroy_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.inner.destroy_sandbox(host, id).await
    }
    async fn ping_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.inner.ping_sandbox(host, id).await
    }
    async fn create_snapshot(
        &self,
        host: HostId,
        id: SandboxId,
        team: TeamId,
        t: TemplateId,
    ) -> Result<u64, HostCallError> {
        self.inner.create_snapshot(host, id, team, t).await
    }
    async fn delete_snapshot(
        &self,
        host: HostId,
        team: TeamId,
        t: TemplateId,
    ) -> Result<(), HostCallError> {
        self.removed.lock().unwrap().push((host, team, t));
        Err(HostCallError::Internal("disk busy".into())) // best effort: must not stop the deletion
    }
    async fn list_sandboxes(&self, host: HostId) -> Result<AgentInventory, HostCallError> {
        self.inner.list_sandboxes(host).await
    }
}

#[tokio::test]
async fn team_templates_are_removed_from_every_online_host() {
    let db = TestStores::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let wrenn_dir = dir.path().to_string_lossy().into_owned();
    let config = Config::from_lookup(|k| (k == "WRENN_DIR").then(|| wrenn_dir.clone())).unwrap();
    let agents = Arc::new(RecordingAgents::default());
    let server = wrenn_cpserver::Builder::new(config)
        .with_store(db.store())
        .with_host_agents(agents.clone())
        .build()
        .await
        .unwrap();
    let ctx = server.context().clone();
    let store = db.store();
    let (a, b) = (online_host(&store).await, online_host(&store).await);
    let down = online_host(&store).await;
    assert!(
        store
            .set_host_status_if(down, HostStatus::Online, HostStatus::Unreachable)
            .await
            .unwrap()
    );

    let owner = wrenn_core::id::UserId::new();
    store
        .create_user(wrenn_core::repo::NewUser {
            id: owner,
            email: "owner@x.io".into(),
            password_hash: None,
            name: "Owner".into(),
            status: model::UserStatus::Active,
            is_admin: false,
        })
        .await
        .unwrap();
    let team = TeamId::new();
    store
        .create_team(
            wrenn_core::repo::NewTeam {
                id: team,
                name: "T".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            owner,
            true,
        )
        .await
        .unwrap();
    let mut templates = Vec::new();
    for name in ["snap-one", "snap-two"] {
        let t = store
            .create_template(NewTemplate {
                id: TemplateId::new(),
                team_id: team,
                name: name.into(),
                kind: TemplateKind::Snapshot,
                vcpus: 1,
                memory_mb: 512,
                size_bytes: 1,
                default_user: "root".into(),
                default_env: Default::default(),
                metadata: Default::default(),
            })
            .await
            .unwrap();
        templates.push(t.id);
    }

    let done = delete_team_core(&ctx, team, &Actor::system())
        .await
        .unwrap();
    assert_eq!(done.templates_deleted, 2);
    let mut removed = agents.removed.lock().unwrap().clone();
    removed.sort();
    let mut want: Vec<_> = [a, b]
        .iter()
        .flat_map(|h| templates.iter().map(move |t| (*h, team, *t)))
        .collect();
    want.sort();
    assert_eq!(
        removed, want,
        "every template on every online host, none on the unreachable one"
    );
    assert!(
        store
            .list_team_owned_templates(team)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_team(team).await.unwrap().deleted_at.is_some());
    // The built-in template is not touched.
    assert!(
        store
            .get_template(wrenn_core::id::BUILTIN_TEMPLATE_ID)
            .await
            .is_ok()
    );
}

// ---------------------------------------------------------------------------
// Postgres: the member flows
// ---------------------------------------------------------------------------

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

#[tokio::test]
async fn the_tenancy_routes_are_documented() {
    let s = TestServer::start().await;
    let (status, doc) = send(s.req(Method::GET, "/openapi.json")).await;
    assert_eq!(status, 200);
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/v1/teams", &["get", "post"][..]),
        ("/v1/teams/{id}", &["get", "patch", "delete"]),
        ("/v1/teams/{id}/members", &["get", "post"]),
        ("/v1/teams/{id}/members/{uid}", &["patch", "delete"]),
        ("/v1/teams/{id}/leave", &["post"]),
        ("/v1/api-keys", &["get", "post"]),
        ("/v1/api-keys/{id}", &["delete"]),
        ("/v1/audit-logs", &["get"]),
        ("/v1/me", &["delete"]),
        ("/v1/admin/users", &["get"]),
        ("/v1/admin/users/{id}/active", &["put"]),
        ("/v1/admin/teams", &["get"]),
        ("/v1/admin/teams/{id}", &["delete"]),
        ("/v1/admin/teams/{id}/byoc", &["put"]),
        ("/v1/admin/templates", &["get"]),
        ("/v1/admin/audit-logs", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} is documented");
        }
    }
    let team_name = &doc["components"]["schemas"]["TeamName"];
    assert!(team_name["properties"]["name"].is_object(), "{team_name}");
    assert!(
        team_name["properties"].get("slug").is_none(),
        "the slug is not an input: {team_name}"
    );
    let params = doc["paths"]["/v1/audit-logs"]["get"]["parameters"].to_string();
    assert!(
        params.contains("before_id") && params.contains("resource_type"),
        "{params}"
    );
    s.stop().await;
}
