//! The forwarder: the host agent serves envd's own `envd.v1.Process` and
//! `envd.v1.Filesystem` services next to `HostAgentService` and relays each call,
//! message for message, to the guest agent of the sandbox the call names.
//!
//! A call names its sandbox with the [`CAPSULE_ID_METADATA`] (`wrenn-capsule-id`)
//! metadata entry ([`wrenn_proto::routing`]). On the way the forwarder adds only what a
//! host must; the contract is the header comment of `hostagent.proto`:
//!
//! - **Routing.** A missing or malformed id is INVALID_ARGUMENT, an unknown sandbox
//!   NOT_FOUND, one that is not RUNNING FAILED_PRECONDITION (what
//!   [`SandboxManager::envd_for`] answers).
//! - **envd's failures** go through [`AgentError::Envd`]: codes that describe the
//!   request or the sandbox's contents pass through, a transport failure becomes
//!   UNAVAILABLE ([`envd_code`](crate::error::envd_code)), and messages start with
//!   `guest agent: `. This holds for errors in the middle of a stream too.
//! - **Activity.** Every forwarded call touches the sandbox, and so does every streamed
//!   message in either direction (process events, file chunks, input) except envd's
//!   keepalives: a silent open stream does not hold off the idle pause.
//! - **Kill on disconnect.** A `Process.Start` whose metadata carries
//!   [`ON_DISCONNECT_METADATA`](wrenn_proto::routing::ON_DISCONNECT_METADATA)` = kill`
//!   has its process SIGKILLed (through envd, bounded by 5 s) when the caller drops the
//!   event stream before the `end` event was relayed, or goes away while envd is still
//!   starting the process. Without it, dropping the stream detaches: the process keeps
//!   running, as with envd itself.
//! - **Nothing else crosses.** envd gets a fresh request holding only the message (its
//!   channel adds the sandbox's own access token); the caller's metadata (its bearer
//!   token, the capsule id) never reaches the sandbox, and envd's response metadata is
//!   not passed back.
//!
//! Streams are relayed lazily, without a task or a buffer of their own: a server stream
//! is envd's stream wrapped ([`EnvdStream`]), a client stream (`Filesystem.WriteFile`,
//! `Process.StreamInput`) is the caller's stream handed to envd's client. Backpressure
//! is end to end. If the caller's stream fails, the envd call is abandoned (envd sees a
//! reset stream, not a clean end) and the caller's error is the answer.
//!
//! ```no_run
//! # fn demo(manager: std::sync::Arc<wrenn_agent::manager::SandboxManager>) {
//! use wrenn_agent::service::Forwarder;
//! use wrenn_proto::envd::v1::filesystem_server::FilesystemServer;
//! use wrenn_proto::envd::v1::process_server::ProcessServer;
//!
//! let forwarder = Forwarder::new(manager);
//! let routes = tonic::service::Routes::new(ProcessServer::new(forwarder.clone()))
//!     .add_service(FilesystemServer::new(forwarder));
//! # let _ = routes;
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use wrenn_proto::routing::{self, CAPSULE_ID_METADATA};

use super::parse_sandbox_id;
use crate::envd::EnvdClient;
use crate::error::AgentError;
use crate::manager::{Sandbox, SandboxManager};

mod filesystem;
mod process;
mod stream;

pub use stream::EnvdStream;
use stream::Inbound;

/// Serves `envd.v1.Process` and `envd.v1.Filesystem` by forwarding every call to the
/// guest agent of the sandbox its [`CAPSULE_ID_METADATA`] entry names. Cheap to clone:
/// one value can back both servers.
#[derive(Debug, Clone)]
pub struct Forwarder {
    manager: Arc<SandboxManager>,
}

/// A forwarded call's sandbox and envd's answer.
struct Forwarded<T> {
    sandbox: Arc<Sandbox>,
    answer: T,
}

impl Forwarder {
    /// A forwarder to the sandboxes of `manager`.
    pub fn new(manager: Arc<SandboxManager>) -> Self {
        Self { manager }
    }

    /// The running sandbox a call is for, and its guest agent's clients. Touches the
    /// sandbox.
    fn route(
        &self,
        metadata: &MetadataMap,
        rpc: &str,
    ) -> Result<(Arc<Sandbox>, EnvdClient), Status> {
        let id = match routing::capsule_id(metadata) {
            Some(id) if !id.is_empty() => parse_sandbox_id(id).map_err(|e| {
                AgentError::InvalidArgument(format!("metadata entry {CAPSULE_ID_METADATA}: {e}"))
            })?,
            _ if metadata.contains_key(CAPSULE_ID_METADATA) => {
                return Err(AgentError::InvalidArgument(format!(
                    "metadata entry {CAPSULE_ID_METADATA} must be a sandbox id (cl-...)"
                ))
                .into());
            }
            _ => {
                return Err(AgentError::InvalidArgument(format!(
                    "the call names no sandbox: metadata entry {CAPSULE_ID_METADATA} is required"
                ))
                .into());
            }
        };
        Ok(self
            .manager
            .envd_for(id, &format!("{rpc} needs a running sandbox"))?)
    }

    /// Routes `request` and makes `call` to envd with a fresh request holding its
    /// message. envd's error is mapped with [`envd_status`].
    async fn forward<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        call: F,
    ) -> Result<Forwarded<Resp>, Status>
    where
        F: FnOnce(EnvdClient, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let (sandbox, envd) = self.route(request.metadata(), rpc)?;
        let span = call_span(rpc, &sandbox);
        let answer = call(envd, Request::new(request.into_inner()))
            .instrument(span)
            .await
            .map_err(envd_status)?
            .into_inner();
        Ok(Forwarded { sandbox, answer })
    }

    /// A unary call: [`forward`](Self::forward), answered with a fresh response.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(EnvdClient, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        Ok(Response::new(
            self.forward(rpc, request, call).await?.answer,
        ))
    }

    /// A client-streaming call: the caller's stream is handed to envd as it arrives
    /// (each message touches the sandbox). If it fails, the envd call is dropped (envd
    /// sees a reset stream, not a clean end) and the caller's error is the answer;
    /// otherwise envd's answer, or its mapped error, is.
    async fn client_stream<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<Streaming<Req>>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(EnvdClient, Request<Inbound<Req>>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let (sandbox, envd) = self.route(request.metadata(), rpc)?;
        let span = call_span(rpc, &sandbox);
        let (failed_tx, failed_rx) = oneshot::channel();
        let inbound = Inbound::new(request.into_inner(), sandbox, failed_tx);
        let call = call(envd, Request::new(inbound));
        async move {
            tokio::select! {
                answer = call => answer
                    .map(|a| Response::new(a.into_inner()))
                    .map_err(envd_status),
                // A closed channel (the stream was dropped) disables this branch.
                Ok(failed) = failed_rx => {
                    tracing::debug!(error = %failed.message(), "caller's stream failed; envd call abandoned");
                    Err(failed)
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The span of one forwarded call.
fn call_span(rpc: &'static str, sandbox: &Sandbox) -> tracing::Span {
    tracing::debug_span!("forward", rpc, sandbox = %sandbox.id())
}

/// The status a caller gets for a status from envd: `AgentError::Envd` mapped as every
/// guest-agent failure of the host agent is (`guest agent: ` message, transport failures
/// UNAVAILABLE).
fn envd_status(status: Status) -> Status {
    Status::from(AgentError::from(status))
}
