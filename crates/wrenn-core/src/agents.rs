//! The control plane's view of host agents: the lifecycle calls it makes on a host.
//!
//! The production implementation (`wrenn-cpserver`) is a pool of tonic clients keyed
//! by host id; tests use controllable doubles. Calls inside a running capsule (exec,
//! files, PTY) are the [data plane](crate::data_plane).

use std::collections::BTreeMap;

use crate::id::{HostId, SandboxId, TeamId, TemplateId};
use crate::lifecycle::SandboxStatus;
use crate::model::{Metadata, MetricHistory, Resources, Sandbox, Template};

/// Failure of an agent call, classified like the gRPC status it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostCallError {
    /// The agent does not know the sandbox (or template).
    #[error("not found on host: {0}")]
    NotFound(String),
    /// The sandbox is in the wrong state for the call.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The request was malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The host could not be reached (or is not registered).
    #[error("host unavailable: {0}")]
    Unavailable(String),
    /// The host has no room for the sandbox (memory or vCPUs beyond its capacity).
    #[error("host capacity exhausted: {0}")]
    ResourceExhausted(String),
    /// The call did not finish in time.
    #[error("host call timed out: {0}")]
    Timeout(String),
    /// The agent failed.
    #[error("agent error: {0}")]
    Internal(String),
}

/// What the agent needs to start a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Id chosen by the control plane.
    pub sandbox_id: SandboxId,
    /// Owning team.
    pub team_id: TeamId,
    /// Template name (display only).
    pub template: String,
    /// Template id.
    pub template_id: TemplateId,
    /// Team owning the template (locates it on disk).
    pub template_team_id: TeamId,
    /// Machine shape.
    pub resources: Resources,
    /// Idle timeout before auto-pause (0 = never).
    pub timeout_sec: i32,
    /// Default user for processes.
    pub default_user: String,
    /// Default environment for processes.
    pub default_env: BTreeMap<String, String>,
    /// User metadata.
    pub metadata: Metadata,
}

impl SandboxSpec {
    /// The spec of the stored `sandbox`, with the process defaults of its `template`
    /// (`root` and no environment when the template is gone).
    pub fn for_sandbox(sandbox: &Sandbox, template: Option<&Template>) -> Self {
        Self {
            sandbox_id: sandbox.id,
            team_id: sandbox.team_id,
            template: sandbox.template.clone(),
            template_id: sandbox.template_id,
            template_team_id: sandbox.template_team_id,
            resources: sandbox.resources(),
            timeout_sec: sandbox.timeout_sec,
            default_user: template
                .map(|t| t.default_user.clone())
                .unwrap_or_else(|| "root".into()),
            default_env: template.map(|t| t.default_env.clone()).unwrap_or_default(),
            metadata: sandbox.metadata.clone(),
        }
    }
}

/// What the agent reports about a started or resumed sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartedSandbox {
    /// Address through which the sandbox is reached.
    pub host_ip: String,
    /// Agent-reported metadata (runtime and component versions).
    pub metadata: Metadata,
}

/// One sandbox as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSandbox {
    /// Id.
    pub sandbox_id: SandboxId,
    /// Status on the host.
    pub status: SandboxStatus,
}

/// Everything an agent currently holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentInventory {
    /// Sandboxes present on the host.
    pub sandboxes: Vec<AgentSandbox>,
    /// Sandboxes the idle reaper paused since the last listing.
    pub auto_paused: Vec<SandboxId>,
}

/// Lifecycle calls on a host's agent.
#[async_trait::async_trait]
pub trait HostAgents: Send + Sync + 'static {
    /// Creates and starts a sandbox.
    async fn create_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError>;
    /// Pauses a running sandbox (memory kept).
    async fn pause_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError>;
    /// Resumes a paused or hibernated sandbox.
    async fn resume_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError>;
    /// Destroys a sandbox and its disk state. NotFound means it was already gone.
    async fn destroy_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError>;
    /// Checks the sandbox answers and marks it active.
    async fn ping_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError>;
    /// Captures a running or paused sandbox into a template; returns its size in bytes.
    async fn create_snapshot(
        &self,
        host: HostId,
        id: SandboxId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, HostCallError>;
    /// Deletes a template's files from the host (idempotent).
    async fn delete_snapshot(
        &self,
        host: HostId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<(), HostCallError>;
    /// Copies a template's files from host `from` to host `to` (replacing a copy `to`
    /// already has); returns their size on `to`.
    async fn copy_template(
        &self,
        from: HostId,
        to: HostId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, HostCallError>;
    /// What the host currently holds.
    async fn list_sandboxes(&self, host: HostId) -> Result<AgentInventory, HostCallError>;
    /// Takes (returns and clears) the resource samples the agent holds for a sandbox,
    /// so they can be kept once it stops being sampled.
    async fn take_metric_history(
        &self,
        host: HostId,
        id: SandboxId,
    ) -> Result<MetricHistory, HostCallError>;
}
