//! The sandbox init step of the process runtime: what makes a capsule a boundary.
//!
//! [`ProcessRuntime`](crate::runtime::process::ProcessRuntime) starts every capsule with
//! an init program (the agent binary) spawned as `<program> __wrenn-sandbox-init`
//! ([`spawn`]) ahead of time, at idle priority: a few wait, ready, for capsules to come.
//! [`main_if_init`] (which every binary embedding the agent calls first thing in
//! `main`) recognises the hidden argument and, instead of returning:
//!
//! 0. waits for the go-ahead on stdin: the capsule's specification and its
//!    `resolv.conf`, sent once the capsule's network namespace and cgroups exist; then
//!    returns to normal priority and sends its output to the capsule's `envd.log`. A
//!    closed pipe without it means "give up" (the agent stopped). A capsule booted
//!    ahead of time (a warm capsule) keeps the pipe as its *lease*: until the agent
//!    claims it (`claim`), the outer process exits — and so the whole capsule dies —
//!    when the pipe closes, so warm capsules never outlive their agent;
//! 1. joins the capsule's network namespace and unshares the mount, UTS, IPC and pid
//!    namespaces — all owned by the host's initial user namespace, so nothing inside the
//!    capsule can ever reconfigure them; forks PID 1 of the new pid namespace and, in the
//!    outer process, waits for it and exits with its status (`unshare --fork
//!    --kill-child`: PID 1 gets `SIGKILL` if the outer process dies);
//! 2. as host root in PID 1: joins the capsule's cgroups and unshares a cgroup
//!    namespace rooted there (no host cgroup path shows); makes all mounts private;
//!    sets `net.ipv4.ping_group_range` of the capsule's network namespace to the
//!    capsule's gids (unprivileged `ping`);
//! 3. creates the capsule's user namespace ([`userns`]): capsule ids `0..65536` are the
//!    host ids of the capsule's range ([`IdMap`]);
//! 4. binds envd's listening socket at the host path `sandboxes/{id}/run/envd.sock`
//!    (a host-root directory the capsule never sees) and opens the envd binary `O_PATH`;
//! 5. builds the root filesystem ([`mounts`]): every overlay layer (template layers,
//!    the base image, the upper and work directories) is an idmapped clone attached in a
//!    private staging tmpfs under a short relative name, so files on disk stay owned by
//!    capsule ids and no host path shows in `/proc/self/mountinfo`; then `/proc` (runc's
//!    masked and read-only paths), a read-only `/sys`, `/dev` (`pts`, sized `shm`) and
//!    `/run`; `/tmp` is the root filesystem's, on the capsule's sized disk;
//! 6. sets the hostname and `pivot_root`s, detaching the host's mount tree;
//! 7. joins the user namespace and becomes its root (`setgroups` stays allowed);
//! 8. reduces the bounding set to [`caps::KEPT_CAPABILITIES`] and clears the
//!    inheritable and ambient sets;
//! 9. installs the seccomp filter ([`seccomp`], no `PR_SET_NO_NEW_PRIVS`: `sudo` works);
//! 10. `execveat`s envd from its descriptor with `--listen-fd`, so envd is PID 1.
//!
//! Any failure is printed to stderr (which the runtime keeps in `sandboxes/{id}/envd.log`
//! and reports) and the process exits with status 1.

pub mod caps;
pub mod mounts;
pub mod seccomp;
pub mod spawn;
pub mod userns;

use crate::runtime::error_chain;
use std::ffi::{CString, OsString};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use self::caps::KEPT_CAPABILITIES;
pub use self::userns::IdMap;

/// The hidden first argument that turns a binary embedding the agent into the sandbox
/// init step.
pub const INIT_ARG: &str = "__wrenn-sandbox-init";

/// The file name of envd's socket in the host directory `sandboxes/{id}/run/`.
pub const ENVD_SOCKET_NAME: &str = "envd.sock";

/// What the init step failed to do, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct InitError {
    what: String,
    #[source]
    source: std::io::Error,
}

impl InitError {
    /// `what` failed because of `source`.
    pub fn new(what: impl Into<String>, source: std::io::Error) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }

    /// An invalid specification.
    fn invalid(what: &str) -> Self {
        Self::new(
            format!("invalid init specification: {what}"),
            std::io::ErrorKind::InvalidInput.into(),
        )
    }
}

