//! Starting a child process: command line, environment, working directory, user,
//! session and standard I/O.
//!
//! # How
//!
//! The child is started with `clone(CLONE_VM | CLONE_VFORK)`, as glibc's
//! `posix_spawn` does: it runs in envd's memory until its `execve`, while the calling
//! thread waits. Nothing of envd's address space is copied, and envd's pages are not
//! made copy-on-write. A `fork` (what `std::process::Command` does once a pre-exec hook
//! is set, and envd needs one for the session, terminal and user) copies envd's page
//! tables and makes envd's next writes fault; in a guest that QEMU emulates, that cost
//! more than the rest of an exec.
//!
//! Everything the child needs — the program's candidate paths, `argv`, `envp`, the
//! working directory, the credentials, the descriptors of its standard I/O — is built
//! by the parent before the clone. The child only issues system calls on that data:
//! it allocates nothing, takes no lock and returns nothing but a status. It starts
//! with every signal blocked (the parent blocks them around the clone) and resets
//! every disposition to the default before unblocking them, so no handler of envd can
//! run on the child's stack.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::pipe::PipeFlags;
use rustix::process::{Gid, Pid, Uid, WaitOptions};
use tokio::sync::oneshot;

use crate::reaper::{self, ExitInfo};
use crate::users::User;

/// `PATH` searched when the child's environment has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The child's stack until `execve` (it runs a few system calls in small frames).
const CHILD_STACK: usize = 64 * 1024;

/// How the child's standard I/O is connected.
#[derive(Debug)]
pub(crate) enum ChildIo {
    /// stdout and stderr are pipes; stdin is a pipe if `stdin`, else `/dev/null`.
    Pipes {
        /// Whether stdin is a pipe.
        stdin: bool,
    },
    /// stdin, stdout and stderr are this PTY slave, which becomes the controlling
    /// terminal of the child's new session.
    Pty {
        /// The slave side of the terminal.
        slave: OwnedFd,
    },
}

/// Everything needed to start a child.
#[derive(Debug)]
pub(crate) struct SpawnSpec {
    /// Program name (looked up in the child's `PATH`) or path.
    pub program: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// The complete environment (nothing is inherited from envd).
    pub env: BTreeMap<String, String>,
    /// Working directory (already checked to exist).
    pub cwd: PathBuf,
    /// The user to run as, with its groups.
    pub user: User,
    /// Standard I/O.
    pub io: ChildIo,
}

/// A started child.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// Its pid, which is also its process group and session id.
    pub pid: u32,
    /// Write end of its stdin pipe, if any.
    pub stdin: Option<OwnedFd>,
    /// Read end of its stdout pipe, if any.
    pub stdout: Option<OwnedFd>,
    /// Read end of its stderr pipe, if any.
    pub stderr: Option<OwnedFd>,
    /// Resolves when the reaper has collected its exit status.
    pub exit: oneshot::Receiver<ExitInfo>,
}

/// Starts the child described by `spec` and registers it with the reaper. Blocking
/// (the calling thread waits until the child has called `execve`).
pub(crate) fn spawn(spec: SpawnSpec) -> io::Result<Spawned> {
    let (stdio, parent_ends, controlling_tty) = stdio(spec.io)?;
    let euid = rustix::process::geteuid();
    let target = Uid::from_raw(spec.user.uid);
    let credentials = (euid.is_root() || euid != target).then(|| Credentials {
        uid: target,
        gid: Gid::from_raw(spec.user.gid),
        groups: spec.user.groups.iter().map(|g| Gid::from_raw(*g)).collect(),
    });
    let path = spec.env.get("PATH").map_or(FALLBACK_PATH, String::as_str);
    let plan = ExecPlan::new(
        &spec.program,
        path,
        &spec.args,
        &spec.env,
        &spec.cwd,
        [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ],
        controlling_tty,
        credentials,
    )?;
    let (pid, exit) = reaper::spawn(|| plan.start())?;
    // The child has its copies now; closing envd's copies of the PTY slave lets the
    // master read EIO once the child's session is gone.
    drop(stdio);
    let [stdin, stdout, stderr] = parent_ends;
    Ok(Spawned {
        pid: pid.as_raw_nonzero().get().unsigned_abs(),
        stdin,
        stdout,
        stderr,
        exit,
    })
}

/// The child's standard I/O descriptors (all ≥ 3, close-on-exec), envd's ends of its
/// pipes, and whether the child takes a controlling terminal.
type Stdio = ([OwnedFd; 3], [Option<OwnedFd>; 3], bool);

