//! `POST /v1/hosts/register` and `POST /v1/hosts/{id}/token`: registration tokens work
//! once, for pending hosts, issued by the host's managers.

use crate::common;

use super::{
    admin, audit, create_host, create_regular, enable_byoc, register, register_body, register_ok,
};
use chrono::Utc;
use common::{TestServer, assert_error, member_of, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::auth::{OpaqueToken, Role};
use wrenn_core::id::{HostTokenId, PLATFORM_TEAM_ID};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::HostToken;

#[tokio::test]
async fn a_registration_token_works_once() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, token) = create_regular(&s, &root).await;
    register_ok(&s, &token, "10.0.0.1:50051").await;
    let got = register(&s, &token, "10.6.6.6:50051").await;
    assert_error(&got, 401, "unauthorized");
    assert_eq!(
        got.1["error"]["message"],
        "invalid or expired registration token"
    );
    assert_eq!(
        s.store().get_host(id).await.unwrap().address,
        "10.0.0.1:50051"
    );
    s.stop().await;
}

#[tokio::test]
async fn of_eight_concurrent_registrations_exactly_one_wins() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, token) = create_regular(&s, &root).await;
    let attempts = (0..8).map(|i| {
        let req = s
            .req(Method::POST, "/v1/hosts/register")
            .json(&register_body(&token, &format!("10.0.0.{}:50051", i + 1)));
        async move { send(req).await }
    });
    let results = futures::future::join_all(attempts).await;
    let won: Vec<_> = results.iter().filter(|r| r.0 == 201).collect();
    assert_eq!(won.len(), 1, "results: {results:?}");
    for r in results.iter().filter(|r| r.0 != 201) {
        assert_error(r, 401, "unauthorized");
    }
    let row = s.store().get_host(id).await.unwrap();
    assert_eq!(row.status, HostStatus::Online);
    assert_eq!(won[0].1["host"]["address"], json!(row.address));
    s.stop().await;
}

#[tokio::test]
async fn registration_refuses_unknown_malformed_and_expired_tokens_with_401() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, _) = create_regular(&s, &root).await;
    // An expired token stored for the host.
    let expired = OpaqueToken::generate();
    let now = Utc::now();
    s.store()
        .create_host_token(HostToken {
            id: HostTokenId::new(),
            host_id: id,
            token_hash: expired.hash(),
            created_by: Some(root.id),
            created_at: now - chrono::Duration::hours(2),
            expires_at: now - chrono::Duration::hours(1),
            used_at: None,
        })
        .await
        .unwrap();
    for bad in [
        OpaqueToken::generate().expose_secret().to_owned(),
        expired.expose_secret().to_owned(),
        "nope".to_owned(),
        "A".repeat(64),
        String::new(),
    ] {
        let got = register(&s, &bad, "10.0.0.1:50051").await;
        assert_error(&got, 401, "unauthorized");
    }
    assert_eq!(
        s.store().get_host(id).await.unwrap().status,
        HostStatus::Pending
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_registration_bodies_are_400_and_spend_no_token() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, token) = create_regular(&s, &root).await;
    for bad in [
        json!({}),
        json!({ "token": token }),
        json!({ "address": "10.0.0.1:1" }),
        json!({ "token": token, "address": "" }),
        json!({ "token": token, "address": "10.0.0.1" }),
        json!({ "token": token, "address": "10.0.0.1:0" }),
        json!({ "token": token, "address": "not an address:1" }),
        json!({ "token": token, "address": "10.0.0.1:1", "cpu_cores": -1 }),
        json!({ "token": token, "address": "10.0.0.1:1", "memory_mb": "lots" }),
        json!({ "token": 5, "address": "10.0.0.1:1" }),
    ] {
        let got = send(s.req(Method::POST, "/v1/hosts/register").json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(
        s.req(Method::POST, "/v1/hosts/register")
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        s.store().get_host(id).await.unwrap().status,
        HostStatus::Pending
    );
    // The token was not consumed by any of those.
    register_ok(&s, &token, "10.0.0.1:50051").await;
    s.stop().await;
}

#[tokio::test]
async fn a_new_registration_token_is_only_issued_for_pending_hosts() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, first) = create_regular(&s, &root).await;
    let path = format!("/v1/hosts/{id}/token");
    let got = send(s.as_user(&root, Method::POST, &path)).await;
    assert_eq!(got.0, 201, "body: {}", got.1);
    assert_eq!(got.1["host"]["id"], id.to_string());
    let second = got.1["registration_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(second.len(), 64);
    // The new token registers the host; afterwards no token is issued.
    register_ok(&s, &second, "10.0.0.9:50051").await;
    let got = send(s.as_user(&root, Method::POST, &path)).await;
    assert_error(&got, 409, "invalid_state");
    // And the first token cannot re-register an online host.
    assert_error(
        &register(&s, &first, "10.6.6.6:1").await,
        401,
        "unauthorized",
    );
    assert_eq!(
        s.store().get_host(id).await.unwrap().address,
        "10.0.0.9:50051"
    );
    let created = audit(&s, PLATFORM_TEAM_ID, "regenerate_token").await;
    assert_eq!(created.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn registration_tokens_need_a_manager_of_the_host() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    enable_byoc(&s, owner.team).await;
    let mem = member_of(&s, owner.team, "mem@x.io", Role::Member).await;
    let eve = s.user("eve@x.io").await;
    let (id, _) = create_host(
        &s,
        &owner,
        json!({ "type": "byoc", "team_id": owner.team.to_string() }),
    )
    .await;
    let path = format!("/v1/hosts/{id}/token");
    assert_error(&send(s.req(Method::POST, &path)).await, 401, "unauthorized");
    assert_error(
        &send(s.as_user(&mem, Method::POST, &path)).await,
        403,
        "forbidden",
    );
    assert_error(
        &send(s.as_user(&eve, Method::POST, &path)).await,
        404,
        "not_found",
    );
    let got = send(s.as_user(&owner, Method::POST, "/v1/hosts/nope/token")).await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(&owner, Method::POST, &path)).await;
    assert_eq!(got.0, 201, "body: {}", got.1);
    s.stop().await;
}
