//! The full onboarding flow, create → register → heartbeat → refresh, on SQLite and
//! Postgres.

use crate::common;

use super::{Creds, admin, audit, heartbeat, issued_cert, refresh, register};
use common::{Options, TestServer, assert_error, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::audit::{AuditScope, AuditStatus};
use wrenn_core::id::{HostId, PLATFORM_TEAM_ID};
use wrenn_core::lifecycle::HostStatus;

async fn onboarding_flow(s: &TestServer) {
    let root = admin(s).await;
    // An admin creates a regular host: pending, with a 64-hex registration token.
    let got = send(
        s.as_user(&root, Method::POST, "/v1/hosts")
            .json(&json!({ "type": "regular", "provider": "aws", "availability_zone": "eu-1a" })),
    )
    .await;
    assert_eq!(got.0, 201, "body: {}", got.1);
    let host = &got.1["host"];
    assert_eq!(host["type"], "regular");
    assert_eq!(host["status"], "pending");
    assert_eq!(host["provider"], "aws");
    assert_eq!(host["availability_zone"], "eu-1a");
    assert_eq!(host["created_by"], root.id.to_string());
    assert!(host["id"].as_str().unwrap().starts_with("host-"));
    assert!(
        host.get("address").is_none(),
        "no address before registration: {host}"
    );
    let reg = got.1["registration_token"].as_str().unwrap().to_owned();
    assert_eq!(reg.len(), 64);
    assert!(reg.bytes().all(|b| b.is_ascii_hexdigit()));
    let id: HostId = host["id"].as_str().unwrap().parse().unwrap();
    // Only the hash is stored.
    let stored = s.store().get_host(id).await.unwrap();
    assert_eq!(stored.status, HostStatus::Pending);

    // The agent registers: 201 with a host JWT and a refresh token.
    let got = register(s, &reg, "10.1.2.3:50051").await;
    assert_eq!(got.0, 201, "body: {}", got.1);
    assert_eq!(got.1["host"]["status"], "online");
    assert_eq!(got.1["host"]["address"], "10.1.2.3:50051");
    assert_eq!(got.1["host"]["cpu_cores"], 16);
    let creds = Creds::from(&got.1);
    let first_cert = issued_cert(s, &got.1, id, [10, 1, 2, 3]).await;
    assert_eq!(creds.host, id);
    assert_eq!(creds.refresh.len(), 64);
    let row = s.store().get_host(id).await.unwrap();
    assert_eq!(row.status, HostStatus::Online);
    assert_eq!(row.address, "10.1.2.3:50051");
    assert_eq!(row.arch, "x86_64");
    assert_eq!(
        (row.cpu_cores, row.memory_mb, row.disk_gb),
        (16, 65536, 500)
    );
    assert!(row.last_heartbeat_at.is_some());

    // Heartbeat with the returned JWT (empty body keeps the spec).
    let got = send(heartbeat(s, id, &creds.jwt)).await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    let after = s.store().get_host(id).await.unwrap();
    assert_eq!(after.address, "10.1.2.3:50051");
    assert!(after.last_heartbeat_at >= row.last_heartbeat_at);

    // Refresh rotates: the old refresh token is dead, the new one works.
    let got = refresh(s, &creds.refresh).await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    let rotated = Creds::from(&got.1);
    assert_eq!(rotated.host, id);
    assert_ne!(rotated.refresh, creds.refresh);
    // ... and brings a new certificate for the same host and address.
    let second_cert = issued_cert(s, &got.1, id, [10, 1, 2, 3]).await;
    assert_ne!(first_cert, second_cert);
    assert_error(&refresh(s, &creds.refresh).await, 401, "unauthorized");
    let got = send(heartbeat(s, id, &rotated.jwt)).await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    let got = refresh(s, &rotated.refresh).await;
    assert_eq!(got.0, 200, "body: {}", got.1);

    // A user JWT is no host token; a host JWT is no user token.
    assert_error(
        &send(heartbeat(s, id, &root.token)).await,
        401,
        "unauthorized",
    );
    let got = send(s.req(Method::GET, "/v1/hosts").bearer_auth(&creds.jwt)).await;
    assert_error(&got, 401, "unauthorized");
    let got = send(s.req(Method::GET, "/v1/capsules").bearer_auth(&creds.jwt)).await;
    assert_error(&got, 401, "unauthorized");

    // The admin sees it online.
    let got = send(s.as_user(&root, Method::GET, &format!("/v1/hosts/{id}"))).await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    assert_eq!(got.1["status"], "online");
    assert!(got.1["last_heartbeat_at"].as_str().is_some());

    // Audit: create is a success entry in admin scope of the platform team.
    let created = audit(s, PLATFORM_TEAM_ID, "create").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].entry.scope, AuditScope::Admin);
    assert_eq!(created[0].entry.status, AuditStatus::Success);
    assert_eq!(
        created[0].entry.resource_id.as_deref(),
        Some(id.to_string().as_str())
    );
}

#[tokio::test]
async fn an_admin_onboards_a_regular_host_end_to_end() {
    let s = TestServer::start().await;
    onboarding_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn an_admin_onboards_a_regular_host_end_to_end_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        eprintln!("skipped: WRENN_TEST_POSTGRES_URL not set");
        return;
    };
    onboarding_flow(&s).await;
    s.stop().await;
}