fn stdio(io: ChildIo) -> io::Result<Stdio> {
    match io {
        ChildIo::Pipes { stdin } => {
            let (stdin_child, stdin_parent) = if stdin {
                let (read, write) = pipe()?;
                (read, Some(write))
            } else {
                let null =
                    rustix::fs::open(c"/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
                (above_stdio(null)?, None)
            };
            let (stdout_parent, stdout_child) = pipe()?;
            let (stderr_parent, stderr_child) = pipe()?;
            Ok((
                [stdin_child, stdout_child, stderr_child],
                [stdin_parent, Some(stdout_parent), Some(stderr_parent)],
                false,
            ))
        }
        ChildIo::Pty { slave } => {
            let slave = above_stdio(slave)?;
            Ok((
                [slave.try_clone()?, slave.try_clone()?, slave],
                [None, None, None],
                true,
            ))
        }
    }
}

/// A close-on-exec pipe `(read, write)` whose ends are both ≥ 3.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// `fd` itself, or a close-on-exec duplicate ≥ 3 if it is 0, 1 or 2 (envd may run
/// with its standard descriptors closed): the child's `dup2`s onto 0–2 must never
/// overwrite a descriptor it has yet to duplicate.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// The user the child becomes.
#[derive(Debug)]
struct Credentials {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Everything the child does, prepared by the parent. The raw pointers in `argv` and
/// `envp` point into the `CString`s held beside them.
#[derive(Debug)]
struct ExecPlan {
    /// Paths to `execve`, in `PATH` order (one if the program names a path).
    candidates: Vec<CString>,
    /// Owns the strings `argv` points into.
    _argv_strings: Vec<CString>,
    argv: Vec<*const c_char>,
    /// Owns the strings `envp` points into.
    _envp_strings: Vec<CString>,
    envp: Vec<*const c_char>,
    cwd: CString,
    stdio: [RawFd; 3],
    controlling_tty: bool,
    credentials: Option<Credentials>,
    /// The `errno` the child failed with (0: it reached `execve`'s success).
    error: AtomicI32,
}

impl ExecPlan {
    #[allow(clippy::too_many_arguments)]
    fn new(
        program: &str,
        path: &str,
        args: &[String],
        env: &BTreeMap<String, String>,
        cwd: &Path,
        stdio: [RawFd; 3],
        controlling_tty: bool,
        credentials: Option<Credentials>,
    ) -> io::Result<Self> {
        let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in the command");
        let candidates = candidates(program, path)
            .into_iter()
            .map(|p| CString::new(p.into_os_string().into_encoded_bytes()).map_err(nul))
            .collect::<io::Result<Vec<_>>>()?;
        let argv_strings = std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .map(|a| CString::new(a).map_err(nul))
            .collect::<io::Result<Vec<_>>>()?;
        let envp_strings = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(nul))
            .collect::<io::Result<Vec<_>>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Self {
            candidates,
            argv: pointers(&argv_strings),
            _argv_strings: argv_strings,
            envp: pointers(&envp_strings),
            _envp_strings: envp_strings,
            cwd: CString::new(cwd.as_os_str().as_bytes()).map_err(nul)?,
            stdio,
            controlling_tty,
            credentials,
            error: AtomicI32::new(0),
        })
    }

    /// Clones the child and waits until it has called `execve` (or failed). Returns
    /// its pid; on failure the child is reaped and its `errno` returned.
    #[allow(unsafe_code)]
    fn start(&self) -> io::Result<Pid> {
        let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK);
        // The top of the stack, 16-byte aligned as the ABI wants. Never read by the
        // parent; the child writes into the reserved (uninitialised) capacity.
        let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !0xf;
        let blocked = SignalMask::block_all()?;
        // SAFETY: `child_main` receives a pointer to `self`, which outlives the child's
        // use of it: with CLONE_VFORK this thread is suspended until the child has
        // called `execve` (which replaces its memory) or exited. The child runs on
        // `stack` (CHILD_STACK bytes, owned here until after it is done) and only
        // issues system calls (see `run_child`). Every signal is blocked across the
        // clone, so no handler of envd runs on the child's stack before it has reset
        // every disposition.
        let pid = unsafe {
            libc::clone(
                child_main,
                top as *mut c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(self).cast_mut().cast(),
            )
        };
        let clone_error = io::Error::last_os_error();
        drop(blocked);
        drop(stack);
        if pid < 0 {
            return Err(clone_error);
        }
        let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("clone returned pid 0"))?;
        match self.error.load(Ordering::SeqCst) {
            0 => Ok(pid),
            errno => {
                // It exited without running the program: reap it here (the caller
                // holds the reaper's gate, so nothing else waits for it).
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }

    /// The child's work until `execve`. Returns the `errno` that stopped it.
    #[allow(unsafe_code)]
    fn run_child(&self) -> i32 {
        let step = |result: rustix::io::Result<()>| result.map_err(|e| e.raw_os_error());
        let prepared = (|| -> Result<(), i32> {
            reset_signal_dispositions();
            // Its own session and process group, so signals reach everything it spawns.
            step(rustix::process::setsid().map(drop))?;
            for (target, &fd) in (0..).zip(self.stdio.iter()) {
                // dup2 onto 0–2 clears close-on-exec there (every `fd` is ≥ 3).
                // SAFETY: a plain dup2 of descriptors the parent keeps open until the
                // child has exec'd.
                if unsafe { libc::dup2(fd, target) } < 0 {
                    return Err(errno());
                }
            }
            if self.controlling_tty {
                // stdin is the PTY slave now.
                step(rustix::process::ioctl_tiocsctty(rustix::stdio::stdin()))?;
            }
            // Prefer the sandbox's processes over envd when memory runs out (best
            // effort).
            if let Ok(fd) = rustix::fs::open(
                c"/proc/self/oom_score_adj",
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                let _ = rustix::io::write(&fd, b"100");
            }
            if let Some(c) = &self.credentials {
                // Groups first, then gid, then uid: each later step drops the privilege
                // the earlier ones need. Thread-level calls are raw system calls (libc's
                // process-wide ones would signal envd's threads).
                step(rustix::thread::set_thread_groups(&c.groups))?;
                step(rustix::thread::set_thread_res_gid(c.gid, c.gid, c.gid))?;
                step(rustix::thread::set_thread_res_uid(c.uid, c.uid, c.uid))?;
            }
            step(rustix::process::chdir(self.cwd.as_c_str()))?;
            SignalMask::unblock_all();
            Ok(())
        })();
        if let Err(errno) = prepared {
            return errno;
        }
        // execvp's search: a candidate that does not exist or may not be run is
        // skipped; EACCES is reported if nothing ran and one was denied.
        let mut denied = false;
        let mut last = libc::ENOENT;
        for candidate in &self.candidates {
            // SAFETY: the path, argv and envp are NUL-terminated strings and
            // NULL-terminated pointer arrays owned by `self`.
            unsafe {
                libc::execve(candidate.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
            }
            last = errno();
            match last {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => return last,
            }
        }
        if denied { libc::EACCES } else { last }
    }
}

/// The calling thread's `errno` (reads it without allocating).
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child's entry point (on its own stack, in envd's memory).
#[allow(unsafe_code)]
extern "C" fn child_main(plan: *mut c_void) -> c_int {
    // SAFETY: `plan` is the `&ExecPlan` passed by `ExecPlan::start`, alive until the
    // child has exec'd or exited (CLONE_VFORK).
    let plan = unsafe { &*plan.cast::<ExecPlan>() };
    let errno = plan.run_child();
    plan.error.store(errno.max(1), Ordering::SeqCst);
    // Returning makes glibc's clone wrapper call the `exit` system call.
    127
}

