//! Liveness, re-adoption and admission of the host agent, with the real process
//! runtime (namespaces, cgroups, overlayfs, the real `wrenn-envd`) behind the real
//! gRPC service, and a loopback stand-in for the control plane's sandbox-event
//! endpoint. Needs root, as the process runtime does.
//!
//! - a capsule whose PID 1 is killed from the host is reported `failed` with the reason
//!   within moments, torn down completely, and its processes reaped;
//! - a capsule whose envd stops answering (SIGSTOP) is caught by the health checks,
//!   while a paused capsule is never flagged;
//! - after an agent crash, a new agent adopts the capsules that still run (their
//!   processes survive, exec works, their death is still noticed) and reports those
//!   whose PID 1 died while it was down;
//! - a create beyond the host's memory or vCPUs is refused with RESOURCE_EXHAUSTED.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Envd, FakeControlPlane, create_request, eventually};
use tonic::Code;
use wrenn_agent::manager::{HostCapacity, ManagerSettings};
use wrenn_agent::registration::{Credentials, HostCredentials};
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions, state};
use wrenn_agent::{Agent, AgentHandle, AgentOptions};
use wrenn_core::config::Overcommit;
use wrenn_core::id::{HostId, SandboxId};
use wrenn_core::layout::Layout;
use wrenn_proto::hostagent::v1 as pb;

// Runs before libtest's `main`: when the runtime starts this binary as a sandbox's init
// step, this sets the sandbox up and execs envd; otherwise it returns at once.
#[used]
#[allow(unsafe_code)] // `link_section` is an unsafe attribute; the function is plain Rust.
#[unsafe(link_section = ".init_array")]
static SANDBOX_INIT: extern "C" fn() = {
    extern "C" fn sandbox_init() {
        wrenn_agent::init::main_if_init();
    }
    sandbox_init
};

/// An agent over the process runtime in `dir`, reporting to `cp`.
struct Node {
    agent: AgentHandle,
    runtime: Arc<ProcessRuntime>,
    client: pb::host_agent_service_client::HostAgentServiceClient<tonic::transport::Channel>,
    /// The channel `client` runs on (for [`Envd`]).
    channel: tonic::transport::Channel,
}

fn fast_settings() -> ManagerSettings {
    ManagerSettings {
        drain_grace: Duration::from_millis(100),
        health_interval: Duration::from_millis(300),
        health_timeout: Duration::from_millis(500),
        health_failures: 2,
        ..ManagerSettings::default()
    }
}

async fn start_node(dir: &Path, cp: &FakeControlPlane, settings: ManagerSettings) -> Node {
    let envd = tokio::task::spawn_blocking(common::envd_binary)
        .await
        .unwrap();
    let layout = Layout::new(dir);
    let runtime = Arc::new(
        ProcessRuntime::new(layout.clone(), envd, common::process_options().await)
            .await
            .expect("the process runtime needs root, cgroups and overlayfs"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut options = AgentOptions::new(runtime.clone(), layout, listener)
        .with_control_plane(cp.url.clone())
        .with_credentials(Credentials::in_memory(HostCredentials::with_jwt(
            HostId::new(),
            "host-jwt",
        )));
    options.manager = settings;
    options.events.initial_backoff = Duration::from_millis(50);
    let agent = Agent::start(options).await.expect("agent starts");
    let channel = common::connect_channel(agent.local_addr()).await;
    let client = common::agent_client(&channel);
    Node {
        agent,
        runtime,
        client,
        channel,
    }
}

impl Node {
    /// Stops the agent and removes whatever capsules it left on the host (hibernated at
    /// shutdown, or being torn down), so the test leaves nothing behind.
    async fn finish(self) {
        self.agent.shutdown().await;
        use wrenn_agent::runtime::Runtime as _;
        let _ = self.runtime.sweep(&[]).await;
        for config in self.runtime.hibernated().await.unwrap_or_default() {
            let _ = self.runtime.destroy(config.id).await;
        }
        self.runtime.removals_settled().await;
    }

    async fn create(&self) -> SandboxId {
        let id = SandboxId::new();
        let mut req = create_request(id, 0);
        req.memory_mb = 256;
        req.vcpus = 1;
        self.client
            .clone()
            .create_sandbox(req)
            .await
            .expect("create");
        id
    }

    /// Runs `sh -c line` in capsule `id` through the agent: (stdout, exit code).
    async fn sh(&self, id: SandboxId, line: &str) -> Result<(String, i32), tonic::Status> {
        let ran = Envd::of(&self.channel, id).sh(line).await?;
        Ok((ran.stdout, ran.exit_code))
    }

    async fn status(&self, id: SandboxId) -> Option<pb::SandboxStatus> {
        let list = self
            .client
            .clone()
            .list_sandboxes(pb::ListSandboxesRequest {})
            .await
            .unwrap()
            .into_inner();
        list.sandboxes
            .iter()
            .find(|s| s.sandbox_id == id.to_string())
            .map(|s| s.status())
    }

    fn pid1(&self, id: SandboxId) -> i32 {
        state::find_pid1(&self.runtime.sandbox_cgroup(id)).expect("PID 1 in the cgroup")
    }

    async fn destroy(&self, id: SandboxId) {
        let _ = self
            .client
            .clone()
            .destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: id.to_string(),
            })
            .await;
    }
}

