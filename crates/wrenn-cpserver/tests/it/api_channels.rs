//! Notification channels: the `/v1/channels` API (every bad input, team scoping,
//! audit), configs encrypted at rest, target-address refusal (SSRF), and the
//! dispatcher delivering to a real webhook receiver on loopback — signed, retried,
//! dead-lettered, and delivered again after a restart — on both stores (SQLite;
//! Postgres when `WRENN_TEST_POSTGRES_URL` is set) and both buses (in-process; Redis
//! Streams when `WRENN_TEST_REDIS_URL` is set).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use wrenn_core::audit::Actor;
use wrenn_core::auth::Role;
use wrenn_core::events::{
    Delivery, Event, EventBus, EventBusError, EventId, PLATFORM_STREAM, PlatformEvent,
    PlatformEventKind,
};
use wrenn_core::id::{ChannelId, SandboxId, TeamId};
use wrenn_cpserver::channels::ConfigCipher;
use wrenn_cpserver::channels::dispatcher::GROUP;
use wrenn_cpserver::events::RedisBus;
use wrenn_db::testing::{TestStore, TestStores};

use crate::common::{TestServer, TestUser, assert_error, member_of, send};

// ---------------------------------------------------------------------------
// A webhook receiver on loopback
// ---------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// How the receiver answers a request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answers.
    Hang,
}

/// An HTTP server recording every request; it answers from a script, then with
/// `default`.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: &[Reply], default: u16) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (rec, scr) = (got.clone(), script.clone());
        let app = axum::Router::new().fallback(
            move |method: HttpMethod, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (rec, scr) = (rec.clone(), scr.clone());
                async move {
                    rec.lock().unwrap().push(Received {
                        method: method.to_string(),
                        path: uri.to_string(),
                        headers,
                        body,
                    });
                    let reply = scr.lock().unwrap().pop_front();
                    match reply.unwrap_or(Reply::Status(default)) {
                        Reply::Status(s) => StatusCode::from_u16(s).unwrap(),
                        Reply::Hang => futures::future::pending().await,
                    }
                }
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, got }
    }

    fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (gives up after a minute).
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..1200 {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the receiver got {} requests, expected {n}",
            self.requests().len()
        );
    }
}

/// Checks the webhook contract: headers, signature over `timestamp.body`, payload.
fn assert_signed_webhook(r: &Received, secret: &str) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), "application/json");
    let delivery = r.header("x-wrenn-delivery");
    assert!(uuid::Uuid::parse_str(delivery).is_ok(), "{delivery:?}");
    let ts = r.header("x-wrenn-timestamp");
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "timestamp {ts:?}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("x-wrenn-signature"), expected);
}

// ---------------------------------------------------------------------------
// Servers, stores, buses
// ---------------------------------------------------------------------------

/// Loopback allowed, quick retries and claims.
const LOOPBACK: &[(&str, &str)] = &[
    ("WRENN_CHANNELS_ALLOW", "127.0.0.0/8,::1"),
    ("WRENN_CHANNELS_RETRY_BASE_MS", "20"),
    ("WRENN_CHANNELS_RETRY_MAX_MS", "80"),
    ("WRENN_CHANNELS_MAX_ATTEMPTS", "3"),
    ("WRENN_CHANNELS_CLAIM_AFTER_MS", "300"),
];

/// The Redis bus as the server uses it, with every stream name prefixed so that this
/// test's dispatchers and events never meet those of tests running beside it.
struct Namespaced {
    inner: RedisBus,
    prefix: String,
}

impl Namespaced {
    fn s(&self, stream: &str) -> String {
        format!("{}{stream}", self.prefix)
    }
}

#[async_trait::async_trait]
impl EventBus for Namespaced {
    async fn publish(&self, stream: &str, event: &Event) -> Result<EventId, EventBusError> {
        self.inner.publish(&self.s(stream), event).await
    }
    async fn create_group(&self, stream: &str, group: &str) -> Result<(), EventBusError> {
        self.inner.create_group(&self.s(stream), group).await
    }
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventBusError> {
        self.inner
            .read_group(&self.s(stream), group, consumer, max, block)
            .await
    }
    async fn ack(&self, stream: &str, group: &str, ids: &[EventId]) -> Result<u64, EventBusError> {
        self.inner.ack(&self.s(stream), group, ids).await
    }
    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, EventBusError> {
        self.inner
            .claim_stale(&self.s(stream), group, consumer, min_idle, max)
            .await
    }
    async fn read_after(
        &self,
        stream: &str,
        after: Option<&EventId>,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventBusError> {
        self.inner
            .read_after(&self.s(stream), after, max, block)
            .await
    }
    async fn last_id(&self, stream: &str) -> Result<Option<EventId>, EventBusError> {
        self.inner.last_id(&self.s(stream)).await
    }
}

#[derive(Clone, Copy, Debug)]
enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, Debug)]
enum BusKind {
    InProcess,
    Redis,
}

/// What one delivery test runs on; `None` when a service is not configured (and not
/// required).
struct Setup {
    db: TestStore,
    dir: tempfile::TempDir,
    bus: Arc<dyn EventBus>,
}

