//! The [`DataPlane`] over the hosts' agents: each call goes to the capsule's host on
//! its cached channel ([`HostConnections`]). Calls inside a capsule are `envd.v1`
//! `Process` and `Filesystem` calls, which the agent forwards to the capsule's guest
//! agent ([`wrenn_proto::routing`]); metrics are `hostagent.v1` calls. Values cross in
//! [`wrenn_proto::domain::data_plane`].
//!
//! What the control plane adds over envd's calls lives here: a foreground command's
//! output cap ([`EXEC_OUTPUT_CAP`]) and timeout, a streamed command's timeout (the
//! process is killed, then the stream ends with an `ended` event that says so), and
//! kill-on-disconnect for both (a caller that goes away takes its process with it).
//! Background processes and terminals outlive their streams.
//!
//! A failure is a [`HostCallError`] from [`host_call_error`] (the operation's name and
//! the agent's message); an `UNAVAILABLE` host's channel is dropped so that the next
//! call reconnects.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use wrenn_core::agents::HostCallError;
use wrenn_core::data_plane::{
    Command, DataPlane, ExecOutput, FileEntry, FileRead, HostStream, MetricSample, ProcessEvent,
    ProcessInfo, ProcessRef, PtyEvent, PtySpec, Signal, StartedProcess,
};
use wrenn_core::id::HostId;
use wrenn_core::model::Sandbox;
use wrenn_extension::HostConnections;
use wrenn_proto::domain::data_plane as convert;
use wrenn_proto::domain::host_call_error;
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::envd::v1::filesystem_client::FilesystemClient;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;
use wrenn_proto::routing;
use wrenn_proto::telemetry::PropagateTrace;

mod process;
mod upload;

pub use process::EXEC_OUTPUT_CAP;
use process::{Deadline, Relay, START_TIMEOUT, first_start};

/// Largest gRPC message accepted from an agent.
const MAX_AGENT_MESSAGE: usize = 40 * 1024 * 1024;
/// Deadline of a metrics call.
const METRICS_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a kill of an abandoned process may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC data plane. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct GrpcDataPlane {
    hosts: Arc<dyn HostConnections>,
}

/// One call's connection to a capsule's host.
#[derive(Clone)]
struct Call {
    channel: Channel,
    fail: Failure,
}

/// Maps a failed RPC onto a [`HostCallError`], evicting an unavailable host's channel.
#[derive(Clone)]
struct Failure {
    hosts: Arc<dyn HostConnections>,
    host: HostId,
    address: String,
    sandbox: String,
}

impl Failure {
    fn error(&self, op: &str, status: &Status) -> HostCallError {
        if status.code() == Code::Unavailable && !is_guest_failure(status) {
            self.hosts.evict_if(self.host, &self.address);
        }
        tracing::debug!(
            sandbox_id = %self.sandbox,
            host_id = %self.host,
            op,
            code = ?status.code(),
            message = status.message(),
            "agent call failed"
        );
        host_call_error(op, status)
    }
}

/// True for an `UNAVAILABLE` the agent reports about a capsule's guest agent (its
/// messages say "guest agent"), as opposed to the host itself being unreachable.
fn is_guest_failure(status: &Status) -> bool {
    status.message().contains("guest agent")
}

/// A host channel whose calls carry the caller's trace context.
type Traced = InterceptedService<Channel, PropagateTrace>;

impl Call {
    fn process(&self) -> ProcessClient<Traced> {
        ProcessClient::with_interceptor(self.channel.clone(), PropagateTrace)
            .max_decoding_message_size(MAX_AGENT_MESSAGE)
            .max_encoding_message_size(MAX_AGENT_MESSAGE)
    }

    fn files(&self) -> FilesystemClient<Traced> {
        FilesystemClient::with_interceptor(self.channel.clone(), PropagateTrace)
            .max_decoding_message_size(MAX_AGENT_MESSAGE)
            .max_encoding_message_size(MAX_AGENT_MESSAGE)
    }

    /// `message` routed to this call's capsule.
    fn to_capsule<T>(&self, message: T) -> tonic::Request<T> {
        routing::to_capsule(&self.fail.sandbox, message)
    }

    /// Starts a process and waits for its `start` event (by `deadline`).
    async fn start(
        &self,
        op: &'static str,
        start: envd::StartRequest,
        kill_on_disconnect: bool,
        deadline: Instant,
    ) -> Result<(envd::StartEvent, tonic::Streaming<envd::ProcessEvent>), HostCallError> {
        let mut request = self.to_capsule(start);
        if kill_on_disconnect {
            request = routing::killed_on_disconnect(request);
        }
        let mut events = self
            .process()
            .start(request)
            .await
            .map_err(|s| self.fail.error(op, &s))?
            .into_inner();
        let started = first_start(op, &self.fail, &mut events, deadline).await?;
        Ok((started, events))
    }

