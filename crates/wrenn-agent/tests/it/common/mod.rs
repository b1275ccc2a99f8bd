//! Shared test harness: a [`Runtime`] that runs REAL `wrenn-envd` processes on unix
//! sockets (no namespaces: real processes, real files on this host), an agent started
//! on 127.0.0.1:0 with short timings, a tonic client, [`Envd`] clients of envd's own
//! `Process` and `Filesystem` services routed through the agent to one sandbox, and a
//! stand-in for the control plane's sandbox-event endpoint (a real axum server on
//! loopback that records what it receives).

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
use tonic::metadata::AsciiMetadataValue;
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
use wrenn_proto::envd::v1 as ev;
use wrenn_proto::envd::v1::filesystem_client::FilesystemClient;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;
use wrenn_proto::routing;

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
    /// The channel `client` runs on, for [`TestAgent::envd`] (`None` when
    /// [`Setup::client`] supplied a client of its own).
    channel: Option<Channel>,
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
        let (client, channel) = match setup.client {
            Some(c) => (c, None),
            None => {
                let channel = connect_channel(handle.local_addr()).await;
                (agent_client(&channel), Some(channel))
            }
        };
        Self {
            handle,
            client,
            channel,
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

    /// envd of sandbox `id`, through this agent (on the channel of [`TestAgent::client`]);
    /// `id` is sent as given, so malformed ones can be tried too.
    pub fn envd(&self, id: impl ToString) -> Envd {
        let channel = self
            .channel
            .as_ref()
            .expect("envd clients need the agent's channel: Setup::client was given");
        Envd::of(channel, id)
    }

    /// Runs `sh -c line` in sandbox `id` through the agent and returns (stdout, stderr,
    /// exit code).
    pub async fn sh(
        &self,
        id: SandboxId,
        line: &str,
    ) -> Result<(String, String, i32), tonic::Status> {
        let ran = self.envd(id).sh(line).await?;
        Ok((ran.stdout, ran.stderr, ran.exit_code))
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

/// A cleartext channel to the agent at `addr`: for [`agent_client`] and [`Envd::of`].
pub async fn connect_channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("agent endpoint")
        .connect()
        .await
        .expect("client connects")
}

/// A `HostAgentService` client on `channel`.
pub fn agent_client(channel: &Channel) -> HostAgentServiceClient<Channel> {
    HostAgentServiceClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
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

// ---------------------------------------------------------------------------------------
// envd through the agent
// ---------------------------------------------------------------------------------------

/// Longest a command run with [`Envd::run`] may take (the control plane's deadline in
/// these tests): past it the stream is dropped, which kills the process.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// envd's `Process` and `Filesystem` services of one sandbox, served by the agent: every
/// request made with [`Envd::request`] is routed to the sandbox by its
/// `wrenn-capsule-id` metadata (and carries the agent's bearer token if one was given).
#[derive(Clone)]
pub struct Envd {
    /// The sandbox the requests are routed to, as sent.
    pub id: String,
    pub process: ProcessClient<Channel>,
    pub fs: FilesystemClient<Channel>,
    bearer: Option<AsciiMetadataValue>,
}

/// A process that ran to its `end` event through [`Envd::run`] or [`collect`].
#[derive(Debug, Clone)]
pub struct Ran {
    /// From the `start` event.
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
    /// The `end` event's exit code.
    pub exit_code: i32,
    pub end: ev::EndEvent,
}

impl Envd {
    /// Clients on `channel` (a channel to the agent) whose requests go to sandbox `id`
    /// (anything printable: malformed ids are for the routing tests).
    pub fn of(channel: &Channel, id: impl ToString) -> Self {
        Self {
            id: id.to_string(),
            process: ProcessClient::new(channel.clone())
                .max_decoding_message_size(64 * 1024 * 1024),
            fs: FilesystemClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024),
            bearer: None,
        }
    }

    /// The same, sending `authorization: Bearer {token}` with every request.
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.bearer = Some(format!("Bearer {token}").parse().expect("token"));
        self
    }

    /// `message` routed to this sandbox.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = routing::to_capsule(&self.id, message);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }

    /// `Process.Start`, routed; the process keeps running if the stream is dropped.
    pub async fn start(
        &self,
        start: ev::StartRequest,
    ) -> Result<tonic::Streaming<ev::ProcessEvent>, tonic::Status> {
        Ok(self
            .process
            .clone()
            .start(self.request(start))
            .await?
            .into_inner())
    }

    /// `Process.Start`, routed, asking the agent to kill the process if the stream is
    /// dropped before its `end` event.
    pub async fn start_killed_on_disconnect(
        &self,
        start: ev::StartRequest,
    ) -> Result<tonic::Streaming<ev::ProcessEvent>, tonic::Status> {
        Ok(self
            .process
            .clone()
            .start(routing::killed_on_disconnect(self.request(start)))
            .await?
            .into_inner())
    }

    /// Starts a process and detaches: reads its `start` event and drops the stream (the
    /// process runs on).
    pub async fn spawn(&self, start: ev::StartRequest) -> Result<ev::StartEvent, tonic::Status> {
        let mut events = self.start(start).await?;
        Ok(first_start(&mut events).await)
    }

    /// Runs a command to its end, as the control plane does: killed on disconnect, and
    /// the stream dropped (so the process killed) after [`RUN_DEADLINE`], which is then
    /// DEADLINE_EXCEEDED.
    pub async fn run(&self, start: ev::StartRequest) -> Result<Ran, tonic::Status> {
        let events = self.start_killed_on_disconnect(start).await?;
        match tokio::time::timeout(RUN_DEADLINE, collect_all(events)).await {
            Ok(ran) => ran,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "the command ran longer than {RUN_DEADLINE:?}"
            ))),
        }
    }

    /// Runs `/bin/sh -c line` to its end (see [`Envd::run`]).
    pub async fn sh(&self, line: &str) -> Result<Ran, tonic::Status> {
        self.run(shell(line)).await
    }

    /// `Process.List`: the live processes.
    pub async fn list(&self) -> Result<Vec<ev::ProcessInfo>, tonic::Status> {
        Ok(self
            .process
            .clone()
            .list(self.request(ev::ListRequest {}))
            .await?
            .into_inner()
            .processes)
    }

    /// True if `Process.List` shows a live process with `pid`.
    pub async fn lists(&self, pid: u32) -> bool {
        self.list()
            .await
            .expect("list processes")
            .iter()
            .any(|p| p.pid == pid)
    }

    /// `Process.Connect`, routed.
    pub async fn connect(
        &self,
        process: Option<ev::ProcessSelector>,
        replay: bool,
    ) -> Result<tonic::Streaming<ev::ProcessEvent>, tonic::Status> {
        Ok(self
            .process
            .clone()
            .connect(self.request(ev::ConnectRequest { process, replay }))
            .await?
            .into_inner())
    }

    /// `Process.SendSignal`, routed.
    pub async fn signal(
        &self,
        process: Option<ev::ProcessSelector>,
        signal: ev::Signal,
    ) -> Result<(), tonic::Status> {
        self.process
            .clone()
            .send_signal(self.request(ev::SendSignalRequest {
                process,
                signal: signal as i32,
            }))
            .await?;
        Ok(())
    }

    /// `Process.SendInput`, routed.
    pub async fn send_input(
        &self,
        process: Option<ev::ProcessSelector>,
        input: ev::process_input::Input,
    ) -> Result<(), tonic::Status> {
        self.process
            .clone()
            .send_input(self.request(ev::SendInputRequest {
                process,
                input: Some(ev::ProcessInput { input: Some(input) }),
            }))
            .await?;
        Ok(())
    }

    /// `Process.CloseStdin`, routed.
    pub async fn close_stdin(
        &self,
        process: Option<ev::ProcessSelector>,
    ) -> Result<(), tonic::Status> {
        self.process
            .clone()
            .close_stdin(self.request(ev::CloseStdinRequest { process }))
            .await?;
        Ok(())
    }

    /// `Process.Update` with a new terminal size, routed.
    pub async fn resize(
        &self,
        process: Option<ev::ProcessSelector>,
        cols: u32,
        rows: u32,
    ) -> Result<(), tonic::Status> {
        self.process
            .clone()
            .update(self.request(ev::UpdateRequest {
                process,
                pty: Some(ev::Pty { cols, rows }),
            }))
            .await?;
        Ok(())
    }

    /// `Filesystem.WriteFile` of `messages` as they are (for malformed streams), routed.
    pub async fn write_messages(
        &self,
        messages: Vec<ev::WriteFileRequest>,
    ) -> Result<ev::EntryInfo, tonic::Status> {
        let resp = self
            .fs
            .clone()
            .write_file(self.request(futures::stream::iter(messages)))
            .await?
            .into_inner();
        Ok(resp.entry.expect("WriteFile answers the entry"))
    }

    /// `Filesystem.WriteFile`: `header`, then `data` in chunks of
    /// [`wrenn_proto::FILE_CHUNK_SIZE`].
    pub async fn write_file_with(
        &self,
        header: ev::WriteFileHeader,
        data: &[u8],
    ) -> Result<ev::EntryInfo, tonic::Status> {
        let mut messages = vec![file_header(header)];
        messages.extend(
            data.chunks(wrenn_proto::FILE_CHUNK_SIZE)
                .map(|chunk| file_data(chunk.to_vec())),
        );
        self.write_messages(messages).await
    }

    /// `Filesystem.WriteFile` of `data` to `path` with the defaults.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
    ) -> Result<ev::EntryInfo, tonic::Status> {
        self.write_file_with(
            ev::WriteFileHeader {
                path: path.into(),
                ..Default::default()
            },
            data,
        )
        .await
    }

    /// `Filesystem.ReadFile`, routed: the messages as received (every chunk checked to
    /// be at most [`wrenn_proto::FILE_CHUNK_SIZE`]).
    pub async fn read_file_messages(
        &self,
        path: &str,
    ) -> Result<Vec<ev::ReadFileResponse>, tonic::Status> {
        let mut stream = self
            .fs
            .clone()
            .read_file(self.request(ev::ReadFileRequest { path: path.into() }))
            .await?
            .into_inner();
        let mut messages = Vec::new();
        while let Some(m) = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("file chunk in time")?
        {
            assert!(
                m.data.len() <= wrenn_proto::FILE_CHUNK_SIZE,
                "a chunk of {} bytes",
                m.data.len()
            );
            messages.push(m);
        }
        Ok(messages)
    }

    /// `Filesystem.ReadFile`, routed: the whole content.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, tonic::Status> {
        Ok(self
            .read_file_messages(path)
            .await?
            .into_iter()
            .flat_map(|m| m.data)
            .collect())
    }

    /// `Filesystem.Stat`, routed.
    pub async fn stat(&self, path: &str) -> Result<ev::EntryInfo, tonic::Status> {
        Ok(self
            .fs
            .clone()
            .stat(self.request(ev::StatRequest { path: path.into() }))
            .await?
            .into_inner()
            .entry
            .expect("Stat answers the entry"))
    }
}

