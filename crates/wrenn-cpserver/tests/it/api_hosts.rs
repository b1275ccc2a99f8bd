//! The hosts API: onboarding (create → register → heartbeat → refresh), listing and
//! visibility, BYOC rules, registration tokens, tags and deletion.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::{Options, TestServer, TestUser, assert_error, member_of, send};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::audit::{AuditQuery, AuditScope, AuditStatus};
use wrenn_core::auth::{OpaqueToken, Role};
use wrenn_core::events::{Event, EventId, PLATFORM_STREAM, PlatformEventKind};
use wrenn_core::id::{
    HostId, HostRefreshTokenId, HostTokenId, PLATFORM_TEAM_ID, SandboxId, TeamId,
};
use wrenn_core::lifecycle::{HostStatus, SandboxStatus};
use wrenn_core::model::{HostRefreshToken, HostToken};
use wrenn_core::repo::RepoError;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// The full onboarding flow (SQLite and Postgres)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// POST /v1/hosts
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// GET /v1/hosts, GET /v1/hosts/{id}
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admins_see_every_host_and_members_see_their_teams_byoc_hosts() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let ada = s.user("ada@x.io").await;
    enable_byoc(&s, ada.team).await;
    let mem = member_of(&s, ada.team, "mem@x.io", Role::Member).await;
    let eve = s.user("eve@x.io").await;
    let (regular, _) = create_regular(&s, &root).await;
    let (byoc, _) = create_host(
        &s,
        &ada,
        json!({ "type": "byoc", "team_id": ada.team.to_string() }),
    )
    .await;

    let got = send(s.as_user(&root, Method::GET, "/v1/hosts")).await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    let all = got.1.as_array().unwrap();
    assert_eq!(all.len(), 2);
    let b = all.iter().find(|h| h["id"] == byoc.to_string()).unwrap();
    assert_eq!(b["team_name"], "ada@x.io's Team");
    let r = all.iter().find(|h| h["id"] == regular.to_string()).unwrap();
    assert!(r.get("team_name").is_none());

    for who in [&ada, &mem] {
        let got = send(s.as_user(who, Method::GET, "/v1/hosts")).await;
        assert_eq!(got.0, 200, "body: {}", got.1);
        let ids: Vec<&str> = got
            .1
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [byoc.to_string()]);
        let got = send(s.as_user(who, Method::GET, &format!("/v1/hosts/{byoc}"))).await;
        assert_eq!(got.0, 200, "body: {}", got.1);
        assert_eq!(got.1["status"], "pending");
        // The platform host is invisible to them.
        let got = send(s.as_user(who, Method::GET, &format!("/v1/hosts/{regular}"))).await;
        assert_error(&got, 404, "not_found");
    }
    let got = send(s.as_user(&eve, Method::GET, "/v1/hosts")).await;
    assert_eq!(got, (200, json!([])));
    let got = send(s.as_user(&eve, Method::GET, &format!("/v1/hosts/{byoc}"))).await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(&root, Method::GET, &format!("/v1/hosts/{byoc}"))).await;
    assert_eq!(got.1["team_name"], "ada@x.io's Team");
    s.stop().await;
}

