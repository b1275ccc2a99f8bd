//! The SSE event stream and the host agents' sandbox-event callback.

use crate::data_plane;

use std::time::Duration;

use data_plane::{Env, Opts, SseReader, TestUser, assert_error, eventually, json, register_host};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::auth::HostClaims;
use wrenn_core::events::{Event, EventId, SANDBOX_STREAM};
use wrenn_core::id::{HostId, SandboxId};
use wrenn_core::lifecycle::SandboxStatus;

async fn open_stream(env: &Env, u: &TestUser, last_event_id: Option<&str>) -> SseReader {
    let mut req = env.as_user(u, Method::GET, "/v1/events/stream");
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut sse = SseReader::new(resp);
    let hello = sse.next(10).await.expect("connected sentinel");
    assert_eq!(hello.json()["event"], "connected");
    assert!(hello.id.is_none(), "the sentinel has no resume id");
    sse
}

async fn post_ok(env: &Env, u: &TestUser, path: &str) {
    let resp = env.as_user(u, Method::POST, path).send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
}

#[tokio::test]
async fn the_event_stream_carries_the_teams_capsule_and_template_events_and_resumes() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let theirs = env.capsule(&other, SandboxStatus::Running).await;
    let mut sse = open_stream(&env, &u, None).await;

    // Another team's event first: it must not show up.
    post_ok(&env, &other, &format!("/v1/capsules/{theirs}/pause")).await;
    eventually(5, "their capsule to pause", || async {
        env.status(theirs).await == SandboxStatus::Paused
    })
    .await;
    post_ok(&env, &u, &format!("/v1/capsules/{id}/pause")).await;
    let paused = sse.next(10).await.expect("pause event");
    let body = paused.json();
    assert_eq!(body["event"], "capsule.pause", "{body}");
    assert_eq!(paused.event.as_deref(), Some("capsule.pause"));
    assert_eq!(body["outcome"], "success");
    assert_eq!(
        body["resource"],
        json!({"id": id.to_string(), "type": "capsule"})
    );
    assert_eq!(body["actor"]["type"], "user");
    assert_eq!(body["actor"]["id"], u.id.to_string());
    assert_eq!(body["sandbox"]["id"], id.to_string());
    assert_eq!(body["sandbox"]["status"], "paused");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    let pause_id = paused.id.clone().expect("an id to resume from");

    post_ok(&env, &u, &format!("/v1/capsules/{id}/resume")).await;
    let running = sse.next(10).await.expect("running event").json();
    assert_eq!(running["event"], "capsule.state.changed");
    assert_eq!(running["metadata"], json!({"to": "running"}));
    assert!(running.get("outcome").is_none());

    let (status, _) = json(
        env.as_user(&u, Method::POST, "/v1/snapshots")
            .json(&json!({"sandbox_id": id.to_string(), "name": "sse-snap"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let created = sse.next(10).await.expect("snapshot event").json();
    assert_eq!(created["event"], "template.snapshot.create");
    assert_eq!(
        created["resource"],
        json!({"id": "sse-snap", "type": "template"})
    );
    assert!(created.get("sandbox").is_none());
    assert_eq!(
        env.as_user(&u, Method::DELETE, "/v1/snapshots/sse-snap")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        sse.next(10).await.expect("delete event").json()["event"],
        "template.snapshot.delete"
    );
    drop(sse);

    // Reconnecting after the pause event replays what came after it, in order.
    let mut again = open_stream(&env, &u, Some(&pause_id)).await;
    let replayed: Vec<Value> = [
        again.next(10).await,
        again.next(10).await,
        again.next(10).await,
    ]
    .into_iter()
    .map(|m| m.expect("replayed").json())
    .collect();
    let kinds: Vec<&str> = replayed
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "capsule.state.changed",
            "template.snapshot.create",
            "template.snapshot.delete"
        ]
    );
    env.stop().await;
}

#[tokio::test]
async fn the_event_stream_checks_credentials_and_the_resume_id() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    assert_error(
        &json(
            env.req(Method::GET, "/v1/events/stream")
                .send()
                .await
                .unwrap(),
        )
        .await,
        401,
        "unauthorized",
    );
    let got = json(
        env.as_user(&u, Method::GET, "/v1/events/stream")
            .header("Last-Event-ID", "yesterday")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    // An API key works too.
    let key = env.api_key(&u).await;
    let resp = env
        .req(Method::GET, "/v1/events/stream")
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);

    // The data-plane routes are documented.
    let (status, doc) = json(env.req(Method::GET, "/openapi.json").send().await.unwrap()).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/events/stream",
        "/v1/capsules/{id}/exec",
        "/v1/capsules/{id}/exec/stream",
        "/v1/capsules/{id}/processes/{selector}",
        "/v1/capsules/{id}/files/stream/write",
        "/v1/capsules/{id}/pty",
        "/v1/capsules/stats",
        "/v1/snapshots/{name}",
        "/v1/hosts/sandbox-events",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    env.stop().await;
}

#[tokio::test]
async fn the_event_stream_ends_when_the_server_shuts_down() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let mut sse = open_stream(&env, &u, None).await;
    tokio::time::timeout(Duration::from_secs(15), env.stop())
        .await
        .expect("shutdown is not held up by an open stream");
    assert!(sse.next(5).await.is_none(), "the stream ended");
}

