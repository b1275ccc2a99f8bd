//! `envd.v1.Process` of the fake agent, over real processes on the host.
//!
//! As envd: every process runs in its own process group (signals reach the whole
//! group); `Start` streams `start`, the output, then one `end`; output is buffered for
//! `Connect{replay}`; tags are unique among live processes and generated as `proc-` or
//! `pty-` plus 8 hex digits when unset; a process stays addressable after it exits.
//! As the host agent: a `Start` sent with `wrenn-on-disconnect: kill` whose stream is
//! dropped before its `end` has its process group killed.

use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::envd::v1::process_event::Event;
use wrenn_proto::envd::v1::process_selector::Selector;
use wrenn_proto::envd::v1::process_server::Process;
use wrenn_proto::envd::v1::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, DataEvent, EndEvent, ListRequest,
    ListResponse, ProcessConfig, ProcessEvent, ProcessInfo, ProcessInput, ProcessSelector,
    SendInputRequest, SendInputResponse, SendSignalRequest, SendSignalResponse, Signal, StartEvent,
    StartRequest, StreamInputRequest, StreamInputResponse, UpdateRequest, UpdateResponse,
    data_event, process_input, stream_input_request,
};
use wrenn_proto::routing;

use super::{FakeAgent, signal_group};

/// How long output may still be read after a process exits (a descendant that kept
/// its stdout open would otherwise hold the `end` event back for ever).
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// One output item of a process.
#[derive(Clone, Debug)]
enum Out {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Pty(Vec<u8>),
    End(EndEvent),
}

/// How a process takes input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// stdin is /dev/null.
    None,
    /// stdin is a pipe.
    Pipe,
    /// A "terminal": input goes to its stdin pipe.
    Pty,
}

struct ProcState {
    /// Everything the process produced, for replay (the `end` last).
    replay: Vec<Out>,
    end: Option<EndEvent>,
    /// Live streams.
    subscribers: Vec<mpsc::UnboundedSender<Out>>,
}

/// A process started by `Process.Start`.
pub(super) struct Proc {
    pid: u32,
    tag: String,
    config: ProcessConfig,
    input: Input,
    /// The input pipe; `None` once closed, after exit, or if there never was one.
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    state: Mutex<ProcState>,
}

impl Proc {
    fn record(&self, out: Out) {
        let mut st = self.state.lock().unwrap();
        if let Out::End(end) = &out {
            st.end = Some(end.clone());
        }
        st.subscribers.retain(|s| s.send(out.clone()).is_ok());
        if st.end.is_some() {
            // Closes every stream after its `end`.
            st.subscribers.clear();
        }
        st.replay.push(out);
    }

    fn exited(&self) -> bool {
        self.state.lock().unwrap().end.is_some()
    }

    /// The items a new stream gets: the buffered output if `replay`, the `end` if there
    /// was one, then live items (consistently: nothing is missed or repeated).
    fn subscribe(&self, replay: bool) -> mpsc::UnboundedReceiver<Out> {
        let mut st = self.state.lock().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        for out in &st.replay {
            if replay || matches!(out, Out::End(_)) {
                let _ = tx.send(out.clone());
            }
        }
        if st.end.is_none() {
            st.subscribers.push(tx);
        }
        rx
    }

    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            config: Some(self.config.clone()),
            pid: self.pid,
            tag: Some(self.tag.clone()),
            pty: self.input == Input::Pty,
        }
    }
}

