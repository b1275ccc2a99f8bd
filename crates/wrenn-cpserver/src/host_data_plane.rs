//! The [`DataPlane`] over the hosts' agents: each call goes to the capsule's host on
//! its cached channel ([`HostConnections`]) as a `hostagent.v1` RPC, converted by
//! [`wrenn_proto::domain::data_plane`].
//!
//! A failure is a [`HostCallError`] from [`host_call_error`] (the operation's name and
//! the agent's message); an `UNAVAILABLE` host's channel is dropped so that the next
//! call reconnects. Foreground exec and metrics calls carry a deadline; streams run as
//! long as the agent streams.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
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
use wrenn_proto::FILE_CHUNK_SIZE;
use wrenn_proto::domain::data_plane as convert;
use wrenn_proto::domain::host_call_error;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;
use wrenn_proto::hostagent::v1::write_file_stream_request::Msg;

/// Largest gRPC message accepted from an agent (an `ExecResponse` carries up to
/// 16 MiB of stdout plus 16 MiB of stderr).
const MAX_AGENT_MESSAGE: usize = 40 * 1024 * 1024;
/// How much longer than a command's own timeout the control plane waits for the
/// agent before giving up on it.
const AGENT_GRACE: Duration = Duration::from_secs(10);
/// Deadline of a metrics call.
const METRICS_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The gRPC data plane. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct GrpcDataPlane {
    hosts: Arc<dyn HostConnections>,
}

/// One call's connection: the client, and what an error needs to evict the channel.
struct Call {
    client: HostAgentServiceClient<Channel>,
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
        if status.code() == Code::Unavailable {
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

    /// `stream` with each message converted by `convert` (messages it maps to
    /// `None` are skipped) and its failure mapped as `op`.
    fn stream<M, T>(
        self,
        op: &'static str,
        stream: tonic::Streaming<M>,
        convert: fn(M) -> Option<T>,
    ) -> HostStream<T>
    where
        M: Send + 'static,
        T: Send + 'static,
    {
        stream
            .filter_map(move |item| {
                let mapped = match item {
                    Ok(message) => convert(message).map(Ok),
                    Err(status) => Some(Err(self.error(op, &status))),
                };
                futures::future::ready(mapped)
            })
            .boxed()
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
            client: HostAgentServiceClient::new(channel)
                .max_decoding_message_size(MAX_AGENT_MESSAGE)
                .max_encoding_message_size(MAX_AGENT_MESSAGE),
            fail: Failure {
                hosts: self.hosts.clone(),
                host: capsule.host_id,
                address,
                sandbox: capsule.id.to_string(),
            },
        })
    }
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The result of a `WriteFileStream` call.
type Upload = Result<tonic::Response<pb::WriteFileStreamResponse>, Status>;

/// Starts a `WriteFileStream` of `meta` then `chunks`. The messages cross a channel fed
/// by a task of its own (tonic's client-streaming future over a boxed stream is not
/// provably `Send` inside an `async_trait` method); both tasks end when their handles
/// are dropped: a write given up before its last chunk resets the stream and the agent
/// stops writing.
fn upload(
    mut client: HostAgentServiceClient<Channel>,
    meta: pb::WriteFileStreamRequest,
    chunks: BoxStream<'static, Bytes>,
) -> (AbortOnDrop<()>, AbortOnDrop<Upload>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::WriteFileStreamRequest>(16);
    let feed = AbortOnDrop(tokio::spawn(async move {
        let mut requests = write_requests(meta, chunks);
        while let Some(message) = requests.next().await {
            if tx.send(message).await.is_err() {
                break;
            }
        }
    }));
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let call = AbortOnDrop(tokio::spawn(async move {
        client.write_file_stream(requests).await
    }));
    (feed, call)
}

/// The `WriteFileStream` messages: `meta`, then `chunks` in pieces the agent takes.
fn write_requests(
    meta: pb::WriteFileStreamRequest,
    chunks: BoxStream<'static, Bytes>,
) -> BoxStream<'static, pb::WriteFileStreamRequest> {
    futures::stream::iter([meta])
        .chain(chunks.flat_map(file_pieces))
        .boxed()
}