/// Adds what was being done to an I/O error.
pub(crate) trait Context<T> {
    /// Wraps the error in an [`InitError`] saying `what` failed.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, InitError>;
}

impl<T, E: Into<std::io::Error>> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|e| InitError::new(what(), e.into()))
    }
}

/// Everything the init step needs, passed as JSON in the go-ahead ([`go`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct InitSpec {
    /// The hostname (the sandbox id).
    pub hostname: String,
    /// The capsule's network namespace (`/run/netns/wrenn-{id}`).
    pub netns: PathBuf,
    /// `cgroup.procs` files to join before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// The capsule's uid/gid range on the host.
    pub id_map: IdMap,
    /// Directory the overlay's `lowers` are relative to; `None` when they are absolute.
    pub lower_base: Option<PathBuf>,
    /// Overlay lower layers, topmost first.
    pub lowers: Vec<String>,
    /// Overlay upper directory (host path).
    pub upper: PathBuf,
    /// Overlay work directory (host path, in the same directory as `upper`).
    pub work: PathBuf,
    /// An empty host directory the staging tmpfs (and the root overlay in it) is
    /// mounted on, in the capsule's mount namespace only.
    pub root: PathBuf,
    /// Host path envd's listening socket is bound at (in a host-root-only directory).
    pub socket: PathBuf,
    /// The envd binary on the host.
    pub envd: PathBuf,
    /// Arguments for envd (`--listen-fd N` is added).
    pub envd_args: Vec<String>,
    /// Envd's whole environment.
    pub env: Vec<(String, String)>,
    /// Size in bytes of the `/dev/shm` tmpfs.
    pub shm_size: u64,
    /// Host file the init step's (and then envd's) output is appended to.
    pub log: PathBuf,
    /// Booted ahead of time (a warm capsule): the init step and envd stay at the idle
    /// priority of a spare; the agent gives the capsule's threads normal priority when
    /// a create claims it.
    #[serde(default)]
    pub ahead_of_time: bool,
}

/// The go-ahead's content (after the [`GO`] byte).
#[derive(Debug, Serialize, Deserialize)]
struct GoAhead {
    spec: InitSpec,
    resolv_conf: String,
}

/// The byte that opens the go-ahead message on the init step's stdin; a little-endian
/// `u32` length and that many bytes of JSON follow.
const GO: u8 = b'G';
/// The byte that tells a capsule booted ahead of time that it is claimed: it then lives
/// on even if the pipe closes ([`claim`]).
const CLAIMED: u8 = b'C';
/// Largest go-ahead accepted (the JSON is a few KiB).
const MAX_GO_AHEAD: usize = 1 << 20;

/// Gives the init step waiting on the other end of `pipe` (its stdin) the go-ahead:
/// the capsule it sets up is `spec`, whose network namespace and cgroups exist.
/// `resolv_conf` is the capsule's
/// `/etc/resolv.conf` (its DNS forwarder), written into its root filesystem at every
/// start (a file, not a bind mount: no host path shows in `/proc/self/mountinfo`, and
/// a capsule-made symlink there is replaced, never followed); empty leaves the
/// image's. Closing the pipe without this is the signal to give up. For a capsule
/// booted [`ahead_of_time`](InitSpec::ahead_of_time) the caller keeps the pipe open
/// as its lease until [`claim`]; otherwise it closes it.
pub(crate) fn go(
    pipe: &mut std::fs::File,
    spec: &InitSpec,
    resolv_conf: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec(&GoAhead {
        spec: spec.clone(),
        resolv_conf: resolv_conf.to_owned(),
    })?;
    let length = u32::try_from(json.len())
        .ok()
        .filter(|l| *l as usize <= MAX_GO_AHEAD)
        .ok_or_else(|| std::io::Error::other("the init specification is too large"))?;
    let mut message = Vec::with_capacity(json.len() + 5);
    message.push(GO);
    message.extend_from_slice(&length.to_le_bytes());
    message.extend_from_slice(&json);
    // A few KiB, far below the pipe's capacity: never blocks.
    pipe.write_all(&message)
}

