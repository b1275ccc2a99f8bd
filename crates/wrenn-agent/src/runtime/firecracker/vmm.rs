//! One Firecracker VMM process: started directly (optionally inside a network
//! namespace) or through the [jailer](super::jailer), watched until its API socket
//! answers, its output (log and guest console) and its metrics forwarded into
//! `tracing`, and stopped without leftovers.
//!
//! Metrics go through a named pipe the agent makes and reads before the VMM starts
//! ([`VmmOptions::forward_metrics`]): Firecracker writes one JSON document per flush
//! (every minute once the guest runs, and on `FlushMetrics`), each logged at `debug`
//! with target `wrenn_agent::firecracker::metrics` and the latest kept
//! ([`Vmm::metrics`]).
//!
//! A direct VMM gets `SIGKILL` when the agent dies (parent-death signal). A jailed
//! one does not: the kernel clears that signal when the jailer drops its credentials,
//! so an agent that restarts must find jailed VMMs again (each chroot holds
//! `firecracker.pid`).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::api::LogLevel;
use super::client::{Client, ClientError};
use super::jailer::JailerConfig;
use crate::runtime::{RuntimeError, error_chain};

/// The environment variable naming the Firecracker binary (else it is found on `PATH`).
pub const FIRECRACKER_BIN_ENV: &str = "WRENN_FIRECRACKER_BIN";
/// The environment variable naming the jailer binary (else it is found on `PATH`).
pub const JAILER_BIN_ENV: &str = "WRENN_JAILER_BIN";
/// How long a VMM may take to answer on its API socket.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(5);
/// The API socket of a jailed VMM, as it sees it.
pub const JAILED_API_SOCKET: &str = "/run/firecracker.socket";
/// Lines of the VMM's output kept for error messages.
const OUTPUT_TAIL_LINES: usize = 40;
/// How long the output forwarders may take to drain once the VMM exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The target of forwarded metrics.
pub const METRICS_TARGET: &str = "wrenn_agent::firecracker::metrics";
/// Longest metrics document read (Firecracker's are a few KiB).
const METRICS_MAX_LINE: usize = 1 << 20;

/// Why a VMM could not be found, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The binary is neither named by its environment variable nor on `PATH`.
    #[error("{binary} not found: install it and set {env} or put it on PATH")]
    BinaryNotFound {
        /// `firecracker` or `jailer`.
        binary: &'static str,
        /// The environment variable that names it.
        env: &'static str,
    },
    /// The environment variable names something that is not an executable file.
    #[error("{env}={} is not an executable file", path.display())]
    NotExecutable {
        /// The environment variable.
        env: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// The VMM id does not suit Firecracker and the jailer.
    #[error("invalid VMM id {0:?}: 1 to 64 ASCII letters, digits and '-'")]
    InvalidId(String),
    /// A file staged into a jail must have a plain file name.
    #[error("invalid file name {0:?} in a jail")]
    InvalidName(String),
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("start {}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before its API answered.
    #[error("the VMM exited before its API answered ({status}); its output: {output}")]
    Exited {
        /// How it ended.
        status: String,
        /// The tail of its output.
        output: String,
    },
    /// The API did not answer in time.
    #[error("the VMM's API socket {} did not answer within {timeout:?}", socket.display())]
    NoApi {
        /// The socket (host path).
        socket: PathBuf,
        /// The timeout.
        timeout: Duration,
        /// The last failure, if it got as far as connecting.
        #[source]
        source: Option<ClientError>,
    },
}

impl VmmError {
    /// Maps an I/O error on `path` during `what`.
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| VmmError::Io { what, path, source }
    }
}

impl From<VmmError> for RuntimeError {
    fn from(e: VmmError) -> Self {
        match e {
            VmmError::BinaryNotFound { .. } | VmmError::NotExecutable { .. } => {
                RuntimeError::Unsupported(error_chain(&e))
            }
            VmmError::Spawn { binary, source } => RuntimeError::Io {
                context: format!("start {}", binary.display()),
                source,
            },
            other => RuntimeError::Other(error_chain(&other)),
        }
    }
}

/// A binary the runtime runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `firecracker`.
    Firecracker,
    /// `jailer`.
    Jailer,
}

