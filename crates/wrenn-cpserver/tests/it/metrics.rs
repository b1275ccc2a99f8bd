//! `GET /metrics`: exposure (closed by default, bearer token, separate listener, open),
//! the series real requests and capsule lifecycles leave (route templates, lifecycle
//! calls, store gauges, event lag), and a scrape during a database outage.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use wrenn_core::events::{Event, SANDBOX_STREAM, SandboxEvent, SandboxEventKind};
use wrenn_core::id::SandboxId;

use crate::common::{OwnDatabase, TestServer, json, online_host};

const TOKEN: &str = "metrics-token-0123456789";

/// One sample of the text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (the subset the encoder writes: no timestamps;
/// label values escaped with `\\`, `\"` and `\n`).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut val = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some('n') => val.push('\n'),
                                Some(other) => val.push(other),
                                None => panic!("dangling escape in {line}"),
                            },
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.insert(key, val);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Samples named `name` whose labels include every pair of `want`.
fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample matching, panicking with the exposition otherwise.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, want);
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0].value
}

async fn scrape(s: &TestServer, token: Option<&str>) -> (StatusCode, String, Vec<Sample>) {
    let mut req = s.req(Method::GET, "/metrics");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("scrape");
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.expect("body");
    if status == StatusCode::OK {
        assert_eq!(ctype.as_deref(), Some("text/plain; version=0.0.4"));
    }
    let samples = if status == StatusCode::OK {
        parse(&text)
    } else {
        Vec::new()
    };
    (status, text, samples)
}

async fn server(env: &[(&'static str, &str)]) -> TestServer {
    let env: Vec<_> = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    TestServer::start_with_env(&env).await
}

#[test]
fn the_parser_reads_labels_escapes_and_infinities() {
    let got = parse(
        "# HELP x y\n# TYPE x counter\nx 3\nh_bucket{le=\"+Inf\",route=\"/v1/a \\\"b\\\"\\n\"} 2\nh_sum -Inf\n",
    );
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].value, 3.0);
    assert_eq!(got[1].labels["route"], "/v1/a \"b\"\n");
    assert_eq!(got[1].labels["le"], "+Inf");
    assert_eq!(got[2].value, f64::NEG_INFINITY);
}

