//! The host agent's two gRPC faces, served side by side on one endpoint.
//!
//! - [`AgentService`] implements `hostagent.v1.HostAgentService` (17 RPCs): sandbox
//!   lifecycle, snapshots and templates, and metrics. Lifecycle RPCs go to the
//!   [`SandboxManager`] (each on its own task, so a cancelled call never leaves a
//!   sandbox half-way). Every failure is an [`AgentError`] and is mapped to the status
//!   code that `hostagent.proto` documents in one place (`error.rs`).
//! - [`Forwarder`] implements envd's own `envd.v1.Process` and `envd.v1.Filesystem`
//!   services and forwards each call, message for message, to the guest agent of the
//!   sandbox named by the call's `wrenn-capsule-id` metadata entry
//!   ([`wrenn_proto::routing`]). It adds only routing, activity and kill-on-disconnect;
//!   see [`forward`].
//!
//! Behaviour of `HostAgentService` worth knowing beyond the proto comments:
//!
//! - **Ids** are validated first: `sandbox_id` must be `cl-` + 25 base36 characters,
//!   team and template ids hyphenated UUIDs (empty = all-zero only where the proto says
//!   so). A malformed id is INVALID_ARGUMENT and touches nothing.
//! - **FlattenRootfs** answers UNIMPLEMENTED: no runtime of this agent can flatten a
//!   disk yet (the process runtime has no block device; its CreateSnapshot already
//!   produces a disk-only template). Ids and the sandbox state are validated first.
//! - **Activity**: every sandbox-scoped RPC except ListSandboxes and the metrics RPCs
//!   bumps `last_active`, and so does every forwarded envd call and streamed message.
//! - **Terminate** returns at once and triggers the agent's graceful shutdown.
//!
//! The RPCs are implemented by group, one module each: `lifecycle` (create, pause,
//! resume, hibernate, destroy, list, pause-all, terminate, snapshots), `templates`
//! (moving a template between hosts) and `metrics`
//! (sandbox and host metrics); `convert` holds the validation and the proto ↔ domain
//! conversions. The [`HostAgentService`] impl below only delegates.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_server::HostAgentService;

use crate::error::AgentError;
use crate::manager::SandboxManager;
use crate::metrics::HostSampler;

mod convert;
pub mod forward;
mod lifecycle;
mod metrics;
mod templates;

pub use convert::parse_sandbox_id;
pub use forward::Forwarder;

/// Default vCPUs of CreateSandbox: the control plane's
/// ([`wrenn_core::lifecycle::DEFAULT_VCPUS`]), as the wire's unsigned type.
pub const DEFAULT_VCPUS: u32 = wrenn_core::lifecycle::DEFAULT_VCPUS.unsigned_abs();
/// Default memory, MiB ([`wrenn_core::lifecycle::DEFAULT_MEMORY_MB`]).
pub const DEFAULT_MEMORY_MB: u32 = wrenn_core::lifecycle::DEFAULT_MEMORY_MB.unsigned_abs();
/// Default writable disk, MiB ([`wrenn_core::lifecycle::DEFAULT_DISK_SIZE_MB`]).
pub const DEFAULT_DISK_MB: u32 = wrenn_core::lifecycle::DEFAULT_DISK_SIZE_MB.unsigned_abs();
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u32 = 128;
/// Accepted memory range, MiB.
pub const MEMORY_RANGE_MB: (u32, u32) = (64, 1024 * 1024);
/// Accepted disk range, MiB.
pub const DISK_RANGE_MB: (u32, u32) = (64, 16 * 1024 * 1024);

/// The `HostAgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentService {
    manager: Arc<SandboxManager>,
    host: Arc<HostSampler>,
    terminate: CancellationToken,
}

impl AgentService {
    /// A service over `manager`; `terminate` is cancelled by the Terminate RPC (the
    /// server then shuts down gracefully).
    pub fn new(
        manager: Arc<SandboxManager>,
        host: Arc<HostSampler>,
        terminate: CancellationToken,
    ) -> Self {
        Self {
            manager,
            host,
            terminate,
        }
    }
}