    /// Kills `pid` and waits (bounded) for the guest agent to confirm.
    async fn kill(&self, pid: u32) {
        let request = self.to_capsule(convert::signal_request(ProcessRef::Pid(pid), Signal::Kill));
        let _ = tokio::time::timeout(KILL_TIMEOUT, self.process().send_signal(request)).await;
    }

    /// The live process with `tag`, or NotFound.
    async fn find(&self, op: &str, tag: &str) -> Result<envd::ProcessInfo, HostCallError> {
        let list = self
            .process()
            .list(self.to_capsule(envd::ListRequest {}))
            .await
            .map_err(|s| self.fail.error(op, &s))?
            .into_inner();
        list.processes
            .into_iter()
            .find(|p| p.tag.as_deref() == Some(tag))
            .ok_or_else(|| HostCallError::NotFound(format!("{op}: no process with tag {tag:?}")))
    }
}

impl GrpcDataPlane {
    /// A data plane over `hosts` (the control plane's channel cache).
    pub fn new(hosts: Arc<dyn HostConnections>) -> Self {
        Self { hosts }
    }

    async fn call(&self, capsule: &Sandbox) -> Result<Call, HostCallError> {
        let (address, channel) = self.hosts.channel(capsule.host_id).await?;
        Ok(Call {
            channel,
            fail: Failure {
                hosts: self.hosts.clone(),
                host: capsule.host_id,
                address,
                sandbox: capsule.id.to_string(),
            },
        })
    }
}

/// A process's events after its `start` event, as the domain's process stream.
fn process_stream(
    call: Call,
    started: envd::StartEvent,
    events: tonic::Streaming<envd::ProcessEvent>,
    deadline: Option<Deadline<ProcessEvent>>,
) -> HostStream<ProcessEvent> {
    let first = ProcessEvent::Started {
        pid: started.pid,
        tag: started.tag,
    };
    process::events(
        call,
        events,
        Relay {
            op: "process stream",
            first,
            convert: convert::process_event,
            is_last: |event| matches!(event, ProcessEvent::Ended { .. }),
            closed: ProcessEvent::Ended {
                exit_code: -1,
                error: Some("guest agent closed the stream".into()),
            },
            deadline,
        },
    )
}

#[async_trait]
impl DataPlane for GrpcDataPlane {
    async fn connect(&self, capsule: &Sandbox) -> Result<(), HostCallError> {
        self.call(capsule).await.map(drop)
    }

    async fn exec(
        &self,
        capsule: &Sandbox,
        command: Command,
        timeout: Duration,
    ) -> Result<ExecOutput, HostCallError> {
        let call = self.call(capsule).await?;
        let deadline = Instant::now() + timeout;
        let start = convert::start_request(command, String::new(), false);
        let (started, events) = call.start("exec", start, true, deadline).await?;
        process::collect(&call, started.pid, events, deadline, timeout).await
    }