fn parent_of(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Gone from the process table (neither running nor a zombie).
fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), sig)
        .expect("signal");
}

/// Everything the process runtime leaves on the host for sandbox `id` is gone, once
/// the teardown that follows a destroy's answer has finished.
async fn assert_no_leftovers(node: &Node, dir: &Path, id: SandboxId) {
    node.runtime.removals_settled().await;
    assert!(!node.runtime.sandbox_cgroup(id).exists(), "cgroup left");
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists(),
        "netns left"
    );
    assert!(
        !Layout::new(dir).sandbox_dir(id).exists(),
        "sandbox directory left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id.to_string()), "mounts left");
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("wrl").tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_kill_9_of_pid_1_is_reported_torn_down_and_reaped() {
    let dir = tempdir();
    let cp = FakeControlPlane::start(0).await;
    let node = start_node(dir.path(), &cp, fast_settings()).await;
    let id = node.create().await;
    let pid1 = node.pid1(id);
    let parent = parent_of(pid1);

    let killed = Instant::now();
    signal(pid1, rustix::process::Signal::KILL);
    let event = cp.wait_for("failed", id).await;
    eprintln!("death reported after {:?}", killed.elapsed());
    let error = event.body["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("SIGKILL"), "{error}");
    assert!(
        !error.contains(&dir.path().display().to_string()),
        "a host path leaked into the reason: {error}"
    );
    assert!(killed.elapsed() < Duration::from_secs(5), "too slow");

    assert_eq!(node.status(id).await, Some(pb::SandboxStatus::Error));
    let exec = node.sh(id, "true").await.unwrap_err();
    assert_eq!(exec.code(), Code::FailedPrecondition, "{exec:?}");
    eventually("the init's parent is reaped", || async { gone(parent) }).await;
    assert!(gone(pid1));
    assert_no_leftovers(&node, dir.path(), id).await;

    // Destroying the failed capsule is clean and final.
    node.destroy(id).await;
    assert_eq!(node.status(id).await, None);
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_a_stopped_envd_fails_its_health_checks_but_a_paused_capsule_does_not() {
    let dir = tempdir();
    let cp = FakeControlPlane::start(0).await;
    let node = start_node(dir.path(), &cp, fast_settings()).await;
    let hung = node.create().await;
    let paused = node.create().await;
    node.client
        .clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: paused.to_string(),
        })
        .await
        .expect("pause");

    let pid1 = node.pid1(hung);
    let stopped = Instant::now();
    signal(pid1, rustix::process::Signal::STOP);
    let event = cp.wait_for("failed", hung).await;
    eprintln!("hung envd reported after {:?}", stopped.elapsed());
    let error = event.body["error"].as_str().unwrap_or_default();
    assert!(error.contains("health checks"), "{error}");
    assert_eq!(node.status(hung).await, Some(pb::SandboxStatus::Error));
    eventually("the stopped envd is killed", || async { gone(pid1) }).await;
    assert_no_leftovers(&node, dir.path(), hung).await;

    // Many health intervals later the frozen capsule is still paused, and resumes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.status(paused).await, Some(pb::SandboxStatus::Paused));
    assert!(
        !cp.received()
            .iter()
            .any(|r| r.body["event"] == "failed" && r.body["sandbox_id"] == paused.to_string()),
        "a paused capsule was flagged"
    );
    node.client
        .clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: paused.to_string(),
            ..Default::default()
        })
        .await
        .expect("resume");
    assert_eq!(
        node.sh(paused, "echo ok").await.unwrap(),
        ("ok\n".into(), 0)
    );
    node.destroy(hung).await;
    node.destroy(paused).await;
    node.finish().await;
}