fn status_of(e: AgentError) -> Status {
    Status::from(e)
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl HostAgentService for AgentService {
    async fn create_sandbox(
        &self,
        req: Request<pb::CreateSandboxRequest>,
    ) -> Rpc<pb::CreateSandboxResponse> {
        lifecycle::create_sandbox(self, req).await
    }

    async fn destroy_sandbox(
        &self,
        req: Request<pb::DestroySandboxRequest>,
    ) -> Rpc<pb::DestroySandboxResponse> {
        lifecycle::destroy_sandbox(self, req).await
    }

    async fn pause_sandbox(
        &self,
        req: Request<pb::PauseSandboxRequest>,
    ) -> Rpc<pb::PauseSandboxResponse> {
        lifecycle::pause_sandbox(self, req).await
    }

    async fn resume_sandbox(
        &self,
        req: Request<pb::ResumeSandboxRequest>,
    ) -> Rpc<pb::ResumeSandboxResponse> {
        lifecycle::resume_sandbox(self, req).await
    }

    async fn hibernate_sandbox(
        &self,
        req: Request<pb::HibernateSandboxRequest>,
    ) -> Rpc<pb::HibernateSandboxResponse> {
        lifecycle::hibernate_sandbox(self, req).await
    }

    async fn ping_sandbox(
        &self,
        req: Request<pb::PingSandboxRequest>,
    ) -> Rpc<pb::PingSandboxResponse> {
        lifecycle::ping_sandbox(self, req).await
    }

    async fn list_sandboxes(
        &self,
        req: Request<pb::ListSandboxesRequest>,
    ) -> Rpc<pb::ListSandboxesResponse> {
        lifecycle::list_sandboxes(self, req).await
    }

    async fn pause_all(&self, req: Request<pb::PauseAllRequest>) -> Rpc<pb::PauseAllResponse> {
        lifecycle::pause_all(self, req).await
    }

    async fn terminate(&self, req: Request<pb::TerminateRequest>) -> Rpc<pb::TerminateResponse> {
        lifecycle::terminate(self, req).await
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Rpc<pb::CreateSnapshotResponse> {
        lifecycle::create_snapshot(self, req).await
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Rpc<pb::DeleteSnapshotResponse> {
        lifecycle::delete_snapshot(self, req).await
    }

    type ExportTemplateStream = templates::ArchiveStream;

    async fn export_template(
        &self,
        req: Request<pb::ExportTemplateRequest>,
    ) -> Rpc<Self::ExportTemplateStream> {
        templates::export_template(self, req).await
    }

    async fn import_template(
        &self,
        req: Request<tonic::Streaming<pb::ImportTemplateRequest>>,
    ) -> Rpc<pb::ImportTemplateResponse> {
        templates::import_template(self, req).await
    }

    async fn flatten_rootfs(
        &self,
        req: Request<pb::FlattenRootfsRequest>,
    ) -> Rpc<pb::FlattenRootfsResponse> {
        lifecycle::flatten_rootfs(self, req).await
    }

    async fn get_sandbox_metrics(
        &self,
        req: Request<pb::GetSandboxMetricsRequest>,
    ) -> Rpc<pb::GetSandboxMetricsResponse> {
        metrics::get_sandbox_metrics(self, req).await
    }

    async fn flush_sandbox_metrics(
        &self,
        req: Request<pb::FlushSandboxMetricsRequest>,
    ) -> Rpc<pb::FlushSandboxMetricsResponse> {
        metrics::flush_sandbox_metrics(self, req).await
    }

    async fn get_host_metrics(
        &self,
        req: Request<pb::GetHostMetricsRequest>,
    ) -> Rpc<pb::GetHostMetricsResponse> {
        metrics::get_host_metrics(self, req).await
    }
}
