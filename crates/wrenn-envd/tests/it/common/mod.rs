//! Shared helpers: a real envd server in this process, real tonic clients, and small
//! conveniences for collecting process events.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use wrenn_envd::{Listen, ServerConfig, ServerHandle};
use wrenn_proto::envd::v1::{
    EndEvent, ProcessConfig, ProcessEvent, ProcessSelector, StartRequest, data_event,
    filesystem_client::FilesystemClient, process_client::ProcessClient, process_event,
    process_selector::Selector, system_client::SystemClient, tunnel_client::TunnelClient,
};

/// Upper bound for anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A running envd and clients connected to it.
pub struct Envd {
    pub server: ServerHandle,
    pub process: ProcessClient<Channel>,
    pub fs: FilesystemClient<Channel>,
    pub system: SystemClient<Channel>,
    pub tunnel: TunnelClient<Channel>,
    /// Scratch directory of the test (the unix socket lives here too).
    pub dir: TempDir,
}

impl Envd {
    /// envd on a unix socket in a fresh temporary directory.
    pub async fn unix() -> Self {
        Self::unix_with(|_| {}).await
    }

    /// envd on a unix socket, with the config adjusted by `tweak`.
    pub async fn unix_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(Listen::Unix(dir.path().join("envd.sock")));
        tweak(&mut config);
        Self::launch(config, dir).await
    }

    /// envd on 127.0.0.1 with a free port.
    pub async fn tcp() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::new(Listen::Tcp("127.0.0.1:0".parse().unwrap()));
        Self::launch(config, dir).await
    }

    async fn launch(config: ServerConfig, dir: TempDir) -> Self {
        let server = wrenn_envd::start(config).await.expect("envd starts");
        let channel = wrenn_envd::client::connect(server.local_addr())
            .await
            .expect("client connects");
        Self {
            server,
            process: ProcessClient::new(channel.clone()),
            fs: FilesystemClient::new(channel.clone()),
            system: SystemClient::new(channel.clone()),
            tunnel: TunnelClient::new(channel),
            dir,
        }
    }

    /// A path inside the scratch directory, as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Starts `cmd args...` and returns the event stream.
    pub async fn start(
        &mut self,
        request: StartRequest,
    ) -> Result<Streaming<ProcessEvent>, Status> {
        Ok(self.process.start(request).await?.into_inner())
    }

    /// Runs a command to completion and collects everything it printed.
    pub async fn run(&mut self, cmd: &str, args: &[&str]) -> Collected {
        let stream = self.start(request(cmd, args)).await.expect("start");
        collect(stream).await
    }
}

/// A Start request for `cmd args...` with pipes and no stdin.
pub fn request(cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        process: Some(config(cmd, args)),
        ..Default::default()
    }
}

/// A process config for `cmd args...`.
pub fn config(cmd: &str, args: &[&str]) -> ProcessConfig {
    ProcessConfig {
        cmd: cmd.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        envs: HashMap::new(),
        cwd: None,
        user: None,
    }
}

/// `sh -c script`.
pub fn sh(script: &str) -> StartRequest {
    request("/bin/sh", &["-c", script])
}

pub fn by_pid(pid: u32) -> Option<ProcessSelector> {
    Some(ProcessSelector {
        selector: Some(Selector::Pid(pid)),
    })
}

pub fn by_tag(tag: &str) -> Option<ProcessSelector> {
    Some(ProcessSelector {
        selector: Some(Selector::Tag(tag.to_owned())),
    })
}

/// Everything a process stream delivered.
#[derive(Debug, Default)]
pub struct Collected {
    pub pid: u32,
    pub tag: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub pty: Vec<u8>,
    pub end: Option<EndEvent>,
    pub keepalives: usize,
}

impl Collected {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn pty(&self) -> String {
        String::from_utf8_lossy(&self.pty).into_owned()
    }
    pub fn exit_code(&self) -> i32 {
        self.end.as_ref().expect("an end event").exit_code
    }

    fn absorb(&mut self, event: ProcessEvent) -> bool {
        match event.event.expect("event set") {
            process_event::Event::Start(start) => {
                self.pid = start.pid;
                self.tag = start.tag;
            }
            process_event::Event::Data(data) => match data.output.expect("output set") {
                data_event::Output::Stdout(b) => self.stdout.extend(b),
                data_event::Output::Stderr(b) => self.stderr.extend(b),
                data_event::Output::Pty(b) => self.pty.extend(b),
            },
            process_event::Event::End(end) => {
                self.end = Some(end);
                return true;
            }
            process_event::Event::Keepalive(_) => self.keepalives += 1,
        }
        false
    }
}

/// Reads a process stream to its `end` event (which must be the last one).
pub async fn collect(mut stream: Streaming<ProcessEvent>) -> Collected {
    within(async move {
        let mut collected = Collected::default();
        while let Some(event) = stream.next().await {
            if collected.absorb(event.expect("stream item")) {
                assert!(stream.next().await.is_none(), "nothing follows `end`");
                break;
            }
        }
        collected
    })
    .await
}

/// Reads a process stream until `pred` holds for what was collected so far.
pub async fn collect_until(
    stream: &mut Streaming<ProcessEvent>,
    collected: &mut Collected,
    pred: impl Fn(&Collected) -> bool,
) {
    within(async {
        while !pred(collected) {
            let event = stream
                .next()
                .await
                .expect("stream still open")
                .expect("stream item");
            if collected.absorb(event) && !pred(collected) {
                panic!("process ended before the condition held: {collected:?}");
            }
        }
    })
    .await
}

/// Fails the test if `future` takes longer than [`PATIENCE`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("timed out")
}