impl Setup {
    async fn new(store: StoreKind, bus: BusKind) -> Option<Self> {
        let db = match store {
            StoreKind::Sqlite => TestStores::sqlite().await,
            StoreKind::Postgres => TestStores::postgres().await?,
        };
        let bus: Arc<dyn EventBus> = match bus {
            BusKind::InProcess => Arc::new(wrenn_core::events::InProcessBus::new()),
            BusKind::Redis => {
                let url = match std::env::var("WRENN_TEST_REDIS_URL")
                    .ok()
                    .filter(|u| !u.trim().is_empty())
                {
                    Some(url) => url,
                    None if wrenn_db::testing::require_services() => {
                        panic!("WRENN_TEST_REDIS_URL is not set but WRENN_TEST_REQUIRE_SERVICES=1")
                    }
                    None => {
                        eprintln!("skipping: WRENN_TEST_REDIS_URL is not set");
                        return None;
                    }
                };
                Arc::new(Namespaced {
                    inner: RedisBus::connect(&url).await.expect("redis"),
                    prefix: format!("test-{}:", uuid::Uuid::new_v4().simple()),
                })
            }
        };
        Some(Self {
            db,
            dir: tempfile::tempdir().unwrap(),
            bus,
        })
    }

    async fn server(&self, vars: &[(&str, &str)]) -> TestServer {
        let s = TestServer::start_on(
            self.db.store(),
            self.dir.path(),
            vars,
            Some(self.bus.clone()),
        )
        .await;
        // The dispatcher's group exists before any event is published (it starts at
        // the stream's end).
        self.bus.create_group(PLATFORM_STREAM, GROUP).await.unwrap();
        s
    }
}

async fn publish(bus: &Arc<dyn EventBus>, team: TeamId, kind: PlatformEventKind) -> PlatformEvent {
    let ev = PlatformEvent::capsule(
        kind,
        team,
        Actor::user(wrenn_core::id::UserId::new(), "ann@example.com"),
        SandboxId::new(),
    );
    bus.publish(PLATFORM_STREAM, &Event::Platform(ev.clone()))
        .await
        .unwrap();
    ev
}

async fn create(s: &TestServer, u: &TestUser, body: Value) -> (u16, Value) {
    send(s.as_user(u, Method::POST, "/v1/channels").json(&body)).await
}

