//! Starting a child process: command line, environment, working directory, user,
//! session and standard I/O.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rustix::fs::{Mode, OFlags};
use rustix::process::{Gid, Uid};
use tokio::sync::oneshot;

use crate::reaper::{self, ExitInfo};
use crate::users::User;

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

/// What the child does between `fork` and `exec`.
#[derive(Debug, Clone)]
struct ChildSetup {
    controlling_tty: bool,
    credentials: Option<(Uid, Gid, Vec<Gid>)>,
}

impl ChildSetup {
    /// Runs in the forked child: raw system calls only, no allocation, no locks.
    fn apply(&self) -> io::Result<()> {
        // Its own session and process group, so signals reach everything it spawns.
        rustix::process::setsid()?;
        if self.controlling_tty {
            // stdin is already the PTY slave (std sets up stdio before this hook).
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
        }
        // Prefer the sandbox's processes over envd when memory runs out (best effort).
        if let Ok(fd) = rustix::fs::open(
            c"/proc/self/oom_score_adj",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = rustix::io::write(&fd, b"100");
        }
        if let Some((uid, gid, groups)) = &self.credentials {
            // Groups first, then gid, then uid: each later step drops the privilege the
            // earlier ones need. Every result is checked. These calls act on the calling
            // thread, which in the forked child is the only thread.
            rustix::thread::set_thread_groups(groups)?;
            rustix::thread::set_thread_res_gid(*gid, *gid, *gid)?;
            rustix::thread::set_thread_res_uid(*uid, *uid, *uid)?;
        }
        Ok(())
    }
}

/// Installs `setup` as the command's pre-exec hook.
#[allow(unsafe_code)]
fn install_setup(command: &mut Command, setup: ChildSetup) {
    // SAFETY: `pre_exec` closures run in the child after `fork`, where only
    // async-signal-safe operations are allowed. `ChildSetup::apply` only issues raw
    // system calls through rustix (setsid, ioctl, open/write/close, setgroups,
    // setresgid, setresuid) on data prepared before the fork (the group list is a
    // `Vec` built by the parent and only borrowed here); it does not allocate, lock or
    // touch any state shared with other threads of the parent.
    unsafe {
        command.pre_exec(move || setup.apply());
    }
}

/// Starts the child described by `spec` and registers it with the reaper. Blocking.
pub(crate) fn spawn(spec: SpawnSpec) -> io::Result<Spawned> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd);

    let controlling_tty = match spec.io {
        ChildIo::Pipes { stdin } => {
            command
                .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            false
        }
        ChildIo::Pty { slave } => {
            command
                .stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            true
        }
    };

    let euid = rustix::process::geteuid();
    let target = Uid::from_raw(spec.user.uid);
    let credentials = (euid.is_root() || euid != target).then(|| {
        (
            target,
            Gid::from_raw(spec.user.gid),
            spec.user.groups.iter().map(|g| Gid::from_raw(*g)).collect(),
        )
    });
    install_setup(
        &mut command,
        ChildSetup {
            controlling_tty,
            credentials,
        },
    );

    let (mut child, exit) = reaper::spawn(&mut command)?;
    // Dropping the command closes envd's copies of the PTY slave, so the master reads
    // EIO once the child's session is gone.
    drop(command);
    Ok(Spawned {
        pid: child.id(),
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        exit,
    })
}
