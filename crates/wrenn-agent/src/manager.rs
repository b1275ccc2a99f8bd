//! [`SandboxManager`]: the agent's map of sandboxes and their state machine.
//!
//! The map (`HashMap<SandboxId, Arc<Sandbox>>` behind a short-lived `RwLock`) is the
//! truth about what runs on this host. Each [`Sandbox`] has
//!
//! - its own **operation lock** (`tokio::sync::Mutex`): create, pause, resume,
//!   hibernate, snapshot and destroy of one sandbox are serialised, while two sandboxes
//!   never wait on each other. Every [`Runtime`] method is called with it held (the
//!   metrics sampler only `try_lock`s it and skips a busy sandbox);
//! - a small **state** record behind a `std::sync::Mutex` that is never held across an
//!   `.await`, so status reads (ListSandboxes, the data-plane checks) never wait for a
//!   slow pause;
//! - `last_active` (an atomic), its [`ConnTracker`] and its metric rings.
//!
//! # States
//!
//! ```text
//!            create                 pause                 hibernate
//! (new) ─▶ starting ─▶ running ─▶ pausing ─▶ paused ─▶ pausing ─▶ hibernated
//!                         ▲  ▲                  │  resume            │ resume
//!                         │  └──── resuming ◀───┘                    │
//!                         └─────── resuming ◀────────────────────────┘
//! any ─▶ stopping ─▶ stopped (removed from the map)      failures ─▶ error
//! running/paused ─▶ snapshotting ─▶ paused (CreateSnapshot)
//! ```
//!
//! `hibernating` is reported as `pausing` (the wire has no separate value). A failed
//! pause returns the sandbox to `running` when its guest agent still answers and to
//! `error` otherwise; it is never destroyed (Obs-S6). A failed resume or hibernation
//! leaves the previous state. Destroy works from every state.
//!
//! # Liveness, adoption, admission
//!
//! Every live instance has a watcher ([`Runtime::wait_exit`]: a pidfd on the process
//! runtime's PID 1) and the reaper's health loop asks each running envd for its health
//! every `health_interval` (paused sandboxes are never asked). A sandbox whose init
//! exits, or whose envd fails `health_failures` checks in a row, is torn down under its
//! lock, kept as `error` with the reason (until destroyed) and reported with a `failed`
//! event carrying the reason. Each live sandbox's access token and defaults are kept
//! in `sandboxes/{id}/agent.json`, so that [`SandboxManager::recover`] can take back
//! what [`Runtime::adopt`] finds still running after an agent restart; what the runtime
//! could not adopt is reported `failed`. Creates and restores are admitted against
//! [`ManagerSettings::capacity`] atomically with each other (RESOURCE_EXHAUSTED).
//!
//! Lifecycle operations should be driven through [`SandboxManager::spawn_op`] (the
//! gRPC service does), so that a cancelled RPC never abandons a sandbox half-way in a
//! transient state.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wrenn_core::config::Overcommit;
use wrenn_core::events::SandboxEventKind;
use wrenn_core::id::{SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_proto::envd::v1::{InitRequest, PrepareSnapshotRequest};
use wrenn_proto::hostagent::v1::MetricPoint;

use crate::conntrack::ConnTracker;
use crate::envd::EnvdClient;
use crate::error::{AgentError, AgentResult};
use crate::events::EventSender;
use crate::metrics::{MetricRings, parse_range};
use crate::runtime::{Adoption, EnvdEndpoint, Instance, Runtime, RuntimeError, SandboxConfig};
use tracing::Instrument;
use wrenn_proto::envd::v1::HealthRequest;

/// Version of this agent, reported in sandbox metadata (`agent_version`).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Timings of the state machine. The defaults are the production values; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// How long a pause waits for in-flight proxy connections (2 s).
    pub drain_grace: Duration,
    /// Budget of envd's `PrepareSnapshot` before a pause (3 s, best effort).
    pub prepare_timeout: Duration,
    /// How long to wait for envd after create, resume and restore (30 s).
    pub envd_ready_timeout: Duration,
    /// Per-sandbox budget of PauseAll (2 min). A pause still running then keeps going
    /// in the background and is reported as failed.
    pub pause_all_timeout: Duration,
    /// A paused sandbox is hibernated after this long (`AgentConfig::hibernate_after`,
    /// default 10 min).
    pub hibernate_after: Duration,
    /// Smallest effective inactivity timeout: a `timeout_sec` below it is raised to it
    /// (60 s).
    pub min_timeout: Duration,
    /// Overall bound of [`SandboxManager::shutdown`] (60 s).
    pub shutdown_timeout: Duration,
    /// How often every running sandbox's envd is asked for its health
    /// (`WRENN_HEALTH_INTERVAL_SECS`, 10 s).
    pub health_interval: Duration,
    /// Budget of one health call (`WRENN_HEALTH_TIMEOUT_SECS`, 5 s).
    pub health_timeout: Duration,
    /// Consecutive failed health calls after which a sandbox is declared dead (2).
    pub health_failures: u32,
    /// What this host admits (memory and vCPUs with their overcommit ratios); `None`
    /// admits everything.
    pub capacity: Option<HostCapacity>,
}

/// The capacity admission works against: the host's memory and CPUs, with the
/// deployment's overcommit ratios and memory reserve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostCapacity {
    /// Host memory (MiB).
    pub memory_mb: u64,
    /// Host CPUs.
    pub cpus: u32,
    /// Ratios and reserve (`WRENN_MEMORY_OVERCOMMIT`, `WRENN_CPU_OVERCOMMIT`,
    /// `WRENN_MEMORY_RESERVE_MB`).
    pub overcommit: Overcommit,
}

impl HostCapacity {
    /// This host's memory (`/proc/meminfo`) and CPUs, with `overcommit`.
    pub fn of_this_host(overcommit: Overcommit) -> std::io::Result<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemTotal"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Ok(Self {
            memory_mb: kib / 1024,
            cpus,
            overcommit,
        })
    }

    /// Refuses `vcpus`/`memory_mb` more on top of `committed` (vCPUs, MiB) beyond the
    /// host's limits, naming the resource, what is asked and what is left.
    pub fn admit(&self, committed: (u64, u64), vcpus: u32, memory_mb: u32) -> AgentResult<()> {
        let (used_vcpus, used_mb) = committed;
        let o = &self.overcommit;
        let mem_limit = o.memory_limit_mb(self.memory_mb);
        let cpu_limit = o.vcpu_limit(u64::from(self.cpus));
        if used_mb + u64::from(memory_mb) > mem_limit {
            return Err(AgentError::ResourceExhausted(format!(
                "host memory exhausted: the capsule needs {memory_mb} MiB but {} of the host's \
                 {mem_limit} MiB for capsules are free ({} MiB × {} overcommit − {} MiB reserve)",
                mem_limit.saturating_sub(used_mb),
                self.memory_mb,
                o.memory,
                o.memory_reserve_mb
            )));
        }
        if used_vcpus + u64::from(vcpus) > cpu_limit {
            return Err(AgentError::ResourceExhausted(format!(
                "host vCPUs exhausted: the capsule needs {vcpus} vCPUs but {} of the host's \
                 {cpu_limit} are free ({} CPUs × {} overcommit)",
                cpu_limit.saturating_sub(used_vcpus),
                self.cpus,
                o.cpu
            )));
        }
        Ok(())
    }
}

impl ManagerSettings {
    /// Takes the tunables of the agent's configuration: `hibernate_after`, the health
    /// checks, and admission against this host's memory and CPUs with the configured
    /// overcommit (left off, with a warning, if `/proc/meminfo` cannot be read).
    pub fn apply_config(&mut self, config: &wrenn_core::config::AgentConfig) {
        self.hibernate_after = config.hibernate_after;
        self.health_interval = config.health_interval;
        self.health_timeout = config.health_timeout;
        match HostCapacity::of_this_host(config.overcommit) {
            Ok(c) => self.capacity = Some(c),
            Err(e) => tracing::warn!("admission is off: cannot read the host's memory: {e}"),
        }
    }
}

impl Default for ManagerSettings {
    fn default() -> Self {
        Self {
            drain_grace: Duration::from_secs(2),
            prepare_timeout: Duration::from_secs(3),
            envd_ready_timeout: Duration::from_secs(30),
            pause_all_timeout: Duration::from_secs(120),
            hibernate_after: wrenn_core::config::DEFAULT_HIBERNATE_AFTER,
            min_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(5),
            health_failures: 2,
            capacity: None,
        }
    }
}