/// Starts an agent on its own Tokio runtime (a thread), creates capsules, then kills
/// that runtime without any shutdown — what an agent crash leaves behind.
fn crashed_agent(dir: &Path, count: usize) -> Vec<(SandboxId, i32)> {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async {
            let cp = FakeControlPlane::start(0).await;
            let node = start_node(&dir, &cp, fast_settings()).await;
            let mut out = Vec::new();
            for _ in 0..count {
                let id = node.create().await;
                out.push((id, node.pid1(id)));
            }
            // Something long-running that must survive the agent's restart.
            let (_, code) = node
                .sh(
                    out[0].0,
                    "sleep 1000 >/dev/null 2>&1 & echo $! > /tmp/survivor",
                )
                .await
                .unwrap();
            assert_eq!(code, 0);
            std::mem::forget(node);
            out
        });
        // Dropping the runtime drops every task without running it further, as a crash
        // would; but unlike a crash it cannot stop the blocking threads, so wait for
        // them: a boot step left running would make its namespace, cgroup or mount
        // after the next agent's sweep, and leak it.
        rt.shutdown_timeout(Duration::from_secs(30));
        out
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_after_an_agent_crash_keeps_live_capsules_and_reports_dead_ones() {
    let dir = tempdir();
    let cp = FakeControlPlane::start(0).await;
    let before = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || crashed_agent(&dir, 2)
    })
    .await
    .unwrap();
    let (alive, alive_pid1) = before[0];
    let (dead, dead_pid1) = before[1];
    // While no agent runs, one capsule's init dies.
    signal(dead_pid1, rustix::process::Signal::KILL);
    eventually("the dead init exits", || async { state_gone(dead_pid1) }).await;

    let started = Instant::now();
    let node = start_node(dir.path(), &cp, fast_settings()).await;
    eprintln!("agent restart with adoption took {:?}", started.elapsed());

    assert_eq!(node.status(alive).await, Some(pb::SandboxStatus::Running));
    assert_eq!(node.pid1(alive), alive_pid1);
    let (out, code) = node
        .sh(alive, "kill -0 $(cat /tmp/survivor) && echo survived")
        .await
        .expect("exec after adoption");
    assert_eq!((out.as_str(), code), ("survived\n", 0));

    let event = cp.wait_for("failed", dead).await;
    let error = event.body["error"].as_str().unwrap_or_default();
    assert!(error.contains("while the host agent was down"), "{error}");
    assert_eq!(node.status(dead).await, Some(pb::SandboxStatus::Error));
    assert_no_leftovers(&node, dir.path(), dead).await;

    // The adopted capsule is watched like any other (it is not this agent's child).
    signal(alive_pid1, rustix::process::Signal::KILL);
    let event = cp.wait_for("failed", alive).await;
    assert!(
        event.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("SIGKILL")
            || event.body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("exited"),
        "{:?}",
        event.body
    );
    assert_no_leftovers(&node, dir.path(), alive).await;
    node.destroy(alive).await;
    node.destroy(dead).await;
    node.finish().await;
}

