//! (being written) The gRPC host pool: `HostAgents` over tonic.

use std::sync::Arc;

use wrenn_core::agents::{AgentError, AgentInventory, HostAgents, SandboxSpec, StartedSandbox};
use wrenn_core::id::{HostId, SandboxId, TeamId, TemplateId};
use wrenn_core::repo::Store;

/// Host agents reached over gRPC.
pub struct GrpcHostAgents {
    _store: Arc<dyn Store>,
}

impl GrpcHostAgents {
    /// A pool resolving host addresses through `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { _store: store }
    }
}

fn wip() -> AgentError {
    AgentError::Unavailable("host pool is being written".into())
}

#[async_trait::async_trait]
impl HostAgents for GrpcHostAgents {
    async fn create_sandbox(&self, _: HostId, _: &SandboxSpec) -> Result<StartedSandbox, AgentError> { Err(wip()) }
    async fn pause_sandbox(&self, _: HostId, _: SandboxId) -> Result<(), AgentError> { Err(wip()) }
    async fn resume_sandbox(&self, _: HostId, _: &SandboxSpec) -> Result<StartedSandbox, AgentError> { Err(wip()) }
    async fn destroy_sandbox(&self, _: HostId, _: SandboxId) -> Result<(), AgentError> { Err(wip()) }
    async fn ping_sandbox(&self, _: HostId, _: SandboxId) -> Result<(), AgentError> { Err(wip()) }
    async fn create_snapshot(&self, _: HostId, _: SandboxId, _: TeamId, _: TemplateId) -> Result<u64, AgentError> { Err(wip()) }
    async fn delete_snapshot(&self, _: HostId, _: TeamId, _: TemplateId) -> Result<(), AgentError> { Err(wip()) }
    async fn list_sandboxes(&self, _: HostId) -> Result<AgentInventory, AgentError> { Err(wip()) }
}