impl Binary {
    /// Its file name on `PATH`.
    pub fn name(self) -> &'static str {
        match self {
            Binary::Firecracker => "firecracker",
            Binary::Jailer => "jailer",
        }
    }

    /// The environment variable naming it.
    pub fn env(self) -> &'static str {
        match self {
            Binary::Firecracker => FIRECRACKER_BIN_ENV,
            Binary::Jailer => JAILER_BIN_ENV,
        }
    }

    /// Finds it from this process's environment.
    pub fn find(self) -> Result<PathBuf, VmmError> {
        self.find_in(
            std::env::var_os(self.env()).as_deref(),
            std::env::var_os("PATH").as_deref(),
        )
    }

    /// Finds it given the value of its environment variable and of `PATH`: the
    /// variable, when set, must name an executable file; else the first executable
    /// `PATH` entry wins.
    pub fn find_in(
        self,
        env_value: Option<&OsStr>,
        path: Option<&OsStr>,
    ) -> Result<PathBuf, VmmError> {
        if let Some(value) = env_value.filter(|v| !v.is_empty()) {
            let named = PathBuf::from(value);
            return if is_executable(&named) {
                Ok(named)
            } else {
                Err(VmmError::NotExecutable {
                    env: self.env(),
                    path: named,
                })
            };
        }
        path.into_iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(self.name()))
            .find(|candidate| is_executable(candidate))
            .ok_or(VmmError::BinaryNotFound {
                binary: self.name(),
                env: self.env(),
            })
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How a VMM is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    /// Firecracker runs as a child of the agent (as root), joining `netns` first.
    Direct {
        /// The Firecracker binary.
        firecracker: PathBuf,
        /// A network namespace (`/run/netns/…`).
        netns: Option<PathBuf>,
    },
    /// The jailer confines it.
    Jailed(JailerConfig),
}

/// Firecracker's own options. Paths are as the VMM sees them: host paths when
/// started directly, paths inside the chroot when jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmOptions {
    /// The VMM's id (`--id`, the jail's name): the capsule's id.
    pub id: String,
    /// The API socket.
    pub api_socket: PathBuf,
    /// A log file or named pipe (default: standard output, which is forwarded).
    pub log_path: Option<PathBuf>,
    /// The log level.
    pub log_level: Option<LogLevel>,
    /// A metrics file or named pipe.
    pub metrics_path: Option<PathBuf>,
    /// Makes `metrics_path` a named pipe (host side, owned by the jail's user when
    /// jailed) and forwards what Firecracker writes there into `tracing`.
    pub forward_metrics: bool,
    /// How long the API may take to answer.
    pub start_timeout: Duration,
    /// The VMM's working directory (direct launch only): relative paths given to its
    /// API (drives) resolve there, so a snapshot naming `disk.ext4` restores in any
    /// directory holding one.
    pub cwd: Option<PathBuf>,
}

impl VmmOptions {
    /// Options for VMM `id` with its API socket at `api_socket`.
    pub fn new(id: impl Into<String>, api_socket: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            api_socket: api_socket.into(),
            log_path: None,
            log_level: None,
            metrics_path: None,
            forward_metrics: false,
            start_timeout: DEFAULT_START_TIMEOUT,
            cwd: None,
        }
    }

    /// Options for jailed VMM `id`, its API socket at [`JAILED_API_SOCKET`].
    pub fn jailed(id: impl Into<String>) -> Self {
        Self::new(id, JAILED_API_SOCKET)
    }

    /// Firecracker's arguments; `with_id` is false under the jailer, which passes
    /// `--id` itself.
    pub fn firecracker_args(&self, with_id: bool) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--api-sock".into(), self.api_socket.clone().into()];
        if with_id {
            args.extend(["--id".into(), self.id.clone().into()]);
        }
        if let Some(path) = &self.log_path {
            args.extend(["--log-path".into(), path.clone().into()]);
        }
        if let Some(level) = self.log_level {
            args.extend(["--level".into(), level.as_str().into()]);
        }
        if let Some(path) = &self.metrics_path {
            args.extend(["--metrics-path".into(), path.clone().into()]);
        }
        args
    }
}

/// Firecracker and the jailer accept ids of 1 to 64 letters, digits and `-`.
fn check_id(id: &str) -> Result<(), VmmError> {
    let fits =
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if fits {
        Ok(())
    } else {
        Err(VmmError::InvalidId(id.to_owned()))
    }
}

/// The last lines a VMM wrote.
type Tail = Arc<Mutex<VecDeque<String>>>;
/// The last metrics document a VMM wrote.
type Metrics = Arc<Mutex<Option<serde_json::Value>>>;

/// A running VMM whose API answers. [`stop`](Self::stop) ends it cleanly; dropped
/// instead, the process is killed but its socket and jail stay.
#[derive(Debug)]
pub struct Vmm {
    id: String,
    child: Child,
    pid: u32,
    client: Client,
    jail: Option<JailerConfig>,
    tail: Tail,
    forwarders: Vec<JoinHandle<()>>,
    /// The metrics forwarder (it never sees the pipe's end: it holds a writer too).
    metrics_forwarder: Option<JoinHandle<()>>,
    metrics: Metrics,
    span: tracing::Span,
}