/// What [`SandboxManager::create`] needs.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// The runtime configuration (id, team, template, resources, defaults).
    pub config: SandboxConfig,
    /// Template display name (informational).
    pub template_name: String,
    /// Inactivity timeout in seconds (0 = never).
    pub timeout_sec: u32,
    /// Caller metadata, kept with the sandbox (the agent's own keys win).
    pub metadata: BTreeMap<String, String>,
}

/// A sandbox that is running after create or resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Where it is reachable from the host.
    pub host_ip: String,
    /// Caller metadata merged under the agent's keys (`runtime`, `agent_version`,
    /// `envd_version`, the runtime's own keys).
    pub metadata: BTreeMap<String, String>,
}

/// A read-only view of one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxView {
    /// Current status.
    pub status: SandboxStatus,
    /// Its configuration.
    pub config: SandboxConfig,
    /// Template display name.
    pub template_name: String,
    /// Reachable address (empty unless running or paused).
    pub host_ip: String,
    /// Creation time, Unix seconds.
    pub created_at_unix: i64,
    /// Last activity, Unix seconds.
    pub last_active_unix: i64,
    /// Inactivity timeout, seconds (0 = never).
    pub timeout_sec: u32,
    /// Metadata (see [`Started::metadata`]).
    pub metadata: BTreeMap<String, String>,
    /// Paused by the agent on its own (inactivity, PauseAll) and still paused.
    pub auto_paused: bool,
}

/// Result of [`SandboxManager::pause_all`].
#[derive(Debug, Clone, Default)]
pub struct PauseAllOutcome {
    /// Sandboxes paused by the call.
    pub paused: Vec<SandboxId>,
    /// Sandboxes whose pause failed, with the reason.
    pub failed: Vec<(SandboxId, String)>,
}

/// Who asked for a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// PauseSandbox.
    Request,
    /// The inactivity reaper.
    Idle,
    /// PauseAll.
    PauseAll,
}

/// Who asked for a hibernation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HibernateCause {
    /// HibernateSandbox.
    Request,
    /// Paused longer than `hibernate_after`.
    LongPause,
    /// Graceful agent shutdown.
    Shutdown,
}

/// Mutable state of a sandbox (never held across an `.await`).
#[derive(Debug)]
struct State {
    status: SandboxStatus,
    config: SandboxConfig,
    template_name: String,
    created_at_unix: i64,
    timeout_sec: u32,
    /// The live instance (running, paused), or the last one (hibernated).
    instance: Option<Instance>,
    /// Cached envd client of the live instance.
    envd: Option<EnvdClient>,
    user_metadata: BTreeMap<String, String>,
    agent_metadata: BTreeMap<String, String>,
    auto_paused: bool,
    paused_at: Option<Instant>,
    /// envd access token of this sandbox.
    access_token: String,
    /// Bumped whenever `instance` is replaced, so a watcher of an older instance
    /// recognises that its news is stale.
    generation: u64,
    /// Stops the watcher of the live instance.
    watch: Option<tokio_util::sync::CancellationToken>,
    /// Why the sandbox is in `error`, when it died or could not be adopted.
    failure: Option<String>,
}

impl State {
    /// Takes back what an earlier agent recorded of this sandbox ([`ManagedRecord`]).
    fn apply_record(&mut self, r: ManagedRecord) {
        self.access_token = r.access_token;
        self.template_name = r.template_name;
        self.created_at_unix = r.created_at_unix;
        self.timeout_sec = r.timeout_sec;
        self.user_metadata = r.user_metadata;
        self.config.default_user = r.default_user;
        self.config.default_env = r.default_env;
    }
}

/// One sandbox: its lock, state, activity clock, proxy connections and metrics.
#[derive(Debug)]
pub struct Sandbox {
    id: SandboxId,
    op: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    last_active_ms: AtomicI64,
    conns: ConnTracker,
    metrics: Mutex<MetricRings>,
    /// Consecutive failed health checks.
    health_failures: std::sync::atomic::AtomicU32,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn random_token() -> String {
    let b: [u8; 24] = rand::random();
    hex::encode(b)
}

impl Sandbox {
    fn new(config: SandboxConfig, status: SandboxStatus) -> Self {
        let now = now_ms();
        Self {
            id: config.id,
            op: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                status,
                config,
                template_name: String::new(),
                created_at_unix: now / 1000,
                timeout_sec: 0,
                instance: None,
                envd: None,
                user_metadata: BTreeMap::new(),
                agent_metadata: BTreeMap::new(),
                auto_paused: false,
                paused_at: None,
                access_token: random_token(),
                generation: 0,
                watch: None,
                failure: None,
            }),
            last_active_ms: AtomicI64::new(now),
            conns: ConnTracker::new(),
            metrics: Mutex::new(MetricRings::default()),
            health_failures: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st)
    }

    /// The sandbox id.
    pub fn id(&self) -> SandboxId {
        self.id
    }

    /// Current status.
    pub fn status(&self) -> SandboxStatus {
        self.with(|s| s.status)
    }

    /// Owning team.
    pub fn team_id(&self) -> TeamId {
        self.with(|s| s.config.team_id)
    }

    /// Its proxy connection tracker.
    pub fn conns(&self) -> &ConnTracker {
        &self.conns
    }

    /// The live instance's reachable address, if running.
    pub fn running_host_ip(&self) -> Option<String> {
        self.with(|s| {
            (s.status == SandboxStatus::Running)
                .then(|| s.instance.as_ref().map(|i| i.host_ip.clone()))
                .flatten()
        })
    }

    /// Marks the sandbox active now (pushes back its inactivity timeout).
    pub fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Last activity, milliseconds since the epoch.
    pub fn last_active_ms(&self) -> i64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    /// A snapshot of everything known about the sandbox.
    pub fn view(&self) -> SandboxView {
        let last_active_unix = self.last_active_ms() / 1000;
        self.with(|s| {
            let live = matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused);
            SandboxView {
                status: s.status,
                config: s.config.clone(),
                template_name: s.template_name.clone(),
                host_ip: if live {
                    s.instance
                        .as_ref()
                        .map(|i| i.host_ip.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                },
                created_at_unix: s.created_at_unix,
                last_active_unix,
                timeout_sec: s.timeout_sec,
                metadata: merged_metadata(&s.user_metadata, &s.agent_metadata),
                auto_paused: s.auto_paused && s.status == SandboxStatus::Paused,
            }
        })
    }

    /// Fails with NotFound once the sandbox has been destroyed (an operation that
    /// waited for the lock behind a destroy).
    fn check_alive(&self) -> AgentResult<()> {
        if self.status() == SandboxStatus::Stopped {
            return Err(AgentError::SandboxNotFound(self.id));
        }
        Ok(())
    }

    fn wrong_state(&self, status: SandboxStatus, what: &str) -> AgentError {
        AgentError::WrongState {
            id: self.id,
            status,
            what: what.to_owned(),
        }
    }

    /// The envd client of the live instance (built on first use).
    fn envd_client(&self) -> AgentResult<EnvdClient> {
        self.with(|s| {
            if let Some(c) = &s.envd {
                return Ok(c.clone());
            }
            let instance = s.instance.as_ref().ok_or_else(|| {
                AgentError::Internal(format!("sandbox {} has no live instance", self.id))
            })?;
            let client = EnvdClient::connect(&instance.envd, Some(&s.access_token))?;
            s.envd = Some(client.clone());
            Ok(client)
        })
    }

    fn instance(&self) -> AgentResult<Instance> {
        self.with(|s| s.instance.clone()).ok_or_else(|| {
            AgentError::Internal(format!("sandbox {} has no live instance", self.id))
        })
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_active_ms()).max(0) as u64)
    }
}

fn merged_metadata(
    user: &BTreeMap<String, String>,
    agent: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut m = user.clone();
    m.extend(agent.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

/// The sandboxes of this host and their state machine.
pub struct SandboxManager {
    runtime: Arc<dyn Runtime>,
    layout: Layout,
    events: Arc<EventSender>,
    settings: ManagerSettings,
    sandboxes: RwLock<HashMap<SandboxId, Arc<Sandbox>>>,
    closing: AtomicBool,
}

impl std::fmt::Debug for SandboxManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxManager")
            .field("runtime", &self.runtime.name())
            .field("layout", &self.layout)
            .field("sandboxes", &self.len())
            .finish_non_exhaustive()
    }
}

