//! The hosts API: onboarding (create → register → heartbeat → refresh), listing and
//! visibility, BYOC rules, registration tokens, tags and deletion.

mod creating;
mod deletion;
mod heartbeats;
mod onboarding;
mod openapi;
mod reading;
mod registration;
mod tags;
mod token_refresh;

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::{TestServer, TestUser, send};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::audit::{AuditQuery, AuditScope};
use wrenn_core::events::{Event, EventId, PLATFORM_STREAM, PlatformEventKind};
use wrenn_core::id::{HostId, SandboxId, TeamId};
use wrenn_core::lifecycle::SandboxStatus;

/// Credentials an agent receives at registration.
#[derive(Debug, Clone)]
struct Creds {
    host: HostId,
    jwt: String,
    refresh: String,
}

impl Creds {
    fn from(v: &Value) -> Self {
        Self {
            host: v["host"]["id"]
                .as_str()
                .expect("host id")
                .parse()
                .expect("host id"),
            jwt: v["token"].as_str().expect("token").to_owned(),
            refresh: v["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }
}

/// Checks the certificate of a registration or refresh answer: signed by the
/// server's host CA (whose certificate is in the answer), CN = the host id, the IP
/// of its address as SAN, for server authentication, valid 7 days, and recorded on
/// the host by fingerprint and expiry. Returns the fingerprint.
async fn issued_cert(s: &TestServer, answer: &Value, host: HostId, ip: [u8; 4]) -> String {
    use sha2::Digest;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    let ca_pem = answer["ca_cert_pem"].as_str().expect("ca_cert_pem");
    assert_eq!(ca_pem, s.ca.cert_pem());
    let (_, ca_block) = parse_x509_pem(ca_pem.as_bytes()).expect("CA PEM");
    let ca = ca_block.parse_x509().expect("CA certificate");
    let cert_pem = answer["cert_pem"].as_str().expect("cert_pem");
    let (_, block) = parse_x509_pem(cert_pem.as_bytes()).expect("certificate PEM");
    let cert = block.parse_x509().expect("certificate");
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the host CA");
    let cn = cert.subject().iter_common_name().next().expect("CN");
    assert_eq!(cn.as_str().unwrap(), host.to_string());
    let san = cert.subject_alternative_name().unwrap().expect("SAN");
    assert_eq!(san.value.general_names, vec![GeneralName::IPAddress(&ip)]);
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .expect("EKU")
            .value
            .server_auth
    );
    let not_after = cert.validity().not_after.timestamp();
    let week = (Utc::now() + chrono::Duration::days(7)).timestamp();
    assert!(
        (week - 60..=week).contains(&not_after),
        "{not_after} vs {week}"
    );
    let key_pem = answer["key_pem"].as_str().expect("key_pem");
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{key_pem}"
    );

    let fingerprint = hex::encode(sha2::Sha256::digest(&block.contents));
    let row = s.store().get_host(host).await.unwrap();
    assert_eq!(row.cert_fingerprint, fingerprint);
    assert_eq!(row.cert_expires_at.map(|t| t.timestamp()), Some(not_after));
    fingerprint
}

async fn admin(s: &TestServer) -> TestUser {
    s.user_with("root@x.io", true).await
}

/// `POST /v1/hosts` that must succeed; returns the host id and registration token.
async fn create_host(s: &TestServer, who: &TestUser, body: Value) -> (HostId, String) {
    let got = send(s.as_user(who, Method::POST, "/v1/hosts").json(&body)).await;
    assert_eq!(got.0, 201, "body: {}", got.1);
    let id = got.1["host"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("host id");
    let token = got.1["registration_token"]
        .as_str()
        .expect("token")
        .to_owned();
    (id, token)
}

async fn create_regular(s: &TestServer, root: &TestUser) -> (HostId, String) {
    create_host(
        s,
        root,
        json!({ "type": "regular", "provider": "aws", "availability_zone": "eu-1a" }),
    )
    .await
}

fn register_body(token: &str, address: &str) -> Value {
    json!({
        "token": token,
        "address": address,
        "arch": "x86_64",
        "cpu_cores": 16,
        "memory_mb": 65536,
        "disk_gb": 500,
    })
}

async fn register(s: &TestServer, token: &str, address: &str) -> (u16, Value) {
    send(
        s.req(Method::POST, "/v1/hosts/register")
            .json(&register_body(token, address)),
    )
    .await
}

async fn register_ok(s: &TestServer, token: &str, address: &str) -> Creds {
    let got = register(s, token, address).await;
    assert_eq!(got.0, 201, "body: {}", got.1);
    Creds::from(&got.1)
}

async fn refresh(s: &TestServer, token: &str) -> (u16, Value) {
    send(
        s.req(Method::POST, "/v1/hosts/auth/refresh")
            .json(&json!({ "refresh_token": token })),
    )
    .await
}

fn heartbeat(s: &TestServer, host: HostId, jwt: &str) -> reqwest::RequestBuilder {
    s.req(Method::POST, &format!("/v1/hosts/{host}/heartbeat"))
        .header("x-host-token", jwt)
}

/// An admin-created regular host, registered; returns its credentials.
async fn online_regular(s: &TestServer, root: &TestUser, address: &str) -> Creds {
    let (_, token) = create_regular(s, root).await;
    register_ok(s, &token, address).await
}

async fn enable_byoc(s: &TestServer, team: TeamId) {
    s.store().set_team_byoc(team, true).await.expect("byoc");
}

async fn audit(s: &TestServer, team: TeamId, action: &str) -> Vec<wrenn_core::audit::AuditRecord> {
    s.store()
        .list_audit_logs(&AuditQuery {
            team_id: team,
            scopes: vec![AuditScope::Team, AuditScope::Admin],
            resource_type: Some("host".into()),
            action: Some(action.into()),
            before: None,
            limit: 50,
        })
        .await
        .expect("audit")
}

async fn host_count(s: &TestServer) -> usize {
    s.store().list_hosts(None).await.expect("hosts").len()
}

async fn platform_events(s: &TestServer) -> Vec<(PlatformEventKind, String)> {
    s.ctx
        .events
        .read_after(
            PLATFORM_STREAM,
            Some(&EventId("0-0".into())),
            1000,
            Duration::ZERO,
        )
        .await
        .expect("events")
        .into_iter()
        .filter_map(|d| match d.event {
            Event::Platform(e) => Some((e.event, e.resource.id)),
            _ => None,
        })
        .collect()
}

async fn wait_status(s: &TestServer, id: SandboxId, want: SandboxStatus) {
    for _ in 0..200 {
        if s.store().get_sandbox(id).await.expect("sandbox").status == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sandbox {id} never became {want}");
}

/// Starts a capsule through the API (the scheduler puts it on an online host).
async fn start_capsule(s: &TestServer, who: &TestUser) -> SandboxId {
    let got = send(
        s.as_user(who, Method::POST, "/v1/capsules")
            .json(&json!({})),
    )
    .await;
    assert!(got.0 == 201 || got.0 == 202, "body: {}", got.1);
    let id: SandboxId = got.1["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("capsule id");
    wait_status(s, id, SandboxStatus::Running).await;
    id
}