/// Tells a capsule booted ahead of time, through its lease (the pipe [`go`] wrote to),
/// that it is claimed: from now on it lives on when the pipe closes (dropped here).
pub(crate) fn claim(mut lease: std::fs::File) -> std::io::Result<()> {
    std::io::Write::write_all(&mut lease, &[CLAIMED])
}

/// Waits for [`go`] on stdin, then points stdin at `/dev/null`; returns the spec, the
/// `resolv.conf` it carried (`None` when empty) and, for a capsule booted ahead of
/// time, the pipe as its lease.
fn wait_for_go() -> Result<(InitSpec, Option<String>, Option<OwnedFd>), InitError> {
    use std::io::Read;
    let called_off = || {
        InitError::new(
            "the agent called the start off",
            std::io::ErrorKind::ConnectionAborted.into(),
        )
    };
    let mut stdin = std::io::stdin().lock();
    let mut header = [0u8; 5];
    match stdin.read_exact(&mut header) {
        Ok(()) if header[0] == GO => {}
        Ok(()) => return Err(InitError::invalid("the go-ahead is malformed")),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(called_off()),
        Err(e) => return Err(InitError::new("read the go-ahead", e)),
    }
    let length = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length > MAX_GO_AHEAD {
        return Err(InitError::invalid("the go-ahead is too large"));
    }
    let mut go_ahead = vec![0u8; length];
    match stdin.read_exact(&mut go_ahead) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(called_off()),
        Err(e) => return Err(InitError::new("read the go-ahead", e)),
    }
    drop(stdin);
    let GoAhead { spec, resolv_conf } = serde_json::from_slice(&go_ahead).map_err(|e| {
        InitError::new(
            "invalid init specification",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })?;
    let lease = if spec.ahead_of_time {
        Some(
            rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3)
                .context(|| "keep the lease".into())?,
        )
    } else {
        None
    };
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .context(|| "open /dev/null".into())?;
    rustix::stdio::dup2_stdin(&null).context(|| "point stdin at /dev/null".into())?;
    Ok((spec, Some(resolv_conf).filter(|r| !r.is_empty()), lease))
}

