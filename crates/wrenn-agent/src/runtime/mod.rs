//! The [`Runtime`] seam: how a sandbox is actually run on this host.
//!
//! Implementations: [`process`] (Linux namespaces + overlayfs + cgroups; the
//! embedded default), [`qemu`] (capsules as QEMU microVMs on the shared [`vm`] layer)
//! and `firecracker` (microVMs, on the same layer). The [`crate::manager`] owns the
//! per-sandbox locks and state machine; a runtime only performs the operations.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use wrenn_core::id::{SandboxId, TeamId, TemplateId};

pub mod firecracker;
pub mod process;
pub mod qemu;
pub mod vm;

/// What a runtime can do beyond the basics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Pause keeps memory and resume restores it exactly (process runtime: cgroup
    /// freezer; Firecracker: memory snapshots).
    pub memory_snapshots: bool,
    /// Hibernate persists a sandbox to disk and frees its memory.
    pub hibernate: bool,
    /// A template holds the sandbox's memory (VM runtimes): sandboxes made from it
    /// resume its processes. Its envd must then not keep an access token in that
    /// memory; the manager clears it before the snapshot and sets it again after.
    pub templates_keep_processes: bool,
}

/// Everything a runtime needs to start a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The sandbox.
    pub id: SandboxId,
    /// Owning team.
    pub team_id: TeamId,
    /// Team owning the template.
    pub template_team_id: TeamId,
    /// Template (its files live at `layout.template_dir(template_team_id, template_id)`;
    /// the built-in all-zero template is the default image's root filesystem, read-only).
    pub template_id: TemplateId,
    /// vCPUs (enforced as a CPU quota).
    pub vcpus: u32,
    /// Memory limit (MiB).
    pub memory_mb: u32,
    /// Writable disk (MiB).
    pub disk_size_mb: u32,
    /// Default user for processes.
    pub default_user: String,
    /// Default environment for processes.
    pub default_env: BTreeMap<String, String>,
}

/// Where a sandbox's guest agent (envd) answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvdEndpoint {
    /// A unix socket on the host (process runtime).
    Unix(PathBuf),
    /// A TCP address reachable from the host (VM runtimes).
    Tcp(SocketAddr),
}

/// A sandbox as a runtime started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The sandbox.
    pub id: SandboxId,
    /// Its guest agent.
    pub envd: EnvdEndpoint,
    /// The address the sandbox is reachable at from the host (ports are proxied
    /// to it).
    pub host_ip: String,
    /// Runtime details reported to the control plane (versions, runtime name).
    pub metadata: BTreeMap<String, String>,
}

/// Resource usage of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stats {
    /// CPU use since the previous sample, in percent of one CPU.
    pub cpu_pct: f64,
    /// Memory in use (bytes).
    pub mem_bytes: u64,
    /// Writable-layer disk use (bytes).
    pub disk_bytes: u64,
}

/// A live sandbox found again after an agent restart ([`Runtime::adopt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Its configuration, as persisted when it was started.
    pub config: SandboxConfig,
    /// The running instance (its envd answered).
    pub instance: Instance,
    /// It was frozen (paused) when found.
    pub paused: bool,
}

/// What [`Runtime::adopt`] found on this host after an agent restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Sandboxes whose processes still run and whose envd answers; they are tracked
    /// again (and watched) as if this agent had started them.
    pub adopted: Vec<Adopted>,
    /// Sandboxes that were live when the previous agent stopped but could not be
    /// adopted (their init died, envd does not answer, state is unreadable). Their
    /// leftovers have been removed.
    pub lost: Vec<Lost>,
}

/// A sandbox [`Runtime::adopt`] could not adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The sandbox.
    pub id: SandboxId,
    /// Its team, when its state could be read.
    pub team_id: Option<TeamId>,
    /// Why it could not be adopted (no host paths).
    pub reason: String,
}

/// A runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The host lacks something the runtime needs (root, a kernel feature, a binary).
    #[error("host not capable: {0}")]
    Unsupported(String),
    /// The sandbox is unknown to the runtime.
    #[error("sandbox {0} not found")]
    NotFound(SandboxId),
    /// The template is not present on this host.
    #[error("template {0} not found on this host")]
    TemplateNotFound(TemplateId),
    /// The operation does not fit the sandbox's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The host has no room for the sandbox (memory or vCPUs beyond its capacity).
    #[error("{0}")]
    ResourceExhausted(String),
    /// An operating-system call failed.
    #[error("{context}")]
    Io {
        /// What was being done (may name host paths: see [`Self::wire_message`]).
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    /// The message for the control plane: the error and its causes, host paths left
    /// out (see [`AgentError::wire_message`](crate::error::AgentError::wire_message)).
    pub fn wire_message(&self) -> String {
        crate::error::without_host_paths(&error_chain(self))
    }
}