#[tokio::test]
async fn metrics_are_not_served_by_default_nor_given_to_the_dashboard() {
    let s = server(&[]).await;
    let resp = s.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let got = json(resp).await;
    assert_eq!(
        got.1["error"]["code"], "not_found",
        "a JSON 404, not the dashboard"
    );
    // A token does not open a closed endpoint.
    let (status, _, _) = scrape(&s, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn the_metrics_token_is_required_when_configured() {
    let s = server(&[("WRENN_METRICS_TOKEN", TOKEN)]).await;
    let (status, body, _) = scrape(&s, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let resp = s.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (status, _, _) = scrape(&s, Some("metrics-token-wrong-value")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let resp = s
        .req(Method::GET, "/metrics")
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, _, samples) = scrape(&s, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value(&samples, "wrenn_scrape_store_up", &[]), 1.0);
    // An API key or user token is not the metrics token.
    let ada = s.user("ada@x.io").await;
    let (status, _, _) = scrape(&s, Some(&ada.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_nothing_else() {
    let port = wrenn_core::testing::unused_listen_port();
    let addr = format!("127.0.0.1:{port}");
    let s = server(&[
        ("WRENN_METRICS_ADDR", addr.as_str()),
        ("WRENN_METRICS_TOKEN", TOKEN),
    ])
    .await;
    let http = reqwest::Client::new();
    // The server binds it in `serve`, which runs in the background: wait for it.
    let mut answered = None;
    for _ in 0..100 {
        match http
            .get(format!("http://{addr}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
        {
            Ok(resp) => {
                answered = Some(resp);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let resp = answered.expect("the metrics listener answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let samples = parse(&resp.text().await.unwrap());
    assert_eq!(value(&samples, "wrenn_scrape_store_up", &[]), 1.0);
    let resp = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "the token applies here too"
    );
    let resp = http
        .get(format!("http://{addr}/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "no API on the metrics listener"
    );
    s.stop().await;
}

#[tokio::test]
async fn requests_and_capsule_lifecycles_show_in_the_series_with_route_templates() {
    let s = server(&[("WRENN_METRICS_OPEN", "true")]).await;
    let store = s.store();
    let host = online_host(&store).await;
    let ada = s.user("ada@x.io").await;

    let created = json(
        s.as_user(&ada, Method::POST, "/v1/capsules")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(created.0 == 201 || created.0 == 202, "{created:?}");
    let id = created.1["id"].as_str().expect("capsule id").to_owned();
    let wait_for = |want: &'static str| {
        let (s, ada, id) = (&s, &ada, id.clone());
        async move {
            for _ in 0..200 {
                let got = json(
                    s.as_user(ada, Method::GET, &format!("/v1/capsules/{id}"))
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                if got.1["status"] == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("{id} never became {want}");
        }
    };
    wait_for("running").await;
    let paused = s
        .as_user(&ada, Method::POST, &format!("/v1/capsules/{id}/pause"))
        .send()
        .await
        .unwrap();
    assert!(paused.status().is_success(), "{}", paused.status());
    wait_for("paused").await;
    let destroyed = s
        .as_user(&ada, Method::DELETE, &format!("/v1/capsules/{id}"))
        .send()
        .await
        .unwrap();
    assert!(destroyed.status().is_success(), "{}", destroyed.status());
    wait_for("stopped").await;
    // A capsule that does not exist, an unknown path and a dashboard page.
    let missing = SandboxId::new().to_string();
    let resp = s
        .as_user(&ada, Method::GET, &format!("/v1/capsules/{missing}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = s
        .req(Method::GET, "/v1/no/such/route")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let (status, text, samples) = scrape(&s, None).await;
    assert_eq!(status, StatusCode::OK);
    let http = "wrenn_http_request_duration_seconds_count";
    let creates: f64 = find(
        &samples,
        http,
        &[("method", "POST"), ("route", "/v1/capsules")],
    )
    .iter()
    .map(|s| s.value)
    .sum();
    assert_eq!(creates, 1.0);
    assert!(
        value(
            &samples,
            http,
            &[
                ("method", "GET"),
                ("route", "/v1/capsules/{id}"),
                ("status", "200")
            ]
        ) >= 3.0
    );
    assert_eq!(
        value(
            &samples,
            http,
            &[
                ("method", "GET"),
                ("route", "/v1/capsules/{id}"),
                ("status", "404")
            ]
        ),
        1.0
    );
    assert!(
        !find(
            &samples,
            http,
            &[("method", "POST"), ("route", "/v1/capsules/{id}/pause")]
        )
        .is_empty()
    );
    assert_eq!(
        value(
            &samples,
            http,
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(!text.contains(&id), "a raw capsule id leaked into a label");
    assert!(!text.contains(&missing));
    assert!(!text.contains("/v1/no/such/route"));

    // Lifecycle calls, timed at the host-agents boundary. The test agents do not name
    // their runtime, so it stays `unknown`.
    let ops = "wrenn_lifecycle_operation_duration_seconds_count";
    for op in ["create", "pause", "destroy"] {
        assert_eq!(
            value(
                &samples,
                ops,
                &[("operation", op), ("runtime", "unknown"), ("outcome", "ok")]
            ),
            1.0,
            "{op}"
        );
    }
    // Store gauges: the stopped capsule, the host's capacity and info.
    assert_eq!(value(&samples, "wrenn_scrape_store_up", &[]), 1.0);
    assert_eq!(
        value(&samples, "wrenn_capsules", &[("status", "stopped")]),
        1.0
    );
    assert_eq!(
        value(&samples, "wrenn_capsules", &[("status", "running")]),
        0.0
    );
    assert_eq!(
        find(&samples, "wrenn_capsules", &[]).len(),
        wrenn_core::lifecycle::SandboxStatus::ALL.len(),
        "every status is present"
    );
    let host_s = host.to_string();
    let h = [("host_id", host_s.as_str())];
    let host_row = store.get_host(host).await.unwrap();
    assert_eq!(
        value(&samples, "wrenn_host_cpu_cores", &h),
        f64::from(host_row.cpu_cores)
    );
    assert_eq!(
        value(&samples, "wrenn_host_memory_bytes", &h),
        f64::from(host_row.memory_mb) * 1024.0 * 1024.0
    );
    assert_eq!(value(&samples, "wrenn_host_reserved_vcpus", &h), 0.0);
    assert_eq!(
        value(
            &samples,
            "wrenn_host_info",
            &[
                ("host_id", &host_s),
                ("status", "online"),
                ("runtime", "unknown")
            ]
        ),
        1.0
    );
    assert!(
        find(&samples, "wrenn_host_capsules", &h).is_empty(),
        "a stopped capsule is not a host's live capsule"
    );
    // A live capsule is counted on its host.
    let again = json(
        s.as_user(&ada, Method::POST, "/v1/capsules")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let again = again.1["id"].as_str().unwrap().to_owned();
    let (_, _, samples) = scrape(&s, None).await;
    let live = find(&samples, "wrenn_host_capsules", &h);
    assert_eq!(live.len(), 1, "{live:?}");
    assert!(["starting", "running"].contains(&live[0].labels["status"].as_str()));
    assert!(value(&samples, "wrenn_host_reserved_vcpus", &h) > 0.0);
    // The scrape itself is a route too.
    assert!(!find(&samples, http, &[("route", "/metrics"), ("status", "200")]).is_empty());
    // Process metrics, where the crate reads them (Linux).
    if cfg!(target_os = "linux") {
        assert!(value(&samples, "process_resident_memory_bytes", &[]) > 0.0);
    }
    let _ = again;
    s.stop().await;
}

#[tokio::test]
async fn a_failed_lifecycle_call_is_counted_by_its_outcome() {
    let s = server(&[("WRENN_METRICS_OPEN", "1")]).await;
    online_host(&s.store()).await;
    let ada = s.user("ada@x.io").await;
    s.agents.fail_next(
        wrenn_core::testing::Op::Create,
        wrenn_core::agents::HostCallError::ResourceExhausted("full".into()),
    );
    let created = json(
        s.as_user(&ada, Method::POST, "/v1/capsules")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(created.0 < 300, "{created:?}");
    let series = [("operation", "create"), ("outcome", "resource_exhausted")];
    let mut seen = false;
    for _ in 0..200 {
        let (_, _, samples) = scrape(&s, None).await;
        if !find(
            &samples,
            "wrenn_lifecycle_operation_duration_seconds_count",
            &series,
        )
        .is_empty()
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "the failed create is recorded with its outcome");
    s.stop().await;
}

#[tokio::test]
async fn the_event_consumer_records_the_age_of_what_it_handles() {
    let s = server(&[("WRENN_METRICS_OPEN", "true")]).await;
    let host = online_host(&s.store()).await;
    // Let the consumer create its group before the event is published.
    let mut handled = 0.0;
    for attempt in 0..200 {
        if attempt % 20 == 0 {
            let event = SandboxEvent::new(SandboxEventKind::Paused, SandboxId::new(), host);
            s.ctx
                .events
                .publish(SANDBOX_STREAM, &Event::Sandbox(event))
                .await
                .unwrap();
        }
        let (_, _, samples) = scrape(&s, None).await;
        handled = find(
            &samples,
            "wrenn_sandbox_events_total",
            &[("outcome", "acked")],
        )
        .first()
        .map_or(0.0, |s| s.value);
        if handled >= 1.0 {
            assert!(value(&samples, "wrenn_sandbox_event_age_seconds_count", &[]) >= 1.0);
            assert_eq!(
                value(&samples, "wrenn_sandbox_events_redelivered_total", &[]),
                0.0
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handled >= 1.0, "the consumer handled an event");
    s.stop().await;
}

#[tokio::test]
async fn a_scrape_during_a_database_outage_answers_quickly_with_what_it_has() {
    let Some(db) = OwnDatabase::create("wrenn_metrics").await else {
        return;
    };
    let store = wrenn_db::connect(&db.url()).await.expect("migrated store");
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_on(store, dir.path(), &[("WRENN_METRICS_OPEN", "true")], None).await;
    online_host(&s.store()).await;
    let ada = s.user("ada@x.io").await;
    let resp = s
        .as_user(&ada, Method::GET, "/v1/capsules")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _, samples) = scrape(&s, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value(&samples, "wrenn_scrape_store_up", &[]), 1.0);
    assert!(!find(&samples, "wrenn_capsules", &[]).is_empty());

    // A hung database: another session holds the capsules' table locked, so the
    // scrape's queries wait. The scrape gives up on the store and answers.
    {
        use sqlx::{Connection, Executor};
        let mut locker = sqlx::PgConnection::connect(&db.url()).await.unwrap();
        locker.execute("BEGIN").await.unwrap();
        locker
            .execute("LOCK TABLE sandboxes IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let (status, text, samples) = scrape(&s, None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(value(&samples, "wrenn_scrape_store_up", &[]), 0.0);
        assert!(
            find(&samples, "wrenn_capsules", &[]).is_empty(),
            "no stale store gauges"
        );
        assert!(find(&samples, "wrenn_host_info", &[]).is_empty());
        assert!(
            !find(
                &samples,
                "wrenn_http_request_duration_seconds_count",
                &[("route", "/v1/capsules")]
            )
            .is_empty(),
            "the series that need no store are all there"
        );
        locker.execute("ROLLBACK").await.unwrap();
        locker.close().await.unwrap();
    }
    let (_, _, samples) = scrape(&s, None).await;
    assert_eq!(
        value(&samples, "wrenn_scrape_store_up", &[]),
        1.0,
        "back once the lock is gone"
    );

    // The database gone: every connection terminated, reconnecting fails.
    db.drop_now().await;
    for _ in 0..2 {
        let (status, text, samples) = scrape(&s, None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(value(&samples, "wrenn_scrape_store_up", &[]), 0.0);
        assert!(find(&samples, "wrenn_capsules", &[]).is_empty());
        assert!(!find(&samples, "wrenn_http_request_duration_seconds_count", &[]).is_empty());
    }
    // Shutting down needs no database either (its errors are logged).
    s.shutdown.cancel();
    let _ = s.handle.await;
}
