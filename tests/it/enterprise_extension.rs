//! Boots the control plane with `examples/enterprise_extension.rs`'s extension and
//! proves its route, worker and event hook — and that a route clashing with a core
//! route is a startup error naming both.

#[path = "../../examples/enterprise_extension.rs"]
#[allow(dead_code)]
mod example;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use example::UsageMeter;
use wrenn_core::audit::Actor;
use wrenn_core::auth::ApiKey;
use wrenn_core::config::Config;
use wrenn_core::id::{ApiKeyId, HostId, TeamId, UserId};
use wrenn_core::lifecycle::CreateSandbox;
use wrenn_core::model::{self, HostKind, UserStatus};
use wrenn_core::repo::{HostSpec, NewHost, NewTeam, NewUser, Store};
use wrenn_core::testing::FakeAgents;
use wrenn_cpserver::{Builder, ServerError};
use wrenn_extension::{Extension, ServerContext};

fn config(dir: &std::path::Path) -> Config {
    let dir = dir.to_string_lossy().into_owned();
    Config::from_lookup(|k| (k == "WRENN_DIR").then(|| dir.clone())).expect("config")
}

async fn seed(store: &Arc<dyn Store>) -> (TeamId, String) {
    let user = store
        .create_user(NewUser {
            id: UserId::new(),
            email: "ops@example.com".into(),
            password_hash: None,
            name: "Ops".into(),
            status: UserStatus::Active,
            is_admin: false,
        })
        .await
        .unwrap();
    let team = TeamId::new();
    store
        .create_team(
            NewTeam {
                id: team,
                name: "Ops".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            user.id,
            true,
        )
        .await
        .unwrap();
    let key = ApiKey::generate();
    store
        .create_api_key(model::ApiKey {
            id: ApiKeyId::new(),
            team_id: team,
            name: "ci".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().into(),
            created_by: Some(user.id),
            created_at: chrono::Utc::now(),
            last_used: None,
        })
        .await
        .unwrap();
    let host = HostId::new();
    store
        .create_host(NewHost {
            id: host,
            kind: HostKind::Regular,
            team_id: None,
            provider: "test".into(),
            availability_zone: "a".into(),
            created_by: None,
        })
        .await
        .unwrap();
    let spec = HostSpec {
        address: "127.0.0.1:1".into(),
        arch: "x86_64".into(),
        cpu_cores: 64,
        memory_mb: 262_144,
        disk_gb: 4000,
    };
    assert!(store.register_host(host, &spec).await.unwrap());
    (team, key.expose_secret().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_route_worker_and_hook_all_run() {
    let db = wrenn_db::testing::TestStores::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let store = db.store();
    let (team, key) = seed(&store).await;
    let meter = UsageMeter::default();
    let agents = FakeAgents::new();
    let server = Builder::new(config(dir.path()))
        .with_store(store.clone())
        .with_host_agents(agents.clone())
        .with_extension(Arc::new(meter.clone()))
        .with_shutdown_grace(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let ctx: ServerContext = server.context().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(server.serve(listener, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));

    // The hook sees the lifecycle's events through the consumer.
    tokio::time::sleep(Duration::from_millis(300)).await; // consumer group created
    let sb = ctx
        .lifecycle
        .create(team, &Actor::system(), CreateSandbox::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut body = serde_json::Value::Null;
    for _ in 0..50 {
        let resp = http
            .get(format!("{base}/v1/ext/usage"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        body = resp.json().await.unwrap();
        if body["events_seen"]["started"] == 1 && body["samples"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body["team_id"], team.to_string());
    assert_eq!(body["capsules_by_status"]["running"], 1, "{body}");
    assert_eq!(body["events_seen"]["started"], 1, "{body}");
    assert!(body["samples"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(
        agents.status_on_host(sb.id),
        Some(wrenn_core::lifecycle::SandboxStatus::Running)
    );

    // The route is authenticated like every core route.
    let resp = http
        .get(format!("{base}/v1/ext/usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unauthorized");

    // Shutdown cancels the worker, which returns on its own.
    assert!(!meter.observed.worker_stopped.load(Ordering::SeqCst));
    stop.cancel();
    handle.await.unwrap().unwrap();
    assert!(meter.observed.worker_stopped.load(Ordering::SeqCst));
}

struct Clashing;

#[async_trait::async_trait]
impl Extension for Clashing {
    fn name(&self) -> &str {
        "clashing"
    }
    fn routes(&self, _ctx: &ServerContext) -> axum::Router {
        axum::Router::new().route("/health", axum::routing::get(|| async { "mine" }))
    }
}

#[tokio::test]
async fn a_route_clashing_with_a_core_route_is_a_startup_error() {
    let db = wrenn_db::testing::TestStores::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let err = Builder::new(config(dir.path()))
        .with_store(db.store())
        .with_extension(Arc::new(Clashing))
        .build()
        .await
        .unwrap_err();
    match err {
        ServerError::Extension { extension, message } => {
            assert_eq!(extension, "clashing");
            assert!(message.contains("/health"), "{message}");
        }
        other => panic!("expected an extension error, got {other}"),
    }
}
