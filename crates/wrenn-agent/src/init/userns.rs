//! The capsule's user namespace and the idmapped mounts that keep storage
//! capsule-relative.
//!
//! Capsule uids/gids `0..size` are host ids `host_base..host_base+size` ([`IdMap`]). The
//! namespace is made by a short-lived helper process (a user namespace needs a process to
//! be created in); the init step keeps a file descriptor of it, idmaps every overlay
//! layer with it, and joins it last.

use std::fs;
use std::io::{Read, Write};

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::CWD;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use serde::{Deserialize, Serialize};

use super::{Context, InitError};

/// How a capsule's ids map to host ids: capsule id `i` (`i < size`) is host id
/// `host_base + i`, for uids and gids alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// The host uid/gid of capsule root.
    pub host_base: u32,
    /// How many ids are mapped.
    pub size: u32,
}

impl IdMap {
    /// The host id of capsule id `inside`, if it is mapped.
    pub fn to_host(self, inside: u32) -> Option<u32> {
        (inside < self.size).then(|| self.host_base + inside)
    }

    /// The line written to `uid_map` and `gid_map`.
    pub fn map_line(self) -> String {
        format!("0 {} {}\n", self.host_base, self.size)
    }

    /// Whether the range is valid: non-empty, not touching host root, within `u32`
    /// (`u32::MAX` itself is not a valid id).
    pub fn is_valid(self) -> bool {
        self.size > 0
            && self.host_base > 0
            && u64::from(self.host_base) + u64::from(self.size) <= u64::from(u32::MAX)
    }
}

/// Creates a user namespace whose uid and gid maps are `map` and returns a file
/// descriptor of it. `setgroups` stays allowed (the maps are written by host root).
pub(super) fn create(map: IdMap) -> Result<OwnedFd, InitError> {
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
    let (ready_r, ready_w) = pipe().context(|| "create a pipe".into())?;
    let (release_r, release_w) = pipe().context(|| "create a pipe".into())?;
    let mut ready_r = fs::File::from(ready_r);
    let pid = fork().context(|| "fork the user namespace helper".into())?;
    if pid == 0 {
        drop(ready_r);
        drop(release_w);
        helper(ready_w, release_r.as_fd());
    }
    drop(ready_w);
    drop(release_r);
    let result = (|| {
        // The helper's pid as the host's /proc knows it (we are PID 1 of a new pid
        // namespace; `pid` is its number there), or "!<errno>".
        let mut report = String::new();
        ready_r
            .read_to_string(&mut report)
            .context(|| "wait for the user namespace helper".into())?;
        let host_pid: u32 = match report.strip_prefix('!') {
            Some(errno) => {
                return Err(InitError::new(
                    "create a user namespace",
                    std::io::Error::from_raw_os_error(errno.parse().unwrap_or(libc::EIO)),
                ));
            }
            None => report.parse().map_err(|_| {
                InitError::new(
                    "create a user namespace",
                    std::io::Error::other(format!("the helper reported {report:?}")),
                )
            })?,
        };
        let proc = format!("/proc/{host_pid}");
        for file in ["uid_map", "gid_map"] {
            let path = format!("{proc}/{file}");
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(map.map_line().as_bytes()))
                .context(|| format!("write {path} ({})", map.map_line().trim()))?;
        }
        let ns = fs::File::open(format!("{proc}/ns/user"))
            .context(|| "open the user namespace".into())?;
        Ok(OwnedFd::from(ns))
    })();
    // Closing the release pipe lets the helper exit.
    drop(release_w);
    reap(pid);
    result
}

/// The helper: unshares a user namespace, reports its pid in the host's `/proc` (or
/// `!<errno>`), closes `ready` and waits until the parent closes `release`. Never
/// returns.
fn helper(ready: OwnedFd, release: BorrowedFd<'_>) -> ! {
    let report = match unshare_user() {
        Ok(()) => match rustix::fs::readlink("/proc/self", Vec::new()) {
            Ok(pid) => pid.into_bytes(),
            Err(e) => format!("!{}", e.raw_os_error()).into_bytes(),
        },
        Err(e) => format!("!{}", e.raw_os_error()).into_bytes(),
    };
    let _ = rustix::io::write(&ready, &report);
    drop(ready);
    let mut buf = [0u8; 1];
    let _ = rustix::io::read(release, &mut buf);
    exit_now(0)
}

/// `unshare(CLONE_NEWUSER)`.
#[allow(unsafe_code)]
fn unshare_user() -> rustix::io::Result<()> {
    // SAFETY: `unshare_unsafe` is unsafe because of `CLONE_FILES` (threads seeing a
    // different fd table); only the user namespace is unshared here.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) }
}