impl Vmm {
    /// Starts a VMM and waits until its API answers. On failure the process is
    /// killed and its socket and jail are removed.
    pub async fn start(launcher: &Launcher, options: &VmmOptions) -> Result<Self, VmmError> {
        check_id(&options.id)?;
        let (mut command, socket, jail) = match launcher {
            Launcher::Direct { firecracker, netns } => {
                let mut command = Command::new(firecracker);
                command.args(options.firecracker_args(true));
                if let Some(cwd) = &options.cwd {
                    command.current_dir(cwd);
                }
                let netns = match netns {
                    Some(path) => {
                        Some(std::fs::File::open(path).map_err(VmmError::io("open", path))?)
                    }
                    None => None,
                };
                pre_exec(&mut command, netns);
                (command, options.api_socket.clone(), None)
            }
            Launcher::Jailed(jail) => {
                let mut command = Command::new(&jail.jailer);
                command.args(jail.args(&options.id, &options.firecracker_args(false)));
                pre_exec(&mut command, None);
                let socket = jail.host_path(&options.id, &options.api_socket);
                (command, socket, Some(jail.clone()))
            }
        };
        if let Err(e) = std::fs::remove_file(&socket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(VmmError::io("remove the stale socket", &socket)(e));
        }
        let span = tracing::info_span!(
            "firecracker",
            capsule_id = %options.id,
            pid = tracing::field::Empty
        );
        let metrics = Metrics::default();
        let metrics_forwarder = match (&options.metrics_path, options.forward_metrics) {
            (Some(path), true) => {
                let host = match &jail {
                    Some(jail) => jail.host_path(&options.id, path),
                    None => options.cwd.as_deref().unwrap_or(Path::new("")).join(path),
                };
                let owner = jail.as_ref().map(|j| (j.uid, j.gid));
                match metrics_pipe(&host, owner) {
                    Ok(pipe) => Some(forward_metrics(pipe, metrics.clone(), span.clone())),
                    Err(e) => {
                        if let Some(jail) = &jail {
                            let _ = jail.cleanup(&options.id).await;
                        }
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let binary = PathBuf::from(command.as_std().get_program());
        let spawned = command.spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                if let Some(forwarder) = metrics_forwarder {
                    forwarder.abort();
                }
                if let Some(jail) = &jail {
                    let _ = jail.cleanup(&options.id).await;
                }
                return Err(VmmError::Spawn { binary, source });
            }
        };
        let pid = child.id().unwrap_or(0);
        span.record("pid", pid);
        let tail: Tail = Arc::default();
        let mut forwarders = Vec::new();
        if let Some(out) = child.stdout.take() {
            forwarders.push(forward(out, "stdout", tail.clone(), span.clone()));
        }
        if let Some(err) = child.stderr.take() {
            forwarders.push(forward(err, "stderr", tail.clone(), span.clone()));
        }
        let mut vmm = Self {
            id: options.id.clone(),
            child,
            pid,
            client: Client::new(socket),
            jail,
            tail,
            forwarders,
            metrics_forwarder,
            metrics,
            span,
        };
        match vmm.wait_api(options.start_timeout).await {
            Ok(()) => {
                tracing::debug!(parent: &vmm.span, "the VMM's API answers");
                Ok(vmm)
            }
            Err(e) => {
                let _ = vmm.stop().await;
                Err(e)
            }
        }
    }

    async fn wait_api(&mut self, timeout: Duration) -> Result<(), VmmError> {
        let deadline = Instant::now() + timeout;
        let probe = self.client.clone().with_timeout(Duration::from_secs(1));
        let mut last = None;
        loop {
            let exited = self.child.try_wait();
            if let Some(status) =
                exited.map_err(VmmError::io("watch the VMM of", probe.socket()))?
            {
                self.drain().await;
                return Err(VmmError::Exited {
                    status: status.to_string(),
                    output: self.output_tail().join("\n"),
                });
            }
            if probe.socket().exists() {
                match probe.describe_instance().await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(VmmError::NoApi {
                    socket: probe.socket().to_owned(),
                    timeout,
                    source: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The VMM's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its pid (the jailer's, which became Firecracker).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A client of its API.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Its API socket (host path).
    pub fn api_socket(&self) -> &Path {
        self.client.socket()
    }

    /// The jail's root directory (host path), when jailed.
    pub fn jail_root(&self) -> Option<PathBuf> {
        self.jail.as_ref().map(|j| j.root_dir(&self.id))
    }

    /// The last metrics document the VMM wrote (with
    /// [`forward_metrics`](VmmOptions::forward_metrics)).
    pub fn metrics(&self) -> Option<serde_json::Value> {
        self.metrics.lock().ok().and_then(|m| m.clone())
    }

    /// The last lines the VMM wrote (its log, and the guest's serial console).
    pub fn output_tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the VMM still runs (`None`) or how it ended.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(error_chain(&e)),
        }
    }

    /// Resolves when the VMM has exited (reaped), with how it ended.
    pub async fn wait(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => error_chain(&e),
        }
    }

    /// Kills the VMM (`SIGKILL`: its state lives in memory, nothing is lost that a
    /// snapshot did not already save), reaps it and removes its API socket, and its
    /// jail and cgroups when jailed.
    pub async fn stop(mut self) -> Result<(), VmmError> {
        let _ = self.child.start_kill();
        let status = self.wait().await;
        self.drain().await;
        tracing::debug!(parent: &self.span, status, "the VMM stopped");
        let socket = self.client.socket().to_owned();
        let removed = match tokio::fs::remove_file(&socket).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(VmmError::io("remove", &socket)(e))
            }
            _ => Ok(()),
        };
        if let Some(jail) = &self.jail {
            jail.cleanup(&self.id).await?;
        }
        removed
    }

    /// Waits (briefly) until the output forwarders read the end of the VMM's output.
    async fn drain(&mut self) {
        for forwarder in self.forwarders.drain(..) {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, forwarder).await;
        }
        if let Some(forwarder) = self.metrics_forwarder.take() {
            // Whatever the VMM wrote before it exited is in the pipe: read it first.
            tokio::time::sleep(Duration::from_millis(20)).await;
            forwarder.abort();
        }
    }
}

