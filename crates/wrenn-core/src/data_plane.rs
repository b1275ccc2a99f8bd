//! The control plane's data plane: what it does inside a running capsule on the
//! capsule's host — run commands, follow and signal processes, drive terminals, move
//! files, read metrics.
//!
//! [`DataPlane`] is the seam between the REST handlers and the host agents: handlers
//! speak these domain types, an implementation speaks the agents' wire protocol
//! (`wrenn-cpserver`'s gRPC pool over `hostagent.v1`). Failures are
//! [`HostCallError`]s, classified like every other host call; their messages name the
//! operation and carry what the agent said, never the host.
//!
//! Streams (process output, terminal output, file contents) end when the agent ends
//! them; dropping one cancels the call on the agent (for an exec stream that kills the
//! process, for an attached process or terminal it only detaches).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::agents::HostCallError;
use crate::model::Sandbox;

/// A stream of events (or file chunks) from a host; an `Err` ends it.
pub type HostStream<T> = BoxStream<'static, Result<T, HostCallError>>;

/// A command to run in a capsule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// The program (an absolute path or a name looked up in `PATH`).
    pub cmd: String,
    /// Its arguments, not including the program.
    pub args: Vec<String>,
    /// Environment variables added to the capsule's defaults.
    pub envs: BTreeMap<String, String>,
    /// Working directory (default: the user's home).
    pub cwd: Option<String>,
}

/// The outcome of a foreground command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output (capped by the data plane).
    pub stdout: Bytes,
    /// Standard error (capped by the data plane).
    pub stderr: Bytes,
    /// Exit status; -1 when a signal ended the process.
    pub exit_code: i32,
    /// Whether a stream exceeded the cap and its excess was dropped.
    pub truncated: bool,
}

/// What happens to a streamed or attached process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// It runs (first event).
    Started {
        /// Its pid inside the capsule.
        pid: u32,
        /// Its tag.
        tag: String,
    },
    /// Bytes it wrote to standard output.
    Stdout(Bytes),
    /// Bytes it wrote to standard error.
    Stderr(Bytes),
    /// It ended (last event).
    Ended {
        /// Exit status; -1 when a signal ended it.
        exit_code: i32,
        /// Why it could not run or was cut short, if so.
        error: Option<String>,
    },
}

/// A background process just started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedProcess {
    /// Its pid inside the capsule.
    pub pid: u32,
    /// Its tag.
    pub tag: String,
}

/// A process the capsule's agent tracks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Pid inside the capsule.
    pub pid: u32,
    /// Tag (background processes and terminals).
    pub tag: String,
    /// The program.
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The environment it was given.
    pub envs: BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: String,
    /// Whether it runs on a terminal.
    pub pty: bool,
}

/// Which process a call is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessRef {
    /// By pid.
    Pid(u32),
    /// By tag.
    Tag(String),
}

/// A signal sent to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGHUP`.
    Hangup,
    /// `SIGINT`.
    Interrupt,
    /// `SIGKILL`.
    Kill,
    /// `SIGTERM`.
    Terminate,
}

/// The kind of a file-system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A socket, FIFO or device.
    Other,
}

/// A file-system entry inside a capsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Last path component.
    pub name: String,
    /// Absolute path inside the capsule.
    pub path: String,
    /// Its kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// `ls -l` style permissions.
    pub permissions: String,
    /// Owner user name.
    pub owner: String,
    /// Owner group name.
    pub group: String,
    /// Last modification, Unix seconds.
    pub modified_at: i64,
    /// Target of a symlink.
    pub symlink_target: Option<String>,
}

/// A file being read out of a capsule.
pub struct FileRead {
    /// Its size, when the agent knows it up front.
    pub total_size: Option<u64>,
    /// Its contents, chunk by chunk.
    pub chunks: HostStream<Bytes>,
}

impl std::fmt::Debug for FileRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRead")
            .field("total_size", &self.total_size)
            .finish_non_exhaustive()
    }
}

/// A terminal to start in a capsule, or to attach to again (same tag).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtySpec {
    /// The terminal's tag; a running terminal with this tag is attached to.
    pub tag: String,
    /// The program and its environment (empty `cmd`: the user's login shell).
    pub command: Command,
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// The user it runs as (default: the capsule's default user).
    pub user: Option<String>,
}

