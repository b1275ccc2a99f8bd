//! Starting a capsule: the agent's side (one `fork` + `exec` of the init program into
//! fresh namespaces) and the init program's outer process, which forks the capsule's
//! PID 1 and mirrors its exit, like `unshare --fork --kill-child`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::thread::UnshareFlags;

use super::userns;
use super::{INIT_ARG, InitSpec};

/// The namespaces the init program is started in (besides joining the capsule's network
/// namespace). The next child of the init program is PID 1 of the new pid namespace.
const NEW_NAMESPACES: UnshareFlags = UnshareFlags::NEWNS
    .union(UnshareFlags::NEWUTS)
    .union(UnshareFlags::NEWIPC)
    .union(UnshareFlags::NEWPID);

/// The command that starts a capsule: `program INIT_ARG '<spec as JSON>'`, whose child
/// process, between `fork` and `exec`, joins the network namespace `netns` (a file
/// descriptor of `/run/netns/…`) and unshares the mount, UTS, IPC and pid namespaces.
/// All of them are owned by the host's initial user namespace; the capsule's own user
/// namespace is made and joined later by the init step.
pub(crate) fn init_command(
    program: &Path,
    spec: &InitSpec,
    netns: OwnedFd,
) -> Result<tokio::process::Command, serde_json::Error> {
    let spec_json = serde_json::to_string(spec)?;
    let mut command = tokio::process::Command::new(program);
    command
        .arg(INIT_ARG)
        .arg(OsStr::new(&spec_json))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    enter_namespaces_before_exec(&mut command, netns);
    Ok(command)
}

#[allow(unsafe_code)]
fn enter_namespaces_before_exec(command: &mut tokio::process::Command, netns: OwnedFd) {
    let hook = move || {
        rustix::thread::move_into_link_name_space(
            netns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        // SAFETY: the forked child is single-threaded, so no thread can observe an
        // unshared descriptor table (and `CLONE_FILES` is not among the flags anyway).
        unsafe { rustix::thread::unshare_unsafe(NEW_NAMESPACES) }?;
        Ok(())
    };
    // SAFETY: the hook only makes two system calls (`setns`, `unshare`), which are
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(hook);
    }
}

/// The outer process of the init program: forks the capsule's PID 1 (which returns
/// `Ok(())` from here and goes on with the set-up) and, in the parent, waits for it and
/// exits with its status (`128 + signal` if it was killed). PID 1 gets `SIGKILL` if
/// this process dies.
pub(super) fn fork_pid1() -> Result<(), super::InitError> {
    use super::Context;
    let pid = userns::fork().map_err(|e| super::InitError::new("fork PID 1", e))?;
    if pid == 0 {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .context(|| "set the parent-death signal".into())?;
        return Ok(());
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