/// Kills a process's group when dropped before the process ended (kill on disconnect).
struct KillOnDrop(Arc<Proc>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.0.exited() {
            signal_group(self.0.pid, "KILL");
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ProcessEvent, Status>> + Send>>;

fn event(event: Event) -> ProcessEvent {
    ProcessEvent { event: Some(event) }
}

/// `start`, then the process's items (see [`Proc::subscribe`]); `guard` lives as long
/// as the stream.
fn events(proc: &Proc, replay: bool, guard: Option<KillOnDrop>) -> EventStream {
    let start = event(Event::Start(StartEvent {
        pid: proc.pid,
        tag: proc.tag.clone(),
    }));
    let rest = UnboundedReceiverStream::new(proc.subscribe(replay)).map(move |out| {
        let _guard = &guard;
        let data = |output| {
            Event::Data(DataEvent {
                output: Some(output),
            })
        };
        Ok(event(match out {
            Out::Stdout(b) => data(data_event::Output::Stdout(b)),
            Out::Stderr(b) => data(data_event::Output::Stderr(b)),
            Out::Pty(b) => data(data_event::Output::Pty(b)),
            Out::End(end) => Event::End(end),
        }))
    });
    Box::pin(futures::stream::iter([Ok(start)]).chain(rest))
}

/// The `end` event of a waited-for process, as envd words it.
fn end_event(status: std::io::Result<std::process::ExitStatus>) -> EndEvent {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => EndEvent {
                exit_code: code,
                exited: true,
                status: format!("exit status {code}"),
                error: None,
            },
            (None, signal) => EndEvent {
                exit_code: -1,
                exited: false,
                status: format!(
                    "signal: {}",
                    match signal {
                        Some(1) => "hangup".to_owned(),
                        Some(2) => "interrupt".to_owned(),
                        Some(9) => "killed".to_owned(),
                        Some(15) => "terminated".to_owned(),
                        other => format!("signal {}", other.unwrap_or(0)),
                    }
                ),
                error: None,
            },
        },
        Err(e) => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: Some(format!("lost the exit status of the process: {e}")),
        },
    }
}

/// Appends everything `reader` yields to `proc` as `wrap`ped output.
async fn pump<R: AsyncRead + Unpin>(mut reader: R, proc: Arc<Proc>, wrap: fn(Vec<u8>) -> Out) {
    let mut buf = vec![0u8; 32 * 1024];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        proc.record(wrap(buf[..n].to_vec()));
    }
}

fn pty_size(size: &wrenn_proto::envd::v1::Pty) -> Result<(u32, u32), Status> {
    let ok = |v: u32| (1..=u32::from(u16::MAX)).contains(&v);
    if ok(size.cols) && ok(size.rows) {
        Ok((size.cols, size.rows))
    } else {
        Err(Status::invalid_argument(format!(
            "PTY size must be between 1 and 65535 columns and rows, got {}x{}",
            size.cols, size.rows
        )))
    }
}

fn generated_tag(pty: bool) -> String {
    format!(
        "{}-{:08x}",
        if pty { "pty" } else { "proc" },
        rand::random::<u32>()
    )
}

impl FakeAgent {
    /// Starts a process for `Process.Start` and tracks it.
    fn start_process(&self, sandbox: &str, r: StartRequest) -> Result<Arc<Proc>, Status> {
        let config = r
            .process
            .ok_or_else(|| Status::invalid_argument("process is required"))?;
        if config.cmd.trim().is_empty() {
            return Err(Status::invalid_argument("cmd is empty"));
        }
        if config.cmd.contains('\0') || config.args.iter().any(|a| a.contains('\0')) {
            return Err(Status::invalid_argument(
                "cmd and args must not contain NUL bytes",
            ));
        }
        let size = r.pty.as_ref().map(pty_size).transpose()?;
        let home = self.host_path(sandbox, "/root")?;
        std::fs::create_dir_all(&home).map_err(|e| Status::internal(e.to_string()))?;
        let cwd = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(dir) => {
                let path = self.host_path(sandbox, dir)?;
                if !path.is_dir() {
                    return Err(Status::invalid_argument(format!(
                        "working directory {dir} does not exist"
                    )));
                }
                path
            }
            None => home.clone(),
        };

