//! Shared test harness: a [`Runtime`] that runs REAL `wrenn-envd` processes on unix
//! sockets (no namespaces: real processes, real files on this host), an agent started
//! on 127.0.0.1:0 with short timings, a tonic client, and a stand-in for the control
//! plane's sandbox-event endpoint (a real axum server on loopback that records what it
//! receives).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use wrenn_agent::manager::ManagerSettings;
use wrenn_agent::registration::{Credentials, HostCredentials};
use wrenn_agent::runtime::{
    Capabilities, EnvdEndpoint, Instance, Runtime, RuntimeError, SandboxConfig, Stats,
};
use wrenn_agent::{Agent, AgentHandle, AgentOptions};
use wrenn_core::config::Secret;
use wrenn_core::id::{HostId, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;

/// Upper bound for anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The envd binary and the default image
// ---------------------------------------------------------------------------------------

/// `target/<profile>/wrenn-envd`, built (or brought up to date) once per test run: the
/// test binary lives in `target/<profile>/deps/`, so its grandparent is the profile
/// directory whatever `CARGO_TARGET_DIR` says.
pub fn envd_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = profile_dir.join("wrenn-envd");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "wrenn-envd", "--bin", "wrenn-envd"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p wrenn-envd");
        assert!(status.success(), "building wrenn-envd failed");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// The default image for tests that start real sandboxes: built once per machine into
/// `$WRENN_IMAGE_CACHE` (default `/var/cache/wrenn/test-images`) and shared by every
/// test binary (concurrent binaries wait for one build).
pub fn test_image() -> wrenn_agent::image::BuiltImage {
    static IMAGE: OnceLock<wrenn_agent::image::BuiltImage> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            wrenn_agent::image::ensure_shared_for_tests().expect("build the default image")
        })
        .clone()
}

/// Process-runtime options on [`test_image`].
pub async fn process_options() -> wrenn_agent::runtime::process::ProcessRuntimeOptions {
    let image = tokio::task::spawn_blocking(test_image)
        .await
        .expect("image task");
    wrenn_agent::runtime::process::ProcessRuntimeOptions {
        base_image: Some(image.reference()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// A runtime over real envd processes
// ---------------------------------------------------------------------------------------

/// Runs each sandbox as a plain `wrenn-envd --socket sandboxes/{id}/envd.sock` process.
/// Pause = SIGSTOP, resume = SIGCONT, hibernate = kill + `snapshots/{id}/sandbox.json`,
/// restore = a fresh envd. Files live on the host (no isolation): tests use temporary
/// directories.
pub struct EnvdRuntime {
    layout: Layout,
    envd: PathBuf,
    live: Mutex<HashMap<SandboxId, Child>>,
    /// Make the next pause fail.
    pub fail_next_pause: AtomicBool,
    /// Calls of `sweep`.
    pub sweeps: AtomicUsize,
}

impl EnvdRuntime {
    /// A runtime over `layout`.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            envd: envd_binary(),
            live: Mutex::new(HashMap::new()),
            fail_next_pause: AtomicBool::new(false),
            sweeps: AtomicUsize::new(0),
        }
    }

    fn pid(&self, id: SandboxId) -> Result<u32, RuntimeError> {
        self.live
            .lock()
            .unwrap()
            .get(&id)
            .and_then(|c| c.id())
            .ok_or(RuntimeError::NotFound(id))
    }

    async fn spawn(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let id = config.id;
        let dir = self.layout.sandbox_dir(id);
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
            context: "sandbox dir".into(),
            source,
        })?;
        let socket = dir.join("envd.sock");
        let _ = std::fs::remove_file(&socket);
        let log =
            std::fs::File::create(dir.join("envd.log")).map_err(|source| RuntimeError::Io {
                context: "envd log".into(),
                source,
            })?;
        let child = Command::new(&self.envd)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RuntimeError::Io {
                context: "spawn envd".into(),
                source,
            })?;
        self.live.lock().unwrap().insert(id, child);
        // Wait for the socket to answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::Other("envd did not start".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut metadata = BTreeMap::new();
        metadata.insert("runtime_version".into(), "test".into());
        Ok(Instance {
            id,
            envd: EnvdEndpoint::Unix(socket),
            host_ip: "127.0.0.1".into(),
            metadata,
        })
    }

    fn kill(&self, id: SandboxId) {
        if let Some(mut child) = self.live.lock().unwrap().remove(&id) {
            if let Some(pid) = child.id() {
                signal(pid, "-CONT");
            }
            let _ = child.start_kill();
        }
    }
}

