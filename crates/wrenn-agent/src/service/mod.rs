//! The tonic implementation of `hostagent.v1.HostAgentService` (all 34 RPCs).
//!
//! Lifecycle RPCs go to the [`SandboxManager`] (each on its own task, so a cancelled
//! call never leaves a sandbox half-way); process, PTY and file RPCs are forwarded to
//! the sandbox's guest agent (envd) after the manager has checked that the sandbox is
//! RUNNING. Every failure is an [`AgentError`] and is mapped to the status code that
//! `hostagent.proto` documents in one place (`error.rs`).
//!
//! Behaviour worth knowing beyond the proto comments:
//!
//! - **Ids** are validated first: `sandbox_id` must be `cl-` + 25 base36 characters,
//!   team and template ids hyphenated UUIDs (empty = all-zero only where the proto says
//!   so). A malformed id is INVALID_ARGUMENT and touches nothing.
//! - **Exec** collects at most 16 MiB per stream (`truncated` is set beyond) and kills
//!   the process (SIGKILL to its process group, through envd) when `timeout_sec`
//!   (default 30 s) passes — the call then fails with DEADLINE_EXCEEDED — or when the
//!   call is cancelled. **ExecStream** kills on cancellation and on its timeout (ending
//!   with an `end` event whose `error` says so). Stdin bytes are fed concurrently with
//!   reading the output, then stdin is closed.
//! - **StartBackground** processes get a stdin pipe (SendProcessInput works on them);
//!   an empty tag becomes `proc-` + 8 hex characters.
//! - **PtyAttach** reattach (`cmd` empty) replays envd's buffer of recent terminal
//!   output after `started`, so a reconnecting terminal can redraw.
//! - **Files** stream in 64 KiB chunks in both directions and are never buffered whole.
//! - **FlattenRootfs** answers UNIMPLEMENTED: no runtime of this agent can flatten a
//!   disk yet (the process runtime has no block device; its CreateSnapshot already
//!   produces a disk-only template). Ids and the sandbox state are validated first.
//! - **Activity**: every sandbox-scoped RPC except ListSandboxes and the metrics RPCs
//!   bumps `last_active`, and so does every streamed output event.
//! - **Terminate** returns at once and triggers the agent's graceful shutdown.
//!
//! The RPCs are implemented by group, one module each: `lifecycle` (create, pause,
//! resume, hibernate, destroy, list, pause-all, terminate, templates), `process`
//! (exec and background processes), `pty` (terminals), `files` (filesystem calls and
//! file streams) and `metrics` (sandbox and host metrics). `convert` holds the
//! validation and the proto ↔ domain conversions, `relay` the envd process-stream
//! plumbing shared by the process and PTY calls. The [`HostAgentService`] impl below
//! only delegates.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_server::HostAgentService;

use crate::error::{AgentError, AgentResult};
use crate::manager::{Sandbox, SandboxManager};
use crate::metrics::HostSampler;

mod convert;
mod files;
mod lifecycle;
mod metrics;
mod process;
mod pty;
mod relay;

pub use convert::parse_sandbox_id;

