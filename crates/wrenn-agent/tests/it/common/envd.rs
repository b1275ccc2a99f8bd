//! envd through the agent: clients of one sandbox's `Process` and `Filesystem`
//! services.

use std::time::Duration;

use super::PATIENCE;
use super::messages::{collect_all, file_data, file_header, first_start, shell};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use wrenn_proto::envd::v1 as ev;
use wrenn_proto::envd::v1::filesystem_client::FilesystemClient;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::routing;

/// Longest a command run with [`Envd::run`] may take (the control plane's deadline in
/// these tests): past it the stream is dropped, which kills the process.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// envd's `Process` and `Filesystem` services of one sandbox, served by the agent: every
/// request made with [`Envd::request`] is routed to the sandbox by its
/// `wrenn-capsule-id` metadata (and carries the agent's bearer token if one was given).
#[derive(Clone)]
pub struct Envd {
    /// The sandbox the requests are routed to, as sent.
    pub id: String,
    pub process: ProcessClient<Channel>,
    pub fs: FilesystemClient<Channel>,
    bearer: Option<AsciiMetadataValue>,
}

/// A process that ran to its `end` event through [`Envd::run`] or [`collect`].
#[derive(Debug, Clone)]
pub struct Ran {
    /// From the `start` event.
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
    /// The `end` event's exit code.
    pub exit_code: i32,
    pub end: ev::EndEvent,
}