async fn webhook(s: &TestServer, u: &TestUser, name: &str, url: &str, events: &[&str]) -> Value {
    let (status, body) = create(
        s,
        u,
        json!({"name": name, "provider": "webhook", "config": {"url": url}, "events": events}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Waits until the channel has `n` dead letters (gives up after a minute).
async fn dead_letters(s: &TestServer, u: &TestUser, id: &str, n: usize) -> Vec<Value> {
    for _ in 0..1200 {
        let (status, body) =
            send(s.as_user(u, Method::GET, &format!("/v1/channels/{id}/dead-letters"))).await;
        assert_eq!(status, 200, "{body}");
        let list = body.as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("channel {id} never got {n} dead letters");
}

// ---------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------

#[tokio::test]
async fn channels_are_created_listed_renamed_reconfigured_and_deleted() {
    let setup = Setup::new(StoreKind::Sqlite, BusKind::InProcess)
        .await
        .unwrap();
    let s = setup.server(LOOPBACK).await;
    let u = s.user("owner@example.com").await;
    let rx = Receiver::start(&[], 200).await;

    let (status, created) = create(
        &s,
        &u,
        json!({
            "name": "  Ops Alerts ",
            "provider": "webhook",
            "config": {"url": format!("{}/hook?token=abc", rx.url)},
            "events": ["capsule.created", "host.down", "capsule.created"],
        }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ch-"), "{id}");
    assert_eq!(created["name"], "ops-alerts");
    assert_eq!(created["provider"], "webhook");
    assert_eq!(created["team_id"], u.team.to_string());
    assert_eq!(created["events"], json!(["capsule.created", "host.down"]));
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    // The config is shown redacted: the URL's origin only, the secret hidden.
    assert_eq!(created["config"]["url"], rx.url);
    assert_eq!(created["config"]["secret"], "[redacted]");

    let (status, got) = send(s.as_user(&u, Method::GET, &format!("/v1/channels/{id}"))).await;
    assert_eq!(status, 200);
    assert!(
        got.get("secret").is_none(),
        "the secret is shown once: {got}"
    );
    assert!(!got.to_string().contains(&secret));
    assert!(!got.to_string().contains("token=abc"));
    let (status, list) = send(s.as_user(&u, Method::GET, "/v1/channels")).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0].get("secret").is_none());

    // Rename and resubscribe.
    let (status, renamed) = send(
        s.as_user(&u, Method::PATCH, &format!("/v1/channels/{id}"))
            .json(&json!({"name": "Paging", "events": ["host.up"]})),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["name"], "paging");
    assert_eq!(renamed["events"], json!(["host.up"]));
    assert!(renamed.get("secret").is_none());

    // Duplicate names conflict, on creation and on rename.
    let other = webhook(&s, &u, "other", &rx.url, &[]).await;
    let (status, body) = create(
        &s,
        &u,
        json!({"name": "PAGING", "provider": "webhook", "config": {"url": rx.url}, "events": []}),
    )
    .await;
    assert_error(&(status, body), 409, "conflict");
    let got = send(
        s.as_user(
            &u,
            Method::PATCH,
            &format!("/v1/channels/{}", other["id"].as_str().unwrap()),
        )
        .json(&json!({"name": "paging", "events": []})),
    )
    .await;
    assert_error(&got, 409, "conflict");

    // Replacing the config rotates the webhook secret.
    let (status, rotated) = send(
        s.as_user(&u, Method::PUT, &format!("/v1/channels/{id}/config"))
            .json(&json!({"config": {"url": format!("{}/v2", rx.url)}})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_eq!(new_secret.len(), 64);
    assert_ne!(new_secret, secret);
    assert_eq!(rotated["name"], "paging");

    // The audit log has each change.
    let (_, log) = send(s.as_user(&u, Method::GET, "/v1/audit-logs?resource_type=channel")).await;
    let actions: Vec<(String, String)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource_id"] == id.as_str())
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("create", "success"),
        ("update", "info"),
        ("rotate_config", "info"),
    ] {
        assert!(
            actions.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} in {actions:?}"
        );
    }

    let (status, _) = send(s.as_user(&u, Method::DELETE, &format!("/v1/channels/{id}"))).await;
    assert_eq!(status, 204);
    let got = send(s.as_user(&u, Method::GET, &format!("/v1/channels/{id}"))).await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(&u, Method::DELETE, &format!("/v1/channels/{id}"))).await;
    assert_error(&got, 404, "not_found");
    let (_, log) = send(s.as_user(
        &u,
        Method::GET,
        "/v1/audit-logs?resource_type=channel&action=delete",
    ))
    .await;
    let deleted = &log["items"][0];
    assert_eq!(deleted["resource_id"], id.as_str());
    assert_eq!(deleted["status"], "warning");
    s.stop().await;
}

#[tokio::test]
async fn every_bad_input_is_a_clear_error_and_changes_nothing() {
    let setup = Setup::new(StoreKind::Sqlite, BusKind::InProcess)
        .await
        .unwrap();
    let s = setup.server(LOOPBACK).await;
    let u = s.user("owner@example.com").await;
    let url = "http://127.0.0.1:9/hook";
    let base = json!({"name": "alerts", "provider": "webhook", "config": {"url": url}, "events": ["capsule.created"]});
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    for (body, field) in [
        (with("provider", json!("pagerduty")), "provider"),
        (
            with("events", json!(["capsule.exploded"])),
            "capsule.exploded",
        ),
        (with("events", json!(["channel.test"])), "channel.test"),
        (with("name", json!("   ")), "name"),
        (with("name", json!("bad/name")), "name"),
        (with("name", json!("-dash")), "name"),
        (with("config", json!({})), "config.url"),
        (with("config", json!({"url": ""})), "config.url"),
        (
            with("config", json!({"url": "ftp://127.0.0.1/x"})),
            "config.url",
        ),
        (with("config", json!({"url": "not a url"})), "config.url"),
        (
            with("config", json!({"url": url, "colour": "red"})),
            "config.colour",
        ),
        (
            with("config", json!({"url": url, "secret": "mine"})),
            "config.secret",
        ),
        (
            json!({"name": "s", "provider": "slack", "config": {"url": url}, "events": []}),
            "config.webhook_url",
        ),
        (
            json!({"name": "t", "provider": "telegram", "config": {"bot_token": "123:abc"}, "events": []}),
            "config.chat_id",
        ),
        (
            json!({"name": "t", "provider": "telegram", "config": {"bot_token": "nope", "chat_id": "1"}, "events": []}),
            "config.bot_token",
        ),
        (
            json!({"name": "m", "provider": "matrix", "config": {"homeserver_url": url, "room_id": "!r:x"}, "events": []}),
            "config.access_token",
        ),
    ] {
        let got = create(&s, &u, body.clone()).await;
        assert_error(&got, 400, "invalid_request");
        let message = got.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{field} in {message:?} for {body}");
    }
    // Malformed JSON and missing fields.
    let got = send(
        s.as_user(&u, Method::POST, "/v1/channels")
            .json(&json!({"name": "x", "provider": "webhook"})),
    )
    .await;
    assert_eq!(got.0, 400, "{}", got.1);
    let (_, list) = send(s.as_user(&u, Method::GET, "/v1/channels")).await;
    assert_eq!(list, json!([]), "nothing was created");

    // Unknown and malformed ids.
    let unknown = ChannelId::new();
    for (method, path, body) in [
        (Method::GET, format!("/v1/channels/{unknown}"), None),
        (
            Method::PATCH,
            format!("/v1/channels/{unknown}"),
            Some(json!({"name": "x", "events": []})),
        ),
        (
            Method::PUT,
            format!("/v1/channels/{unknown}/config"),
            Some(json!({"config": {"url": url}})),
        ),
        (Method::DELETE, format!("/v1/channels/{unknown}"), None),
        (
            Method::GET,
            format!("/v1/channels/{unknown}/dead-letters"),
            None,
        ),
    ] {
        let mut req = s.as_user(&u, method.clone(), &path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        assert_error(&send(req).await, 404, "not_found");
    }
    let got = send(s.as_user(&u, Method::GET, "/v1/channels/ch-nope")).await;
    assert_eq!(got.0, 400, "{}", got.1);

    // Bad updates of an existing channel.
    let ch = webhook(&s, &u, "alerts", url, &[]).await;
    let id = ch["id"].as_str().unwrap();
    let got = send(
        s.as_user(&u, Method::PATCH, &format!("/v1/channels/{id}"))
            .json(&json!({"name": "ok", "events": ["nope"]})),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = send(
        s.as_user(&u, Method::PUT, &format!("/v1/channels/{id}/config"))
            .json(&json!({"config": {"webhook_url": url}})),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(
        &u,
        Method::GET,
        &format!("/v1/channels/{id}/dead-letters?limit=0"),
    ))
    .await;
    assert_error(&got, 400, "invalid_request");
    let (_, still) = send(s.as_user(&u, Method::GET, &format!("/v1/channels/{id}"))).await;
    assert_eq!(still["name"], "alerts");
    assert_eq!(still["updated_at"], ch["updated_at"]);

    // Test action: bad provider and config.
    for body in [
        json!({"provider": "fax", "config": {}}),
        json!({"provider": "discord", "config": {}}),
    ] {
        let got = send(s.as_user(&u, Method::POST, "/v1/channels/test").json(&body)).await;
        assert_error(&got, 400, "invalid_request");
    }

    // No credentials; an API key is not enough (user JWT only).
    let got = send(s.req(Method::GET, "/v1/channels")).await;
    assert_eq!(got.0, 401);
    let key = crate::common::make_key(&s.store(), u.team, u.id).await;
    let got = send(
        s.req(Method::GET, "/v1/channels")
            .header("X-API-Key", key.expose_secret()),
    )
    .await;
    assert_eq!(got.0, 401, "{}", got.1);
    s.stop().await;
}

#[tokio::test]
async fn another_teams_channels_are_not_found_and_members_manage_their_own() {
    let setup = Setup::new(StoreKind::Sqlite, BusKind::InProcess)
        .await
        .unwrap();
    let s = setup.server(LOOPBACK).await;
    let owner = s.user("owner@example.com").await;
    let stranger = s.user("stranger@example.com").await;
    let ch = webhook(&s, &owner, "alerts", "http://127.0.0.1:9/h", &[]).await;
    let id = ch["id"].as_str().unwrap();
    for (method, path, body) in [
        (Method::GET, format!("/v1/channels/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/channels/{id}"),
            Some(json!({"name": "mine", "events": []})),
        ),
        (
            Method::PUT,
            format!("/v1/channels/{id}/config"),
            Some(json!({"config": {"url": "http://127.0.0.1:9/x"}})),
        ),
        (Method::DELETE, format!("/v1/channels/{id}"), None),
        (Method::GET, format!("/v1/channels/{id}/dead-letters"), None),
    ] {
        let mut req = s.as_user(&stranger, method, &path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        assert_error(&send(req).await, 404, "not_found");
    }
    let (_, theirs) = send(s.as_user(&stranger, Method::GET, "/v1/channels")).await;
    assert_eq!(theirs, json!([]));

    // A plain member of the team manages its channels (as its API keys).
    let member = member_of(&s, owner.team, "member@example.com", Role::Member).await;
    let (status, list) = send(s.as_user(&member, Method::GET, "/v1/channels")).await;
    assert_eq!((status, list.as_array().unwrap().len()), (200, 1));
    let (status, _) = send(
        s.as_user(&member, Method::PATCH, &format!("/v1/channels/{id}"))
            .json(&json!({"name": "renamed", "events": []})),
    )
    .await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn configs_are_encrypted_at_rest_and_never_returned() {
    let setup = Setup::new(StoreKind::Sqlite, BusKind::InProcess)
        .await
        .unwrap();
    let s = setup.server(LOOPBACK).await;
    let u = s.user("owner@example.com").await;
    let slack_url = "http://127.0.0.1:9/services/T000/B000/XXXXSLACKTOKEN";
    let (status, slack) = create(
        &s,
        &u,
        json!({"name": "slack", "provider": "slack", "config": {"webhook_url": slack_url}, "events": []}),
    )
    .await;
    assert_eq!(status, 201, "{slack}");
    let (status, tg) = create(
        &s,
        &u,
        json!({"name": "tg", "provider": "telegram", "events": [],
               "config": {"bot_token": "123456:TELEGRAMSECRET", "chat_id": "-1001", "api_url": "http://127.0.0.1:9"}}),
    )
    .await;
    assert_eq!(status, 201, "{tg}");
    assert!(slack.get("secret").is_none(), "only webhooks have a secret");
    assert_eq!(slack["config"]["webhook_url"], "http://127.0.0.1:9");
    assert_eq!(tg["config"]["bot_token"], "[redacted]");
    assert_eq!(tg["config"]["chat_id"], "-1001");
    let (_, listed) = send(s.as_user(&u, Method::GET, "/v1/channels")).await;
    let listed = listed.to_string();
    assert!(
        !listed.contains("SLACKTOKEN") && !listed.contains("TELEGRAMSECRET"),
        "{listed}"
    );

    // What the store holds: every value encrypted, decrypting with the server's key.
    let key = s.ctx.config.encryption_key.expect("the server's key");
    let key_file = std::fs::read_to_string(s.ctx.config.layout().encryption_key_file()).unwrap();
    assert_eq!(
        key_file.trim(),
        hex::encode(key),
        "generated once into WRENN_DIR"
    );
    let cipher = ConfigCipher::new(&key);
    let id: ChannelId = tg["id"].as_str().unwrap().parse().unwrap();
    let stored = s.store().get_channel(u.team, id).await.unwrap();
    for (k, v) in &stored.config {
        assert!(
            !v.contains("TELEGRAMSECRET") && v != "-1001",
            "{k} stored as {v}"
        );
    }
    let plain = cipher.decrypt_config(&stored.config).unwrap();
    assert_eq!(plain["bot_token"], "123456:TELEGRAMSECRET");
    assert_eq!(plain["chat_id"], "-1001");
    let slack_id: ChannelId = slack["id"].as_str().unwrap().parse().unwrap();
    let stored = s.store().get_channel(u.team, slack_id).await.unwrap();
    assert!(!stored.config["webhook_url"].contains("SLACKTOKEN"));
    assert_eq!(
        cipher
            .decrypt("webhook_url", &stored.config["webhook_url"])
            .unwrap(),
        slack_url
    );
    // A restart reads the same key back and still decrypts (the GET shows the origin).
    s.stop().await;
    let s = setup.server(LOOPBACK).await;
    assert_eq!(s.ctx.config.encryption_key, Some(key));
    let token = s.token_for(u.id, u.team, Role::Owner, &u.email, false);
    let u = TestUser { token, ..u };
    let (_, got) = send(s.as_user(&u, Method::GET, &format!("/v1/channels/{slack_id}"))).await;
    assert_eq!(got["config"]["webhook_url"], "http://127.0.0.1:9");
    s.stop().await;
}

#[tokio::test]
async fn targets_on_non_public_addresses_are_refused_unless_allowed() {
    let setup = Setup::new(StoreKind::Sqlite, BusKind::InProcess)
        .await
        .unwrap();
    let strict = setup.server(&[]).await;
    let u = strict.user("owner@example.com").await;
    let rx = Receiver::start(&[], 200).await;
    for url in [
        rx.url.clone(),
        "http://localhost:9/x".to_owned(),
        "http://[::1]:9/x".to_owned(),
        "http://[::ffff:127.0.0.1]:9/x".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/x".to_owned(),
        "http://100.64.0.1/x".to_owned(),
        "http://0.0.0.0:9/x".to_owned(),
        "http://224.0.0.1/x".to_owned(),
    ] {
        let got = create(
            &strict,
            &u,
            json!({"name": "x", "provider": "webhook", "config": {"url": url}, "events": []}),
        )
        .await;
        assert_error(&got, 400, "target_not_allowed");
        let got = send(
            strict
                .as_user(&u, Method::POST, "/v1/channels/test")
                .json(&json!({"provider": "discord", "config": {"webhook_url": url}})),
        )
        .await;
        assert_error(&got, 400, "target_not_allowed");
    }
    let got = create(
        &strict,
        &u,
        json!({"name": "m", "provider": "matrix", "events": [],
               "config": {"homeserver_url": "http://127.0.0.1:8008", "access_token": "t", "room_id": "!r:x"}}),
    )
    .await;
    assert_error(&got, 400, "target_not_allowed");
    assert!(rx.requests().is_empty());
    strict.stop().await;

    // Configured: loopback allowed, other private ranges still refused.
    let allowed = setup
        .server(&[("WRENN_CHANNELS_ALLOW", "127.0.0.0/8")])
        .await;
    let token = allowed.token_for(u.id, u.team, Role::Owner, &u.email, false);
    let u = TestUser { token, ..u };
    let ch = webhook(&allowed, &u, "local", &rx.url, &["capsule.created"]).await;
    let got = create(
        &allowed,
        &u,
        json!({"name": "y", "provider": "webhook", "config": {"url": "http://10.0.0.1/x"}, "events": []}),
    )
    .await;
    assert_error(&got, 400, "target_not_allowed");
    allowed.stop().await;

    // At delivery time: the channel stored while loopback was allowed is refused by
    // a control plane that does not allow it — nothing reaches the receiver and the
    // delivery is dead-lettered at once.
    let strict = setup.server(&[]).await;
    let token = strict.token_for(u.id, u.team, Role::Owner, &u.email, false);
    let u = TestUser { token, ..u };
    publish(&setup.bus, u.team, PlatformEventKind::CapsuleCreated).await;
    let dead = dead_letters(&strict, &u, ch["id"].as_str().unwrap(), 1).await;
    assert_eq!(dead[0]["attempts"], 1);
    let error = dead[0]["error"].as_str().unwrap();
    assert!(
        error.contains("refused") && error.contains("loopback"),
        "{error}"
    );
    assert!(rx.requests().is_empty(), "the refused target got nothing");

    // Everything allowed.
    strict.stop().await;
    let open = setup
        .server(&[("WRENN_CHANNELS_ALLOW_PRIVATE", "true")])
        .await;
    let token = open.token_for(u.id, u.team, Role::Owner, &u.email, false);
    let u = TestUser { token, ..u };
    webhook(&open, &u, "meta", "http://169.254.169.254/x", &[]).await;
    open.stop().await;
}

#[tokio::test]
async fn the_test_action_sends_each_providers_native_request() {
    let setup = Setup::new(StoreKind::Sqlite, BusKind::InProcess)
        .await
        .unwrap();
    let s = setup.server(LOOPBACK).await;
    let u = s.user("owner@example.com").await;
    let rx = Receiver::start(&[], 200).await;
    let test = |body: Value| {
        let req = s.as_user(&u, Method::POST, "/v1/channels/test").json(&body);
        async move { send(req).await }
    };

    let got = test(json!({"provider": "webhook", "config": {"url": format!("{}/hook", rx.url), "secret": "s3cret"}})).await;
    assert_eq!(got, (200, json!({"status": "ok"})));
    let r = &rx.wait_for(1).await[0];
    assert_eq!(r.path, "/hook");
    assert_signed_webhook(r, "s3cret");
    let payload = r.json();
    assert_eq!(payload["event"], "channel.test");
    assert_eq!(payload["team_id"], u.team.to_string());
    assert_eq!(payload["actor"]["type"], "user");
    assert_eq!(payload["actor"]["id"], u.id.to_string());

    for (provider, config, n, path, key) in [
        (
            "slack",
            json!({"webhook_url": format!("{}/slack", rx.url)}),
            2,
            "/slack",
            "text",
        ),
        (
            "discord",
            json!({"webhook_url": format!("{}/discord", rx.url)}),
            3,
            "/discord",
            "content",
        ),
        (
            "teams",
            json!({"webhook_url": format!("{}/teams", rx.url)}),
            4,
            "/teams",
            "text",
        ),
        (
            "googlechat",
            json!({"webhook_url": format!("{}/chat", rx.url)}),
            5,
            "/chat",
            "text",
        ),
    ] {
        let got = test(json!({"provider": provider, "config": config})).await;
        assert_eq!(got.0, 200, "{provider}: {}", got.1);
        let r = rx.wait_for(n).await[n - 1].clone();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", path));
        let text = r.json()[key].as_str().unwrap().to_owned();
        assert!(text.contains("channel.test"), "{provider}: {text}");
        assert!(r.header("x-wrenn-signature").is_empty());
    }

    let got = test(json!({"provider": "telegram", "config": {"bot_token": "123:abc-D_e", "chat_id": "-100", "api_url": rx.url}})).await;
    assert_eq!(got.0, 200, "{}", got.1);
    let r = rx.wait_for(6).await[5].clone();
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/bot123:abc-D_e/sendMessage")
    );
    assert_eq!(r.json()["chat_id"], "-100");
    assert!(r.json()["text"].as_str().unwrap().contains("channel.test"));

    let got = test(json!({"provider": "matrix", "config": {"homeserver_url": rx.url, "access_token": "syt_tok", "room_id": "!room:example.org"}})).await;
    assert_eq!(got.0, 200, "{}", got.1);
    let r = rx.wait_for(7).await[6].clone();
    assert_eq!(r.method, "PUT");
    assert!(
        r.path
            .starts_with("/_matrix/client/v3/rooms/!room:example.org/send/m.room.message/"),
        "{}",
        r.path
    );
    assert_eq!(r.header("authorization"), "Bearer syt_tok");
    assert_eq!(r.json()["msgtype"], "m.text");

    // Failing targets: 502 with what happened, without the URL.
    let failing = Receiver::start(&[], 500).await;
    let got = test(json!({"provider": "webhook", "config": {"url": format!("{}/hook?token=zzz", failing.url)}})).await;
    assert_error(&got, 502, "delivery_failed");
    assert_eq!(got.1["error"]["target_status"], 500);
    assert!(!got.1.to_string().contains("zzz"));
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let got =
        test(json!({"provider": "slack", "config": {"webhook_url": format!("http://{closed}/x")}}))
            .await;
    assert_error(&got, 502, "delivery_failed");
    // Redirects are not followed.
    let redirect = Receiver::start(&[], 302).await;
    let got = test(json!({"provider": "discord", "config": {"webhook_url": redirect.url}})).await;
    assert_error(&got, 502, "delivery_failed");
    s.stop().await;
}

// ---------------------------------------------------------------------------
// The dispatcher, on every store and bus
// ---------------------------------------------------------------------------

/// Subscribed channels get the event, signed; others do not.
async fn events_reach_subscribed_webhooks_signed(store: StoreKind, bus: BusKind) {
    let Some(setup) = Setup::new(store, bus).await else {
        return;
    };
    let s = setup.server(LOOPBACK).await;
    let u = s.user("owner@example.com").await;
    let rx = Receiver::start(&[], 204).await;
    let quiet = Receiver::start(&[], 200).await;
    let ch = webhook(
        &s,
        &u,
        "alerts",
        &format!("{}/in", rx.url),
        &["capsule.created", "capsule.paused"],
    )
    .await;
    webhook(&s, &u, "quiet", &quiet.url, &["host.down"]).await;
    let secret = ch["secret"].as_str().unwrap().to_owned();

    let created = publish(&setup.bus, u.team, PlatformEventKind::CapsuleCreated).await;
    // Another team's event never reaches this team's channels.
    publish(&setup.bus, TeamId::new(), PlatformEventKind::CapsuleCreated).await;
    let paused = publish(&setup.bus, u.team, PlatformEventKind::CapsulePaused).await;
    let got = rx.wait_for(2).await;
    let mut seen = Vec::new();
    for r in &got {
        assert_signed_webhook(r, &secret);
        assert_eq!(r.path, "/in");
        let p = r.json();
        assert_eq!(p["team_id"], u.team.to_string());
        assert_eq!(p["actor"]["type"], "user");
        assert_eq!(p["actor"]["name"], "ann@example.com");
        assert_eq!(p["resource"]["type"], "capsule");
        assert!(p["timestamp"].as_str().unwrap().ends_with('Z'));
        seen.push((p["event"].clone(), p["resource"]["id"].clone()));
    }
    seen.sort_by_key(|(e, _)| e.to_string());
    assert_eq!(
        seen,
        [
            (json!("capsule.created"), json!(created.resource.id)),
            (json!("capsule.paused"), json!(paused.resource.id)),
        ]
    );
    assert_ne!(
        got[0].header("x-wrenn-delivery"),
        got[1].header("x-wrenn-delivery")
    );
    // Delivered once each, and nothing to the unsubscribed channel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.requests().len(), 2);
    assert!(quiet.requests().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn events_reach_subscribed_webhooks_signed_on_sqlite_in_process() {
    events_reach_subscribed_webhooks_signed(StoreKind::Sqlite, BusKind::InProcess).await;
}

#[tokio::test]
async fn events_reach_subscribed_webhooks_signed_on_sqlite_redis() {
    events_reach_subscribed_webhooks_signed(StoreKind::Sqlite, BusKind::Redis).await;
}

#[tokio::test]
async fn events_reach_subscribed_webhooks_signed_on_postgres_in_process() {
    events_reach_subscribed_webhooks_signed(StoreKind::Postgres, BusKind::InProcess).await;
}

#[tokio::test]
async fn events_reach_subscribed_webhooks_signed_on_postgres_redis() {
    events_reach_subscribed_webhooks_signed(StoreKind::Postgres, BusKind::Redis).await;
}

/// A target answering 500 is retried with the same delivery id, then dead-lettered
/// (visible through the API); a 404 is dead-lettered at once; a healthy channel of
/// the same event is not held up.
async fn failing_targets_are_retried_then_dead_lettered(store: StoreKind, bus: BusKind) {
    let Some(setup) = Setup::new(store, bus).await else {
        return;
    };
    let s = setup.server(LOOPBACK).await;
    let u = s.user("owner@example.com").await;
    let broken = Receiver::start(&[], 500).await;
    let gone = Receiver::start(&[], 404).await;
    let healthy = Receiver::start(&[], 200).await;
    let flaky = Receiver::start(&[Reply::Status(503)], 200).await;
    let events = &["host.down"];
    let broken_ch = webhook(&s, &u, "broken", &broken.url, events).await;
    let gone_ch = webhook(&s, &u, "gone", &gone.url, events).await;
    let healthy_ch = webhook(&s, &u, "healthy", &healthy.url, events).await;
    let flaky_ch = webhook(&s, &u, "flaky", &flaky.url, events).await;

    publish(&setup.bus, u.team, PlatformEventKind::HostDown).await;
    let attempts = broken.wait_for(3).await;
    let ids: Vec<&str> = attempts
        .iter()
        .map(|r| r.header("x-wrenn-delivery"))
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery id across retries: {ids:?}"
    );
    let secret = broken_ch["secret"].as_str().unwrap();
    for r in &attempts {
        assert_signed_webhook(r, secret);
    }

    let dead = dead_letters(&s, &u, broken_ch["id"].as_str().unwrap(), 1).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["last_status"], 500);
    assert_eq!(d["event"], "host.down");
    assert_eq!(d["delivery_id"], ids[0]);
    assert_eq!(d["channel_id"], broken_ch["id"]);
    assert_eq!(d["payload"]["event"], "host.down");
    assert!(d["error"].as_str().unwrap().contains("500"), "{d}");

    let dead = dead_letters(&s, &u, gone_ch["id"].as_str().unwrap(), 1).await;
    assert_eq!(
        (dead[0]["attempts"].clone(), dead[0]["last_status"].clone()),
        (json!(1), json!(404))
    );
    assert_eq!(gone.requests().len(), 1, "a 404 is not retried");

    // The others succeeded (the flaky one on its second attempt) and have no dead
    // letters.
    assert_eq!(healthy.wait_for(1).await.len(), 1);
    let flaky_got = flaky.wait_for(2).await;
    assert_eq!(
        flaky_got[0].header("x-wrenn-delivery"),
        flaky_got[1].header("x-wrenn-delivery")
    );
    for ch in [&healthy_ch, &flaky_ch] {
        let (_, none) = send(s.as_user(
            &u,
            Method::GET,
            &format!("/v1/channels/{}/dead-letters", ch["id"].as_str().unwrap()),
        ))
        .await;
        assert_eq!(none, json!([]));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broken.requests().len(), 3, "no more than max_attempts");
    s.stop().await;
}

#[tokio::test]
async fn failing_targets_are_retried_then_dead_lettered_on_sqlite_in_process() {
    failing_targets_are_retried_then_dead_lettered(StoreKind::Sqlite, BusKind::InProcess).await;
}

#[tokio::test]
async fn failing_targets_are_retried_then_dead_lettered_on_postgres_redis() {
    failing_targets_are_retried_then_dead_lettered(StoreKind::Postgres, BusKind::Redis).await;
}

/// A dispatcher stopped while a delivery hangs leaves the event pending; the next one
/// claims it and delivers it, with the same delivery id.
async fn events_survive_a_dispatcher_restart(store: StoreKind, bus: BusKind) {
    let Some(setup) = Setup::new(store, bus).await else {
        return;
    };
    let vars: &[(&str, &str)] = &[
        ("WRENN_CHANNELS_ALLOW", "127.0.0.0/8"),
        ("WRENN_CHANNELS_CLAIM_AFTER_MS", "300"),
        ("WRENN_CHANNELS_TIMEOUT_MS", "60000"),
    ];
    let first = setup.server(vars).await;
    let u = first.user("owner@example.com").await;
    let rx = Receiver::start(&[Reply::Hang], 200).await;
    let ch = webhook(&first, &u, "alerts", &rx.url, &["capsule.destroyed"]).await;
    let ev = publish(&setup.bus, u.team, PlatformEventKind::CapsuleDestroyed).await;
    // The first attempt is in flight (the receiver holds it) when the server stops.
    rx.wait_for(1).await;
    first.stop().await;

    let second = setup.server(vars).await;
    let got = rx.wait_for(2).await;
    let (a, b) = (&got[0], &got[1]);
    assert_eq!(a.header("x-wrenn-delivery"), b.header("x-wrenn-delivery"));
    assert_signed_webhook(b, ch["secret"].as_str().unwrap());
    assert_eq!(b.json()["resource"]["id"], ev.resource.id.as_str());
    assert_eq!(b.json()["event"], "capsule.destroyed");
    // Acknowledged now: not delivered a third time.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rx.requests().len(), 2);
    second.stop().await;
}

#[tokio::test]
async fn events_survive_a_dispatcher_restart_on_sqlite_in_process() {
    events_survive_a_dispatcher_restart(StoreKind::Sqlite, BusKind::InProcess).await;
}

#[tokio::test]
async fn events_survive_a_dispatcher_restart_on_postgres_redis() {
    events_survive_a_dispatcher_restart(StoreKind::Postgres, BusKind::Redis).await;
}

/// A capsule created through the API reaches a channel (the lifecycle's own event).
#[tokio::test]
async fn a_capsule_created_through_the_api_is_announced() {
    let setup = Setup::new(StoreKind::Sqlite, BusKind::InProcess)
        .await
        .unwrap();
    let s = setup.server(LOOPBACK).await;
    let u = s.user("owner@example.com").await;
    crate::common::online_host(&s.store()).await;
    let rx = Receiver::start(&[], 200).await;
    webhook(&s, &u, "alerts", &rx.url, &["capsule.created"]).await;
    let (status, capsule) =
        send(s.as_user(&u, Method::POST, "/v1/capsules").json(&json!({}))).await;
    assert!(matches!(status, 201 | 202), "{status}: {capsule}");
    let got = rx.wait_for(1).await;
    let p = got[0].json();
    assert_eq!(p["event"], "capsule.created");
    assert_eq!(p["resource"]["id"], capsule["id"]);
    assert_eq!(p["actor"]["id"], u.id.to_string());
    s.stop().await;
}

#[tokio::test]
async fn the_channel_routes_are_documented() {
    let s = TestServer::start().await;
    let (status, doc) = send(s.req(Method::GET, "/openapi.json")).await;
    assert_eq!(status, 200);
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/v1/channels", &["get", "post"][..]),
        ("/v1/channels/test", &["post"]),
        ("/v1/channels/{id}", &["get", "patch", "delete"]),
        ("/v1/channels/{id}/config", &["put"]),
        ("/v1/channels/{id}/dead-letters", &["get"]),
    ] {
        for m in methods {
            let op = &paths[path][m];
            assert!(op.is_object(), "{m} {path} is documented");
            assert_eq!(op["tags"][0], "channels", "{m} {path}");
        }
    }
    let test = &paths["/v1/channels/test"]["post"]["responses"];
    assert!(test["502"].is_object(), "{test}");
    let body = &doc["components"]["schemas"]["ChannelBody"]["properties"];
    for field in [
        "id", "team_id", "name", "provider", "events", "config", "secret",
    ] {
        assert!(body[field].is_object(), "ChannelBody.{field}");
    }
    assert!(doc["components"]["schemas"]["DeadLetterBody"].is_object());
    s.stop().await;
}