/// A StartRequest for `cmd args…` (pipes, no stdin, generated tag).
pub fn command(cmd: &str, args: &[&str]) -> ev::StartRequest {
    ev::StartRequest {
        process: Some(ev::ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A StartRequest for `/bin/sh -c line`.
pub fn shell(line: &str) -> ev::StartRequest {
    command("/bin/sh", &["-c", line])
}

/// Selects a process by pid.
pub fn by_pid(pid: u32) -> Option<ev::ProcessSelector> {
    Some(ev::ProcessSelector {
        selector: Some(ev::process_selector::Selector::Pid(pid)),
    })
}

/// Selects a process by tag.
pub fn by_tag(tag: &str) -> Option<ev::ProcessSelector> {
    Some(ev::ProcessSelector {
        selector: Some(ev::process_selector::Selector::Tag(tag.into())),
    })
}

/// The first message of a WriteFile stream.
pub fn file_header(header: ev::WriteFileHeader) -> ev::WriteFileRequest {
    ev::WriteFileRequest {
        msg: Some(ev::write_file_request::Msg::Header(header)),
    }
}

/// A content message of a WriteFile stream.
pub fn file_data(data: Vec<u8>) -> ev::WriteFileRequest {
    ev::WriteFileRequest {
        msg: Some(ev::write_file_request::Msg::Data(data.into())),
    }
}

/// The next event of a process stream, other than keepalives (`None` at the end of the
/// stream); panics if none comes within [`PATIENCE`].
pub async fn next_event(
    events: &mut tonic::Streaming<ev::ProcessEvent>,
) -> Result<Option<ev::process_event::Event>, tonic::Status> {
    loop {
        let message = tokio::time::timeout(PATIENCE, events.message())
            .await
            .expect("a process event in time")?;
        match message.and_then(|m| m.event) {
            Some(ev::process_event::Event::Keepalive(_)) => continue,
            other => return Ok(other),
        }
    }
}

/// Reads the first event of a process stream, which must be `start`.
pub async fn first_start(events: &mut tonic::Streaming<ev::ProcessEvent>) -> ev::StartEvent {
    match next_event(events).await.expect("the stream's first event") {
        Some(ev::process_event::Event::Start(start)) => start,
        other => panic!("the first event is {other:?}, not start"),
    }
}

/// Reads a process stream to its `end` event, panicking if an event takes longer than
/// [`PATIENCE`] or the stream ends without `end`.
pub async fn collect(events: tonic::Streaming<ev::ProcessEvent>) -> Ran {
    collect_all(events).await.expect("process stream")
}

async fn collect_all(mut events: tonic::Streaming<ev::ProcessEvent>) -> Result<Ran, tonic::Status> {
    let (mut pid, mut out, mut err) = (0, Vec::new(), Vec::new());
    loop {
        match next_event(&mut events).await? {
            Some(ev::process_event::Event::Start(start)) => pid = start.pid,
            Some(ev::process_event::Event::Data(data)) => match data.output {
                Some(ev::data_event::Output::Stdout(b) | ev::data_event::Output::Pty(b)) => {
                    out.extend(b)
                }
                Some(ev::data_event::Output::Stderr(b)) => err.extend(b),
                None => {}
            },
            Some(ev::process_event::Event::End(end)) => {
                return Ok(Ran {
                    pid,
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                    exit_code: end.exit_code,
                    end,
                });
            }
            Some(ev::process_event::Event::Keepalive(_)) | None => {
                panic!("the process stream ended without an end event")
            }
        }
    }
}

/// Reads PTY output of a process stream until it contains every one of `wanted`;
/// returns what was read.
pub async fn read_pty_until(
    events: &mut tonic::Streaming<ev::ProcessEvent>,
    wanted: &[&str],
) -> String {
    let mut seen = String::new();
    while !wanted.iter().all(|w| seen.contains(w)) {
        match next_event(events).await.expect("PTY stream") {
            Some(ev::process_event::Event::Data(ev::DataEvent {
                output: Some(ev::data_event::Output::Pty(b)),
            })) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(ev::process_event::Event::Data(_) | ev::process_event::Event::Start(_)) => {}
            other => panic!("waiting for {wanted:?} in {seen:?}, got {other:?}"),
        }
    }
    seen
}