/// A detached clone of the mount tree node at `path` (not its submounts), idmapped with
/// the user namespace `userns`, read-only if asked. Attach it with [`attach`].
pub(super) fn idmapped_clone(
    path: &Path,
    userns: BorrowedFd<'_>,
    read_only: bool,
) -> Result<OwnedFd, InitError> {
    let tree = rustix::mount::open_tree(
        CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .context(|| format!("clone the mount of {}", path.display()))?;
    let mut attr = MOUNT_ATTR_IDMAP;
    if read_only {
        attr |= MOUNT_ATTR_RDONLY;
    }
    mount_setattr(tree.as_fd(), attr, userns)
        .context(|| format!("idmap the mount of {}", path.display()))?;
    Ok(tree)
}

/// Attaches a detached mount (from [`idmapped_clone`]) at `target`.
pub(super) fn attach(tree: BorrowedFd<'_>, target: &Path) -> Result<(), InitError> {
    rustix::mount::move_mount(
        tree,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .context(|| format!("attach a mount at {}", target.display()))
}

/// Joins the user namespace `userns` and becomes its root (uid and gid 0, no
/// supplementary groups). The calling process must be single-threaded.
pub(super) fn enter(userns: BorrowedFd<'_>) -> Result<(), InitError> {
    rustix::thread::move_into_link_name_space(
        userns,
        Some(rustix::thread::LinkNameSpaceType::User),
    )
    .context(|| "join the capsule's user namespace".into())?;
    rustix::thread::set_thread_groups(&[]).context(|| "clear supplementary groups".into())?;
    let root_gid = rustix::process::Gid::ROOT;
    rustix::thread::set_thread_res_gid(root_gid, root_gid, root_gid)
        .context(|| "become gid 0".into())?;
    let root_uid = rustix::process::Uid::ROOT;
    rustix::thread::set_thread_res_uid(root_uid, root_uid, root_uid)
        .context(|| "become uid 0".into())
}

/// Runs `f` with filesystem uid and gid `id` (host root otherwise) and the full
/// effective capability set (changing the fsuid away from 0 clears the file-system
/// capabilities, which are raised again), then returns to fsuid/fsgid 0.
pub(super) fn as_fs_ids<T>(
    id: u32,
    f: impl FnOnce() -> Result<T, InitError>,
) -> Result<T, InitError> {
    set_fs_ids(id);
    let raised = rustix::thread::capabilities(None).and_then(|caps| {
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: caps.permitted,
                ..caps
            },
        )
    });
    let result = raised
        .context(|| "keep capabilities with another fsuid".into())
        .and_then(|()| f());
    // Back to 0, which raises the file-system capabilities again.
    set_fs_ids(0);
    result
}

/// `setfsgid(id)` and `setfsuid(id)` (these cannot fail; the kernel ignores ids it
/// refuses, and host root is never refused).
#[allow(unsafe_code)]
fn set_fs_ids(id: u32) {
    // SAFETY: plain system calls without pointers.
    unsafe {
        libc::setfsgid(id);
        libc::setfsuid(id);
    }
}

/// `MOUNT_ATTR_RDONLY` of `<linux/mount.h>`.
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
/// `MOUNT_ATTR_IDMAP` of `<linux/mount.h>`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH, {attr_set, userns_fd})` (no wrapper in rustix).
#[allow(unsafe_code)]
fn mount_setattr(
    tree: BorrowedFd<'_>,
    attr_set: u64,
    userns: BorrowedFd<'_>,
) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the path is a NUL-terminated empty string, `attr` is a valid
    // `struct mount_attr` that outlives the call, and its size is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `fork(2)`: 0 in the child, the child's pid in the parent. Only called from the
/// single-threaded init step, where the child may keep running ordinary code.
#[allow(unsafe_code)]
pub(super) fn fork() -> std::io::Result<i32> {
    // SAFETY: the init step is single-threaded (it runs before any thread is started),
    // so the child's copy of the address space has no locks held by vanished threads.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// Waits for child `pid` to exit; returns its wait status.
pub(super) fn reap(pid: i32) -> Option<rustix::process::WaitStatus> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => return Some(status),
            Ok(None) => return None,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
    }
}

/// `_exit(2)`: ends the process at once, without running destructors or atexit hooks
/// (a forked child must not flush its parent's buffers).
#[allow(unsafe_code)]
pub(super) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions.
    unsafe { libc::_exit(code) }
}