// ---------------------------------------------------------------------------------
// POST /v1/hosts/sandbox-events
// ---------------------------------------------------------------------------------

fn host_token(env: &Env, host: HostId) -> String {
    env.ctx
        .auth
        .jwt()
        .sign_host(&HostClaims::new(host))
        .unwrap()
}

async fn report(env: &Env, token: &str, body: &Value) -> (u16, Value) {
    json(
        env.req(Method::POST, "/v1/hosts/sandbox-events")
            .header("X-Host-Token", token)
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn event(kind: &str, sandbox: SandboxId, host: HostId) -> Value {
    json!({"event": kind, "sandbox_id": sandbox.to_string(), "host_id": host.to_string(), "timestamp": 0})
}

#[tokio::test]
async fn an_auto_pause_reported_by_the_host_is_applied_by_the_consumer() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let before = env
        .ctx
        .events
        .last_id(SANDBOX_STREAM)
        .await
        .unwrap()
        .unwrap_or(EventId("0-0".into()));
    let token = host_token(&env, env.host);
    let resp = env
        .req(Method::POST, "/v1/hosts/sandbox-events")
        .header("X-Host-Token", &token)
        .json(&event("auto_paused", id, env.host))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    eventually(10, "the consumer to pause the capsule", || async {
        env.status(id).await == SandboxStatus::Paused
    })
    .await;

    // Republished with the time filled in and the team taken from the row.
    let entries = env
        .ctx
        .events
        .read_after(SANDBOX_STREAM, Some(&before), 100, Duration::ZERO)
        .await
        .unwrap();
    let ev = entries
        .iter()
        .find_map(|d| match &d.event {
            Event::Sandbox(ev) if ev.sandbox_id == id => Some(ev.clone()),
            _ => None,
        })
        .expect("republished");
    assert!(
        (ev.timestamp - chrono::Utc::now().timestamp()).abs() < 60,
        "a zero timestamp becomes now"
    );
    assert_eq!(ev.team_id, Some(u.team));

    let (status, audit) = json(
        env.as_user(&u, Method::GET, "/v1/audit-logs?resource_type=sandbox")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let item = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["resource_id"] == id.to_string())
        .expect("audited");
    assert_eq!(
        (
            item["action"].as_str(),
            item["actor_type"].as_str(),
            item["status"].as_str()
        ),
        (Some("pause"), Some("system"), Some("info"))
    );
    env.stop().await;
}

#[tokio::test]
async fn a_host_may_only_report_its_own_sandboxes() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let intruder = register_host(&env.store(), "127.0.0.1:1").await;
    let token = host_token(&env, intruder);
    // Claiming to be the sandbox's host with another host's token.
    assert_error(
        &report(&env, &token, &event("auto_paused", id, env.host)).await,
        403,
        "forbidden",
    );
    // Reporting as itself about a sandbox it does not run.
    assert_error(
        &report(&env, &token, &event("stopped", id, intruder)).await,
        403,
        "forbidden",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.status(id).await,
        SandboxStatus::Running,
        "nothing changed"
    );
    env.stop().await;
}

#[tokio::test]
async fn malformed_sandbox_events_are_400_and_bad_tokens_401() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let token = host_token(&env, env.host);
    let host = env.host.to_string();
    let bad = [
        json!({}),
        json!({"sandbox_id": id.to_string(), "host_id": host, "timestamp": 0}),
        json!({"event": "exploded", "sandbox_id": id.to_string(), "host_id": host, "timestamp": 0}),
        json!({"event": "auto_paused", "sandbox_id": "cl-nope", "host_id": host, "timestamp": 0}),
        json!({"event": "auto_paused", "sandbox_id": id.to_string(), "timestamp": 0}),
        json!({"event": "auto_paused", "sandbox_id": id.to_string(), "host_id": host}),
        json!({"event": "auto_paused", "sandbox_id": id.to_string(), "host_id": host, "timestamp": "now"}),
    ];
    for body in bad {
        assert_error(&report(&env, &token, &body).await, 400, "invalid_request");
    }
    let got = json(
        env.req(Method::POST, "/v1/hosts/sandbox-events")
            .header("X-Host-Token", &token)
            .body("not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let good = event("auto_paused", id, env.host);
    let got = json(
        env.req(Method::POST, "/v1/hosts/sandbox-events")
            .json(&good)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    assert_error(&report(&env, &u.token, &good).await, 401, "unauthorized");
    let got = json(
        env.as_user(&u, Method::POST, "/v1/hosts/sandbox-events")
            .json(&good)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.status(id).await,
        SandboxStatus::Running,
        "nothing changed"
    );
    env.stop().await;
}

#[tokio::test]
async fn events_flow_on_postgres() {
    let Some(env) = Env::start_with(Opts {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        eprintln!("skipped: WRENN_TEST_POSTGRES_URL is not set");
        return;
    };
    let u = env.user("pg@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let mut sse = open_stream(&env, &u, None).await;
    let token = host_token(&env, env.host);
    assert_eq!(
        report(&env, &token, &event("auto_paused", id, env.host))
            .await
            .0,
        204
    );
    eventually(10, "the consumer to pause the capsule", || async {
        env.status(id).await == SandboxStatus::Paused
    })
    .await;
    let ev = sse.next(10).await.expect("pause event").json();
    assert_eq!(ev["event"], "capsule.pause");
    assert_eq!(ev["actor"]["type"], "system");
    drop(sse);
    env.stop().await;
}
