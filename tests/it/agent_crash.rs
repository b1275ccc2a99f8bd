//! A host agent killed in the middle of a create leaves the capsule in `error`, never
//! stuck in `starting`: the real `wrenn-agent` binary (process runtime) is frozen
//! with SIGSTOP while the control plane's create call is in flight, then killed. The
//! capsules it had booted ahead of time (warm, unclaimed) die with it.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wrenn_core::audit::Actor;
use wrenn_core::id::{HostId, TeamId, UserId};
use wrenn_core::lifecycle::{CreateSandbox, SandboxStatus};
use wrenn_core::model::{HostKind, UserStatus};
use wrenn_core::repo::{HostSpec, NewHost, NewTeam, NewUser, Store};

/// Builds the agent and envd binaries (once per test run) and returns their paths.
fn binaries() -> (std::path::PathBuf, std::path::PathBuf) {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "wrenn-agent",
            "--bin",
            "wrenn-agent",
            "-p",
            "wrenn-envd",
            "--bin",
            "wrenn-envd",
        ])
        .status()
        .expect("cargo build");
    assert!(
        status.success(),
        "building wrenn-agent and wrenn-envd failed"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    (
        target.join("debug/wrenn-agent"),
        target.join("debug/wrenn-envd"),
    )
}

/// Starts the agent binary on `wrenn_dir`, listening on `port`, with `extra` variables.
fn start_agent(
    agent_bin: &std::path::Path,
    envd_bin: &std::path::Path,
    wrenn_dir: &std::path::Path,
    port: u16,
    extra: &[(&str, &str)],
) -> std::process::Child {
    Command::new(agent_bin)
        .env("WRENN_DIR", wrenn_dir)
        .env("WRENN_HOST_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("WRENN_ENVD_BIN", envd_bin)
        .env(
            wrenn_agent::image::CACHE_ENV,
            wrenn_agent::image::test_store_dir(),
        )
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("start wrenn-agent")
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Live (not zombie) processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces, so split after its `)`.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && state != Some("Z") {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

async fn team(store: &Arc<dyn Store>) -> TeamId {
    let user = UserId::new();
    store
        .create_user(NewUser {
            id: user,
            email: "crash@example.com".into(),
            password_hash: None,
            name: "Crash".into(),
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
                name: "Crash".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            user,
            true,
        )
        .await
        .unwrap();
    team
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_create_leaves_error_not_starting() {
    let (agent_bin, envd_bin) = binaries();
    // The default image, built once per machine and shared through WRENN_IMAGE_CACHE.
    tokio::task::spawn_blocking(wrenn_agent::image::ensure_shared_for_tests)
        .await
        .unwrap()
        .expect("the default image");
    let db = wrenn_db::testing::TestStores::sqlite().await;
    let store = db.store();
    let dir = tempfile::tempdir().unwrap();
    let port = wrenn_core::testing::unused_listen_port();
    let mut agent = start_agent(&agent_bin, &envd_bin, &dir.path().join("agent"), port, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the agent did not start listening"
        );
        assert!(
            agent.try_wait().unwrap().is_none(),
            "the agent exited at start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The control plane, in process, over the real store, with the agent as its host.
    let host = HostId::new();
    store
        .create_host(NewHost {
            id: host,
            kind: HostKind::Regular,
            team_id: None,
            provider: "t".into(),
            availability_zone: "a".into(),
            created_by: None,
        })
        .await
        .unwrap();
    let spec = HostSpec {
        address: format!("127.0.0.1:{port}"),
        arch: "x86_64".into(),
        cpu_cores: 2,
        memory_mb: 16384,
        disk_gb: 100,
    };
    assert!(store.register_host(host, &spec).await.unwrap());
    let config = {
        let d = dir.path().join("cp").to_string_lossy().into_owned();
        wrenn_core::config::Config::from_lookup(|k| (k == "WRENN_DIR").then(|| d.clone())).unwrap()
    };
    let server = wrenn_cpserver::Builder::new(config)
        .with_store(store.clone())
        .with_scheduler(Arc::new(wrenn_core::scheduler::SingleHost::new(
            store.clone(),
            host,
        )))
        .build()
        .await
        .unwrap();
    let ctx = server.context().clone();
    let team = team(&store).await;

    // The agent keeps capsules booted ahead of time: init programs (its children)
    // whose PID 1 (envd) runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let warm = loop {
        let warm: Vec<(u32, Vec<u32>)> = children(agent.id())
            .into_iter()
            .map(|outer| (outer, children(outer)))
            .filter(|(_, pid1)| !pid1.is_empty())
            .collect();
        if !warm.is_empty() {
            break warm;
        }
        assert!(
            Instant::now() < deadline,
            "the agent booted no warm capsule"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let sandboxes = dir.path().join("agent/sandboxes");
    let warm_ids: Vec<String> = std::fs::read_dir(&sandboxes)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!warm_ids.is_empty(), "warm capsules have directories");

    // Freeze the agent, start a create (its RPC hangs), then kill the agent.
    signal(agent.id(), "-STOP");
    let sb = ctx
        .lifecycle
        .create(team, &Actor::system(), CreateSandbox::default())
        .await
        .unwrap();
    assert_eq!(sb.status, SandboxStatus::Starting);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.get_sandbox(sb.id).await.unwrap().status,
        SandboxStatus::Starting,
        "the call is in flight"
    );
    signal(agent.id(), "-KILL");
    let _ = agent.wait();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = SandboxStatus::Starting;
    while Instant::now() < deadline {
        status = store.get_sandbox(sb.id).await.unwrap().status;
        if status != SandboxStatus::Starting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        SandboxStatus::Error,
        "a create whose agent died ends in error"
    );
    // Nobody claimed the warm capsules: their processes died with the agent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let processes: Vec<u32> = warm
        .iter()
        .flat_map(|(outer, pid1)| std::iter::once(*outer).chain(pid1.iter().copied()))
        .collect();
    while processes.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "warm capsules outlived their agent: {:?} still run",
            processes.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An agent started again on the same directory sweeps what they left: their
    // directories, network namespaces and cgroups.
    let mut again = start_agent(
        &agent_bin,
        &envd_bin,
        &dir.path().join("agent"),
        port,
        &[("WRENN_WARM_CAPSULES", "0")],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = || {
        warm_ids
            .iter()
            .filter(|id| {
                sandboxes.join(id).exists()
                    || std::path::Path::new("/run/netns")
                        .join(wrenn_agent::network::netns_name(id))
                        .exists()
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    while !left().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the restarted agent did not sweep the warm capsules {:?}",
            left()
        );
        assert!(again.try_wait().unwrap().is_none(), "the agent exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(again.id(), "-TERM");
    assert!(again.wait().unwrap().success(), "the agent stops cleanly");
    ctx.lifecycle.wait_idle().await;
}
