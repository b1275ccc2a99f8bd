//! Named network namespaces, as `ip netns` keeps them: an nsfs bind mount at
//! `/run/netns/<name>`, which keeps the namespace alive without any process in it.
//!
//! Creating one is what `ip netns add` does, without a process, in two steps that
//! may be far apart (the network keeps a few spare namespaces): a dedicated thread
//! `unshare(CLONE_NEWNET)`s (only that thread changes namespace; the async runtime's
//! threads never do), opens its `/proc/thread-self/ns/net` and an rtnetlink socket
//! there (a socket stays in the namespace it was created in) and ends
//! (`create_unnamed`); `name` then bind-mounts the namespace on its file.
//!
//! Removing one is unmounting and unlinking the file: once no process, socket or file
//! descriptor refers to it, the kernel dismantles the namespace — and the veth pair
//! with it — in the background, so removal takes microseconds instead of the
//! ~20 ms a synchronous veth deletion costs.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountPropagationFlags, UnmountFlags};

use super::link::Links;

/// Directory where named namespaces live (shared with `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// The `/run/netns` path of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// A freshly created namespace: a handle to it and an rtnetlink connection inside it.
/// Dropping it closes both (the mount keeps the namespace).
#[derive(Debug)]
pub(crate) struct Created {
    /// `/proc/thread-self/ns/net` of the creating thread, open.
    pub fd: OwnedFd,
    /// rtnetlink inside the namespace.
    pub links: Links,
}

/// Makes `/run/netns` a shared mount point (as `ip netns` does), so that unmounting a
/// namespace file also unmounts its copies in mount namespaces created meanwhile.
pub(crate) fn prepare_dir() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    match rustix::mount::mount_change(NETNS_DIR, shared) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            rustix::mount::mount_bind_recursive(NETNS_DIR, NETNS_DIR)?;
            rustix::mount::mount_change(NETNS_DIR, shared)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A namespace made ahead of time, without a name yet: the descriptor alone keeps it
/// (dropping it frees the namespace).
#[derive(Debug)]
pub(crate) struct Unnamed(pub(crate) Created);

pub(crate) use crate::idle::Priority;

/// Creates a namespace without a name on a dedicated thread (only that thread
/// changes namespace; the async runtime's threads never do); see [`name`].
pub(crate) async fn create_unnamed(priority: Priority) -> io::Result<Unnamed> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wrenn-netns".into())
        .spawn(move || {
            let result = (|| {
                if priority == Priority::Idle {
                    crate::idle::lower_this_thread();
                }
                unshare_network()?;
                let fd = rustix::fs::open(
                    "/proc/thread-self/ns/net",
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let links = Links::open()?;
                Ok(Unnamed(Created { fd, links }))
            })();
            let _ = tx.send(result);
        })?;
    rx.await
        .map_err(|_| io::Error::other("the namespace thread ended without an answer"))?
}

/// Names a namespace made by [`create_unnamed`] `name` (binds it at
/// `/run/netns/{name}`). Fails with `AlreadyExists` if the name is taken; the
/// namespace is dropped then.
pub(crate) fn name(unnamed: Unnamed, name: &str) -> io::Result<Created> {
    let Unnamed(created) = unnamed;
    let source = format!("/proc/self/fd/{}", created.fd.as_raw_fd());
    bind_as(Path::new(&source), name)?;
    Ok(created)
}

/// Renames namespace `from` to `to`: binds it at `/run/netns/{to}` (failing with
/// `AlreadyExists` if that is taken), then unmounts `from`. Processes in it stay.
pub(crate) fn rename(from: &str, to: &str) -> io::Result<()> {
    bind_as(&path(from), to)?;
    remove(from)
}

/// Binds the namespace file `source` at `/run/netns/{name}`, which must not exist
/// (`AlreadyExists`); leaves nothing there on failure.
fn bind_as(source: &Path, name: &str) -> io::Result<()> {
    let target = path(name);
    let file: File = rustix::fs::open(
        &target,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?
    .into();
    drop(file);
    if let Err(e) = rustix::mount::mount_bind(source, &target) {
        let _ = std::fs::remove_file(&target);
        return Err(e.into());
    }
    Ok(())
}

/// Creates the named namespace `name` ([`create_unnamed`], then [`name`]). Fails
/// with `AlreadyExists` if the name is taken; leaves nothing behind on failure.
pub(crate) async fn create(name: &str) -> io::Result<Created> {
    self::name(create_unnamed(Priority::Normal).await?, name)
}

/// `unshare(CLONE_NEWNET)` for the calling thread.
#[allow(unsafe_code)]
fn unshare_network() -> io::Result<()> {
    // SAFETY: only the network namespace is unshared — not the file descriptor table
    // (`CLONE_FILES`), which is what makes `unshare` unsafe: descriptors stay shared
    // with every thread. The calling thread is a dedicated one that ends right after.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
    Ok(())
}

/// Unmounts and removes the namespace file `name`. Missing is fine. The kernel frees
/// the namespace (and its interfaces) once nothing else refers to it.
pub(crate) fn remove(name: &str) -> io::Result<()> {
    let target = path(name);
    match rustix::mount::unmount(&target, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