/// Output kept per stream by unary Exec.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// Exec timeout when the request says 0.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long StartBackground and PtyAttach wait for the `start` event.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Stdin is fed to envd in pieces of at most this size.
const STDIN_CHUNK: usize = wrenn_proto::FILE_CHUNK_SIZE;
/// Events buffered between envd and a streaming caller.
const STREAM_BUFFER: usize = 64;

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

    /// The sandbox id of a request plus a running sandbox's envd client.
    fn running(
        &self,
        sandbox_id: &str,
        what: &str,
    ) -> AgentResult<(Arc<Sandbox>, crate::envd::EnvdClient)> {
        let id = parse_sandbox_id(sandbox_id)?;
        self.manager.envd_for(id, what)
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

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Rpc<pb::ExecResponse> {
        process::exec(self, req).await
    }

    type ExecStreamStream = ReceiverStream<Result<pb::ExecEvent, Status>>;

    async fn exec_stream(
        &self,
        req: Request<pb::ExecStreamRequest>,
    ) -> Rpc<Self::ExecStreamStream> {
        process::exec_stream(self, req).await
    }

    async fn start_background(
        &self,
        req: Request<pb::StartBackgroundRequest>,
    ) -> Rpc<pb::StartBackgroundResponse> {
        process::start_background(self, req).await
    }

    async fn list_processes(
        &self,
        req: Request<pb::ListProcessesRequest>,
    ) -> Rpc<pb::ListProcessesResponse> {
        process::list_processes(self, req).await
    }

    async fn kill_process(
        &self,
        req: Request<pb::KillProcessRequest>,
    ) -> Rpc<pb::KillProcessResponse> {
        process::kill_process(self, req).await
    }

    type ConnectProcessStream = ReceiverStream<Result<pb::ExecEvent, Status>>;

    async fn connect_process(
        &self,
        req: Request<pb::ConnectProcessRequest>,
    ) -> Rpc<Self::ConnectProcessStream> {
        process::connect_process(self, req).await
    }

    async fn send_process_input(
        &self,
        req: Request<pb::SendProcessInputRequest>,
    ) -> Rpc<pb::SendProcessInputResponse> {
        process::send_process_input(self, req).await
    }

    async fn close_process_stdin(
        &self,
        req: Request<pb::CloseProcessStdinRequest>,
    ) -> Rpc<pb::CloseProcessStdinResponse> {
        process::close_process_stdin(self, req).await
    }

    type PtyAttachStream = ReceiverStream<Result<pb::PtyEvent, Status>>;

    async fn pty_attach(&self, req: Request<pb::PtyAttachRequest>) -> Rpc<Self::PtyAttachStream> {
        pty::pty_attach(self, req).await
    }

    async fn pty_send_input(
        &self,
        req: Request<pb::PtySendInputRequest>,
    ) -> Rpc<pb::PtySendInputResponse> {
        pty::pty_send_input(self, req).await
    }

    async fn pty_resize(&self, req: Request<pb::PtyResizeRequest>) -> Rpc<pb::PtyResizeResponse> {
        pty::pty_resize(self, req).await
    }

    async fn pty_kill(&self, req: Request<pb::PtyKillRequest>) -> Rpc<pb::PtyKillResponse> {
        pty::pty_kill(self, req).await
    }

    async fn write_file_stream(
        &self,
        req: Request<Streaming<pb::WriteFileStreamRequest>>,
    ) -> Rpc<pb::WriteFileStreamResponse> {
        files::write_file_stream(self, req).await
    }

    type ReadFileStreamStream = ReceiverStream<Result<pb::ReadFileStreamResponse, Status>>;

    async fn read_file_stream(
        &self,
        req: Request<pb::ReadFileStreamRequest>,
    ) -> Rpc<Self::ReadFileStreamStream> {
        files::read_file_stream(self, req).await
    }

    async fn stat(&self, req: Request<pb::StatRequest>) -> Rpc<pb::StatResponse> {
        files::stat(self, req).await
    }

    async fn list_dir(&self, req: Request<pb::ListDirRequest>) -> Rpc<pb::ListDirResponse> {
        files::list_dir(self, req).await
    }

    async fn make_dir(&self, req: Request<pb::MakeDirRequest>) -> Rpc<pb::MakeDirResponse> {
        files::make_dir(self, req).await
    }

    async fn r#move(&self, req: Request<pb::MoveRequest>) -> Rpc<pb::MoveResponse> {
        files::r#move(self, req).await
    }

    async fn remove_path(
        &self,
        req: Request<pb::RemovePathRequest>,
    ) -> Rpc<pb::RemovePathResponse> {
        files::remove_path(self, req).await
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