        let mut command = match size {
            // No real terminal: pipes, stderr merged into stdout, the size in the env.
            Some((cols, rows)) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg("exec \"$0\" \"$@\" 2>&1")
                    .arg(&config.cmd)
                    .args(&config.args)
                    .env("TERM", "xterm-256color")
                    .env("COLUMNS", cols.to_string())
                    .env("LINES", rows.to_string())
                    .stdin(Stdio::piped());
                c
            }
            None => {
                let mut c = Command::new(&config.cmd);
                c.args(&config.args).stdin(if r.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
                c
            }
        };
        command
            .env("HOME", &home)
            .env("USER", "root")
            .env("LOGNAME", "root")
            .envs(&config.envs)
            .current_dir(&cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let input = match (size, r.stdin) {
            (Some(_), _) => Input::Pty,
            (None, true) => Input::Pipe,
            (None, false) => Input::None,
        };

        // Tag check, spawn and registration under one lock: tags stay unique.
        let mut procs = self.procs.lock().unwrap();
        let list = procs.entry(sandbox.to_owned()).or_default();
        let in_use = |tag: &str| list.iter().any(|p| p.tag == tag && !p.exited());
        let tag = match r.tag.filter(|t| !t.is_empty()) {
            Some(tag) if in_use(&tag) => {
                return Err(Status::already_exists(format!(
                    "tag {tag:?} is used by a live process"
                )));
            }
            Some(tag) => tag,
            None => loop {
                let tag = generated_tag(size.is_some());
                if !in_use(&tag) {
                    break tag;
                }
            },
        };
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Status::not_found(format!("program {:?} not found: {e}", config.cmd))
            }
            std::io::ErrorKind::PermissionDenied => {
                Status::permission_denied(format!("cannot execute {:?}: {e}", config.cmd))
            }
            _ => Status::internal(format!("starting {:?}: {e}", config.cmd)),
        })?;
        let pid = child
            .id()
            .ok_or_else(|| Status::internal("the child has no pid"))?;
        let proc = Arc::new(Proc {
            pid,
            tag,
            config: ProcessConfig {
                cwd: Some(self.sandbox_path(sandbox, &cwd)),
                user: Some(config.user.clone().unwrap_or_else(|| "root".into())),
                ..config
            },
            input,
            stdin: tokio::sync::Mutex::new(child.stdin.take()),
            state: Mutex::new(ProcState {
                replay: Vec::new(),
                end: None,
                subscribers: Vec::new(),
            }),
        });
        list.push(proc.clone());
        drop(procs);

        let (out, err) = (child.stdout.take(), child.stderr.take());
        let pty = input == Input::Pty;
        let mut pumps = Vec::new();
        if let Some(out) = out {
            let wrap: fn(Vec<u8>) -> Out = if pty { Out::Pty } else { Out::Stdout };
            pumps.push(tokio::spawn(pump(out, proc.clone(), wrap)));
        }
        if let Some(err) = err {
            let wrap: fn(Vec<u8>) -> Out = if pty { Out::Pty } else { Out::Stderr };
            pumps.push(tokio::spawn(pump(err, proc.clone(), wrap)));
        }
        let p = proc.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            for mut pump in pumps {
                if tokio::time::timeout(DRAIN_GRACE, &mut pump).await.is_err() {
                    pump.abort();
                }
            }
            p.stdin.lock().await.take();
            p.record(Out::End(end_event(status)));
        });
        Ok(proc)
    }

    /// The process `selector` names in `sandbox`: by pid, or by tag (a live process
    /// first, else the most recently started one).
    fn find(&self, sandbox: &str, selector: Option<&ProcessSelector>) -> Result<Arc<Proc>, Status> {
        let selector = selector.and_then(|s| s.selector.as_ref()).ok_or_else(|| {
            Status::invalid_argument("a process selector (pid or tag) is required")
        })?;
        let procs = self.procs(sandbox);
        match selector {
            Selector::Pid(pid) => procs
                .iter()
                .rev()
                .find(|p| p.pid == *pid)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("no process with pid {pid}"))),
            Selector::Tag(tag) => {
                if tag.is_empty() {
                    return Err(Status::invalid_argument("tag is empty"));
                }
                let named = || procs.iter().rev().filter(|p| &p.tag == tag);
                named()
                    .find(|p| !p.exited())
                    .or_else(|| named().next())
                    .cloned()
                    .ok_or_else(|| Status::not_found(format!("no process with tag {tag:?}")))
            }
        }
    }
}