/// Joins `netns` (if any) and asks for `SIGKILL` when the agent dies, between fork
/// and exec.
fn pre_exec(command: &mut Command, netns: Option<std::fs::File>) {
    // SAFETY: between fork and exec only async-signal-safe calls (`setns`, `prctl`);
    // the namespace file stays open in the closure until the command is dropped.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            if let Some(ns) = &netns
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the named pipe `path` (replacing a stale one; given to `owner` when set) and
/// opens its reading end, before the VMM opens it to write (without blocking, which
/// fails on a pipe nobody reads).
fn metrics_pipe(
    path: &Path,
    owner: Option<(u32, u32)>,
) -> Result<tokio::net::unix::pipe::Receiver, VmmError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(VmmError::io("create", parent))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(VmmError::io("remove the stale metrics pipe", path)(e));
        }
        _ => {}
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| VmmError::io("make the metrics pipe", path)(e.into()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(VmmError::io("chown", path))?;
    }
    // Opened for writing too, the pipe never reports an end between two VMM writes.
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(VmmError::io("open the metrics pipe", path))
}

/// Logs each metrics document (one JSON object per line) and keeps the last.
fn forward_metrics(
    pipe: tokio::net::unix::pipe::Receiver,
    latest: Metrics,
    span: tracing::Span,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(METRICS_MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                match serde_json::from_slice::<serde_json::Value>(&line) {
                    Ok(document) => {
                        tracing::debug!(target: METRICS_TARGET, metrics = %document, "metrics");
                        if let Ok(mut latest) = latest.lock() {
                            *latest = Some(document);
                        }
                    }
                    Err(e) => tracing::debug!(target: METRICS_TARGET, "unreadable metrics: {}", error_chain(&e)),
                }
            }
        }
        .instrument(span),
    )
}

/// Forwards each line of `stream` into `tracing` (in `span`) and keeps the last ones.
fn forward(
    stream: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    tail: Tail,
    span: tracing::Span,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                tracing::debug!(stream = name, "{text}");
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == OUTPUT_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(text);
                }
            }
        }
        .instrument(span),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_args_follow_the_options() {
        let mut options = VmmOptions::new("cl-1", "/s/api.sock");
        options.log_path = Some("/s/fc.log".into());
        options.log_level = Some(LogLevel::Debug);
        options.metrics_path = Some("/s/metrics".into());
        let line = |args: Vec<OsString>| {
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            line(options.firecracker_args(true)),
            "--api-sock /s/api.sock --id cl-1 --log-path /s/fc.log --level Debug --metrics-path /s/metrics"
        );
        assert!(!line(options.firecracker_args(false)).contains("--id"));
    }

    #[test]
    fn ids_suit_the_jailer() {
        assert!(check_id("cl-0a1b2c3d4e5f6g7h8i9j0k1l2").is_ok());
        for bad in ["", "a/b", "a_b", "a.b", &"x".repeat(65)] {
            assert!(
                matches!(check_id(bad), Err(VmmError::InvalidId(_))),
                "{bad}"
            );
        }
    }
}