/// The process is gone or a zombie.
fn state_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_a_capsule_beyond_the_hosts_memory_or_vcpus() {
    let dir = tempdir();
    let cp = FakeControlPlane::start(0).await;
    let mut settings = fast_settings();
    // 1.5 GiB × 1.0 − 512 MiB = 1024 MiB and 1 CPU × 2 = 2 vCPUs for capsules.
    settings.capacity = Some(HostCapacity {
        memory_mb: 1536,
        cpus: 1,
        overcommit: Overcommit {
            memory: 1.0,
            cpu: 2.0,
            memory_reserve_mb: 512,
        },
    });
    let node = start_node(dir.path(), &cp, settings).await;
    let create = |memory_mb: u32, vcpus: u32| {
        let mut client = node.client.clone();
        async move {
            let id = SandboxId::new();
            let mut req = create_request(id, 0);
            req.memory_mb = memory_mb;
            req.vcpus = vcpus;
            client.create_sandbox(req).await.map(|_| id)
        }
    };
    let first = create(512, 1).await.expect("fits");
    let second = create(512, 1).await.expect("fits exactly");
    let refused = create(64, 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("host memory exhausted"),
        "{}",
        refused.message()
    );
    node.destroy(second).await;
    let refused = create(64, 2).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("vCPUs"), "{}", refused.message());
    let third = create(64, 1).await.expect("room again after a destroy");
    // A refused create leaves nothing behind and is not listed.
    let list = node
        .client
        .clone()
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sandboxes.len(), 2);
    for id in [first, third] {
        node.destroy(id).await;
    }
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_the_parent_cgroup_bounds_all_capsules_together() {
    use wrenn_agent::runtime::Runtime;
    use wrenn_agent::runtime::process::cgroup::CgroupDriver;
    // A parent of its own, so that other agents on this host are not affected.
    let parent = format!("wrenn-liveness-{}", std::process::id());
    let dir = tempdir();
    let envd = tokio::task::spawn_blocking(common::envd_binary)
        .await
        .unwrap();
    let options = ProcessRuntimeOptions {
        cgroup_parent: parent.clone(),
        sandboxes_pids_max: 40,
        sandboxes_memory_reserve_mb: 1024,
        ..common::process_options().await
    };
    let runtime = ProcessRuntime::new(Layout::new(dir.path()), envd, options)
        .await
        .expect("process runtime");
    let driver = CgroupDriver::detect().unwrap();
    let (pids, memory) = driver.parent_limits(&parent).unwrap();
    assert_eq!(pids, "40");
    let host_mb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        / 1024;
    assert_eq!(memory, ((host_mb - 1024) * 1024 * 1024).to_string());

    // A capsule allowed 4096 tasks of its own still stops at the parent's 40.
    let config = wrenn_agent::runtime::SandboxConfig {
        id: SandboxId::new(),
        team_id: wrenn_core::id::TeamId::new(),
        template_team_id: wrenn_core::id::PLATFORM_TEAM_ID,
        template_id: wrenn_core::id::BUILTIN_TEMPLATE_ID,
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 1024,
        default_user: "root".into(),
        default_env: Default::default(),
    };
    let instance = runtime.create(&config).await.expect("create");
    let cgroup = runtime.sandbox_cgroup(config.id);
    let spawned = tokio::task::spawn_blocking(move || {
        // A host shell joins the capsule's cgroups, then forks sleepers until the
        // kernel refuses.
        let join: String = cgroup
            .procs_files()
            .iter()
            .map(|f| format!("echo $$ > {}; ", f.display()))
            .collect();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "{join} for i in $(seq 100); do sleep 30 >/dev/null 2>&1 & done"
            ))
            .output()
            .unwrap();
        (
            cgroup.pids().len(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(
        spawned.0 <= 40,
        "{} tasks in a capsule under pids.max=40",
        spawned.0
    );
    assert!(
        spawned.1.contains("fork"),
        "no fork was refused: {}",
        spawned.1
    );
    runtime.destroy(instance.id).await.unwrap();
    runtime.removals_settled().await;
    for d in driver.sandbox(&parent, "x").dirs() {
        if let Some(p) = d.parent() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// The bookkeeping a create adds (finding PID 1 in the cgroup, writing state.json) is
/// right for every capsule of a burst; what it costs is measured by the benchmarks, not
/// asserted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_bookkeeping_is_written_for_every_create() {
    let dir = tempdir();
    let cp = FakeControlPlane::start(0).await;
    let node = start_node(dir.path(), &cp, fast_settings()).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(node.create().await);
    }
    for &id in &ids {
        let sandbox_dir = Layout::new(dir.path()).sandbox_dir(id);
        let record = state::read(&sandbox_dir).unwrap().expect("state.json");
        let cgroup = node.runtime.sandbox_cgroup(id);
        assert_eq!(state::find_pid1(&cgroup), Some(record.pid1), "{id}");
        // Rewritten as at create (the record does not exist yet), it reads back the same.
        std::fs::remove_file(sandbox_dir.join(state::STATE_FILE)).unwrap();
        state::write(&sandbox_dir, &record).unwrap();
        assert_eq!(
            state::read(&sandbox_dir).unwrap().map(|r| r.pid1),
            Some(record.pid1)
        );
    }
    for id in ids {
        node.destroy(id).await;
    }
    node.finish().await;
}