impl SandboxManager {
    /// A manager with no sandboxes (call [`recover`](Self::recover) to load hibernated
    /// ones).
    pub fn new(
        runtime: Arc<dyn Runtime>,
        layout: Layout,
        events: Arc<EventSender>,
        settings: ManagerSettings,
    ) -> Self {
        Self {
            runtime,
            layout,
            events,
            settings,
            sandboxes: RwLock::new(HashMap::new()),
            closing: AtomicBool::new(false),
        }
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The host layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The timings in force.
    pub fn settings(&self) -> &ManagerSettings {
        &self.settings
    }

    /// The event sender.
    pub fn events(&self) -> &Arc<EventSender> {
        &self.events
    }

    /// Number of sandboxes known, in any state.
    pub fn len(&self) -> usize {
        self.sandboxes.read().map_or(0, |m| m.len())
    }

    /// True if no sandbox is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every sandbox.
    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        self.sandboxes
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn lookup(&self, id: SandboxId) -> Option<Arc<Sandbox>> {
        self.sandboxes.read().ok().and_then(|m| m.get(&id).cloned())
    }

    /// The sandbox, or NotFound.
    pub fn get(&self, id: SandboxId) -> AgentResult<Arc<Sandbox>> {
        self.lookup(id).ok_or(AgentError::SandboxNotFound(id))
    }

    /// Removes `sb` from the map if it is still the entry for its id.
    fn remove(&self, sb: &Arc<Sandbox>) {
        if let Ok(mut m) = self.sandboxes.write() {
            if m.get(&sb.id).is_some_and(|cur| Arc::ptr_eq(cur, sb)) {
                m.remove(&sb.id);
            }
        }
    }

    /// Runs a lifecycle operation on its own task, so that it completes (and leaves the
    /// sandbox in a stable state) even if the caller stops waiting.
    pub async fn spawn_op<T, F, Fut>(self: &Arc<Self>, op: F) -> AgentResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: Future<Output = AgentResult<T>> + Send + 'static,
    {
        let fut = op(Arc::clone(self));
        tokio::spawn(fut)
            .await
            .map_err(|e| AgentError::internal(format!("operation task failed: {e}")))?
    }

    /// The sandbox's envd client for a data-plane call: the sandbox must be running.
    /// Counts as activity.
    pub fn envd_for(&self, id: SandboxId, what: &str) -> AgentResult<(Arc<Sandbox>, EnvdClient)> {
        let sb = self.get(id)?;
        let status = sb.status();
        if status != SandboxStatus::Running {
            return Err(sb.wrong_state(status, what));
        }
        sb.touch();
        let envd = sb.envd_client()?;
        Ok((sb, envd))
    }

    // -----------------------------------------------------------------------------
    // Startup
    // -----------------------------------------------------------------------------

    /// Loads the hibernated sandboxes the runtime finds on disk into the map, then asks
    /// the runtime to sweep leftovers of every other sandbox (after an agent crash).
    /// Returns (recovered, swept).
    ///
    /// Live sandboxes get back what the manager recorded in `sandboxes/{id}/agent.json`,
    /// hibernated ones what it recorded in `snapshots/{id}/agent.json` when it
    /// hibernated them (access token, template name, timeout, metadata, defaults); a
    /// sandbox without a record starts those afresh (timeout 0, `created_at` the
    /// agent's start, no caller metadata).
    pub async fn recover(&self) -> AgentResult<(Vec<SandboxId>, Vec<SandboxId>)> {
        let adoption = self.runtime.adopt().await?;
        let mut recovered = self.adopt(adoption);
        let hibernated = self.runtime.hibernated().await?;
        {
            let mut map = self
                .sandboxes
                .write()
                .map_err(|_| AgentError::internal("sandbox map poisoned"))?;
            for config in hibernated {
                let id = config.id;
                let record = read_managed(&self.layout.snapshot_dir(id));
                let sb = Sandbox::new(config, SandboxStatus::Hibernated);
                sb.with(|s| {
                    s.agent_metadata
                        .insert("runtime".into(), self.runtime.name().into());
                    if let Some(r) = record {
                        s.apply_record(r);
                    }
                });
                map.entry(id).or_insert_with(|| Arc::new(sb));
                recovered.push(id);
            }
        }
        let keep: Vec<SandboxId> = self.all().iter().map(|s| s.id).collect();
        let swept = self.runtime.sweep(&keep).await?;
        Arc::clone(&self.runtime).start_background();
        if !recovered.is_empty() || !swept.is_empty() {
            tracing::info!(
                recovered = recovered.len(),
                swept = swept.len(),
                "startup: live sandboxes adopted, hibernated ones loaded, leftovers removed"
            );
        }
        Ok((recovered, swept))
    }

    /// Tracks again what the runtime adopted (running or paused, watched) and reports
    /// what it could not adopt (`failed`, kept as `error` until destroyed). Returns
    /// the ids adopted.
    fn adopt(&self, adoption: Adoption) -> Vec<SandboxId> {
        let mut adopted = Vec::new();
        let mut entries = Vec::new();
        for a in adoption.adopted {
            let id = a.config.id;
            let record = read_managed(&self.layout.sandbox_dir(id));
            let sb = Arc::new(Sandbox::new(
                a.config.clone(),
                if a.paused {
                    SandboxStatus::Paused
                } else {
                    SandboxStatus::Running
                },
            ));
            let envd_version = a
                .instance
                .metadata
                .get("envd_version")
                .cloned()
                .unwrap_or_default();
            sb.with(|s| {
                s.agent_metadata = self.agent_metadata(&a.instance, &envd_version);
                s.instance = Some(a.instance.clone());
                if a.paused {
                    s.paused_at = Some(Instant::now());
                }
                if let Some(r) = record {
                    s.apply_record(r);
                }
            });
            entries.push((sb, a.instance));
            adopted.push(id);
        }
        for lost in adoption.lost {
            let mut config = placeholder_config(lost.id);
            if let Some(team) = lost.team_id {
                config.team_id = team;
            }
            let sb = Arc::new(Sandbox::new(config, SandboxStatus::Error));
            sb.with(|s| s.failure = Some(lost.reason.clone()));
            if let Ok(mut map) = self.sandboxes.write() {
                map.entry(lost.id).or_insert(sb);
            }
            self.events.emit(
                SandboxEventKind::Failed,
                lost.id,
                lost.team_id,
                Some(lost.reason),
            );
        }
        for (sb, instance) in entries {
            if let Ok(mut map) = self.sandboxes.write() {
                map.insert(sb.id, Arc::clone(&sb));
            }
            self.watch(&sb, instance);
        }
        adopted
    }

    // -----------------------------------------------------------------------------
    // Lifecycle
    // -----------------------------------------------------------------------------

    /// Creates and boots a sandbox; returns once its envd answers and its defaults are
    /// applied. On any failure the sandbox is destroyed and removed.
    pub async fn create(&self, spec: CreateSpec) -> AgentResult<Started> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(AgentError::Unavailable("the agent is shutting down".into()));
        }
        let id = spec.config.id;
        let sb = Arc::new(Sandbox::new(spec.config.clone(), SandboxStatus::Starting));
        sb.with(|s| {
            s.template_name = spec.template_name.clone();
            s.timeout_sec = spec.timeout_sec;
            s.user_metadata = spec.metadata.clone();
        });
        {
            let mut map = self
                .sandboxes
                .write()
                .map_err(|_| AgentError::internal("sandbox map poisoned"))?;
            match map.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    return Err(AgentError::AlreadyExists(format!(
                        "sandbox {id} already exists on this host"
                    )));
                }
                std::collections::hash_map::Entry::Vacant(_) => {
                    if let Some(capacity) = &self.settings.capacity {
                        capacity.admit(
                            committed(&map),
                            spec.config.vcpus,
                            spec.config.memory_mb,
                        )?;
                    }
                    map.insert(id, Arc::clone(&sb));
                }
            }
        }
        let _op = sb.op.lock().await;
        let team = spec.config.team_id;
        let booted = async {
            let instance = self.runtime.create(&spec.config).await?;
            sb.with(|s| s.instance = Some(instance.clone()));
            let envd = sb.envd_client()?;
            // `create` returns once envd answers; a runtime that asked it says which
            // version answered, and asking again would only cost a round trip.
            let version = match instance.metadata.get("envd_version") {
                Some(version) => version.clone(),
                None => {
                    envd.wait_ready(self.settings.envd_ready_timeout)
                        .await?
                        .version
                }
            };
            let token = sb.with(|s| s.access_token.clone());
            init_envd(
                &envd,
                &spec.config.default_user,
                &spec.config.default_env,
                &token,
            )
            .await?;
            Ok::<_, AgentError>((instance, version))
        }
        .await;
        match booted {
            Ok((instance, envd_version)) => {
                let started = sb.with(|s| {
                    s.agent_metadata = self.agent_metadata(&instance, &envd_version);
                    s.status = SandboxStatus::Running;
                    Started {
                        host_ip: instance.host_ip.clone(),
                        metadata: merged_metadata(&s.user_metadata, &s.agent_metadata),
                    }
                });
                sb.touch();
                self.persist(&sb);
                self.watch(&sb, instance);
                let (ip, md) = (started.host_ip.clone(), started.metadata.clone());
                self.events.emit_with(SandboxEventKind::Started, id, |ev| {
                    ev.team_id = Some(team);
                    ev.host_ip = Some(ip);
                    ev.metadata = Some(md);
                });
                Ok(started)
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, "create failed: {e}");
                if let Err(d) = self.runtime.destroy(id).await {
                    tracing::error!(sandbox_id = %id, "cleanup after a failed create: {d}");
                }
                sb.with(|s| {
                    s.status = SandboxStatus::Stopped;
                    s.envd = None;
                    s.instance = None;
                });
                self.remove(&sb);
                self.events.emit(
                    SandboxEventKind::Failed,
                    id,
                    Some(team),
                    Some(e.to_string()),
                );
                Err(e)
            }
        }
    }

    fn agent_metadata(&self, instance: &Instance, envd_version: &str) -> BTreeMap<String, String> {
        let mut m = instance.metadata.clone();
        m.insert("runtime".into(), self.runtime.name().into());
        m.insert("agent_version".into(), AGENT_VERSION.into());
        if !envd_version.is_empty() {
            m.insert("envd_version".into(), envd_version.into());
        }
        m
    }

    /// Destroys a sandbox in any state, or the leftover on-disk state of one the agent
    /// no longer tracks. NotFound if there is neither.
    pub async fn destroy(&self, id: SandboxId) -> AgentResult<()> {
        let Some(sb) = self.lookup(id) else {
            return self.destroy_leftovers(id).await;
        };
        // Refuse new proxy connections at once; in-flight ones end with the sandbox.
        sb.conns.drain(Duration::ZERO).await;
        let _op = sb.op.lock().await;
        if sb.status() == SandboxStatus::Stopped {
            return Ok(());
        }
        let team = sb.team_id();
        sb.with(|s| {
            s.status = SandboxStatus::Stopping;
            s.envd = None;
        });
        match self.runtime.destroy(id).await {
            Ok(()) => {
                sb.with(|s| {
                    s.status = SandboxStatus::Stopped;
                    s.instance = None;
                    stop_watch(s);
                });
                if let Ok(mut m) = sb.metrics.lock() {
                    m.flush();
                }
                self.remove(&sb);
                self.events
                    .emit(SandboxEventKind::Stopped, id, Some(team), None);
                Ok(())
            }
            Err(e) => {
                sb.with(|s| s.status = SandboxStatus::Error);
                self.events.emit(
                    SandboxEventKind::Failed,
                    id,
                    Some(team),
                    Some(e.to_string()),
                );
                Err(e.into())
            }
        }
    }

    /// Removes leftovers (`sandboxes/{id}`, `snapshots/{id}`) of an untracked sandbox.
    async fn destroy_leftovers(&self, id: SandboxId) -> AgentResult<()> {
        let dirs = [self.layout.sandbox_dir(id), self.layout.snapshot_dir(id)];
        let exists = tokio::task::spawn_blocking(move || dirs.iter().any(|d| d.exists()))
            .await
            .unwrap_or(false);
        if !exists {
            return Err(AgentError::SandboxNotFound(id));
        }
        // Reserve the id while cleaning, so a concurrent create of it waits its turn.
        let placeholder = Arc::new(Sandbox::new(
            placeholder_config(id),
            SandboxStatus::Stopping,
        ));
        let tracked = {
            let mut map = self
                .sandboxes
                .write()
                .map_err(|_| AgentError::internal("sandbox map poisoned"))?;
            match map.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => true,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Arc::clone(&placeholder));
                    false
                }
            }
        };
        if tracked {
            // Created meanwhile: destroy it like any tracked sandbox.
            return Box::pin(self.destroy(id)).await;
        }
        let result = self.runtime.destroy(id).await;
        placeholder.with(|s| s.status = SandboxStatus::Stopped);
        self.remove(&placeholder);
        result.map_err(Into::into)
    }

    /// Pauses a running sandbox (manual pause).
    pub async fn pause(&self, id: SandboxId) -> AgentResult<()> {
        self.pause_with(id, PauseCause::Request).await
    }

    /// Pauses a running sandbox for `cause`. An idle pause re-checks, under the lock,
    /// that the sandbox is still idle (and otherwise does nothing and fails with
    /// FailedPrecondition).
    pub async fn pause_with(&self, id: SandboxId, cause: PauseCause) -> AgentResult<()> {
        let sb = self.get(id)?;
        let _op = sb.op.lock().await;
        sb.check_alive()?;
        let status = sb.status();
        if status != SandboxStatus::Running {
            return Err(sb.wrong_state(status, "pause needs a running sandbox"));
        }
        if cause == PauseCause::Idle && !self.is_idle(&sb) {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is no longer idle"
            )));
        }
        self.pause_locked(&sb, cause).await
    }

    fn effective_timeout(&self, timeout_sec: u32) -> Option<Duration> {
        (timeout_sec > 0)
            .then(|| Duration::from_secs(u64::from(timeout_sec)).max(self.settings.min_timeout))
    }

    /// Running, with a timeout, and idle longer than it.
    pub fn is_idle(&self, sb: &Sandbox) -> bool {
        let (status, timeout) = sb.with(|s| (s.status, s.timeout_sec));
        status == SandboxStatus::Running
            && self
                .effective_timeout(timeout)
                .is_some_and(|t| sb.idle_for() > t)
    }

    /// Paused (not hibernated) longer than `hibernate_after`.
    pub fn is_due_for_hibernation(&self, sb: &Sandbox) -> bool {
        self.runtime.capabilities().hibernate
            && sb.with(|s| {
                s.status == SandboxStatus::Paused
                    && s.paused_at
                        .is_some_and(|t| t.elapsed() >= self.settings.hibernate_after)
            })
    }

    /// Drains connections, lets envd prepare, and freezes; with the op lock held and the
    /// sandbox running.
    async fn pause_locked(&self, sb: &Arc<Sandbox>, cause: PauseCause) -> AgentResult<()> {
        let id = sb.id;
        let team = sb.team_id();
        let instance = sb.instance()?;
        sb.with(|s| s.status = SandboxStatus::Pausing);
        if !sb.conns.drain(self.settings.drain_grace).await {
            tracing::info!(sandbox_id = %id, "proxy connections still open after the drain grace");
        }
        // A pause that keeps memory (cgroup freezer, VM memory snapshot) keeps the page
        // cache too: nothing to flush. Only a pause that drops memory asks envd to sync.
        if !self.runtime.capabilities().memory_snapshots {
            self.prepare_snapshot(sb).await;
        }
        match self.runtime.pause(&instance).await {
            Ok(()) => {
                sb.with(|s| {
                    s.status = SandboxStatus::Paused;
                    s.paused_at = Some(Instant::now());
                    s.auto_paused = cause != PauseCause::Request;
                    s.envd = None;
                });
                let kind = match cause {
                    PauseCause::Request => SandboxEventKind::Paused,
                    PauseCause::Idle | PauseCause::PauseAll => SandboxEventKind::AutoPaused,
                };
                self.events.emit(kind, id, Some(team), None);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, "pause failed: {e}");
                sb.conns.reset();
                let back = self.recover_running(sb, &instance).await;
                if back {
                    self.events.emit(
                        SandboxEventKind::PauseFailed,
                        id,
                        Some(team),
                        Some(e.to_string()),
                    );
                } else {
                    self.events.emit(
                        SandboxEventKind::Failed,
                        id,
                        Some(team),
                        Some(e.to_string()),
                    );
                }
                Err(e.into())
            }
        }
    }

    /// After a failed freeze: makes sure the sandbox runs (thawing it if the runtime
    /// left it half-frozen) and answers; sets `running`, or `error` if it does not.
    async fn recover_running(&self, sb: &Arc<Sandbox>, instance: &Instance) -> bool {
        sb.with(|s| s.envd = None);
        let answers = |budget| async move {
            match sb.envd_client() {
                Ok(envd) => envd.wait_ready(budget).await.is_ok(),
                Err(_) => false,
            }
        };
        let mut ok = answers(Duration::from_secs(2)).await;
        if !ok {
            if let Err(e) = self.runtime.resume(instance).await {
                tracing::debug!(sandbox_id = %sb.id, "thaw after a failed pause: {e}");
            }
            ok = answers(Duration::from_secs(5)).await;
        }
        sb.with(|s| {
            s.status = if ok {
                SandboxStatus::Running
            } else {
                SandboxStatus::Error
            }
        });
        ok
    }

    /// Gives a sandbox's envd its access token again after a template was taken of it;
    /// if that fails the sandbox is paused (never left running without its token).
    async fn restore_envd_token(&self, sb: &Arc<Sandbox>) {
        let token = sb.with(|s| {
            s.envd = None;
            s.access_token.clone()
        });
        let set = async {
            let envd = sb.envd_client()?;
            envd.wait_ready(self.settings.envd_ready_timeout).await?;
            set_envd_token(&envd, &token).await
        }
        .await;
        if let Err(e) = set {
            tracing::warn!(sandbox_id = %sb.id, "giving envd its token back: {e}; pausing the sandbox");
            if let Ok(instance) = sb.instance()
                && self.runtime.pause(&instance).await.is_ok()
            {
                sb.with(|s| {
                    s.status = SandboxStatus::Paused;
                    s.paused_at = Some(Instant::now());
                    s.envd = None;
                });
            } else {
                sb.with(|s| s.status = SandboxStatus::Error);
            }
        }
    }

    /// Asks envd to prepare for a freeze (best effort, bounded).
    async fn prepare_snapshot(&self, sb: &Arc<Sandbox>) {
        if let Ok(envd) = sb.envd_client() {
            let mut system = envd.system;
            match tokio::time::timeout(
                self.settings.prepare_timeout,
                system.prepare_snapshot(PrepareSnapshotRequest {}),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(sandbox_id = %sb.id, "PrepareSnapshot: {e}"),
                Err(_) => tracing::debug!(sandbox_id = %sb.id, "PrepareSnapshot timed out"),
            }
        }
    }

    /// Resumes a paused or hibernated sandbox. `timeout_sec` replaces the stored value,
    /// `default_user` (if non-empty) replaces the default user and `default_env` is
    /// merged into the defaults. On failure the sandbox keeps its previous state.
    pub async fn resume(
        &self,
        id: SandboxId,
        timeout_sec: u32,
        default_user: String,
        default_env: BTreeMap<String, String>,
    ) -> AgentResult<Started> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(AgentError::Unavailable("the agent is shutting down".into()));
        }
        let sb = self.get(id)?;
        let _op = sb.op.lock().await;
        sb.check_alive()?;
        let prev = sb.status();
        if !matches!(prev, SandboxStatus::Paused | SandboxStatus::Hibernated) {
            return Err(sb.wrong_state(prev, "resume needs a paused or hibernated sandbox"));
        }
        let team = sb.team_id();
        let (old_config, token) = sb.with(|s| (s.config.clone(), s.access_token.clone()));
        let mut config = old_config.clone();
        if !default_user.is_empty() {
            config.default_user = default_user.clone();
        }
        config.default_env.extend(default_env.clone());
        {
            // A hibernated sandbox takes its memory and vCPUs back: admit it first,
            // atomically with the other creates and restores.
            let map = self
                .sandboxes
                .write()
                .map_err(|_| AgentError::internal("sandbox map poisoned"))?;
            if prev == SandboxStatus::Hibernated {
                if let Some(capacity) = &self.settings.capacity {
                    capacity.admit(committed(&map), config.vcpus, config.memory_mb)?;
                }
            }
            sb.with(|s| s.status = SandboxStatus::Resuming);
        }

        let result: AgentResult<(Instance, String)> = if prev == SandboxStatus::Paused {
            let instance = sb.instance()?;
            match self.runtime.resume(&instance).await {
                Err(e) => Err(e.into()),
                Ok(()) => {
                    sb.with(|s| s.envd = None);
                    let keeps_memory = self.runtime.capabilities().templates_keep_processes;
                    let ready = async {
                        let envd = sb.envd_client()?;
                        let health = envd.wait_ready(self.settings.envd_ready_timeout).await?;
                        // A VM's envd also learns the time again (its clock stood still).
                        if keeps_memory || !default_user.is_empty() || !default_env.is_empty() {
                            init_envd(&envd, &default_user, &default_env, &token).await?;
                        }
                        Ok::<_, AgentError>(health.version)
                    }
                    .await;
                    match ready {
                        Ok(v) => Ok((instance, v)),
                        Err(e) => {
                            // Back to paused, as it was.
                            if let Err(pe) = self.runtime.pause(&instance).await {
                                tracing::warn!(sandbox_id = %id, "re-pause after a failed resume: {pe}");
                                sb.with(|s| s.status = SandboxStatus::Error);
                                return Err(e);
                            }
                            Err(e)
                        }
                    }
                }
            }
        } else {
            match self.runtime.restore(&config).await {
                Err(e) => Err(e.into()),
                Ok(instance) => {
                    sb.with(|s| {
                        s.instance = Some(instance.clone());
                        s.envd = None;
                    });
                    let ready = async {
                        let envd = sb.envd_client()?;
                        let health = envd.wait_ready(self.settings.envd_ready_timeout).await?;
                        init_envd(&envd, &config.default_user, &config.default_env, &token).await?;
                        Ok::<_, AgentError>(health.version)
                    }
                    .await;
                    match ready {
                        Ok(v) => Ok((instance, v)),
                        Err(e) => {
                            if let Err(he) = self.runtime.hibernate(&instance).await {
                                tracing::warn!(sandbox_id = %id, "re-hibernate after a failed restore: {he}");
                                sb.with(|s| {
                                    s.status = SandboxStatus::Error;
                                    s.envd = None;
                                });
                                return Err(e);
                            }
                            Err(e)
                        }
                    }
                }
            }
        };
        match result {
            Ok((instance, envd_version)) => {
                let started = sb.with(|s| {
                    s.config = config;
                    s.timeout_sec = timeout_sec;
                    s.status = SandboxStatus::Running;
                    s.auto_paused = false;
                    s.paused_at = None;
                    s.agent_metadata = self.agent_metadata(&instance, &envd_version);
                    s.instance = Some(instance.clone());
                    Started {
                        host_ip: instance.host_ip.clone(),
                        metadata: merged_metadata(&s.user_metadata, &s.agent_metadata),
                    }
                });
                sb.conns.reset();
                sb.touch();
                self.persist(&sb);
                if prev == SandboxStatus::Hibernated {
                    self.watch(&sb, instance);
                }
                let (ip, md) = (started.host_ip.clone(), started.metadata.clone());
                self.events.emit_with(SandboxEventKind::Resumed, id, |ev| {
                    ev.team_id = Some(team);
                    ev.host_ip = Some(ip);
                    ev.metadata = Some(md);
                });
                Ok(started)
            }
            Err(e) => {
                sb.with(|s| {
                    if s.status == SandboxStatus::Resuming {
                        s.status = prev;
                    }
                    s.envd = None;
                });
                self.events.emit(
                    SandboxEventKind::ResumeFailed,
                    id,
                    Some(team),
                    Some(e.to_string()),
                );
                Err(e)
            }
        }
    }

    /// Hibernates a running or paused sandbox; returns the bytes its persisted state
    /// occupies.
    pub async fn hibernate(&self, id: SandboxId, cause: HibernateCause) -> AgentResult<u64> {
        let sb = self.get(id)?;
        let _op = sb.op.lock().await;
        sb.check_alive()?;
        if !self.runtime.capabilities().hibernate {
            return Err(AgentError::FailedPrecondition(format!(
                "the {} runtime cannot hibernate sandboxes",
                self.runtime.name()
            )));
        }
        let prev = sb.status();
        if !matches!(prev, SandboxStatus::Running | SandboxStatus::Paused) {
            return Err(sb.wrong_state(prev, "hibernate needs a running or paused sandbox"));
        }
        if cause == HibernateCause::LongPause && !self.is_due_for_hibernation(&sb) {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is not due for hibernation"
            )));
        }
        self.hibernate_locked(&sb, prev).await
    }

    async fn hibernate_locked(&self, sb: &Arc<Sandbox>, prev: SandboxStatus) -> AgentResult<u64> {
        let id = sb.id;
        let team = sb.team_id();
        let instance = sb.instance()?;
        sb.with(|s| s.status = SandboxStatus::Pausing);
        if prev == SandboxStatus::Running {
            sb.conns.drain(self.settings.drain_grace).await;
            self.prepare_snapshot(sb).await;
        }
        match self.runtime.hibernate(&instance).await {
            Ok(()) => {
                sb.with(|s| {
                    s.status = SandboxStatus::Hibernated;
                    s.envd = None;
                    s.auto_paused = false;
                    s.paused_at = None;
                    stop_watch(s);
                });
                self.persist_in(sb, &self.layout.snapshot_dir(id));
                if let Ok(mut m) = sb.metrics.lock() {
                    m.flush();
                }
                let size = dir_allocated_bytes(self.layout.snapshot_dir(id)).await;
                self.events
                    .emit(SandboxEventKind::Hibernated, id, Some(team), None);
                Ok(size)
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, "hibernate failed: {e}");
                sb.with(|s| s.status = prev);
                if prev == SandboxStatus::Running {
                    sb.conns.reset();
                }
                Err(e.into())
            }
        }
    }

    /// Marks a running sandbox active now.
    pub fn ping(&self, id: SandboxId) -> AgentResult<()> {
        let sb = self.get(id)?;
        let status = sb.status();
        if status != SandboxStatus::Running {
            return Err(sb.wrong_state(status, "ping needs a running sandbox"));
        }
        sb.touch();
        Ok(())
    }

    /// Pauses every running sandbox concurrently, each with its own deadline; they are
    /// reported as auto-paused.
    pub async fn pause_all(self: &Arc<Self>) -> PauseAllOutcome {
        let running: Vec<SandboxId> = self
            .all()
            .iter()
            .filter(|s| s.status() == SandboxStatus::Running)
            .map(|s| s.id)
            .collect();
        let budget = self.settings.pause_all_timeout;
        let tasks = running.into_iter().map(|id| {
            let mgr = Arc::clone(self);
            let handle =
                tokio::spawn(async move { mgr.pause_with(id, PauseCause::PauseAll).await });
            async move {
                let r = match tokio::time::timeout(budget, handle).await {
                    Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(format!("pause task failed: {e}")),
                    Err(_) => Err(format!("pause still running after {budget:?}")),
                };
                (id, r)
            }
        });
        let mut out = PauseAllOutcome::default();
        for (id, r) in futures::future::join_all(tasks).await {
            match r {
                Ok(()) => out.paused.push(id),
                Err(e) => out.failed.push((id, e)),
            }
        }
        out
    }

    /// Turns a sandbox into a template at `template_dir(team, template)`. A running
    /// sandbox is paused first and stays paused; on failure the template directory is
    /// removed and the sandbox keeps its state.
    pub async fn snapshot(
        &self,
        id: SandboxId,
        team: TeamId,
        template: TemplateId,
    ) -> AgentResult<u64> {
        let sb = self.get(id)?;
        let dir = self.layout.template_dir(team, template);
        if path_exists(dir.clone()).await {
            return Err(AgentError::AlreadyExists(format!(
                "template {template} of {team} already exists on this host"
            )));
        }
        let _op = sb.op.lock().await;
        sb.check_alive()?;
        let prev = sb.status();
        if !matches!(
            prev,
            SandboxStatus::Running | SandboxStatus::Paused | SandboxStatus::Hibernated
        ) {
            return Err(sb.wrong_state(
                prev,
                "snapshot needs a running, paused or hibernated sandbox",
            ));
        }
        let team_of_sandbox = sb.team_id();
        // A template of this runtime is the sandbox's memory: envd's access token must
        // not be in it (each sandbox made from it gets its own through Init).
        let keeps_memory = self.runtime.capabilities().templates_keep_processes;
        if keeps_memory && prev == SandboxStatus::Hibernated {
            return Err(AgentError::FailedPrecondition(format!(
                "the {} runtime snapshots running or paused sandboxes: resume it first",
                self.runtime.name()
            )));
        }
        let instance = sb
            .with(|s| s.instance.clone())
            .unwrap_or_else(|| offline_instance(id));
        sb.with(|s| s.status = SandboxStatus::Snapshotting);
        if keeps_memory && prev == SandboxStatus::Paused {
            // Thawed for a moment to take the token out of its memory.
            let cleared = async {
                self.runtime.resume(&instance).await?;
                sb.with(|s| s.envd = None);
                let envd = sb.envd_client()?;
                envd.wait_ready(self.settings.envd_ready_timeout).await?;
                set_envd_token(&envd, "").await?;
                self.prepare_snapshot(&sb).await;
                self.runtime.pause(&instance).await?;
                sb.with(|s| s.envd = None);
                Ok::<_, AgentError>(())
            }
            .await;
            if let Err(e) = cleared {
                tracing::warn!(sandbox_id = %id, "preparing a paused sandbox's memory for a template: {e}");
                if let Err(pe) = self.runtime.pause(&instance).await {
                    tracing::warn!(sandbox_id = %id, "pausing again: {pe}");
                }
                sb.with(|s| s.status = prev);
                return Err(e);
            }
        }
        if prev == SandboxStatus::Running {
            sb.conns.drain(self.settings.drain_grace).await;
            self.prepare_snapshot(&sb).await;
            if keeps_memory {
                let cleared = match sb.envd_client() {
                    Ok(envd) => set_envd_token(&envd, "").await,
                    Err(e) => Err(e),
                };
                if let Err(e) = cleared {
                    sb.conns.reset();
                    sb.with(|s| s.status = SandboxStatus::Running);
                    return Err(e);
                }
            }
            if let Err(e) = self.runtime.pause(&instance).await {
                sb.conns.reset();
                self.recover_running(&sb, &instance).await;
                if keeps_memory {
                    self.restore_envd_token(&sb).await;
                }
                return Err(e.into());
            }
            sb.with(|s| s.envd = None);
        }
        match self.runtime.snapshot(&instance, team, template).await {
            Ok(size) => {
                // A running sandbox carries on after the copy; it was only frozen for
                // a consistent snapshot.
                let resumed = prev == SandboxStatus::Running
                    && match self.runtime.resume(&instance).await {
                        Ok(()) => true,
                        Err(re) => {
                            tracing::warn!(sandbox_id = %id, "resume after a snapshot: {re}");
                            false
                        }
                    };
                sb.with(|s| {
                    if resumed {
                        s.status = SandboxStatus::Running;
                    } else if prev == SandboxStatus::Running {
                        s.status = SandboxStatus::Paused;
                        s.paused_at = Some(Instant::now());
                        s.auto_paused = false;
                    } else {
                        s.status = prev;
                    }
                });
                if resumed {
                    sb.conns.reset();
                    if keeps_memory {
                        self.restore_envd_token(&sb).await;
                    }
                }
                self.events.emit(
                    SandboxEventKind::Snapshotted,
                    id,
                    Some(team_of_sandbox),
                    None,
                );
                Ok(size)
            }
            Err(e) => {
                let _ = remove_dir_all_async(dir).await;
                let e: AgentError = match e {
                    RuntimeError::NotFound(_) if prev == SandboxStatus::Hibernated => {
                        AgentError::FailedPrecondition(format!(
                            "the {} runtime cannot snapshot a hibernated sandbox: resume it first",
                            self.runtime.name()
                        ))
                    }
                    e => e.into(),
                };
                if prev == SandboxStatus::Running {
                    match self.runtime.resume(&instance).await {
                        Ok(()) => {
                            sb.with(|s| {
                                s.status = SandboxStatus::Running;
                                s.envd = None;
                            });
                            sb.conns.reset();
                            if keeps_memory {
                                self.restore_envd_token(&sb).await;
                            }
                        }
                        Err(re) => {
                            tracing::warn!(sandbox_id = %id, "resume after a failed snapshot: {re}");
                            sb.with(|s| {
                                s.status = SandboxStatus::Paused;
                                s.paused_at = Some(Instant::now());
                            });
                        }
                    }
                } else {
                    sb.with(|s| s.status = prev);
                }
                Err(e)
            }
        }
    }

    /// Deletes a template directory; refused while any sandbox here uses it. Returns
    /// whether there was one.
    pub async fn delete_template(&self, team: TeamId, template: TemplateId) -> AgentResult<bool> {
        if let Some(user) = self.all().iter().find(|s| {
            s.with(|st| st.config.template_team_id == team && st.config.template_id == template)
        }) {
            return Err(AgentError::FailedPrecondition(format!(
                "template {template} is still used by sandbox {}",
                user.id
            )));
        }
        let dir = self.layout.template_dir(team, template);
        if !path_exists(dir.clone()).await {
            return Ok(false);
        }
        remove_dir_all_async(dir)
            .await
            .map_err(|e| AgentError::internal(format!("delete template {template}: {e}")))?;
        Ok(true)
    }

    // -----------------------------------------------------------------------------
    // Liveness
    // -----------------------------------------------------------------------------

    /// Watches the live `instance` of `sb`: when the runtime reports that its init
    /// exited, the sandbox is torn down, marked `error` with the reason and a
    /// `failed` event is sent ([`SandboxManager::fail_dead`]).
    fn watch(&self, sb: &Arc<Sandbox>, instance: Instance) {
        let stop = tokio_util::sync::CancellationToken::new();
        let generation = sb.with(|s| {
            stop_watch(s);
            s.generation += 1;
            s.watch = Some(stop.clone());
            s.generation
        });
        sb.health_failures.store(0, Ordering::Relaxed);
        let (runtime, events, sb) = (
            Arc::clone(&self.runtime),
            Arc::clone(&self.events),
            Arc::clone(sb),
        );
        let span = tracing::info_span!("sandbox.watch", sandbox_id = %sb.id);
        tokio::spawn(
            async move {
                let reason = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = runtime.wait_exit(&instance) => match r {
                        Ok(reason) => reason,
                        Err(RuntimeError::NotFound(_)) => return,
                        Err(e) => {
                            tracing::warn!("cannot watch the sandbox: {e}");
                            return;
                        }
                    },
                };
                let _op = sb.op.lock().await;
                fail_dead(&*runtime, &events, &sb, Some(generation), reason).await;
            }
            .instrument(span),
        );
    }

    /// Asks the envd of every running sandbox whose lock is free for its health,
    /// concurrently, each bounded by `health_timeout`. A sandbox that fails
    /// `health_failures` checks in a row (a hung or stopped envd) is torn down and
    /// reported like a dead one. Paused sandboxes are never checked.
    pub async fn check_health(&self) {
        let checks = self.all().into_iter().map(|sb| async move {
            if sb.status() != SandboxStatus::Running {
                return;
            }
            let Ok(_op) = sb.op.try_lock() else {
                return;
            };
            if sb.status() != SandboxStatus::Running {
                return;
            }
            let budget = self.settings.health_timeout;
            tracing::trace!(sandbox_id = %sb.id, "health check");
            let outcome = match sb.envd_client() {
                Ok(envd) => {
                    let mut system = envd.system;
                    match tokio::time::timeout(budget, system.health(HealthRequest {})).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("it answered {}", e.message())),
                        Err(_) => Err(format!("it did not answer within {budget:?}")),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => sb.health_failures.store(0, Ordering::Relaxed),
                Err(why) => {
                    let n = sb.health_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(sandbox_id = %sb.id, failures = n, "envd health check failed: {why}");
                    if n >= self.settings.health_failures.max(1) {
                        let reason = format!(
                            "the capsule's envd failed {n} health checks in a row (last: {why})"
                        );
                        fail_dead(&*self.runtime, &self.events, &sb, None, reason).await;
                    }
                }
            }
        });
        futures::future::join_all(checks).await;
    }

    /// Why the sandbox is in `error` (it died, or could not be adopted), if it is.
    pub fn failure(&self, id: SandboxId) -> Option<String> {
        self.lookup(id)
            .and_then(|sb| sb.with(|s| s.failure.clone()))
    }

    /// Writes what the manager needs to adopt `sb` after an agent restart
    /// (`sandboxes/{id}/agent.json`; a failure is logged).
    fn persist(&self, sb: &Sandbox) {
        self.persist_in(sb, &self.layout.sandbox_dir(sb.id));
    }

    /// Writes `sb`'s record into `dir` (`agent.json`; a failure is logged): its
    /// sandbox directory while it lives, its snapshot directory once hibernated (so
    /// that its token, metadata and template name outlive an agent restart — a VM's
    /// memory keeps envd's token).
    fn persist_in(&self, sb: &Sandbox, dir: &Path) {
        let record = sb.with(|s| ManagedRecord {
            access_token: s.access_token.clone(),
            template_name: s.template_name.clone(),
            created_at_unix: s.created_at_unix,
            timeout_sec: s.timeout_sec,
            default_user: s.config.default_user.clone(),
            default_env: s.config.default_env.clone(),
            user_metadata: s.user_metadata.clone(),
        });
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|raw| {
                let tmp = dir.join(".agent.json.tmp");
                std::fs::write(&tmp, raw)?;
                std::fs::rename(&tmp, dir.join(MANAGED_RECORD))
            });
        if let Err(e) = written {
            tracing::warn!(sandbox_id = %sb.id, "cannot persist the sandbox record: {e}");
        }
    }

    // -----------------------------------------------------------------------------
    // Reaper hooks
    // -----------------------------------------------------------------------------

    /// Idle pause by the reaper (re-checked under the lock).
    pub async fn auto_pause(&self, id: SandboxId) -> AgentResult<()> {
        self.pause_with(id, PauseCause::Idle).await
    }

    /// Hibernation of a long-paused sandbox by the reaper (re-checked under the lock).
    pub async fn auto_hibernate(&self, id: SandboxId) -> AgentResult<u64> {
        self.hibernate(id, HibernateCause::LongPause).await
    }

    // -----------------------------------------------------------------------------
    // Metrics
    // -----------------------------------------------------------------------------

    /// Takes one resource sample of every running sandbox whose lock is free.
    pub async fn sample_all(&self) {
        let now_unix = now_ms() / 1000;
        let jobs = self.all().into_iter().map(|sb| async move {
            if sb.status() != SandboxStatus::Running {
                return;
            }
            let Ok(_op) = sb.op.try_lock() else {
                return;
            };
            let Some((instance, vcpus)) = sb.with(|s| {
                (s.status == SandboxStatus::Running)
                    .then(|| s.instance.clone().map(|i| (i, s.config.vcpus.max(1))))
                    .flatten()
            }) else {
                return;
            };
            match self.runtime.stats(&instance).await {
                Ok(st) => {
                    let point = MetricPoint {
                        timestamp_unix: now_unix,
                        cpu_pct: (st.cpu_pct / f64::from(vcpus)).clamp(0.0, 100.0),
                        mem_bytes: st.mem_bytes,
                        disk_bytes: st.disk_bytes,
                    };
                    if let Ok(mut m) = sb.metrics.lock() {
                        m.push(point);
                    }
                }
                Err(e) => tracing::debug!(sandbox_id = %sb.id, "stats: {e}"),
            }
        });
        futures::future::join_all(jobs).await;
    }

    /// Samples of `id` for `range`, oldest first.
    pub fn metrics(&self, id: SandboxId, range: &str) -> AgentResult<Vec<MetricPoint>> {
        let (tier, age) = parse_range(range)?;
        let sb = self.get(id)?;
        let status = sb.status();
        if matches!(status, SandboxStatus::Hibernated | SandboxStatus::Stopped) {
            return Err(sb.wrong_state(status, "its samples have been flushed"));
        }
        let now = now_ms() / 1000;
        Ok(sb
            .metrics
            .lock()
            .map(|m| m.range(tier, age, now))
            .unwrap_or_default())
    }

    /// Returns and clears every tier of `id`.
    #[allow(clippy::type_complexity)]
    pub fn flush_metrics(
        &self,
        id: SandboxId,
    ) -> AgentResult<(Vec<MetricPoint>, Vec<MetricPoint>, Vec<MetricPoint>)> {
        let sb = self.get(id)?;
        Ok(sb.metrics.lock().map(|mut m| m.flush()).unwrap_or_default())
    }

    /// (known, running, vCPUs and MiB promised to running and paused sandboxes).
    pub fn allocations(&self) -> (u32, u32, u32, u64) {
        let all = self.all();
        let mut running = 0;
        let mut vcpus = 0;
        let mut mem = 0u64;
        for sb in &all {
            sb.with(|s| {
                if s.status == SandboxStatus::Running {
                    running += 1;
                }
                if matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused) {
                    vcpus += s.config.vcpus;
                    mem += u64::from(s.config.memory_mb);
                }
            });
        }
        (all.len() as u32, running, vcpus, mem)
    }

    // -----------------------------------------------------------------------------
    // Shutdown
    // -----------------------------------------------------------------------------

    /// Graceful agent shutdown: refuses new creates and resumes, then hibernates every
    /// running or paused sandbox concurrently (a runtime that cannot hibernate destroys
    /// them instead, reported as `stopped`), bounded by `shutdown_timeout`. Returns the
    /// ids hibernated (or stopped).
    pub async fn shutdown(self: &Arc<Self>) -> Vec<SandboxId> {
        self.closing.store(true, Ordering::SeqCst);
        let can_hibernate = self.runtime.capabilities().hibernate;
        let targets: Vec<SandboxId> = self
            .all()
            .iter()
            .filter(|s| {
                matches!(
                    s.status(),
                    SandboxStatus::Running
                        | SandboxStatus::Paused
                        | SandboxStatus::Starting
                        | SandboxStatus::Pausing
                        | SandboxStatus::Resuming
                        | SandboxStatus::Snapshotting
                )
            })
            .map(|s| s.id)
            .collect();
        let tasks = targets.into_iter().map(|id| {
            let mgr = Arc::clone(self);
            tokio::spawn(async move {
                let r = if can_hibernate {
                    mgr.hibernate(id, HibernateCause::Shutdown)
                        .await
                        .map(|_| ())
                } else {
                    mgr.destroy(id).await
                };
                if let Err(e) = &r {
                    tracing::warn!(sandbox_id = %id, "shutdown: {e}");
                }
                r.ok().map(|_| id)
            })
        });
        let all = futures::future::join_all(tasks);
        match tokio::time::timeout(self.settings.shutdown_timeout, all).await {
            Ok(done) => done.into_iter().filter_map(|r| r.ok().flatten()).collect(),
            Err(_) => {
                tracing::warn!("shutdown: some sandboxes were not hibernated in time");
                Vec::new()
            }
        }
    }

    /// True once [`shutdown`](Self::shutdown) has started.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// File in `sandboxes/{id}/` holding what the manager needs to adopt a sandbox.