/// Appends stdout and stderr to `log` from now on.
fn redirect_output(log: &std::path::Path) -> Result<(), InitError> {
    use rustix::fs::{Mode, OFlags};
    let file = rustix::fs::open(
        log,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .context(|| format!("open {}", log.display()))?;
    rustix::stdio::dup2_stdout(&file).context(|| "send stdout to the log".into())?;
    rustix::stdio::dup2_stderr(&file).context(|| "send stderr to the log".into())
}

/// Call this first thing in `main` of every binary that embeds the agent.
///
/// It returns at once unless the first argument is [`INIT_ARG`]; then the process is the
/// init step of a process-runtime sandbox: it sets the sandbox up and `exec`s envd, and
/// never returns (on failure it prints the reason to stderr and exits with status 1).
pub fn main_if_init() {
    let args = process_args();
    if args.get(1).map(|a| a.as_slice()) != Some(INIT_ARG.as_bytes()) {
        return;
    }
    match run() {
        Ok(never) => match never {},
        // A spare the agent no longer needs (it stopped): nothing to report.
        Err(e) if e.source.kind() == std::io::ErrorKind::ConnectionAborted => {
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("wrenn-sandbox-init: {}", error_chain(&e));
            std::process::exit(1);
        }
    }
}

/// The process arguments, read from `/proc/self/cmdline` so that this also works
/// before the Rust runtime has recorded them (a binary may call [`main_if_init`] from a
/// constructor, as the integration tests do).
fn process_args() -> Vec<Vec<u8>> {
    match fs::read("/proc/self/cmdline") {
        Ok(raw) => {
            let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
            raw.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
        }
        Err(_) => std::env::args_os().map(OsString::into_vec).collect(),
    }
}

/// What [`run`] returns on success: nothing, because it `exec`s.
enum Never {}

/// Waits for the go-ahead, performs the set-up and execs envd. Only returns on
/// failure.
fn run() -> Result<Never, InitError> {
    let filter = seccomp::program()?;
    let (spec, resolv_conf, lease) = wait_for_go()?;
    let spec = &spec;
    if !spec.ahead_of_time {
        crate::idle::restore_this_thread();
    }
    redirect_output(&spec.log)?;
    if !spec.id_map.is_valid() {
        return Err(InitError::invalid(
            "the id range is empty or includes host root",
        ));
    }
    spawn::enter_namespaces(&spec.netns)?;
    spawn::fork_pid1(lease)?;
    // PID 1 of the capsule, still host root.
    for procs in &spec.cgroup_procs {
        fs::write(procs, b"0").context(|| format!("join cgroup {}", procs.display()))?;
    }
    spawn::enter_cgroup_namespace()?;
    mounts::make_private()?;
    let first_gid = spec.id_map.host_base;
    let last_gid = first_gid + (spec.id_map.size - 1);
    fs::write(
        "/proc/sys/net/ipv4/ping_group_range",
        format!("{first_gid} {last_gid}"),
    )
    .context(|| "set net.ipv4.ping_group_range".into())?;
    let userns = userns::create(spec.id_map)?;

    let listener = std::os::unix::net::UnixListener::bind(&spec.socket)
        .context(|| format!("listen on {}", spec.socket.display()))?;
    let listener = OwnedFd::from(listener);
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty())
        .context(|| "pass the listening socket on".into())?;
    let envd = rustix::fs::open(
        &spec.envd,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .context(|| format!("open envd ({})", spec.envd.display()))?;
    let mut argv = vec!["wrenn-envd".to_owned()];
    argv.extend(spec.envd_args.iter().cloned());
    argv.push("--listen-fd".to_owned());
    argv.push(listener.as_raw_fd().to_string());
    let argv = c_strings(argv)?;
    let envp = c_strings(spec.env.iter().map(|(k, v)| format!("{k}={v}")))?;

    let root = mounts::root_filesystem(spec, userns.as_fd())?;
    if let Some(content) = &resolv_conf {
        mounts::write_resolv_conf(&root, content, spec.id_map)?;
    }
    mounts::capsule_filesystems(&root, spec)?;
    rustix::system::sethostname(spec.hostname.as_bytes()).context(|| "set the hostname".into())?;
    mounts::pivot_into(&root)?;

    userns::enter(userns.as_fd())?;
    drop(userns);
    caps::drop_to_bounding_set()?;
    seccomp::install(&filter)?;
    // Credential changes cleared it; envd must still die with the outer process.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context(|| "set the parent-death signal".into())?;
    close_others_on_exec(listener.as_raw_fd())?;
    let err = execveat(envd.as_fd(), &argv, &envp);
    Err(InitError::new(
        format!("exec envd ({})", spec.envd.display()),
        err,
    ))
}

/// Marks every descriptor but stdio and `keep` close-on-exec, so that envd inherits
/// nothing else — not even what the agent's own parent leaked to it.
#[allow(unsafe_code)]
fn close_others_on_exec(keep: i32) -> Result<(), InitError> {
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .context(|| "list /proc/self/fd".into())?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && *fd != keep)
        .collect();
    for fd in fds {
        // SAFETY: borrowed for this one `fcntl`; the listing's own descriptor, closed
        // by now, fails with EBADF, which is fine.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        match rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC) {
            Ok(()) | Err(rustix::io::Errno::BADF) => {}
            Err(e) => {
                return Err(InitError::new(
                    format!("mark descriptor {fd} close-on-exec"),
                    e.into(),
                ));
            }
        }
    }
    Ok(())
}

fn c_strings(items: impl IntoIterator<Item = String>) -> Result<Vec<CString>, InitError> {
    items
        .into_iter()
        .map(|s| CString::new(s).map_err(|_| InitError::invalid("a NUL byte in envd's command")))
        .collect()
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`; returns only on failure.
#[allow(unsafe_code)]
fn execveat(
    program: std::os::fd::BorrowedFd<'_>,
    argv: &[CString],
    envp: &[CString],
) -> std::io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: both arrays are NULL-terminated arrays of pointers to NUL-terminated
    // strings that outlive the call; the path is an empty NUL-terminated string.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            program.as_raw_fd(),
            c"".as_ptr(),
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    std::io::Error::last_os_error()
}
