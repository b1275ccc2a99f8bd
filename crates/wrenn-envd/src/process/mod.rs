//! The `envd.v1.Process` service: start, attach to, feed, signal, resize and list
//! processes.
//!
//! - [`spawn`] — the child's command line, environment, user, session and stdio.
//! - [`pty`] — pseudo-terminals.
//! - [`output`] — per-process output buffers with replay and back-pressure.
//! - [`registry`] — pids, tags and retention of exited processes.
//! - [`stream`] — the event streams of Start and Connect.
//! - [`fdio`] — async I/O on pipe and PTY descriptors.
//!
//! A cancelled Start or Connect stream never stops its process (as the proto documents);
//! the process keeps running, its output keeps being buffered, and it stays reachable by
//! pid or tag. Whoever runs a foreground command with a deadline (the host agent) ends it
//! with SendSignal when the deadline passes or its client goes away.

pub(crate) mod fdio;
pub(crate) mod output;
pub(crate) mod pty;
pub(crate) mod registry;
pub(crate) mod spawn;
pub(crate) mod stream;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal as OsSignal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::envd::v1::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, ListRequest, ListResponse,
    ProcessConfig, ProcessInput, SendInputRequest, SendInputResponse, SendSignalRequest,
    SendSignalResponse, Signal, StartEvent, StartRequest, StreamInputRequest, StreamInputResponse,
    UpdateRequest, UpdateResponse, process_input, process_server, stream_input_request,
};

use self::fdio::{Reader, Writer};
use self::output::{Output, StreamKind, Subscription};
use self::registry::{InputKind, ProcessEntry, Registry};
use self::spawn::{ChildIo, SpawnSpec};
use crate::error::{EnvdError, Result};
use crate::reaper::ExitInfo;
use crate::state::{Shared, validate_env};
use crate::{paths, users};

/// `PATH` for processes when envd itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Tuning of the process service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessLimits {
    /// Output bytes retained per stream for replay.
    pub output_retain: usize,
    /// Idle time after which a keepalive event is sent.
    pub keepalive: Duration,
}

/// The `Process` service.
#[derive(Debug, Clone)]
pub(crate) struct ProcessService {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    limits: ProcessLimits,
}

impl ProcessService {
    pub(crate) fn new(shared: Arc<Shared>, registry: Arc<Registry>, limits: ProcessLimits) -> Self {
        Self {
            shared,
            registry,
            limits,
        }
    }

    async fn start_process(
        &self,
        request: StartRequest,
    ) -> Result<(Arc<ProcessEntry>, Subscription)> {
        let config = request
            .process
            .ok_or_else(|| EnvdError::invalid("process is required"))?;
        if config.cmd.trim().is_empty() {
            return Err(EnvdError::invalid("cmd is empty"));
        }
        if config.cmd.contains('\0') || config.args.iter().any(|a| a.contains('\0')) {
            return Err(EnvdError::invalid(
                "cmd and args must not contain NUL bytes",
            ));
        }
        validate_env(&config.envs)?;
        let size = request.pty.as_ref().map(pty_size).transpose()?;

        let defaults = self.shared.defaults();
        let user = self.shared.user(config.user.as_deref())?;
        let cwd = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(dir) => {
                let path = paths::resolve(dir, &user.home)?;
                if !path.is_dir() {
                    return Err(EnvdError::invalid(format!(
                        "working directory {} does not exist",
                        path.display()
                    )));
                }
                path
            }
            None => match defaults.workdir {
                Some(dir) if dir.is_dir() => dir,
                _ => users::default_dir(&user),
            },
        };

