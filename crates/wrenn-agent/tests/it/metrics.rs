//! The agent's `GET /metrics` over the real process runtime: a capsule's create,
//! pause, resume, hibernate, restore and destroy show as runtime operations labelled
//! `process`, the gRPC calls by method and status, sandboxes by status and the host's
//! capacity and allocations. And end to end: the real control plane with the real
//! `wrenn-agent` binary (its `WRENN_AGENT_METRICS_ADDR`), where the control plane's
//! lifecycle series learn the host's runtime.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::{AgentProcess, ControlPlaneUnderTest, eventually};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::{Agent, AgentOptions};
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;
use wrenn_proto::hostagent::v1 as pb;

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format as the encoder writes it (label values here never hold
/// quotes or commas).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

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

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, want);
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0].value
}

async fn scrape(url: &str) -> Vec<Sample> {
    let resp = reqwest::get(url).await.expect("scrape");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4");
    parse(&resp.text().await.unwrap())
}

#[test]
fn the_parser_reads_names_labels_and_values() {
    let got = parse("# TYPE x gauge\nx 1\ny_bucket{a=\"b\",le=\"+Inf\"} 2\n");
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].labels["a"], "b");
    assert_eq!(got[1].labels["le"], "+Inf");
    assert_eq!(got[1].value, 2.0);
}

