//! `POST /v1/hosts`: who may create regular and BYOC hosts, and bad bodies.

use crate::common;

use super::{admin, audit, enable_byoc, host_count};
use common::{TestServer, assert_error, member_of, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::audit::AuditScope;
use wrenn_core::auth::Role;
use wrenn_core::id::TeamId;

#[tokio::test]
async fn creating_a_host_needs_a_user_token() {
    let s = TestServer::start().await;
    let body = json!({ "type": "regular" });
    let got = send(s.req(Method::POST, "/v1/hosts").json(&body)).await;
    assert_error(&got, 401, "unauthorized");
    let got = send(
        s.req(Method::POST, "/v1/hosts")
            .bearer_auth("nope")
            .json(&body),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    assert_eq!(host_count(&s).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn bad_create_bodies_are_400_and_create_nothing() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    enable_byoc(&s, root.team).await;
    for bad in [
        json!({}),
        json!({ "type": "gpu" }),
        json!({ "type": 1 }),
        json!({ "type": "byoc" }),
        json!({ "type": "byoc", "team_id": "team-nope" }),
        json!({ "type": "byoc", "team_id": "usr-0000000000000000000000000" }),
        json!({ "type": "regular", "team_id": root.team.to_string() }),
        json!({ "type": "regular", "provider": "x".repeat(129) }),
        json!({ "type": "regular", "availability_zone": "a\u{0}b" }),
    ] {
        let got = send(s.as_user(&root, Method::POST, "/v1/hosts").json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(
        s.as_user(&root, Method::POST, "/v1/hosts")
            .body("{not json"),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = send(
        s.as_user(&root, Method::POST, "/v1/hosts")
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(host_count(&s).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn only_a_platform_admin_creates_regular_hosts() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let got = send(
        s.as_user(&ada, Method::POST, "/v1/hosts")
            .json(&json!({ "type": "regular" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    // The role in the token is only a hint: a forged is_admin claim does not help.
    let forged = s.token_for(ada.id, ada.team, Role::Owner, &ada.email, true);
    let got = send(
        s.req(Method::POST, "/v1/hosts")
            .bearer_auth(&forged)
            .json(&json!({ "type": "regular" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(host_count(&s).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn byoc_hosts_need_a_live_byoc_team() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let root = admin(&s).await;
    // Not BYOC-enabled: refused even for the owner and for an admin.
    for who in [&ada, &root] {
        let got = send(
            s.as_user(who, Method::POST, "/v1/hosts")
                .json(&json!({ "type": "byoc", "team_id": ada.team.to_string() })),
        )
        .await;
        assert_error(&got, 403, "forbidden");
    }
    // Unknown team: 404.
    let got = send(
        s.as_user(&root, Method::POST, "/v1/hosts")
            .json(&json!({ "type": "byoc", "team_id": TeamId::new().to_string() })),
    )
    .await;
    assert_error(&got, 404, "not_found");
    // Deleted team: 404.
    enable_byoc(&s, ada.team).await;
    let bob = s.user("bob@x.io").await;
    enable_byoc(&s, bob.team).await;
    s.store().soft_delete_team(bob.team).await.unwrap();
    let got = send(
        s.as_user(&root, Method::POST, "/v1/hosts")
            .json(&json!({ "type": "byoc", "team_id": bob.team.to_string() })),
    )
    .await;
    assert_error(&got, 404, "not_found");
    assert_eq!(host_count(&s).await, 0);
    // Enabled: the owner creates one, in the team.
    let got = send(
        s.as_user(&ada, Method::POST, "/v1/hosts")
            .json(&json!({ "type": "byoc", "team_id": ada.team.to_string() })),
    )
    .await;
    assert_eq!(got.0, 201, "body: {}", got.1);
    assert_eq!(got.1["host"]["type"], "byoc");
    assert_eq!(got.1["host"]["team_id"], ada.team.to_string());
    // The audit entry belongs to the BYOC team, admin scope.
    let created = audit(&s, ada.team, "create").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].entry.scope, AuditScope::Admin);
    s.stop().await;
}

#[tokio::test]
async fn a_team_admin_may_create_a_byoc_host_but_a_member_may_not() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    enable_byoc(&s, owner.team).await;
    let adm = member_of(&s, owner.team, "adm@x.io", Role::Admin).await;
    let mem = member_of(&s, owner.team, "mem@x.io", Role::Member).await;
    let body = json!({ "type": "byoc", "team_id": owner.team.to_string() });
    let got = send(s.as_user(&mem, Method::POST, "/v1/hosts").json(&body)).await;
    assert_error(&got, 403, "forbidden");
    // A member holding a token that claims admin is still a member.
    let forged = s.token_for(mem.id, owner.team, Role::Admin, &mem.email, false);
    let got = send(
        s.req(Method::POST, "/v1/hosts")
            .bearer_auth(&forged)
            .json(&body),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(host_count(&s).await, 0);
    let got = send(s.as_user(&adm, Method::POST, "/v1/hosts").json(&body)).await;
    assert_eq!(got.0, 201, "body: {}", got.1);
    assert_eq!(host_count(&s).await, 1);
    s.stop().await;
}

#[tokio::test]
async fn an_outsider_cannot_create_a_host_for_another_team() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    enable_byoc(&s, ada.team).await;
    let eve = s.user("eve@x.io").await;
    let got = send(
        s.as_user(&eve, Method::POST, "/v1/hosts")
            .json(&json!({ "type": "byoc", "team_id": ada.team.to_string() })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(host_count(&s).await, 0);
    s.stop().await;
}