fn signal(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn config_json(c: &SandboxConfig) -> serde_json::Value {
    serde_json::json!({
        "id": c.id.to_string(),
        "team_id": c.team_id.to_string(),
        "template_team_id": c.template_team_id.to_string(),
        "template_id": c.template_id.to_string(),
        "vcpus": c.vcpus,
        "memory_mb": c.memory_mb,
        "disk_size_mb": c.disk_size_mb,
        "default_user": c.default_user,
        "default_env": c.default_env,
    })
}

fn config_from_json(v: &serde_json::Value) -> Option<SandboxConfig> {
    Some(SandboxConfig {
        id: v["id"].as_str()?.parse().ok()?,
        team_id: v["team_id"].as_str()?.parse().ok()?,
        template_team_id: v["template_team_id"].as_str()?.parse().ok()?,
        template_id: TemplateId(v["template_id"].as_str()?.parse().ok()?),
        vcpus: v["vcpus"].as_u64()? as u32,
        memory_mb: v["memory_mb"].as_u64()? as u32,
        disk_size_mb: v["disk_size_mb"].as_u64()? as u32,
        default_user: v["default_user"].as_str()?.to_owned(),
        default_env: serde_json::from_value(v["default_env"].clone()).ok()?,
    })
}

#[async_trait::async_trait]
impl Runtime for EnvdRuntime {
    fn name(&self) -> &'static str {
        "envd-test"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            memory_snapshots: true,
            hibernate: true,
            templates_keep_processes: false,
        }
    }

    async fn create(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        if !config.template_id.uuid().is_nil()
            && !self
                .layout
                .template_dir(config.template_team_id, config.template_id)
                .is_dir()
        {
            return Err(RuntimeError::TemplateNotFound(config.template_id));
        }
        let instance = self.spawn(config).await?;
        // Kept for hibernate (the instance does not carry the config).
        let _ = std::fs::write(
            self.layout.sandbox_dir(config.id).join("config.json"),
            config_json(config).to_string(),
        );
        Ok(instance)
    }

    async fn pause(&self, instance: &Instance) -> Result<(), RuntimeError> {
        if self.fail_next_pause.swap(false, Ordering::SeqCst) {
            return Err(RuntimeError::Other("injected pause failure".into()));
        }
        let pid = self.pid(instance.id)?;
        if signal(pid, "-STOP") {
            Ok(())
        } else {
            Err(RuntimeError::Other("SIGSTOP failed".into()))
        }
    }

    async fn resume(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let pid = self.pid(instance.id)?;
        if signal(pid, "-CONT") {
            Ok(())
        } else {
            Err(RuntimeError::Other("SIGCONT failed".into()))
        }
    }

    async fn hibernate(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let id = instance.id;
        self.pid(id)?;
        let record = self.layout.sandbox_dir(id).join("config.json");
        let config = std::fs::read(&record).map_err(|source| RuntimeError::Io {
            context: "read config".into(),
            source,
        })?;
        self.kill(id);
        let snap = self.layout.snapshot_dir(id);
        std::fs::create_dir_all(&snap).map_err(|source| RuntimeError::Io {
            context: "snapshot dir".into(),
            source,
        })?;
        std::fs::write(snap.join("sandbox.json"), config).map_err(|source| RuntimeError::Io {
            context: "write record".into(),
            source,
        })?;
        std::fs::write(snap.join("memory"), vec![7u8; 64 * 1024]).map_err(|source| {
            RuntimeError::Io {
                context: "write state".into(),
                source,
            }
        })?;
        let _ = std::fs::remove_dir_all(self.layout.sandbox_dir(id));
        Ok(())
    }

    async fn restore(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let snap = self.layout.snapshot_dir(config.id);
        if !snap.join("sandbox.json").is_file() {
            return Err(RuntimeError::NotFound(config.id));
        }
        let instance = self.spawn(config).await?;
        let _ = std::fs::write(
            self.layout.sandbox_dir(config.id).join("config.json"),
            config_json(config).to_string(),
        );
        let _ = std::fs::remove_dir_all(snap);
        Ok(instance)
    }

    async fn destroy(&self, id: SandboxId) -> Result<(), RuntimeError> {
        self.kill(id);
        let _ = std::fs::remove_dir_all(self.layout.sandbox_dir(id));
        let _ = std::fs::remove_dir_all(self.layout.snapshot_dir(id));
        Ok(())
    }

    async fn snapshot(
        &self,
        instance: &Instance,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, RuntimeError> {
        let dest = self.layout.template_dir(team, template);
        std::fs::create_dir_all(&dest).map_err(|source| RuntimeError::Io {
            context: "template dir".into(),
            source,
        })?;
        std::fs::write(dest.join("template.json"), instance.id.to_string()).map_err(|source| {
            RuntimeError::Io {
                context: "template".into(),
                source,
            }
        })?;
        Ok(4096)
    }

    async fn stats(&self, instance: &Instance) -> Result<Stats, RuntimeError> {
        let pid = self.pid(instance.id)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Stats {
            cpu_pct: 1.0,
            mem_bytes: rss_kb * 1024,
            disk_bytes: 0,
        })
    }

    async fn hibernated(&self) -> Result<Vec<SandboxConfig>, RuntimeError> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.layout.snapshots_dir()) {
            for e in entries.flatten() {
                let Ok(raw) = std::fs::read(e.path().join("sandbox.json")) else {
                    continue;
                };
                if let Some(c) = serde_json::from_slice(&raw)
                    .ok()
                    .and_then(|v: serde_json::Value| config_from_json(&v))
                {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    async fn sweep(&self, keep: &[SandboxId]) -> Result<Vec<SandboxId>, RuntimeError> {
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        let mut swept = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.layout.sandboxes_dir()) {
            for e in entries.flatten() {
                if let Some(id) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<SandboxId>().ok())
                {
                    if !keep.contains(&id) {
                        self.kill(id);
                        let _ = std::fs::remove_dir_all(e.path());
                        swept.push(id);
                    }
                }
            }
        }
        Ok(swept)
    }
}