impl Envd {
    /// Clients on `channel` (a channel to the agent) whose requests go to sandbox `id`
    /// (anything printable: malformed ids are for the routing tests).
    pub fn of(channel: &Channel, id: impl ToString) -> Self {
        Self {
            id: id.to_string(),
            process: ProcessClient::new(channel.clone())
                .max_decoding_message_size(64 * 1024 * 1024),
            fs: FilesystemClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024),
            bearer: None,
        }
    }

    /// The same, sending `authorization: Bearer {token}` with every request.
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.bearer = Some(format!("Bearer {token}").parse().expect("token"));
        self
    }

    /// `message` routed to this sandbox.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = routing::to_capsule(&self.id, message);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }

    /// `Process.Start`, routed; the process keeps running if the stream is dropped.
    pub async fn start(
        &self,
        start: ev::StartRequest,
    ) -> Result<tonic::Streaming<ev::ProcessEvent>, tonic::Status> {
        Ok(self
            .process
            .clone()
            .start(self.request(start))
            .await?
            .into_inner())
    }

    /// `Process.Start`, routed, asking the agent to kill the process if the stream is
    /// dropped before its `end` event.
    pub async fn start_killed_on_disconnect(
        &self,
        start: ev::StartRequest,
    ) -> Result<tonic::Streaming<ev::ProcessEvent>, tonic::Status> {
        Ok(self
            .process
            .clone()
            .start(routing::killed_on_disconnect(self.request(start)))
            .await?
            .into_inner())
    }

    /// Starts a process and detaches: reads its `start` event and drops the stream (the
    /// process runs on).
    pub async fn spawn(&self, start: ev::StartRequest) -> Result<ev::StartEvent, tonic::Status> {
        let mut events = self.start(start).await?;
        Ok(first_start(&mut events).await)
    }

    /// Runs a command to its end, as the control plane does: killed on disconnect, and
    /// the stream dropped (so the process killed) after [`RUN_DEADLINE`], which is then
    /// DEADLINE_EXCEEDED.
    pub async fn run(&self, start: ev::StartRequest) -> Result<Ran, tonic::Status> {
        let events = self.start_killed_on_disconnect(start).await?;
        match tokio::time::timeout(RUN_DEADLINE, collect_all(events)).await {
            Ok(ran) => ran,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "the command ran longer than {RUN_DEADLINE:?}"
            ))),
        }
    }

    /// Runs `/bin/sh -c line` to its end (see [`Envd::run`]).
    pub async fn sh(&self, line: &str) -> Result<Ran, tonic::Status> {
        self.run(shell(line)).await
    }

    /// `Process.List`: the live processes.
    pub async fn list(&self) -> Result<Vec<ev::ProcessInfo>, tonic::Status> {
        Ok(self
            .process
            .clone()
            .list(self.request(ev::ListRequest {}))
            .await?
            .into_inner()
            .processes)
    }

    /// True if `Process.List` shows a live process with `pid`.
    pub async fn lists(&self, pid: u32) -> bool {
        self.list()
            .await
            .expect("list processes")
            .iter()
            .any(|p| p.pid == pid)
    }

    /// `Process.Connect`, routed.
    pub async fn connect(
        &self,
        process: Option<ev::ProcessSelector>,
        replay: bool,
    ) -> Result<tonic::Streaming<ev::ProcessEvent>, tonic::Status> {
        Ok(self
            .process
            .clone()
            .connect(self.request(ev::ConnectRequest { process, replay }))
            .await?
            .into_inner())
    }

    /// `Process.SendSignal`, routed.
    pub async fn signal(
        &self,
        process: Option<ev::ProcessSelector>,
        signal: ev::Signal,
    ) -> Result<(), tonic::Status> {
        self.process
            .clone()
            .send_signal(self.request(ev::SendSignalRequest {
                process,
                signal: signal as i32,
            }))
            .await?;
        Ok(())
    }

    /// `Process.SendInput`, routed.
    pub async fn send_input(
        &self,
        process: Option<ev::ProcessSelector>,
        input: ev::process_input::Input,
    ) -> Result<(), tonic::Status> {
        self.process
            .clone()
            .send_input(self.request(ev::SendInputRequest {
                process,
                input: Some(ev::ProcessInput { input: Some(input) }),
            }))
            .await?;
        Ok(())
    }

    /// `Process.CloseStdin`, routed.
    pub async fn close_stdin(
        &self,
        process: Option<ev::ProcessSelector>,
    ) -> Result<(), tonic::Status> {
        self.process
            .clone()
            .close_stdin(self.request(ev::CloseStdinRequest { process }))
            .await?;
        Ok(())
    }

    /// `Process.Update` with a new terminal size, routed.
    pub async fn resize(
        &self,
        process: Option<ev::ProcessSelector>,
        cols: u32,
        rows: u32,
    ) -> Result<(), tonic::Status> {
        self.process
            .clone()
            .update(self.request(ev::UpdateRequest {
                process,
                pty: Some(ev::Pty { cols, rows }),
            }))
            .await?;
        Ok(())
    }

    /// `Filesystem.WriteFile` of `messages` as they are (for malformed streams), routed.
    pub async fn write_messages(
        &self,
        messages: Vec<ev::WriteFileRequest>,
    ) -> Result<ev::EntryInfo, tonic::Status> {
        let resp = self
            .fs
            .clone()
            .write_file(self.request(futures::stream::iter(messages)))
            .await?
            .into_inner();
        Ok(resp.entry.expect("WriteFile answers the entry"))
    }

    /// `Filesystem.WriteFile`: `header`, then `data` in chunks of
    /// [`wrenn_proto::FILE_CHUNK_SIZE`].
    pub async fn write_file_with(
        &self,
        header: ev::WriteFileHeader,
        data: &[u8],
    ) -> Result<ev::EntryInfo, tonic::Status> {
        let mut messages = vec![file_header(header)];
        messages.extend(
            data.chunks(wrenn_proto::FILE_CHUNK_SIZE)
                .map(|chunk| file_data(chunk.to_vec())),
        );
        self.write_messages(messages).await
    }

    /// `Filesystem.WriteFile` of `data` to `path` with the defaults.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
    ) -> Result<ev::EntryInfo, tonic::Status> {
        self.write_file_with(
            ev::WriteFileHeader {
                path: path.into(),
                ..Default::default()
            },
            data,
        )
        .await
    }

    /// `Filesystem.ReadFile`, routed: the messages as received (every chunk checked to
    /// be at most [`wrenn_proto::FILE_CHUNK_SIZE`]).
    pub async fn read_file_messages(
        &self,
        path: &str,
    ) -> Result<Vec<ev::ReadFileResponse>, tonic::Status> {
        let mut stream = self
            .fs
            .clone()
            .read_file(self.request(ev::ReadFileRequest { path: path.into() }))
            .await?
            .into_inner();
        let mut messages = Vec::new();
        while let Some(m) = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("file chunk in time")?
        {
            assert!(
                m.data.len() <= wrenn_proto::FILE_CHUNK_SIZE,
                "a chunk of {} bytes",
                m.data.len()
            );
            messages.push(m);
        }
        Ok(messages)
    }

    /// `Filesystem.ReadFile`, routed: the whole content.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, tonic::Status> {
        Ok(self
            .read_file_messages(path)
            .await?
            .into_iter()
            .flat_map(|m| m.data)
            .collect())
    }

    /// `Filesystem.Stat`, routed.
    pub async fn stat(&self, path: &str) -> Result<ev::EntryInfo, tonic::Status> {
        Ok(self
            .fs
            .clone()
            .stat(self.request(ev::StatRequest { path: path.into() }))
            .await?
            .into_inner()
            .entry
            .expect("Stat answers the entry"))
    }
}
