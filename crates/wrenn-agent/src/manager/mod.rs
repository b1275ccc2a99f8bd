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
//! leaves the previous state. Destroy works from every state. A create whose task
//! panics fails like any other (what the runtime made is destroyed, the sandbox is
//! reported `failed`), and a destroy that panics leaves it in `error`.
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
//!
//! The manager's methods are grouped by concern, one module each: `lifecycle`
//! (create, destroy, pause, resume, ping, pause-all), `hibernation`, `templates`
//! (snapshot, delete template), `liveness` (instance watchers, envd health checks,
//! dead sandboxes), `recovery` (adoption after a restart and the per-sandbox record
//! that makes it possible), `metrics` (sampling and allocations) and `disk` (disk
//! accounting); `sandbox` holds one [`Sandbox`] and its state, `settings` the
//! timings and the capacity admission.
//!
//! [`ConnTracker`]: crate::conntrack::ConnTracker

use crate::runtime::error_chain;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::FutureExt;
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;
use wrenn_core::lifecycle::SandboxStatus;

use crate::envd::EnvdClient;
use crate::error::{AgentError, AgentResult};
use crate::events::EventSender;
use crate::runtime::{EnvdEndpoint, Instance, Runtime, SandboxConfig};

mod disk;
mod hibernation;
mod lifecycle;
mod liveness;
mod metrics;
mod recovery;
mod sandbox;
mod settings;
mod template_transfer;
mod templates;

pub use disk::dir_allocated_bytes;
pub use sandbox::{Sandbox, now_ms};
pub use settings::{HostCapacity, ManagerSettings};

/// Version of this agent, reported in sandbox metadata (`agent_version`).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

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

/// The sandboxes of this host and their state machine.
pub struct SandboxManager {
    runtime: Arc<dyn Runtime>,
    layout: Layout,
    events: Arc<EventSender>,
    settings: ManagerSettings,
    sandboxes: RwLock<HashMap<SandboxId, Arc<Sandbox>>>,
    closing: AtomicBool,
    /// Lifecycle operations in flight ([`spawn_op`](Self::spawn_op)), which shutdown
    /// waits for.
    ops: tokio_util::task::TaskTracker,
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
            ops: tokio_util::task::TaskTracker::new(),
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
        self.map().len()
    }

    /// True if no sandbox is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every sandbox.
    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        self.map().values().cloned().collect()
    }

    fn lookup(&self, id: SandboxId) -> Option<Arc<Sandbox>> {
        self.map().get(&id).cloned()
    }

    /// The map, for reading. Every change to it is one insert or remove, so a panic
    /// while it was held cannot have left it half changed: a poisoned lock is used as
    /// it is, and one panicking operation does not fail every later one.
    fn map(&self) -> RwLockReadGuard<'_, HashMap<SandboxId, Arc<Sandbox>>> {
        self.sandboxes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The map, for changing (see [`map`](Self::map) on poisoning).
    fn map_mut(&self) -> RwLockWriteGuard<'_, HashMap<SandboxId, Arc<Sandbox>>> {
        self.sandboxes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The sandbox, or NotFound.
    pub fn get(&self, id: SandboxId) -> AgentResult<Arc<Sandbox>> {
        self.lookup(id).ok_or(AgentError::SandboxNotFound(id))
    }

    /// Removes `sb` from the map if it is still the entry for its id.
    fn remove(&self, sb: &Arc<Sandbox>) {
        let mut m = self.map_mut();
        if m.get(&sb.id).is_some_and(|cur| Arc::ptr_eq(cur, sb)) {
            m.remove(&sb.id);
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
        self.ops.spawn(fut).await.map_err(|e| {
            AgentError::internal(format!("operation task failed: {}", error_chain(&e)))
        })?
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
    // Shutdown
    // -----------------------------------------------------------------------------

    /// Graceful agent shutdown: refuses new creates and resumes, stops the runtime's
    /// background work ([`Runtime::stop_background`]), then hibernates every
    /// running or paused sandbox concurrently (a runtime that cannot hibernate destroys
    /// them instead, reported as `stopped`), then waits for the lifecycle operations in
    /// flight and the runtime's background removals ([`Runtime::settle`]); all of it
    /// bounded by `shutdown_timeout`. Returns the ids hibernated (or stopped).
    pub async fn shutdown(self: &Arc<Self>) -> Vec<SandboxId> {
        self.closing.store(true, Ordering::SeqCst);
        // Nothing is kept ready for creates any more, and nothing is left half made.
        self.runtime.stop_background().await;
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
                    tracing::warn!(sandbox_id = %id, "shutdown: {}", error_chain(&e));
                }
                r.ok().map(|_| id)
            })
        });
        let all = futures::future::join_all(tasks);
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        let kept = match tokio::time::timeout_at(deadline, all).await {
            Ok(done) => done.into_iter().filter_map(|r| r.ok().flatten()).collect(),
            Err(_) => {
                tracing::warn!("shutdown: some sandboxes were not hibernated in time");
                Vec::new()
            }
        };
        // Operations in flight (a destroy the control plane asked for) finish, and the
        // directories of destroyed sandboxes (with their disks' mounts), removed in the
        // background, are gone: an agent that stops leaves nothing half removed.
        self.ops.close();
        let settled = async {
            self.ops.wait().await;
            self.runtime.settle().await;
        };
        if tokio::time::timeout_at(deadline, settled).await.is_err() {
            tracing::warn!("shutdown: operations in flight did not finish in time");
        }
        kept
    }

    /// True once [`shutdown`](Self::shutdown) has started.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// Runs `op`, turning a panic inside it into [`AgentError::Internal`] naming `what`,
/// so that the operation can still undo what it made and report the failure.
async fn caught<T>(what: &str, op: impl Future<Output = AgentResult<T>>) -> AgentResult<T> {
    match AssertUnwindSafe(op).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(AgentError::Internal(format!(
            "{what} panicked: {}",
            panic_message(&*panic)
        ))),
    }
}

/// The message a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
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