// ---------------------------------------------------------------------------------------
// The control plane's callback endpoint
// ---------------------------------------------------------------------------------------

/// A received sandbox event: the `X-Host-Token` header and the JSON body.
#[derive(Debug, Clone)]
pub struct Received {
    pub host_token: Option<String>,
    pub body: serde_json::Value,
}

#[derive(Clone, Default)]
struct CpState {
    received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
}

/// A real HTTP server on loopback standing in for `POST /v1/hosts/sandbox-events`.
pub struct FakeControlPlane {
    pub url: String,
    state: CpState,
    task: tokio::task::JoinHandle<()>,
}

impl FakeControlPlane {
    /// Starts it; the first `fail_first` requests get a 503.
    pub async fn start(fail_first: usize) -> Self {
        let state = CpState::default();
        state.fail_first.store(fail_first, Ordering::SeqCst);
        let app = axum::Router::new()
            .route(
                "/v1/hosts/sandbox-events",
                post(
                    |State(st): State<CpState>,
                     headers: HeaderMap,
                     Json(body): Json<serde_json::Value>| async move {
                        if st
                            .fail_first
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        st.received.lock().unwrap().push(Received {
                            host_token: headers
                                .get("x-host-token")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                            body,
                        });
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until an event of `kind` for `id` arrives.
    pub async fn wait_for(&self, kind: &str, id: SandboxId) -> Received {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(r) = self
                .received()
                .into_iter()
                .find(|r| r.body["event"] == kind && r.body["sandbox_id"] == id.to_string())
            {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} event for {id}; got {:?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// The agent under test
// ---------------------------------------------------------------------------------------

/// Knobs of [`TestAgent::start_with`].
pub struct Setup {
    pub settings: ManagerSettings,
    pub reaper_tick: Duration,
    pub sample_interval: Duration,
    pub cp: Option<(String, HostId, String)>,
    /// A registered agent: control-plane URL, its credentials, heartbeat interval.
    pub registered: Option<(String, Credentials, Duration)>,
    /// Serve mutual TLS with the registered credentials.
    pub tls: bool,
    /// Listen here (default: a new loopback port).
    pub listener: Option<tokio::net::TcpListener>,
    /// Talk to the agent with this client (default: cleartext to its address).
    pub client: Option<HostAgentServiceClient<Channel>>,
    pub auth_token: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        let settings = ManagerSettings {
            drain_grace: Duration::from_millis(500),
            envd_ready_timeout: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(30),
            ..ManagerSettings::default()
        };
        Self {
            settings,
            reaper_tick: Duration::from_secs(2),
            sample_interval: Duration::from_millis(100),
            cp: None,
            registered: None,
            tls: false,
            listener: None,
            client: None,
            auth_token: None,
        }
    }
}

/// An agent over [`EnvdRuntime`] in a temporary `$WRENN_DIR`, with a client.
pub struct TestAgent {
    pub handle: AgentHandle,
    pub client: HostAgentServiceClient<Channel>,
    pub runtime: Arc<EnvdRuntime>,
    pub layout: Layout,
    /// Scratch directory for files the sandboxes read and write.
    pub scratch: PathBuf,
    /// Keeps the data directory for as long as the agent runs.
    _dir: Arc<tempfile::TempDir>,
}

impl TestAgent {
    /// An agent with the default setup.
    pub async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    /// An agent with `setup`.
    pub async fn start_with(setup: Setup) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, setup).await
    }

    /// An agent over an existing data directory (agent restarts).
    pub async fn start_in(dir: Arc<tempfile::TempDir>, setup: Setup) -> Self {
        let layout = Layout::new(dir.path().join("wrenn"));
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let runtime = Arc::new(EnvdRuntime::new(layout.clone()));
        let listener = match setup.listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let mut options = AgentOptions::new(runtime.clone(), layout.clone(), listener);
        options.manager = setup.settings;
        options.reaper_tick = setup.reaper_tick;
        options.sample_interval = setup.sample_interval;
        options.serve_grace = Duration::from_secs(2);
        options.events.initial_backoff = Duration::from_millis(50);
        if let Some((url, host, token)) = setup.cp {
            options = options
                .with_control_plane(url)
                .with_credentials(Credentials::in_memory(HostCredentials::with_jwt(
                    host, token,
                )));
        }
        if let Some((url, credentials, interval)) = setup.registered {
            options = options
                .with_control_plane(url)
                .with_credentials(credentials)
                .with_heartbeat(interval);
        }
        if setup.tls {
            options = options.with_tls();
        }
        if let Some(token) = &setup.auth_token {
            options = options.with_auth_token(Secret::new(token.clone()));
        }
        let handle = Agent::start(options).await.expect("agent starts");
        let client = match setup.client {
            Some(c) => c,
            None => connect(handle.local_addr()).await,
        };
        Self {
            handle,
            client,
            runtime,
            layout,
            scratch,
            _dir: dir,
        }
    }

    /// A path in the scratch directory, as a string.
    pub fn path(&self, name: &str) -> String {
        self.scratch.join(name).display().to_string()
    }

    /// Creates a sandbox with default resources and `timeout_sec`.
    pub async fn create(&self, timeout_sec: u32) -> SandboxId {
        let id = SandboxId::new();
        self.client
            .clone()
            .create_sandbox(create_request(id, timeout_sec))
            .await
            .expect("create");
        id
    }

    /// Runs `sh -c line` and returns (stdout, stderr, exit code).
    pub async fn sh(
        &self,
        id: SandboxId,
        line: &str,
    ) -> Result<(String, String, i32), tonic::Status> {
        let resp = self
            .client
            .clone()
            .exec(pb::ExecRequest {
                sandbox_id: id.to_string(),
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), line.into()],
                timeout_sec: 20,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok((
            String::from_utf8_lossy(&resp.stdout).into_owned(),
            String::from_utf8_lossy(&resp.stderr).into_owned(),
            resp.exit_code,
        ))
    }

    /// The status of `id` as ListSandboxes reports it.
    pub async fn status(&self, id: SandboxId) -> Option<pb::SandboxStatus> {
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
}

/// A CreateSandboxRequest with defaults.
pub fn create_request(id: SandboxId, timeout_sec: u32) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        sandbox_id: id.to_string(),
        template: "minimal".into(),
        timeout_sec,
        ..Default::default()
    }
}

/// A client of the agent at `addr`.
pub async fn connect(addr: SocketAddr) -> HostAgentServiceClient<Channel> {
    HostAgentServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("client connects")
        .max_decoding_message_size(64 * 1024 * 1024)
}

/// Polls `cond` until it holds (or panics after [`PATIENCE`]).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