const MANAGED_RECORD: &str = "agent.json";

/// What [`SandboxManager`] persists per live sandbox (its runtime persists the rest).
/// Fields added later must be `#[serde(default)]`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ManagedRecord {
    access_token: String,
    #[serde(default)]
    template_name: String,
    #[serde(default)]
    created_at_unix: i64,
    #[serde(default)]
    timeout_sec: u32,
    #[serde(default)]
    default_user: String,
    #[serde(default)]
    default_env: BTreeMap<String, String>,
    #[serde(default)]
    user_metadata: BTreeMap<String, String>,
}

fn read_managed(dir: &Path) -> Option<ManagedRecord> {
    let raw = std::fs::read(dir.join(MANAGED_RECORD)).ok()?;
    match serde_json::from_slice(&raw) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("unreadable {MANAGED_RECORD} in {}: {e}", dir.display());
            None
        }
    }
}

/// Cancels the watcher of the live instance, if any.
fn stop_watch(s: &mut State) {
    if let Some(w) = s.watch.take() {
        w.cancel();
    }
}

/// vCPUs and MiB held by the sandboxes of `map` that have (or are getting) processes
/// on this host.
fn committed(map: &HashMap<SandboxId, Arc<Sandbox>>) -> (u64, u64) {
    map.values().fold((0, 0), |(vcpus, mb), sb| {
        sb.with(|s| {
            if matches!(
                s.status,
                SandboxStatus::Starting
                    | SandboxStatus::Running
                    | SandboxStatus::Pausing
                    | SandboxStatus::Paused
                    | SandboxStatus::Resuming
                    | SandboxStatus::Snapshotting
                    | SandboxStatus::Stopping
            ) {
                (
                    vcpus + u64::from(s.config.vcpus),
                    mb + u64::from(s.config.memory_mb),
                )
            } else {
                (vcpus, mb)
            }
        })
    })
}