    async fn exec_stream(
        &self,
        capsule: &Sandbox,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<HostStream<ProcessEvent>, HostCallError> {
        let call = self.call(capsule).await?;
        let start_by = Instant::now() + timeout.unwrap_or(START_TIMEOUT).min(START_TIMEOUT);
        let start = convert::start_request(command, String::new(), false);
        let (started, events) = call.start("exec stream", start, true, start_by).await?;
        let deadline = timeout.map(|limit| Deadline {
            at: Instant::now() + limit,
            pid: started.pid,
            last: ProcessEvent::Ended {
                exit_code: -1,
                error: Some(format!(
                    "timed out after {}s; the process was killed",
                    limit.as_secs()
                )),
            },
        });
        Ok(process_stream(call, started, events, deadline))
    }

    async fn start_background(
        &self,
        capsule: &Sandbox,
        command: Command,
        tag: String,
    ) -> Result<StartedProcess, HostCallError> {
        let call = self.call(capsule).await?;
        let start = convert::start_request(command, tag, true);
        let op = "start background process";
        let (started, events) = call
            .start(op, start, false, Instant::now() + START_TIMEOUT)
            .await?;
        // Dropping the stream detaches: the process keeps running.
        drop(events);
        Ok(StartedProcess {
            pid: started.pid,
            tag: started.tag,
        })
    }

    async fn list_processes(&self, capsule: &Sandbox) -> Result<Vec<ProcessInfo>, HostCallError> {
        let call = self.call(capsule).await?;
        call.process()
            .list(call.to_capsule(envd::ListRequest {}))
            .await
            .map(|r| {
                r.into_inner()
                    .processes
                    .into_iter()
                    .map(convert::process_info)
                    .collect()
            })
            .map_err(|s| call.fail.error("list processes", &s))
    }

    async fn kill_process(
        &self,
        capsule: &Sandbox,
        process: ProcessRef,
        signal: Signal,
    ) -> Result<(), HostCallError> {
        let call = self.call(capsule).await?;
        call.process()
            .send_signal(call.to_capsule(convert::signal_request(process, signal)))
            .await
            .map(drop)
            .map_err(|s| call.fail.error("kill process", &s))
    }

    async fn connect_process(
        &self,
        capsule: &Sandbox,
        process: ProcessRef,
    ) -> Result<HostStream<ProcessEvent>, HostCallError> {
        let call = self.call(capsule).await?;
        let request = call.to_capsule(envd::ConnectRequest {
            process: Some(convert::process_selector(process)),
            replay: true,
        });
        let mut events = call
            .process()
            .connect(request)
            .await
            .map_err(|s| call.fail.error("connect process", &s))?
            .into_inner();
        let started = first_start(
            "connect process",
            &call.fail,
            &mut events,
            Instant::now() + START_TIMEOUT,
        )
        .await?;
        Ok(process_stream(call, started, events, None))
    }

    async fn write_file(
        &self,
        capsule: &Sandbox,
        path: String,
        chunks: BoxStream<'static, Bytes>,
    ) -> Result<u64, HostCallError> {
        let call = self.call(capsule).await?;
        let (_feed, upload) = upload::start(&call, path, chunks);
        let answer = upload.join().await.map_err(|e| {
            HostCallError::Internal(format!("write file: the upload task failed: {e}"))
        })?;
        let written = answer
            .map_err(|s| call.fail.error("write file", &s))?
            .into_inner();
        written.entry.map(|e| e.size).ok_or_else(|| {
            HostCallError::Internal("write file: the guest agent answered without the entry".into())
        })
    }

    async fn read_file(&self, capsule: &Sandbox, path: String) -> Result<FileRead, HostCallError> {
        let call = self.call(capsule).await?;
        let mut chunks = call
            .files()
            .read_file(call.to_capsule(envd::ReadFileRequest { path }))
            .await
            .map_err(|s| call.fail.error("read file", &s))?
            .into_inner();
        // The first message says how large the file is (and surfaces an open error
        // before the caller commits to an answer).
        let first = chunks
            .message()
            .await
            .map_err(|s| call.fail.error("read file", &s))?;
        let total_size = first.as_ref().and_then(|m| m.total_size);
        let head = futures::stream::iter(first.map(|m| Ok(m.data)));
        let fail = call.fail.clone();
        let rest = chunks.map(move |item| {
            item.map(|m| m.data)
                .map_err(|s| fail.error("read file", &s))
        });
        Ok(FileRead {
            total_size,
            chunks: head
                .chain(rest)
                .filter(|c| futures::future::ready(!matches!(c, Ok(b) if b.is_empty())))
                .boxed(),
        })
    }

    async fn list_dir(
        &self,
        capsule: &Sandbox,
        path: String,
        depth: u32,
    ) -> Result<Vec<FileEntry>, HostCallError> {
        let call = self.call(capsule).await?;
        call.files()
            .list_dir(call.to_capsule(envd::ListDirRequest { path, depth }))
            .await
            .map(|r| {
                r.into_inner()
                    .entries
                    .into_iter()
                    .map(convert::file_entry)
                    .collect()
            })
            .map_err(|s| call.fail.error("list directory", &s))
    }

    async fn make_dir(&self, capsule: &Sandbox, path: String) -> Result<FileEntry, HostCallError> {
        let call = self.call(capsule).await?;
        let made = call
            .files()
            .make_dir(call.to_capsule(envd::MakeDirRequest { path, user: None }))
            .await
            .map_err(|s| call.fail.error("make directory", &s))?
            .into_inner();
        made.entry.map(convert::file_entry).ok_or_else(|| {
            HostCallError::Internal(
                "make directory: the guest agent answered without the entry".into(),
            )
        })
    }

    async fn remove_path(&self, capsule: &Sandbox, path: String) -> Result<(), HostCallError> {
        let call = self.call(capsule).await?;
        call.files()
            .remove(call.to_capsule(envd::RemoveRequest { path }))
            .await
            .map(drop)
            .map_err(|s| call.fail.error("remove path", &s))
    }

    async fn pty_attach(
        &self,
        capsule: &Sandbox,
        spec: PtySpec,
    ) -> Result<HostStream<PtyEvent>, HostCallError> {
        const OP: &str = "attach terminal";
        let call = self.call(capsule).await?;
        let deadline = Instant::now() + START_TIMEOUT;
        let (started, events) = if !spec.command.cmd.is_empty() {
            if spec.cols == 0 || spec.rows == 0 {
                return Err(HostCallError::InvalidArgument(format!(
                    "{OP}: cols and rows must be non-zero for a new terminal"
                )));
            }
            // A detached terminal keeps running: no kill on disconnect.
            let start = convert::pty_start_request(spec);
            call.start(OP, start, false, deadline).await?
        } else {
            if spec.tag.is_empty() {
                return Err(HostCallError::InvalidArgument(format!(
                    "{OP}: a tag is required to reattach"
                )));
            }
            let info = call.find(OP, &spec.tag).await?;
            if !info.pty {
                return Err(HostCallError::NotFound(format!(
                    "{OP}: no terminal with tag {:?} (it runs without one)",
                    spec.tag
                )));
            }
            let selector = || Some(convert::process_selector(ProcessRef::Tag(spec.tag.clone())));
            if spec.cols > 0 && spec.rows > 0 {
                let resize = envd::UpdateRequest {
                    process: selector(),
                    pty: Some(convert::pty_size(spec.cols, spec.rows)),
                };
                call.process()
                    .update(call.to_capsule(resize))
                    .await
                    .map_err(|s| call.fail.error(OP, &s))?;
            }
            let connect = envd::ConnectRequest {
                process: selector(),
                replay: true,
            };
            let mut events = call
                .process()
                .connect(call.to_capsule(connect))
                .await
                .map_err(|s| call.fail.error(OP, &s))?
                .into_inner();
            let started = first_start(OP, &call.fail, &mut events, deadline).await?;
            (started, events)
        };
        let first = PtyEvent::Started {
            pid: started.pid,
            tag: started.tag,
        };
        let closed = PtyEvent::Exited {
            exit_code: -1,
            error: Some("guest agent closed the stream".into()),
        };
        Ok(process::events(
            call,
            events,
            Relay {
                op: "terminal stream",
                first,
                convert: convert::pty_event,
                is_last: |event| matches!(event, PtyEvent::Exited { .. }),
                closed,
                deadline: None,
            },
        ))
    }

    async fn pty_input(
        &self,
        capsule: &Sandbox,
        tag: &str,
        data: Bytes,
    ) -> Result<(), HostCallError> {
        let call = self.call(capsule).await?;
        call.process()
            .send_input(call.to_capsule(convert::pty_input_request(tag, data)))
            .await
            .map(drop)
            .map_err(|s| call.fail.error("terminal input", &s))
    }

    async fn pty_resize(
        &self,
        capsule: &Sandbox,
        tag: &str,
        cols: u32,
        rows: u32,
    ) -> Result<(), HostCallError> {
        let call = self.call(capsule).await?;
        if cols == 0 || rows == 0 {
            return Err(HostCallError::InvalidArgument(
                "terminal resize: cols and rows must be non-zero".into(),
            ));
        }
        let resize = envd::UpdateRequest {
            process: Some(convert::process_selector(ProcessRef::Tag(tag.to_owned()))),
            pty: Some(convert::pty_size(cols, rows)),
        };
        call.process()
            .update(call.to_capsule(resize))
            .await
            .map(drop)
            .map_err(|s| call.fail.error("terminal resize", &s))
    }

    async fn pty_kill(&self, capsule: &Sandbox, tag: &str) -> Result<(), HostCallError> {
        const OP: &str = "terminal kill";
        let call = self.call(capsule).await?;
        let info = call.find(OP, tag).await?;
        if !info.pty {
            return Err(HostCallError::FailedPrecondition(format!(
                "{OP}: process {tag:?} has no terminal: kill it as a process"
            )));
        }
        let kill = convert::signal_request(ProcessRef::Tag(tag.to_owned()), Signal::Kill);
        call.process()
            .send_signal(call.to_capsule(kill))
            .await
            .map(drop)
            .map_err(|s| call.fail.error(OP, &s))
    }

    async fn metrics(
        &self,
        capsule: &Sandbox,
        range: &str,
    ) -> Result<Vec<MetricSample>, HostCallError> {
        let call = self.call(capsule).await?;
        let mut request = tonic::Request::new(pb::GetSandboxMetricsRequest {
            sandbox_id: capsule.id.to_string(),
            range: range.to_owned(),
        });
        request.set_timeout(METRICS_CALL_TIMEOUT);
        HostAgentServiceClient::with_interceptor(call.channel.clone(), PropagateTrace)
            .get_sandbox_metrics(request)
            .await
            .map(|r| {
                r.into_inner()
                    .points
                    .into_iter()
                    .map(convert::metric_sample)
                    .collect()
            })
            .map_err(|s| call.fail.error("get metrics", &s))
    }
}