#[tokio::test]
async fn reading_hosts_needs_credentials_and_well_formed_ids() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, _) = create_regular(&s, &root).await;
    for path in ["/v1/hosts".to_owned(), format!("/v1/hosts/{id}")] {
        assert_error(&send(s.req(Method::GET, &path)).await, 401, "unauthorized");
        assert_error(
            &send(s.req(Method::GET, &path).bearer_auth("x.y.z")).await,
            401,
            "unauthorized",
        );
    }
    for bad in ["/v1/hosts/nope", "/v1/hosts/cl-0000000000000000000000000"] {
        let got = send(s.as_user(&root, Method::GET, bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(s.as_user(&root, Method::GET, &format!("/v1/hosts/{}", HostId::new()))).await;
    assert_error(&got, 404, "not_found");
    s.stop().await;
}

// ---------------------------------------------------------------------------
// POST /v1/hosts/register
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// POST /v1/hosts/{id}/token
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// POST /v1/hosts/auth/refresh
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_refresh_token_failure_is_401_and_a_missing_field_is_400() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let creds = online_regular(&s, &root, "10.0.0.1:50051").await;
    let now = Utc::now();
    // Expired.
    let expired = OpaqueToken::generate();
    s.store()
        .create_refresh_token(HostRefreshToken {
            id: HostRefreshTokenId::new(),
            host_id: creds.host,
            token_hash: expired.hash(),
            expires_at: now - chrono::Duration::seconds(1),
            created_at: now - chrono::Duration::days(61),
            revoked_at: None,
        })
        .await
        .unwrap();
    // Revoked.
    let revoked = OpaqueToken::generate();
    let rec = s
        .store()
        .create_refresh_token(HostRefreshToken {
            id: HostRefreshTokenId::new(),
            host_id: creds.host,
            token_hash: revoked.hash(),
            expires_at: now + chrono::Duration::days(1),
            created_at: now,
            revoked_at: None,
        })
        .await
        .unwrap();
    assert!(s.store().revoke_refresh_token(rec.id).await.unwrap());
    for bad in [
        OpaqueToken::generate().expose_secret().to_owned(),
        expired.expose_secret().to_owned(),
        revoked.expose_secret().to_owned(),
        "nope".to_owned(),
        String::new(),
        creds.jwt.clone(),
    ] {
        assert_error(&refresh(&s, &bad).await, 401, "unauthorized");
    }
    for bad in [
        json!({}),
        json!({ "refresh_token": 7 }),
        json!({ "token": creds.refresh }),
    ] {
        let got = send(s.req(Method::POST, "/v1/hosts/auth/refresh").json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    // None of that spent the real token.
    let got = refresh(&s, &creds.refresh).await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    s.stop().await;
}

#[tokio::test]
async fn of_concurrent_refreshes_with_one_token_exactly_one_wins() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let creds = online_regular(&s, &root, "10.0.0.1:50051").await;
    let results = futures::future::join_all((0..4).map(|_| refresh(&s, &creds.refresh))).await;
    let won: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    assert_eq!(won.len(), 1, "results: {results:?}");
    for r in results.iter().filter(|r| r.0 != 200) {
        assert_error(r, 401, "unauthorized");
    }
    assert_error(&refresh(&s, &creds.refresh).await, 401, "unauthorized");
    let got = refresh(&s, won[0].1["refresh_token"].as_str().unwrap()).await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    s.stop().await;
}

// ---------------------------------------------------------------------------
// POST /v1/hosts/{id}/heartbeat
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tags_are_added_listed_and_removed() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, _) = create_regular(&s, &root).await;
    let path = format!("/v1/hosts/{id}/tags");
    for tag in ["gpu", "zone:eu-1.a_b", "gpu"] {
        let got = send(
            s.as_user(&root, Method::POST, &path)
                .json(&json!({ "tag": tag })),
        )
        .await;
        assert_eq!(got.0, 204, "body: {}", got.1);
    }
    let got = send(s.as_user(&root, Method::GET, &path)).await;
    assert_eq!(got, (200, json!(["gpu", "zone:eu-1.a_b"])));
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}/gpu"))).await;
    assert_eq!(got.0, 204);
    // Removing an absent tag is also 204.
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}/gpu"))).await;
    assert_eq!(got.0, 204);
    let got = send(s.as_user(&root, Method::GET, &path)).await;
    assert_eq!(got, (200, json!(["zone:eu-1.a_b"])));
    assert_eq!(audit(&s, PLATFORM_TEAM_ID, "tag_add").await.len(), 3);
    assert_eq!(audit(&s, PLATFORM_TEAM_ID, "tag_remove").await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn bad_tags_are_400_and_change_nothing() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, _) = create_regular(&s, &root).await;
    let path = format!("/v1/hosts/{id}/tags");
    for bad in [
        json!({ "tag": "" }),
        json!({ "tag": "a b" }),
        json!({ "tag": "a/b" }),
        json!({ "tag": "x".repeat(65) }),
        json!({ "tag": 3 }),
        json!({}),
    ] {
        let got = send(s.as_user(&root, Method::POST, &path).json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}/a%20b"))).await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(&root, Method::GET, "/v1/hosts/nope/tags")).await;
    assert_error(&got, 400, "invalid_request");
    assert!(s.store().list_host_tags(id).await.unwrap().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn tags_follow_the_host_access_rules() {
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
    let path = format!("/v1/hosts/{id}/tags");
    let got = send(
        s.as_user(&owner, Method::POST, &path)
            .json(&json!({ "tag": "mine" })),
    )
    .await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    // No credentials.
    assert_error(&send(s.req(Method::GET, &path)).await, 401, "unauthorized");
    assert_error(
        &send(s.req(Method::POST, &path).json(&json!({ "tag": "x" }))).await,
        401,
        "unauthorized",
    );
    assert_error(
        &send(s.req(Method::DELETE, &format!("{path}/mine"))).await,
        401,
        "unauthorized",
    );
    // A member reads but does not change.
    let got = send(s.as_user(&mem, Method::GET, &path)).await;
    assert_eq!(got, (200, json!(["mine"])));
    let got = send(
        s.as_user(&mem, Method::POST, &path)
            .json(&json!({ "tag": "x" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    let got = send(s.as_user(&mem, Method::DELETE, &format!("{path}/mine"))).await;
    assert_error(&got, 403, "forbidden");
    // An outsider sees nothing.
    for req in [
        s.as_user(&eve, Method::GET, &path),
        s.as_user(&eve, Method::POST, &path)
            .json(&json!({ "tag": "x" })),
        s.as_user(&eve, Method::DELETE, &format!("{path}/mine")),
    ] {
        assert_error(&send(req).await, 404, "not_found");
    }
    assert_eq!(s.store().list_host_tags(id).await.unwrap(), ["mine"]);
    s.stop().await;
}

// ---------------------------------------------------------------------------
// DELETE /v1/hosts/{id}, GET /v1/hosts/{id}/delete-preview
// ---------------------------------------------------------------------------

async fn delete_with_capsules_flow(s: &TestServer) {
    let root = admin(s).await;
    let c = online_regular(s, &root, "10.0.0.1:50051").await;
    let a = start_capsule(s, &root).await;
    let b = start_capsule(s, &root).await;
    for sb in [a, b] {
        assert_eq!(s.store().get_sandbox(sb).await.unwrap().host_id, c.host);
    }
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();

    // The preview lists them.
    let got = send(s.as_user(
        &root,
        Method::GET,
        &format!("/v1/hosts/{}/delete-preview", c.host),
    ))
    .await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    assert_eq!(got.1["host"]["id"], c.host.to_string());
    let mut ids: Vec<String> = got.1["sandbox_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, want);

    // Without force: 409 with the ids, nothing changes.
    let path = format!("/v1/hosts/{}", c.host);
    let got = send(s.as_user(&root, Method::DELETE, &path)).await;
    assert_error(&got, 409, "host_has_sandboxes");
    let mut ids: Vec<String> = got.1["error"]["sandbox_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, want);
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}?force=false"))).await;
    assert_error(&got, 409, "host_has_sandboxes");
    assert!(s.store().get_host(c.host).await.is_ok());
    for sb in [a, b] {
        assert_eq!(
            s.store().get_sandbox(sb).await.unwrap().status,
            SandboxStatus::Running
        );
    }

    // With force: 204, the capsules end stopped, the host and its credentials are gone.
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}?force=true"))).await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    for sb in [a, b] {
        wait_status(s, sb, SandboxStatus::Stopped).await;
    }
    assert!(matches!(
        s.store().get_host(c.host).await,
        Err(RepoError::NotFound { .. })
    ));
    assert_error(&refresh(s, &c.refresh).await, 401, "unauthorized");
    assert_error(&send(heartbeat(s, c.host, &c.jwt)).await, 404, "not_found");
    assert_error(
        &send(s.as_user(&root, Method::GET, &path)).await,
        404,
        "not_found",
    );
    let deleted = audit(s, PLATFORM_TEAM_ID, "delete").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].entry.status, AuditStatus::Warning);
    assert_eq!(deleted[0].entry.scope, AuditScope::Admin);
}

#[tokio::test]
async fn deleting_a_host_with_capsules_needs_force() {
    let s = TestServer::start().await;
    delete_with_capsules_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn deleting_a_host_with_capsules_needs_force_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        eprintln!("skipped: WRENN_TEST_POSTGRES_URL not set");
        return;
    };
    delete_with_capsules_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn deleting_an_idle_host_is_204() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (pending, _) = create_regular(&s, &root).await;
    let got = send(s.as_user(&root, Method::DELETE, &format!("/v1/hosts/{pending}"))).await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    assert_eq!(host_count(&s).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn deleting_hosts_follows_the_access_rules() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let owner = s.user("owner@x.io").await;
    enable_byoc(&s, owner.team).await;
    let adm = member_of(&s, owner.team, "adm@x.io", Role::Admin).await;
    let mem = member_of(&s, owner.team, "mem@x.io", Role::Member).await;
    let eve = s.user("eve@x.io").await;
    let (regular, _) = create_regular(&s, &root).await;
    let (byoc, _) = create_host(
        &s,
        &owner,
        json!({ "type": "byoc", "team_id": owner.team.to_string() }),
    )
    .await;
    for path in [
        format!("/v1/hosts/{byoc}"),
        format!("/v1/hosts/{byoc}/delete-preview"),
    ] {
        let method = if path.ends_with("preview") {
            Method::GET
        } else {
            Method::DELETE
        };
        assert_error(
            &send(s.req(method.clone(), &path)).await,
            401,
            "unauthorized",
        );
        assert_error(
            &send(s.as_user(&mem, method.clone(), &path)).await,
            403,
            "forbidden",
        );
        assert_error(
            &send(s.as_user(&eve, method.clone(), &path)).await,
            404,
            "not_found",
        );
    }
    // The team's owner cannot touch the platform host.
    let got = send(s.as_user(&owner, Method::DELETE, &format!("/v1/hosts/{regular}"))).await;
    assert_error(&got, 404, "not_found");
    // Bad input.
    let got = send(s.as_user(&root, Method::DELETE, "/v1/hosts/nope")).await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(
        &root,
        Method::DELETE,
        &format!("/v1/hosts/{byoc}?force=maybe"),
    ))
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(&root, Method::GET, "/v1/hosts/nope/delete-preview")).await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(host_count(&s).await, 2);
    // A team admin may delete the team's host.
    let got = send(s.as_user(
        &adm,
        Method::GET,
        &format!("/v1/hosts/{byoc}/delete-preview"),
    ))
    .await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    assert_eq!(got.1["sandbox_ids"], json!([]));
    let got = send(s.as_user(&adm, Method::DELETE, &format!("/v1/hosts/{byoc}"))).await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    let deleted = audit(&s, owner.team, "delete").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(host_count(&s).await, 1);
    s.stop().await;
}

// ---------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_openapi_document_lists_the_host_routes() {
    let s = TestServer::start().await;
    let got = send(s.req(Method::GET, "/openapi.json")).await;
    assert_eq!(got.0, 200);
    let paths = &got.1["paths"];
    for p in [
        "/v1/hosts",
        "/v1/hosts/{id}",
        "/v1/hosts/{id}/delete-preview",
        "/v1/hosts/{id}/token",
        "/v1/hosts/{id}/tags",
        "/v1/hosts/{id}/tags/{tag}",
        "/v1/hosts/register",
        "/v1/hosts/auth/refresh",
        "/v1/hosts/{id}/heartbeat",
    ] {
        assert!(paths.get(p).is_some(), "{p} missing");
    }
    s.stop().await;
}