/// What happens on a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// The terminal's process runs (first event).
    Started {
        /// Its pid inside the capsule.
        pid: u32,
        /// The terminal's tag.
        tag: String,
    },
    /// Output.
    Output(Bytes),
    /// The process ended (last event).
    Exited {
        /// Exit status; -1 when a signal ended it.
        exit_code: i32,
        /// Why it could not run, if so.
        error: Option<String>,
    },
}

/// One resource sample of a running capsule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSample {
    /// When, Unix seconds.
    pub timestamp_unix: i64,
    /// CPU use in percent of one core.
    pub cpu_pct: f64,
    /// Memory in use, bytes.
    pub mem_bytes: u64,
    /// Disk in use, bytes.
    pub disk_bytes: u64,
}

/// Calls inside running capsules, on their hosts. See the [module docs](self).
#[async_trait::async_trait]
pub trait DataPlane: Send + Sync + std::fmt::Debug {
    /// Checks that `capsule`'s host can be called (a connection to it is made or
    /// reused), so a caller can answer "host unavailable" before reading a body.
    async fn connect(&self, capsule: &Sandbox) -> Result<(), HostCallError>;

    /// Runs `command` to completion (at most `timeout`) and returns its output.
    async fn exec(
        &self,
        capsule: &Sandbox,
        command: Command,
        timeout: Duration,
    ) -> Result<ExecOutput, HostCallError>;

    /// Runs `command` and streams what happens to it (the process is killed when
    /// the stream is dropped, or after `timeout` if given).
    async fn exec_stream(
        &self,
        capsule: &Sandbox,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<HostStream<ProcessEvent>, HostCallError>;

    /// Starts `command` in the background under `tag`.
    async fn start_background(
        &self,
        capsule: &Sandbox,
        command: Command,
        tag: String,
    ) -> Result<StartedProcess, HostCallError>;

    /// The processes the capsule's agent tracks.
    async fn list_processes(&self, capsule: &Sandbox) -> Result<Vec<ProcessInfo>, HostCallError>;

    /// Sends `signal` to a process.
    async fn kill_process(
        &self,
        capsule: &Sandbox,
        process: ProcessRef,
        signal: Signal,
    ) -> Result<(), HostCallError>;

    /// Follows a running process's output, starting with the agent's buffer of its
    /// recent output (dropping the stream only detaches).
    async fn connect_process(
        &self,
        capsule: &Sandbox,
        process: ProcessRef,
    ) -> Result<HostStream<ProcessEvent>, HostCallError>;

    /// Writes `chunks` to the file `path` (parents are made) and returns its size.
    /// Dropping the call before `chunks` ends abandons the write.
    async fn write_file(
        &self,
        capsule: &Sandbox,
        path: String,
        chunks: BoxStream<'static, Bytes>,
    ) -> Result<u64, HostCallError>;

    /// Opens the file `path` for reading.
    async fn read_file(&self, capsule: &Sandbox, path: String) -> Result<FileRead, HostCallError>;

    /// The entries under the directory `path`, `depth` levels deep, parents first.
    async fn list_dir(
        &self,
        capsule: &Sandbox,
        path: String,
        depth: u32,
    ) -> Result<Vec<FileEntry>, HostCallError>;

    /// Makes the directory `path` (and its parents).
    async fn make_dir(&self, capsule: &Sandbox, path: String) -> Result<FileEntry, HostCallError>;

    /// Removes `path` (a directory with everything in it).
    async fn remove_path(&self, capsule: &Sandbox, path: String) -> Result<(), HostCallError>;

    /// Starts (or attaches to) a terminal and streams its output.
    async fn pty_attach(
        &self,
        capsule: &Sandbox,
        spec: PtySpec,
    ) -> Result<HostStream<PtyEvent>, HostCallError>;

    /// Types `data` into the terminal `tag`.
    async fn pty_input(
        &self,
        capsule: &Sandbox,
        tag: &str,
        data: Bytes,
    ) -> Result<(), HostCallError>;

    /// Resizes the terminal `tag`.
    async fn pty_resize(
        &self,
        capsule: &Sandbox,
        tag: &str,
        cols: u32,
        rows: u32,
    ) -> Result<(), HostCallError>;

    /// Kills the terminal `tag`'s process.
    async fn pty_kill(&self, capsule: &Sandbox, tag: &str) -> Result<(), HostCallError>;

    /// The capsule's resource samples over `range` (`5m`, `10m`, `1h`, `2h`, `6h`,
    /// `12h` or `24h`), oldest first.
    async fn metrics(
        &self,
        capsule: &Sandbox,
        range: &str,
    ) -> Result<Vec<MetricSample>, HostCallError>;
}