/// A sandbox whose init died (or whose envd stopped answering): with its op lock
/// held, unless a lifecycle operation moved it on meanwhile (or `generation` names an
/// older instance), it is torn down, kept as `error` with `reason`, and a `failed`
/// event is sent.
async fn fail_dead(
    runtime: &dyn Runtime,
    events: &EventSender,
    sb: &Sandbox,
    generation: Option<u64>,
    reason: String,
) {
    let current = sb.with(|s| {
        matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused)
            && generation.is_none_or(|g| g == s.generation)
    });
    if !current {
        return;
    }
    let id = sb.id;
    tracing::warn!(sandbox_id = %id, "sandbox died: {reason}");
    sb.conns.drain(Duration::ZERO).await;
    let team = sb.with(|s| {
        s.envd = None;
        stop_watch(s);
        s.config.team_id
    });
    if let Err(e) = runtime.destroy(id).await {
        tracing::error!(sandbox_id = %id, "tearing down a dead sandbox: {e}");
    }
    sb.with(|s| {
        s.status = SandboxStatus::Error;
        s.instance = None;
        s.failure = Some(reason.clone());
    });
    if let Ok(mut m) = sb.metrics.lock() {
        m.flush();
    }
    events.emit(SandboxEventKind::Failed, id, Some(team), Some(reason));
}

