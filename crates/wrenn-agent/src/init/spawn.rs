//! Starting a capsule: the agent's side (one `posix_spawn` of the init program) and the
//! init program's outer process, which enters the capsule's namespaces, forks the
//! capsule's PID 1 and mirrors its exit, like `unshare --fork --kill-child`.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::thread::UnshareFlags;

use super::userns;
use super::{Context, INIT_ARG, InitError};

/// The namespaces the outer process unshares (after joining the capsule's network
/// namespace). Its next child is PID 1 of the new pid namespace.
const NEW_NAMESPACES: UnshareFlags = UnshareFlags::NEWNS
    .union(UnshareFlags::NEWUTS)
    .union(UnshareFlags::NEWIPC)
    .union(UnshareFlags::NEWPID);

/// The command that starts an init program, which waits for its capsule on stdin
/// ([`go`](super::go)): `program INIT_ARG` with a clean environment. Nothing runs
/// between `fork` and `exec`, so the standard library spawns it with `posix_spawn` (no
/// copy of the agent's page tables).
pub(crate) fn init_command(program: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.arg(INIT_ARG).env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    command
}

/// Joins the network namespace at `netns` (`/run/netns/…`) and unshares the mount, UTS,
/// IPC and pid namespaces — all owned by the host's initial user namespace; the
/// capsule's own user namespace is made and joined later, by PID 1. The caller must be
/// single-threaded.
#[allow(unsafe_code)]
pub(super) fn enter_namespaces(netns: &Path) -> Result<(), InitError> {
    let fd = std::fs::File::open(netns)
        .context(|| format!("open the network namespace {}", netns.display()))?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&fd),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .context(|| format!("join the network namespace {}", netns.display()))?;
    // SAFETY: the init step is single-threaded, so no thread can observe an unshared
    // descriptor table (and `CLONE_FILES` is not among the flags anyway).
    unsafe { rustix::thread::unshare_unsafe(NEW_NAMESPACES) }
        .context(|| "unshare the mount, UTS, IPC and pid namespaces".into())
}

/// Unshares the cgroup namespace of PID 1, once it has joined the capsule's cgroups:
/// they become its root, and `/proc/*/cgroup` shows `/` instead of the host's
/// hierarchy. Owned by the host's initial user namespace, like the others. The
/// caller must be single-threaded.
#[allow(unsafe_code)]
pub(super) fn enter_cgroup_namespace() -> Result<(), InitError> {
    // SAFETY: as in `enter_namespaces`: single-threaded, no `CLONE_FILES`.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWCGROUP) }
        .context(|| "unshare the cgroup namespace".into())
}

/// The outer process of the init program: forks the capsule's PID 1 (which returns
/// `Ok(())` from here and goes on with the set-up) and, in the parent, waits for it and
/// exits with its status (`128 + signal` if it was killed). PID 1 gets `SIGKILL` if
/// this process dies — which it does, with status 1, if `lease` (a warm capsule's)
/// closes before the agent claims the capsule ([`claim`](super::claim)).
pub(super) fn fork_pid1(lease: Option<OwnedFd>) -> Result<(), InitError> {
    let pid = userns::fork().map_err(|e| InitError::new("fork PID 1", e))?;
    if pid == 0 {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .context(|| "set the parent-death signal".into())?;
        drop(lease);
        return Ok(());
    }
    if let Some(lease) = lease {
        // No thread: after `unshare(CLONE_NEWPID)` this process cannot start one.
        watch_lease(&lease, pid);
    }
    let code = match userns::reap(pid) {
        Some(status) => {
            if let Some(code) = status.exit_status() {
                code
            } else if let Some(signal) = status.terminating_signal() {
                128 + signal
            } else {
                1
            }
        }
        None => 1,
    };
    userns::exit_now(code)
}

/// Waits on a warm capsule's lease while PID 1 (`pid`) runs: the claim byte, or PID 1
/// exiting, ends the watch; the pipe closing first (the agent is gone) ends this
/// process, and `SIGKILL` reaches PID 1.
#[allow(unsafe_code)]
fn watch_lease(lease: &OwnedFd, pid: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: `pidfd_open` takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    let mut fds = [
        libc::pollfd {
            fd: lease.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let count = if pidfd >= 0 { 2 } else { 1 };
    loop {
        // SAFETY: `fds` holds `count` valid entries for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, -1) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if count == 2 && fds[1].revents != 0 {
            break; // PID 1 exited: the caller reaps it.
        }
        if fds[0].revents != 0 {
            let mut byte = [0u8; 1];
            match rustix::io::read(lease, &mut byte) {
                Ok(1) if byte[0] == super::CLAIMED => break,
                Err(rustix::io::Errno::INTR) => continue,
                // End of file, an unexpected byte or an error: nobody holds this capsule.
                _ => userns::exit_now(1),
            }
        }
    }
    if pidfd >= 0 {
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(pidfd) };
    }
}