#[tokio::test]
async fn agent_metrics_over_the_process_runtime() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the process runtime needs root");
        return;
    }
    let dir = tempfile::Builder::new().prefix("wm").tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let envd = tokio::task::spawn_blocking(common::envd_binary)
        .await
        .unwrap();
    let result = tokio::spawn(scenario(layout.clone(), envd.clone())).await;
    let rt = ProcessRuntime::new(layout.clone(), envd, common::process_options().await)
        .await
        .unwrap();
    let _ = rt.sweep(&[]).await;
    for config in rt.hibernated().await.unwrap_or_default() {
        let _ = rt.destroy(config.id).await;
    }
    rt.removals_settled().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(layout: Layout, envd: PathBuf) {
    let options = ProcessRuntimeOptions {
        init_program: Some(PathBuf::from(env!("CARGO_BIN_EXE_wrenn-agent"))),
        ..common::process_options().await
    };
    let runtime = ProcessRuntime::new(layout.clone(), envd, options)
        .await
        .expect("the process runtime starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = Agent::start(
        AgentOptions::new(Arc::new(runtime), layout.clone(), listener)
            .with_metrics_listener(metrics_listener),
    )
    .await
    .unwrap();
    let url = format!("http://{}/metrics", agent.metrics_addr().expect("served"));
    let channel = common::connect_channel(agent.local_addr()).await;
    let c = common::agent_client(&channel);

    let before = scrape(&url).await;
    assert_eq!(
        value(&before, "wrenn_agent_info", &[("runtime", "process")]),
        1.0
    );
    assert_eq!(
        find(&before, "wrenn_agent_sandboxes", &[]).len(),
        wrenn_core::lifecycle::SandboxStatus::ALL.len()
    );
    assert!(value(&before, "wrenn_agent_host_cpu_cores", &[]) >= 1.0);
    assert!(value(&before, "wrenn_agent_host_memory_total_bytes", &[]) > 0.0);
    assert!(value(&before, "wrenn_agent_host_disk_total_bytes", &[]) > 0.0);
    let ratio = value(&before, "wrenn_agent_host_cpu_used_ratio", &[]);
    assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 0.0);

    let id = SandboxId::new();
    let sid = id.to_string();
    c.clone()
        .create_sandbox(common::create_request(id, 0))
        .await
        .unwrap();
    let running = scrape(&url).await;
    assert_eq!(
        value(&running, "wrenn_agent_sandboxes", &[("status", "running")]),
        1.0
    );
    assert!(value(&running, "wrenn_agent_allocated_vcpus", &[]) >= 1.0);
    assert!(value(&running, "wrenn_agent_allocated_memory_bytes", &[]) > 0.0);

    c.clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: sid.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        value(
            &scrape(&url).await,
            "wrenn_agent_sandboxes",
            &[("status", "paused")]
        ),
        1.0
    );
    c.clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.clone()
        .hibernate_sandbox(pb::HibernateSandboxRequest {
            sandbox_id: sid.clone(),
        })
        .await
        .unwrap();
    c.clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.clone()
        .destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: sid.clone(),
        })
        .await
        .unwrap();
    // A sandbox the agent does not know.
    let err = c
        .clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: SandboxId::new().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let after = scrape(&url).await;
    let ops = "wrenn_agent_runtime_operation_duration_seconds_count";
    for op in [
        "create",
        "pause",
        "resume",
        "hibernate",
        "restore",
        "destroy",
    ] {
        assert!(
            value(
                &after,
                ops,
                &[("runtime", "process"), ("operation", op), ("outcome", "ok")]
            ) >= 1.0,
            "{op}"
        );
    }
    let grpc = "wrenn_agent_grpc_request_duration_seconds_count";
    let call = |m: &str| format!("hostagent.v1.HostAgentService/{m}");
    assert_eq!(
        value(
            &after,
            grpc,
            &[("method", &call("CreateSandbox")), ("code", "Ok")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            grpc,
            &[("method", &call("ResumeSandbox")), ("code", "Ok")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            grpc,
            &[("method", &call("PauseSandbox")), ("code", "NotFound")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "wrenn_agent_sandboxes", &[("status", "running")]),
        0.0
    );
    assert_eq!(value(&after, "wrenn_agent_allocated_vcpus", &[]), 0.0);
    assert!(
        !after
            .iter()
            .any(|s| s.labels.values().any(|v| v.contains(&sid))),
        "no sandbox id in a label"
    );
    agent.shutdown().await;
}

/// A team API key for `cp` (user, team and key made in its store).
async fn team_key(cp: &ControlPlaneUnderTest) -> String {
    use wrenn_core::id::{ApiKeyId, TeamId, UserId};
    use wrenn_core::repo::{NewTeam, NewUser};
    let user = cp
        .store
        .create_user(NewUser {
            id: UserId::new(),
            email: "metrics@x.io".into(),
            password_hash: None,
            name: "Metrics".into(),
            status: wrenn_core::model::UserStatus::Active,
            is_admin: false,
        })
        .await
        .unwrap();
    let team = cp
        .store
        .create_team(
            NewTeam {
                id: TeamId::new(),
                name: "Metrics".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            user.id,
            true,
        )
        .await
        .unwrap();
    let key = wrenn_core::auth::ApiKey::generate();
    cp.store
        .create_api_key(wrenn_core::model::ApiKey {
            id: ApiKeyId::new(),
            team_id: team.id,
            name: "metrics".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().to_owned(),
            created_by: Some(user.id),
            created_at: chrono::Utc::now(),
            last_used: None,
        })
        .await
        .unwrap();
    key.expose_secret().to_owned()
}

#[tokio::test]
async fn the_control_plane_learns_the_runtime_of_a_registered_agent() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the process runtime needs root");
        return;
    }
    let cp = ControlPlaneUnderTest::start_with(&[("WRENN_METRICS_OPEN", "true")]).await;
    let dir = tempfile::Builder::new().prefix("wmc").tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", wrenn_core::testing::unused_listen_port());
    let metrics_addr = format!("127.0.0.1:{}", wrenn_core::testing::unused_listen_port());
    let (host, token) = cp.pending_host().await;
    let agent = AgentProcess::start_with(
        &cp,
        dir.path(),
        &listen,
        Some(&token),
        &[("WRENN_AGENT_METRICS_ADDR", metrics_addr.as_str())],
    );
    eventually("the host registers and comes online", || async {
        let h = cp.store.get_host(host).await.unwrap();
        h.status == wrenn_core::lifecycle::HostStatus::Online && !h.cert_fingerprint.is_empty()
    })
    .await;
    let key = team_key(&cp).await;
    let http = Client::new();
    let call = |method: Method, path: &str| {
        http.request(method, format!("{}{path}", cp.url))
            .header("X-API-Key", &key)
    };
    let created: Value = call(Method::POST, "/v1/capsules")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("capsule id").to_owned();
    eventually("the capsule runs", || {
        let req = call(Method::GET, &format!("/v1/capsules/{id}"));
        async move {
            let got: Value = req.send().await.unwrap().json().await.unwrap();
            got["status"] == "running"
        }
    })
    .await;
    let resp = call(Method::DELETE, &format!("/v1/capsules/{id}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    eventually("the capsule stops", || {
        let req = call(Method::GET, &format!("/v1/capsules/{id}"));
        async move {
            let got: Value = req.send().await.unwrap().json().await.unwrap();
            got["status"] == "stopped"
        }
    })
    .await;

    let cp_samples = scrape(&format!("{}/metrics", cp.url)).await;
    let ops = "wrenn_lifecycle_operation_duration_seconds_count";
    for op in ["create", "destroy"] {
        assert_eq!(
            value(
                &cp_samples,
                ops,
                &[("operation", op), ("runtime", "process"), ("outcome", "ok")]
            ),
            1.0,
            "{op}"
        );
    }
    let host_s = host.to_string();
    assert_eq!(
        value(
            &cp_samples,
            "wrenn_host_info",
            &[("host_id", &host_s), ("runtime", "process")]
        ),
        1.0
    );
    assert!(
        value(
            &cp_samples,
            "wrenn_host_heartbeat_age_seconds",
            &[("host_id", &host_s)]
        ) >= 0.0
    );

    // The agent binary serves its own on WRENN_AGENT_METRICS_ADDR.
    let agent_samples = scrape(&format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(
        value(
            &agent_samples,
            "wrenn_agent_runtime_operation_duration_seconds_count",
            &[
                ("runtime", "process"),
                ("operation", "create"),
                ("outcome", "ok")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &agent_samples,
            "wrenn_agent_grpc_request_duration_seconds_count",
            &[
                ("method", "hostagent.v1.HostAgentService/DestroySandbox"),
                ("code", "Ok")
            ]
        ),
        1.0
    );
    agent.stop();
}
