//! `POST /v1/hosts/{id}/heartbeat`: the host's own token, bad bodies, deleted and
//! unreachable hosts.

use crate::common;

use super::{
    admin, audit, create_host, enable_byoc, heartbeat, online_regular, platform_events, register_ok,
};
use common::{TestServer, assert_error, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::audit::AuditStatus;
use wrenn_core::events::PlatformEventKind;
use wrenn_core::lifecycle::HostStatus;

#[tokio::test]
async fn a_heartbeat_needs_the_hosts_own_token() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let a = online_regular(&s, &root, "10.0.0.1:50051").await;
    let b = online_regular(&s, &root, "10.0.0.2:50051").await;
    let before = s.store().get_host(a.host).await.unwrap();
    let path = format!("/v1/hosts/{}/heartbeat", a.host);
    assert_error(&send(s.req(Method::POST, &path)).await, 401, "unauthorized");
    assert_error(
        &send(heartbeat(&s, a.host, "garbage")).await,
        401,
        "unauthorized",
    );
    assert_error(
        &send(heartbeat(&s, a.host, &root.token)).await,
        401,
        "unauthorized",
    );
    assert_error(
        &send(s.as_user(&root, Method::POST, &path)).await,
        401,
        "unauthorized",
    );
    // Another host's token: 403 "host ID mismatch".
    let got = send(heartbeat(&s, a.host, &b.jwt)).await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(got.1["error"]["message"], "host ID mismatch");
    let got = send(
        s.req(Method::POST, "/v1/hosts/nope/heartbeat")
            .header("x-host-token", &a.jwt),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(s.store().get_host(a.host).await.unwrap(), before);
    s.stop().await;
}

#[tokio::test]
async fn bad_heartbeat_bodies_are_400_and_change_nothing() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let c = online_regular(&s, &root, "10.0.0.1:50051").await;
    let before = s.store().get_host(c.host).await.unwrap();
    for bad in [
        "{".to_owned(),
        "[]".to_owned(),
        json!({ "address": "nope" }).to_string(),
        json!({ "address": 5 }).to_string(),
        json!({ "cpu_cores": -4 }).to_string(),
        json!({ "arch": "x".repeat(33) }).to_string(),
    ] {
        let got = send(heartbeat(&s, c.host, &c.jwt).body(bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(s.store().get_host(c.host).await.unwrap(), before);
    // A report updates what it names and keeps the rest.
    let got = send(
        heartbeat(&s, c.host, &c.jwt)
            .header("content-type", "application/json")
            .body(json!({ "address": "10.0.0.77:50051", "memory_mb": 1024 }).to_string()),
    )
    .await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    let after = s.store().get_host(c.host).await.unwrap();
    assert_eq!(after.address, "10.0.0.77:50051");
    assert_eq!(
        (after.memory_mb, after.cpu_cores, after.arch.as_str()),
        (1024, 16, "x86_64")
    );
    s.stop().await;
}

#[tokio::test]
async fn a_heartbeat_from_a_deleted_host_is_404() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let c = online_regular(&s, &root, "10.0.0.1:50051").await;
    assert!(s.store().delete_host(c.host).await.unwrap());
    let got = send(heartbeat(&s, c.host, &c.jwt)).await;
    assert_error(&got, 404, "not_found");
    s.stop().await;
}

#[tokio::test]
async fn a_heartbeat_brings_an_unreachable_host_back_up() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    enable_byoc(&s, ada.team).await;
    let (id, token) = create_host(
        &s,
        &ada,
        json!({ "type": "byoc", "team_id": ada.team.to_string() }),
    )
    .await;
    let c = register_ok(&s, &token, "10.0.0.1:50051").await;
    // A plain heartbeat of an online host announces nothing.
    assert_eq!(send(heartbeat(&s, id, &c.jwt)).await.0, 204);
    assert!(audit(&s, ada.team, "marked_up").await.is_empty());
    assert!(
        s.store()
            .set_host_status_if(id, HostStatus::Online, HostStatus::Unreachable)
            .await
            .unwrap()
    );
    assert_eq!(send(heartbeat(&s, id, &c.jwt)).await.0, 204);
    assert_eq!(
        s.store().get_host(id).await.unwrap().status,
        HostStatus::Online
    );
    let up = audit(&s, ada.team, "marked_up").await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].entry.status, AuditStatus::Success);
    assert_eq!(up[0].entry.actor.kind, wrenn_core::audit::ActorKind::System);
    let events = platform_events(&s).await;
    assert_eq!(
        events
            .iter()
            .filter(|(k, r)| *k == PlatformEventKind::HostUp && *r == id.to_string())
            .count(),
        1,
        "events: {events:?}"
    );
    s.stop().await;
}