/// Writes one piece of input to a process, as envd checks it.
async fn write_input(proc: &Proc, input: Option<ProcessInput>) -> Result<(), Status> {
    let input = input
        .and_then(|i| i.input)
        .ok_or_else(|| Status::invalid_argument("input is required"))?;
    let pid = proc.pid;
    let bytes = match (input, proc.input) {
        (process_input::Input::Stdin(b), Input::Pipe) => b,
        (process_input::Input::Stdin(_), Input::Pty) => {
            return Err(Status::failed_precondition(format!(
                "process {pid} runs on a PTY: send pty input"
            )));
        }
        (process_input::Input::Stdin(_), Input::None) => {
            return Err(Status::failed_precondition(format!(
                "process {pid} was started without stdin"
            )));
        }
        (process_input::Input::Pty(b), Input::Pty) => b,
        (process_input::Input::Pty(_), _) => {
            return Err(Status::failed_precondition(format!(
                "process {pid} does not run on a PTY"
            )));
        }
    };
    let mut stdin = proc.stdin.lock().await;
    let Some(pipe) = stdin.as_mut() else {
        return Err(Status::failed_precondition(if proc.exited() {
            format!("process {pid} has exited")
        } else {
            format!("stdin of process {pid} is closed")
        }));
    };
    let written = async {
        pipe.write_all(&bytes).await?;
        pipe.flush().await
    };
    written.await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Status::failed_precondition(format!("process {pid} no longer reads its input"))
        } else {
            Status::internal(format!("writing process input: {e}"))
        }
    })
}

/// `envd.v1.Process` of a [`FakeAgent`].
#[derive(Clone)]
pub(super) struct ProcessService(pub(super) Arc<FakeAgent>);

#[tonic::async_trait]
impl Process for ProcessService {
    async fn list(&self, r: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let sandbox = self.0.route("Process.List", r.metadata())?;
        let mut processes: Vec<ProcessInfo> = self
            .0
            .procs(&sandbox)
            .iter()
            .filter(|p| !p.exited())
            .map(|p| p.info())
            .collect();
        processes.sort_by_key(|p| p.pid);
        Ok(Response::new(ListResponse { processes }))
    }

    type StartStream = EventStream;

    async fn start(&self, r: Request<StartRequest>) -> Result<Response<EventStream>, Status> {
        let sandbox = self.0.route("Process.Start", r.metadata())?;
        let kill = routing::kills_on_disconnect(r.metadata());
        let proc = self.0.start_process(&sandbox, r.into_inner())?;
        let guard = kill.then(|| KillOnDrop(proc.clone()));
        Ok(Response::new(events(&proc, true, guard)))
    }

    type ConnectStream = EventStream;

    async fn connect(&self, r: Request<ConnectRequest>) -> Result<Response<EventStream>, Status> {
        let sandbox = self.0.route("Process.Connect", r.metadata())?;
        let r = r.into_inner();
        let proc = self.0.find(&sandbox, r.process.as_ref())?;
        Ok(Response::new(events(&proc, r.replay, None)))
    }