        let mut env = BTreeMap::new();
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned());
        env.insert("PATH".to_owned(), path);
        env.insert("HOME".to_owned(), user.home.display().to_string());
        env.insert("USER".to_owned(), user.name.clone());
        env.insert("LOGNAME".to_owned(), user.name.clone());
        if size.is_some() {
            env.insert("TERM".to_owned(), "xterm-256color".to_owned());
        }
        env.extend(defaults.envs);
        env.extend(config.envs.clone());

        let reservation = self.registry.reserve_tag(request.tag, size.is_some())?;
        // Subscribe before anything runs: no output and no end can be missed.
        let output = Output::new(self.limits.output_retain);
        let subscription = output.subscribe(true);

        let (io, master) = match size {
            Some(size) => {
                let (master, slave) =
                    pty::open(size).map_err(EnvdError::io("opening a pseudo-terminal"))?;
                (ChildIo::Pty { slave }, Some(master))
            }
            None => (
                ChildIo::Pipes {
                    stdin: request.stdin,
                },
                None,
            ),
        };
        let spec = SpawnSpec {
            program: config.cmd.clone(),
            args: config.args.clone(),
            env,
            cwd: cwd.clone(),
            user: user.clone(),
            io,
        };
        let program = config.cmd.clone();
        let spawned = tokio::task::spawn_blocking(move || spawn::spawn(spec))
            .await?
            .map_err(|err| spawn_error(&program, &err))?;
        let pid = spawned.pid;

        let wired = wire_io(master, spawned.stdin, spawned.stdout, spawned.stderr);
        let (input_kind, input, sources) = match wired {
            Ok(wired) => wired,
            Err(err) => {
                kill_group(pid, OsSignal::KILL);
                return Err(EnvdError::from_io("setting up process I/O", &err));
            }
        };
        let entry = Arc::new(ProcessEntry::new(
            pid,
            reservation.tag().to_owned(),
            ProcessConfig {
                cmd: config.cmd,
                args: config.args,
                envs: config.envs,
                cwd: Some(cwd.display().to_string()),
                user: Some(user.name),
            },
            input_kind,
            input,
            Arc::clone(&output),
        ));
        self.registry.insert(Arc::clone(&entry));
        drop(reservation);

        let exited = CancellationToken::new();
        let pumps = sources
            .into_iter()
            .map(|(source, kind)| {
                tokio::spawn(output::pump(
                    source,
                    kind,
                    Arc::clone(&output),
                    exited.clone(),
                ))
            })
            .collect();
        tokio::spawn(watch_exit(Arc::clone(&entry), spawned.exit, exited, pumps));
        tracing::debug!(pid, tag = %entry.tag, "process started");
        Ok((entry, subscription))
    }

    async fn write_input(&self, entry: &ProcessEntry, input: Option<ProcessInput>) -> Result<()> {
        let input = input
            .and_then(|i| i.input)
            .ok_or_else(|| EnvdError::invalid("input is required"))?;
        let (bytes, fd) = match input {
            process_input::Input::Stdin(bytes) => match entry.input_kind {
                InputKind::Pipe => (bytes, entry.input_fd()?),
                InputKind::Pty => {
                    return Err(EnvdError::precondition(format!(
                        "process {} runs on a PTY: send pty input",
                        entry.pid
                    )));
                }
                InputKind::None => {
                    return Err(EnvdError::precondition(format!(
                        "process {} was started without stdin",
                        entry.pid
                    )));
                }
            },
            process_input::Input::Pty(bytes) => (bytes, entry.pty_fd()?),
        };
        fd.write_all(&bytes).await.map_err(|err| {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                EnvdError::precondition(format!("process {} no longer reads its input", entry.pid))
            } else {
                EnvdError::from_io("writing process input", &err)
            }
        })
    }

    /// Sends SIGKILL to the process group of every process envd knows, including
    /// exited ones whose descendants may still run (used at shutdown, so nothing envd
    /// started outlives it).
    pub(crate) fn kill_all(&self) {
        for entry in self.registry.all() {
            kill_group(entry.pid, OsSignal::KILL);
        }
    }
}

/// Async I/O of a started process: how it takes input, the input writer, and the output
/// readers with their stream kinds.
type WiredIo = (InputKind, Option<Arc<Writer>>, Vec<(Reader, StreamKind)>);

/// Turns the spawned descriptors into async I/O.
fn wire_io(
    master: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
) -> std::io::Result<WiredIo> {
    if let Some(master) = master {
        let writer = Writer::new(master.try_clone()?)?;
        let reader = Reader::new(master)?;
        return Ok((
            InputKind::Pty,
            Some(Arc::new(writer)),
            vec![(reader, StreamKind::Pty)],
        ));
    }
    let input = stdin.map(Writer::new).transpose()?.map(Arc::new);
    let kind = if input.is_some() {
        InputKind::Pipe
    } else {
        InputKind::None
    };
    let mut sources = Vec::new();
    if let Some(fd) = stdout {
        sources.push((Reader::new(fd)?, StreamKind::Stdout));
    }
    if let Some(fd) = stderr {
        sources.push((Reader::new(fd)?, StreamKind::Stderr));
    }
    Ok((kind, input, sources))
}

/// Waits for the exit, lets the pumps drain the remaining output, then publishes `end`.
async fn watch_exit(
    entry: Arc<ProcessEntry>,
    exit: tokio::sync::oneshot::Receiver<ExitInfo>,
    exited: CancellationToken,
    pumps: Vec<JoinHandle<()>>,
) {
    let status = exit.await.ok();
    exited.cancel();
    for pump in pumps {
        let _ = pump.await;
    }
    entry.mark_exited();
    entry.output.finish(stream::end_event(status));
    tracing::debug!(pid = entry.pid, ?status, "process ended");
}

fn pty_size(size: &wrenn_proto::envd::v1::Pty) -> Result<pty::Size> {
    let cols = u16::try_from(size.cols).ok().filter(|c| *c > 0);
    let rows = u16::try_from(size.rows).ok().filter(|r| *r > 0);
    match (cols, rows) {
        (Some(cols), Some(rows)) => Ok(pty::Size { cols, rows }),
        _ => Err(EnvdError::invalid(format!(
            "PTY size must be between 1 and 65535 columns and rows, got {}x{}",
            size.cols, size.rows
        ))),
    }
}

fn spawn_error(program: &str, err: &std::io::Error) -> EnvdError {
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            EnvdError::not_found(format!("program {program:?} not found: {err}"))
        }
        std::io::ErrorKind::PermissionDenied => {
            EnvdError::PermissionDenied(format!("cannot execute {program:?}: {err}"))
        }
        _ => EnvdError::from_io(format_args!("starting {program:?}"), err),
    }
}