/// Sets only envd's access token (empty: none) through Init.
async fn set_envd_token(envd: &EnvdClient, token: &str) -> AgentResult<()> {
    init_envd(envd, "", &BTreeMap::new(), token).await
}

/// Applies defaults and the access token through envd's Init.
async fn init_envd(
    envd: &EnvdClient,
    default_user: &str,
    default_env: &BTreeMap<String, String>,
    token: &str,
) -> AgentResult<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let req = InitRequest {
        default_user: (!default_user.is_empty()).then(|| default_user.to_owned()),
        default_workdir: None,
        env_vars: default_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        access_token: Some(token.to_owned()),
        hostname: None,
        timestamp: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
    };
    let mut system = envd.system.clone();
    system.init(req).await?;
    Ok(())
}

/// The configuration of a placeholder entry (leftover cleanup).
fn placeholder_config(id: SandboxId) -> SandboxConfig {
    SandboxConfig {
        id,
        team_id: wrenn_core::id::PLATFORM_TEAM_ID,
        template_team_id: wrenn_core::id::PLATFORM_TEAM_ID,
        template_id: wrenn_core::id::BUILTIN_TEMPLATE_ID,
        vcpus: 0,
        memory_mb: 0,
        disk_size_mb: 0,
        default_user: String::new(),
        default_env: BTreeMap::new(),
    }
}

/// The instance handed to the runtime for a hibernated sandbox that has no live one
/// (found on disk after an agent restart): it names the sandbox, nothing more.
fn offline_instance(id: SandboxId) -> Instance {
    Instance {
        id,
        envd: EnvdEndpoint::Unix(PathBuf::new()),
        host_ip: String::new(),
        metadata: BTreeMap::new(),
    }
}

async fn path_exists(p: PathBuf) -> bool {
    tokio::task::spawn_blocking(move || p.exists())
        .await
        .unwrap_or(false)
}

async fn remove_dir_all_async(p: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(p))
        .await
        .map_err(std::io::Error::other)?
}

/// Allocated bytes (`st_blocks × 512`) of everything under `dir`; 0 if it is missing.
pub async fn dir_allocated_bytes(dir: PathBuf) -> u64 {
    tokio::task::spawn_blocking(move || allocated(&dir))
        .await
        .unwrap_or(0)
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = md.blocks() * 512;
    if md.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += allocated(&e.path());
            }
        }
    }
    total
}