/// Runs sandboxes. All methods are called with the sandbox's lock held by the
/// manager, so a runtime never sees two operations on one sandbox at once.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Short name (`process`, `firecracker`), reported in sandbox metadata.
    fn name(&self) -> &'static str;
    /// What this runtime supports.
    fn capabilities(&self) -> Capabilities;
    /// Creates and starts a sandbox; returns once its envd answers.
    async fn create(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError>;
    /// Starts the runtime's background work that keeps things ready ahead of creates
    /// (the process runtime's warm capsules). The agent calls it once, after the
    /// start-up [`sweep`](Self::sweep); the work holds the runtime weakly and ends when
    /// it is dropped. The default does nothing.
    fn start_background(self: Arc<Self>) {}
    /// Stops what [`start_background`](Self::start_background) started and waits for
    /// it: work in flight finishes (a capsule half made is never left behind) and what
    /// it kept ready is removed. The agent calls it when it shuts down. The default
    /// does nothing.
    async fn stop_background(&self) {}
    /// Waits for what finished operations left to do in the background (the process
    /// runtime deletes a destroyed sandbox's directory after answering). The agent calls
    /// it last when it shuts down, so that nothing is left half removed. The default
    /// does nothing.
    async fn settle(&self) {}
    /// Freezes a running sandbox, keeping its memory.
    async fn pause(&self, instance: &Instance) -> Result<(), RuntimeError>;
    /// Thaws a paused sandbox.
    async fn resume(&self, instance: &Instance) -> Result<(), RuntimeError>;
    /// Persists a (running or paused) sandbox to `snapshots/{id}/` and stops it,
    /// freeing its memory.
    async fn hibernate(&self, instance: &Instance) -> Result<(), RuntimeError>;
    /// Starts a hibernated sandbox again from its persisted state.
    async fn restore(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError>;
    /// Stops a sandbox and removes all its state (including hibernated state).
    /// Idempotent: destroying an unknown sandbox cleans up leftovers and succeeds.
    async fn destroy(&self, id: SandboxId) -> Result<(), RuntimeError>;
    /// Copies the sandbox's filesystem state into a new template directory
    /// (`layout.template_dir(team, template)`); returns its size in bytes.
    async fn snapshot(
        &self,
        instance: &Instance,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, RuntimeError>;
    /// Resource usage.
    async fn stats(&self, instance: &Instance) -> Result<Stats, RuntimeError>;
    /// Sandboxes hibernated on this host's disk (they survive agent restarts), with
    /// the configuration to restore them.
    async fn hibernated(&self) -> Result<Vec<SandboxConfig>, RuntimeError>;
    /// Resolves when the sandbox's init (PID 1 for the process runtime; the VMM for VM
    /// runtimes) has exited, with a description of how it ended (exit status or
    /// signal and the tail of its log, no host paths). Whatever was the runtime's
    /// child process for it is reaped. Resolves with `NotFound` at once for an unknown
    /// sandbox. Runtimes that cannot watch never resolve (the default).
    async fn wait_exit(&self, instance: &Instance) -> Result<String, RuntimeError> {
        let _ = instance;
        std::future::pending().await
    }
    /// Re-adopts the sandboxes a previous agent left running on this host (called once
    /// at startup, before [`sweep`](Self::sweep)). The default adopts nothing.
    async fn adopt(&self) -> Result<Adoption, RuntimeError> {
        Ok(Adoption::default())
    }
    /// Removes leftovers of live sandboxes not in `keep` (processes, mounts,
    /// network namespaces after an agent crash), never hibernated state; returns the
    /// ids cleaned up.
    async fn sweep(&self, keep: &[SandboxId]) -> Result<Vec<SandboxId>, RuntimeError>;
}

/// Maps an I/O error to [`RuntimeError::Io`] with `context`.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// An error and its sources, `: `-separated.
pub(crate) use wrenn_core::report::error_chain;

/// Runs blocking work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Other(format!("blocking task failed: {}", error_chain(&e))))
}

/// Refuses sandbox `id` when it is `running`, has leftovers on this host (its directory
/// or network namespace) or — unless `allow_hibernated` — is hibernated here. Shared by
/// the runtimes, whose layouts and namespaces are named alike.
pub(crate) fn ensure_free(
    layout: &wrenn_core::layout::Layout,
    id: SandboxId,
    running: bool,
    allow_hibernated: bool,
) -> Result<(), RuntimeError> {
    if running {
        return Err(RuntimeError::FailedPrecondition(format!(
            "sandbox {id} is already running"
        )));
    }
    if layout.sandbox_dir(id).exists()
        || crate::network::netns_path(&crate::network::netns_name(&id.to_string())).exists()
    {
        return Err(RuntimeError::FailedPrecondition(format!(
            "sandbox {id} has leftovers on this host (destroy or sweep it first)"
        )));
    }
    if !allow_hibernated && layout.snapshot_dir(id).exists() {
        return Err(RuntimeError::FailedPrecondition(format!(
            "sandbox {id} is hibernated"
        )));
    }
    Ok(())
}

/// The configurations of the sandboxes hibernated under `layout` (`snapshots/*/`
/// with a record); unreadable records are skipped with a warning.
pub(crate) fn hibernated_configs(
    layout: &wrenn_core::layout::Layout,
) -> Result<Vec<SandboxConfig>, RuntimeError> {
    let dir = layout.snapshots_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("list {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        match process::template::read_record(&entry.path()) {
            Ok(Some(record)) => out.push(record.config.into()),
            Ok(None) => {}
            Err(e) => tracing::warn!("skipping {}: {}", entry.path().display(), error_chain(&e)),
        }
    }
    Ok(out)
}

/// The sandboxes with a directory under `layout`'s `sandboxes/`, but those in `keep`.
pub(crate) fn sandboxes_on_disk(
    layout: &wrenn_core::layout::Layout,
    keep: &[SandboxId],
) -> Result<Vec<SandboxId>, RuntimeError> {
    let dir = layout.sandboxes_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("list {}", dir.display()))(e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|id| !keep.contains(id))
        .collect())
}