/// `chunk` as `WriteFileStream` messages of at most [`FILE_CHUNK_SIZE`] bytes.
fn file_pieces(
    chunk: Bytes,
) -> futures::stream::Iter<std::vec::IntoIter<pb::WriteFileStreamRequest>> {
    let pieces: Vec<_> = (0..chunk.len())
        .step_by(FILE_CHUNK_SIZE)
        .map(|start| pb::WriteFileStreamRequest {
            msg: Some(Msg::Chunk(
                chunk.slice(start..(start + FILE_CHUNK_SIZE).min(chunk.len())),
            )),
        })
        .collect();
    futures::stream::iter(pieces)
}

fn seconds(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX)
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
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = convert::exec_request(capsule.id.to_string(), command, seconds(timeout));
        client
            .exec(with_timeout(request, timeout + AGENT_GRACE))
            .await
            .map(|r| convert::exec_output(r.into_inner()))
            .map_err(|s| fail.error("exec", &s))
    }

    async fn exec_stream(
        &self,
        capsule: &Sandbox,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<HostStream<ProcessEvent>, HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = convert::exec_stream_request(
            capsule.id.to_string(),
            command,
            timeout.map_or(0, seconds),
        );
        match client.exec_stream(request).await {
            Ok(events) => Ok(fail.stream(
                "process stream",
                events.into_inner(),
                convert::process_event,
            )),
            Err(s) => Err(fail.error("exec stream", &s)),
        }
    }

    async fn start_background(
        &self,
        capsule: &Sandbox,
        command: Command,
        tag: String,
    ) -> Result<StartedProcess, HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = convert::start_background_request(capsule.id.to_string(), command, tag);
        client
            .start_background(request)
            .await
            .map(|r| convert::started_process(r.into_inner()))
            .map_err(|s| fail.error("start background process", &s))
    }

    async fn list_processes(&self, capsule: &Sandbox) -> Result<Vec<ProcessInfo>, HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::ListProcessesRequest {
            sandbox_id: capsule.id.to_string(),
        };
        client
            .list_processes(request)
            .await
            .map(|r| {
                r.into_inner()
                    .processes
                    .into_iter()
                    .map(convert::process_info)
                    .collect()
            })
            .map_err(|s| fail.error("list processes", &s))
    }

    async fn kill_process(
        &self,
        capsule: &Sandbox,
        process: ProcessRef,
        signal: Signal,
    ) -> Result<(), HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::KillProcessRequest {
            sandbox_id: capsule.id.to_string(),
            process: Some(convert::process_selector(process)),
            signal: convert::signal(signal).into(),
        };
        client
            .kill_process(request)
            .await
            .map(drop)
            .map_err(|s| fail.error("kill process", &s))
    }

    async fn connect_process(
        &self,
        capsule: &Sandbox,
        process: ProcessRef,
    ) -> Result<HostStream<ProcessEvent>, HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::ConnectProcessRequest {
            sandbox_id: capsule.id.to_string(),
            process: Some(convert::process_selector(process)),
            replay: true,
        };
        match client.connect_process(request).await {
            Ok(events) => Ok(fail.stream(
                "process stream",
                events.into_inner(),
                convert::process_event,
            )),
            Err(s) => Err(fail.error("connect process", &s)),
        }
    }

    async fn write_file(
        &self,
        capsule: &Sandbox,
        path: String,
        chunks: BoxStream<'static, Bytes>,
    ) -> Result<u64, HostCallError> {
        let Call { client, fail } = self.call(capsule).await?;
        let meta = pb::WriteFileStreamRequest {
            msg: Some(Msg::Meta(pb::WriteFileMeta {
                sandbox_id: capsule.id.to_string(),
                path,
                mode: None,
                user: None,
            })),
        };
        let (_feed, call) = upload(client, meta, chunks);
        let answer = call.join().await.map_err(|e| {
            HostCallError::Internal(format!("write file: the upload task failed: {e}"))
        })?;
        answer
            .map(|r| r.into_inner().size)
            .map_err(|s| fail.error("write file", &s))
    }

    async fn read_file(&self, capsule: &Sandbox, path: String) -> Result<FileRead, HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::ReadFileStreamRequest {
            sandbox_id: capsule.id.to_string(),
            path,
        };
        let mut chunks = client
            .read_file_stream(request)
            .await
            .map_err(|s| fail.error("read file", &s))?
            .into_inner();
        // The first message says how large the file is (and surfaces an open error
        // before the caller commits to an answer).
        let first = chunks
            .message()
            .await
            .map_err(|s| fail.error("read file", &s))?;
        let total_size = first.as_ref().and_then(|m| m.total_size);
        let head = futures::stream::iter(first.map(|m| Ok(m.chunk)));
        let rest = fail.stream("read file", chunks, |m: pb::ReadFileStreamResponse| {
            Some(m.chunk)
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
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::ListDirRequest {
            sandbox_id: capsule.id.to_string(),
            path,
            depth,
        };
        client
            .list_dir(request)
            .await
            .map(|r| {
                r.into_inner()
                    .entries
                    .into_iter()
                    .map(convert::file_entry)
                    .collect()
            })
            .map_err(|s| fail.error("list directory", &s))
    }

    async fn make_dir(&self, capsule: &Sandbox, path: String) -> Result<FileEntry, HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::MakeDirRequest {
            sandbox_id: capsule.id.to_string(),
            path,
        };
        let made = client
            .make_dir(request)
            .await
            .map_err(|s| fail.error("make directory", &s))?
            .into_inner();
        made.entry.map(convert::file_entry).ok_or_else(|| {
            HostCallError::Internal("make directory: the agent answered without the entry".into())
        })
    }

    async fn remove_path(&self, capsule: &Sandbox, path: String) -> Result<(), HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::RemovePathRequest {
            sandbox_id: capsule.id.to_string(),
            path,
        };
        client
            .remove_path(request)
            .await
            .map(drop)
            .map_err(|s| fail.error("remove path", &s))
    }

    async fn pty_attach(
        &self,
        capsule: &Sandbox,
        spec: PtySpec,
    ) -> Result<HostStream<PtyEvent>, HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = convert::pty_attach_request(capsule.id.to_string(), spec);
        match client.pty_attach(request).await {
            Ok(events) => {
                Ok(fail.stream("terminal stream", events.into_inner(), convert::pty_event))
            }
            Err(s) => Err(fail.error("attach terminal", &s)),
        }
    }

    async fn pty_input(
        &self,
        capsule: &Sandbox,
        tag: &str,
        data: Bytes,
    ) -> Result<(), HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::PtySendInputRequest {
            sandbox_id: capsule.id.to_string(),
            tag: tag.to_owned(),
            data: data.to_vec(),
        };
        client
            .pty_send_input(request)
            .await
            .map(drop)
            .map_err(|s| fail.error("terminal input", &s))
    }

    async fn pty_resize(
        &self,
        capsule: &Sandbox,
        tag: &str,
        cols: u32,
        rows: u32,
    ) -> Result<(), HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::PtyResizeRequest {
            sandbox_id: capsule.id.to_string(),
            tag: tag.to_owned(),
            cols,
            rows,
        };
        client
            .pty_resize(request)
            .await
            .map(drop)
            .map_err(|s| fail.error("terminal resize", &s))
    }

    async fn pty_kill(&self, capsule: &Sandbox, tag: &str) -> Result<(), HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::PtyKillRequest {
            sandbox_id: capsule.id.to_string(),
            tag: tag.to_owned(),
        };
        client
            .pty_kill(request)
            .await
            .map(drop)
            .map_err(|s| fail.error("terminal kill", &s))
    }

    async fn metrics(
        &self,
        capsule: &Sandbox,
        range: &str,
    ) -> Result<Vec<MetricSample>, HostCallError> {
        let Call { mut client, fail } = self.call(capsule).await?;
        let request = pb::GetSandboxMetricsRequest {
            sandbox_id: capsule.id.to_string(),
            range: range.to_owned(),
        };
        client
            .get_sandbox_metrics(with_timeout(request, METRICS_CALL_TIMEOUT))
            .await
            .map(|r| {
                r.into_inner()
                    .points
                    .into_iter()
                    .map(convert::metric_sample)
                    .collect()
            })
            .map_err(|s| fail.error("get metrics", &s))
    }
}