/// Every signal blocked on the calling thread until dropped (the previous mask is
/// restored).
struct SignalMask {
    previous: libc::sigset_t,
}

impl SignalMask {
    #[allow(unsafe_code)]
    fn block_all() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask only write
        // the sets they are given.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            match libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous) {
                0 => Ok(Self { previous }),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }

    /// In the child: no signal blocked (what a new process expects).
    #[allow(unsafe_code)]
    fn unblock_all() {
        let empty = [0u64; 1];
        // SAFETY: a raw rt_sigprocmask with an 8-byte empty set; touches no memory
        // but the set.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                empty.as_ptr(),
                std::ptr::null_mut::<u64>(),
                std::mem::size_of_val(&empty),
            );
        }
    }
}

impl Drop for SignalMask {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `block_all`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

/// In the child: every signal's disposition back to the default (handled signals
/// would run envd's handlers in the child; ignored ones — SIGPIPE in a Rust program —
/// would stay ignored in the program), with raw system calls.
#[allow(unsafe_code)]
fn reset_signal_dispositions() {
    // The kernel's `struct sigaction` on x86_64 and aarch64: handler, flags,
    // restorer, mask.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a raw rt_sigaction installing the default disposition; it reads only
        // `default` and writes nothing.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
    }
}

/// The paths `execve` tries for `program`: itself if it names a path (contains a
/// `/`), else each directory of `path` joined with it (an empty entry is the working
/// directory).
fn candidates(program: &str, path: &str) -> Vec<PathBuf> {
    if program.contains('/') {
        return vec![PathBuf::from(program)];
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            Path::new(OsStr::new(dir)).join(program)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_with_a_slash_is_tried_as_it_is() {
        assert_eq!(
            candidates("./run.sh", "/bin"),
            vec![PathBuf::from("./run.sh")]
        );
        assert_eq!(
            candidates("/bin/true", "/usr/bin"),
            vec![PathBuf::from("/bin/true")]
        );
    }

    #[test]
    fn a_bare_name_is_looked_up_in_path_order() {
        assert_eq!(
            candidates("true", "/usr/local/bin::/bin"),
            vec![
                PathBuf::from("/usr/local/bin/true"),
                PathBuf::from("./true"),
                PathBuf::from("/bin/true"),
            ]
        );
    }
}
