//! The process runtime against the real thing: namespaces, cgroups, overlayfs,
//! nftables and the real `wrenn-envd` (built once with cargo). Needs root, as the
//! runtime does.
//! The test binary is the sandbox init program (see `main.rs`).

mod disks;
mod isolation;
mod lifecycle;
mod refusals;
mod warm_pool;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{envd_binary, test_image};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use wrenn_agent::disk;
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::runtime::{EnvdEndpoint, Instance, Runtime, SandboxConfig};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::{ProcessConfig, StartRequest, data_event, process_event};

/// Options with the default image as the base.
async fn options() -> ProcessRuntimeOptions {
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    ProcessRuntimeOptions {
        base_image: Some(image.reference()),
        ..ProcessRuntimeOptions::default()
    }
}

/// A runtime over a fresh `$WRENN_DIR`.
struct Host {
    runtime: Arc<ProcessRuntime>,
    dir: tempfile::TempDir,
}

impl Host {
    async fn new() -> Self {
        Self::with(ProcessRuntimeOptions::default()).await
    }

    async fn with(mut opts: ProcessRuntimeOptions) -> Self {
        if opts.base_image.is_none() {
            opts.base_image = options().await.base_image;
        }
        let envd = tokio::task::spawn_blocking(envd_binary).await.unwrap();
        let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
        let runtime = ProcessRuntime::new(Layout::new(dir.path()), envd, opts)
            .await
            .expect("the process runtime needs root, cgroups and overlayfs");
        Self {
            runtime: Arc::new(runtime),
            dir,
        }
    }

    /// Another runtime on the same `$WRENN_DIR`, as after an agent restart.
    async fn restarted(&self) -> Arc<ProcessRuntime> {
        Arc::new(
            ProcessRuntime::new(Layout::new(self.dir.path()), envd_binary(), options().await)
                .await
                .unwrap(),
        )
    }

    fn layout(&self) -> &Layout {
        self.runtime.layout()
    }

    /// Creates a sandbox from the built-in template; it is destroyed when the guard
    /// drops, even if the test fails.
    async fn sandbox(&self) -> Sandbox {
        self.sandbox_from(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID)
            .await
    }

    async fn sandbox_from(&self, team: TeamId, template: TemplateId) -> Sandbox {
        self.sandbox_with(config(team, template)).await
    }

    async fn sandbox_with(&self, config: SandboxConfig) -> Sandbox {
        let mut guard = Sandbox::guard(&self.runtime, config.clone());
        let started = Instant::now();
        guard.instance = self.runtime.create(&config).await.expect("create");
        eprintln!("create took {:?}", started.elapsed());
        guard
    }
}

fn config(team: TeamId, template: TemplateId) -> SandboxConfig {
    SandboxConfig {
        id: SandboxId::new(),
        team_id: TeamId::new(),
        template_team_id: team,
        template_id: template,
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 1024,
        default_user: "root".into(),
        default_env: BTreeMap::new(),
    }
}

/// A sandbox that is destroyed on drop.
struct Sandbox {
    runtime: Arc<ProcessRuntime>,
    instance: Instance,
    config: SandboxConfig,
}

impl Sandbox {
    /// Destroys sandbox `config.id` on drop, whether or not it was created.
    fn guard(runtime: &Arc<ProcessRuntime>, config: SandboxConfig) -> Self {
        Self {
            runtime: runtime.clone(),
            instance: Instance {
                id: config.id,
                envd: EnvdEndpoint::Unix(PathBuf::new()),
                host_ip: String::new(),
                metadata: BTreeMap::new(),
            },
            config,
        }
    }

    fn id(&self) -> SandboxId {
        self.instance.id
    }

    /// Runs `script` with `/bin/sh -c` inside the sandbox; returns stdout and the exit code.
    async fn sh(&self, script: &str) -> (String, i32) {
        run(&self.instance, script).await
    }

    /// Like [`sh`](Self::sh), asserting success.
    async fn ok(&self, script: &str) -> String {
        let (out, code) = self.sh(script).await;
        assert_eq!(code, 0, "`{script}` failed: {out}");
        out
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let runtime = self.runtime.clone();
        let id = self.instance.id;
        tokio::task::block_in_place(|| {
            let handle = tokio::runtime::Handle::current();
            handle.block_on(runtime.destroy(id)).expect("destroy");
            // The teardown after the answer finishes before the test goes on (or ends).
            handle.block_on(runtime.removals_settled());
        });
    }
}

async fn channel(instance: &Instance) -> Channel {
    let EnvdEndpoint::Unix(path) = instance.envd.clone() else {
        panic!("the process runtime serves envd on a unix socket");
    };
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to envd")
}

async fn run(instance: &Instance, script: &str) -> (String, i32) {
    let mut client = ProcessClient::new(channel(instance).await);
    let mut events = client
        .start(StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                ..Default::default()
            }),
            pty: None,
            tag: None,
            stdin: false,
        })
        .await
        .expect("start")
        .into_inner();
    let mut out = Vec::new();
    while let Some(event) = events.message().await.expect("event stream") {
        match event.event {
            Some(process_event::Event::Data(data)) => match data.output {
                Some(data_event::Output::Stdout(bytes)) => out.extend_from_slice(&bytes),
                Some(data_event::Output::Stderr(bytes)) => {
                    eprintln!(
                        "[{}] {}",
                        instance.id,
                        String::from_utf8_lossy(&bytes).trim_end()
                    );
                }
                _ => {}
            },
            Some(process_event::Event::End(end)) => {
                return (String::from_utf8_lossy(&out).into_owned(), end.exit_code);
            }
            _ => {}
        }
    }
    panic!("process stream ended without an end event");
}

fn host(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a process has exited (a zombie waiting for its parent counts as exited).
fn exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_or(true, |status| status.contains("State:\tZ"))
}

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

const MIB: u64 = 1024 * 1024;

/// Loop devices bound to files under `dir` (canonical, as the kernel names them).
fn loops_under(dir: &Path) -> Vec<disk::loopdev::Bound> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    disk::loopdev::bound_under(&dir).unwrap()
}

/// Mounts at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    disk::mount::mounts_under(&dir)
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .collect()
}

/// Polls `check` for up to 5 s (loop devices unbind themselves asynchronously).
fn wait_until(check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn sized(mut config: SandboxConfig, disk_size_mb: u32) -> SandboxConfig {
    config.disk_size_mb = disk_size_mb;
    config
}

/// Background removals ([`ProcessRuntime::removals_settled`] awaited) left no
/// directory, mount or bound loop device in `removing/`.
fn assert_nothing_left_in_removing(layout: &Layout) {
    let removing = layout.root().join("removing");
    let left: Vec<_> = std::fs::read_dir(&removing)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in removing/: {left:?}");
    assert!(mounts_under(&removing).is_empty());
    assert!(
        wait_until(|| loops_under(&removing).is_empty()),
        "loop device still bound: {:?}",
        loops_under(&removing)
    );
}