fn os_signal(signal: i32) -> Result<OsSignal> {
    match Signal::try_from(signal) {
        Ok(Signal::Sighup) => Ok(OsSignal::HUP),
        Ok(Signal::Sigint) => Ok(OsSignal::INT),
        Ok(Signal::Sigkill) => Ok(OsSignal::KILL),
        Ok(Signal::Sigterm) => Ok(OsSignal::TERM),
        Ok(Signal::Unspecified) => Err(EnvdError::invalid("signal is required")),
        Err(_) => Err(EnvdError::invalid(format!("unsupported signal {signal}"))),
    }
}

fn kill_group(pid: u32, signal: OsSignal) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    rustix::process::kill_process_group(pid, signal).is_ok()
}

#[tonic::async_trait]
impl process_server::Process for ProcessService {
    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let mut processes: Vec<_> = self.registry.live().iter().map(|e| e.info()).collect();
        processes.sort_by_key(|p| p.pid);
        Ok(Response::new(ListResponse { processes }))
    }

    type StartStream = stream::EventStream;

    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<Self::StartStream>, Status> {
        let (entry, subscription) = self.start_process(request.into_inner()).await?;
        let start = StartEvent {
            pid: entry.pid,
            tag: entry.tag.clone(),
        };
        Ok(Response::new(stream::events(
            start,
            subscription,
            self.limits.keepalive,
        )))
    }

    type ConnectStream = stream::EventStream;

    async fn connect(
        &self,
        request: Request<ConnectRequest>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let request = request.into_inner();
        let entry = self.registry.find(request.process.as_ref())?;
        let subscription = entry.output.subscribe(request.replay);
        let start = StartEvent {
            pid: entry.pid,
            tag: entry.tag.clone(),
        };
        Ok(Response::new(stream::events(
            start,
            subscription,
            self.limits.keepalive,
        )))
    }

    async fn update(
        &self,
        request: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let request = request.into_inner();
        let entry = self.registry.find(request.process.as_ref())?;
        let size = request.pty.as_ref().map(pty_size).transpose()?;
        let master = entry.pty_fd()?;
        if let Some(size) = size {
            pty::resize(master.fd(), size).map_err(EnvdError::io("resizing the terminal"))?;
        }
        Ok(Response::new(UpdateResponse {}))
    }

    async fn stream_input(
        &self,
        request: Request<Streaming<StreamInputRequest>>,
    ) -> Result<Response<StreamInputResponse>, Status> {
        let mut messages = request.into_inner();
        let first = messages.message().await?;
        let selector = match first.and_then(|m| m.event) {
            Some(stream_input_request::Event::Start(start)) => start.process,
            _ => {
                return Err(
                    EnvdError::invalid("the first StreamInput message must be `start`").into(),
                );
            }
        };
        let entry = self.registry.find(selector.as_ref())?;
        while let Some(message) = messages.message().await? {
            match message.event {
                Some(stream_input_request::Event::Data(input)) => {
                    self.write_input(&entry, Some(input)).await?;
                }
                Some(stream_input_request::Event::Keepalive(_)) => {}
                Some(stream_input_request::Event::Start(_)) => {
                    return Err(EnvdError::invalid("`start` may only be the first message").into());
                }
                None => return Err(EnvdError::invalid("empty StreamInput message").into()),
            }
        }
        Ok(Response::new(StreamInputResponse {}))
    }

    async fn send_input(
        &self,
        request: Request<SendInputRequest>,
    ) -> Result<Response<SendInputResponse>, Status> {
        let request = request.into_inner();
        let entry = self.registry.find(request.process.as_ref())?;
        self.write_input(&entry, request.input).await?;
        Ok(Response::new(SendInputResponse {}))
    }

    async fn send_signal(
        &self,
        request: Request<SendSignalRequest>,
    ) -> Result<Response<SendSignalResponse>, Status> {
        let request = request.into_inner();
        let entry = self.registry.find(request.process.as_ref())?;
        let signal = os_signal(request.signal)?;
        if !kill_group(entry.pid, signal) {
            return Err(EnvdError::not_found(format!(
                "process {} has exited and nothing is left in its process group",
                entry.pid
            ))
            .into());
        }
        Ok(Response::new(SendSignalResponse {}))
    }

    async fn close_stdin(
        &self,
        request: Request<CloseStdinRequest>,
    ) -> Result<Response<CloseStdinResponse>, Status> {
        let request = request.into_inner();
        let entry = self.registry.find(request.process.as_ref())?;
        match entry.input_kind {
            InputKind::Pipe => entry.close_stdin(),
            InputKind::Pty => {
                return Err(EnvdError::precondition(format!(
                    "process {} runs on a PTY: send Ctrl-D (byte 0x04) as pty input instead",
                    entry.pid
                ))
                .into());
            }
            InputKind::None => {
                return Err(EnvdError::precondition(format!(
                    "process {} was started without stdin",
                    entry.pid
                ))
                .into());
            }
        }
        Ok(Response::new(CloseStdinResponse {}))
    }
}