    async fn update(&self, r: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        let sandbox = self.0.route("Process.Update", r.metadata())?;
        let r = r.into_inner();
        let proc = self.0.find(&sandbox, r.process.as_ref())?;
        let size = r.pty.as_ref().map(pty_size).transpose()?;
        if proc.input != Input::Pty {
            return Err(Status::failed_precondition(format!(
                "process {} does not run on a PTY",
                proc.pid
            )));
        }
        if proc.exited() {
            return Err(Status::failed_precondition(format!(
                "process {} has exited",
                proc.pid
            )));
        }
        if let Some((cols, rows)) = size {
            self.0
                .resizes
                .lock()
                .unwrap()
                .push((proc.tag.clone(), cols, rows));
        }
        Ok(Response::new(UpdateResponse {}))
    }

    async fn stream_input(
        &self,
        r: Request<Streaming<StreamInputRequest>>,
    ) -> Result<Response<StreamInputResponse>, Status> {
        let sandbox = self.0.route("Process.StreamInput", r.metadata())?;
        let mut messages = r.into_inner();
        let selector = match messages.message().await?.and_then(|m| m.event) {
            Some(stream_input_request::Event::Start(start)) => start.process,
            _ => {
                return Err(Status::invalid_argument(
                    "the first StreamInput message must be `start`",
                ));
            }
        };
        let proc = self.0.find(&sandbox, selector.as_ref())?;
        while let Some(message) = messages.message().await? {
            match message.event {
                Some(stream_input_request::Event::Data(input)) => {
                    write_input(&proc, Some(input)).await?;
                }
                Some(stream_input_request::Event::Keepalive(_)) => {}
                Some(stream_input_request::Event::Start(_)) => {
                    return Err(Status::invalid_argument(
                        "`start` may only be the first message",
                    ));
                }
                None => return Err(Status::invalid_argument("empty StreamInput message")),
            }
        }
        Ok(Response::new(StreamInputResponse {}))
    }

    async fn send_input(
        &self,
        r: Request<SendInputRequest>,
    ) -> Result<Response<SendInputResponse>, Status> {
        let sandbox = self.0.route("Process.SendInput", r.metadata())?;
        let r = r.into_inner();
        let proc = self.0.find(&sandbox, r.process.as_ref())?;
        write_input(&proc, r.input).await?;
        Ok(Response::new(SendInputResponse {}))
    }

    async fn send_signal(
        &self,
        r: Request<SendSignalRequest>,
    ) -> Result<Response<SendSignalResponse>, Status> {
        let sandbox = self.0.route("Process.SendSignal", r.metadata())?;
        let r = r.into_inner();
        let proc = self.0.find(&sandbox, r.process.as_ref())?;
        let sig = match Signal::try_from(r.signal) {
            Ok(Signal::Sighup) => "HUP",
            Ok(Signal::Sigint) => "INT",
            Ok(Signal::Sigkill) => "KILL",
            Ok(Signal::Sigterm) => "TERM",
            Ok(Signal::Unspecified) => return Err(Status::invalid_argument("signal is required")),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unsupported signal {}",
                    r.signal
                )));
            }
        };
        if !signal_group(proc.pid, sig) {
            return Err(Status::not_found(format!(
                "process {} has exited and nothing is left in its process group",
                proc.pid
            )));
        }
        Ok(Response::new(SendSignalResponse {}))
    }

    async fn close_stdin(
        &self,
        r: Request<CloseStdinRequest>,
    ) -> Result<Response<CloseStdinResponse>, Status> {
        let sandbox = self.0.route("Process.CloseStdin", r.metadata())?;
        let r = r.into_inner();
        let proc = self.0.find(&sandbox, r.process.as_ref())?;
        match proc.input {
            Input::Pipe => {
                proc.stdin.lock().await.take();
                Ok(Response::new(CloseStdinResponse {}))
            }
            Input::Pty => Err(Status::failed_precondition(format!(
                "process {} runs on a PTY: send Ctrl-D (byte 0x04) as pty input instead",
                proc.pid
            ))),
            Input::None => Err(Status::failed_precondition(format!(
                "process {} was started without stdin",
                proc.pid
            ))),
        }
    }
}
