//! Removing a destroyed sandbox's directory after answering.
//!
//! Unmounting a sandbox's disk and deleting its directory (disk file included) costs
//! a few milliseconds that nobody waits for: once the sandbox's processes, network and
//! cgroups are gone, [`Removals::remove`] renames the directory into
//! `$WRENN_DIR/removing/` (one `rename`, on the same filesystem) and a background
//! task unmounts and deletes it. The sandbox's id is then free at once: a directory
//! named after it no longer exists.
//!
//! An agent that stops before a removal finishes leaves the directory in `removing/`;
//! [`Removals::new`] finishes it at the next start.

use crate::runtime::error_chain;
use std::path::{Path, PathBuf};

use tokio_util::task::TaskTracker;

use super::{io_err, unmount_all_under};
use crate::disk;
use crate::runtime::RuntimeError;

/// Directories being removed in the background. See the [module docs](self).
#[derive(Debug)]
pub struct Removals {
    dir: PathBuf,
    tasks: TaskTracker,
}

impl Removals {
    /// Removals through `dir` (created if missing). Whatever a previous agent left
    /// there is unmounted and deleted now. Blocking.
    pub fn new(dir: &Path) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let entries = std::fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))?;
        for entry in entries.flatten() {
            remove_now(&entry.path())?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            tasks: TaskTracker::new(),
        })
    }

    /// Moves `path` (a directory on the filesystem of this one, possibly holding
    /// mounts) out of the way and deletes it in the background. A missing `path` is
    /// fine.
    pub fn remove(&self, path: &Path) -> Result<(), RuntimeError> {
        if let Some(moved) = self.move_aside(path)? {
            self.delete_later(moved);
        }
        Ok(())
    }

    /// Moves `path` out of the way like [`remove`](Self::remove), but deletes it only
    /// once `before` (what must be gone first, e.g. the processes using its mounts) has
    /// finished. `before` runs even if the move fails.
    pub fn remove_after(
        &self,
        path: &Path,
        before: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let moved = self.move_aside(path);
        let later = self.clone_handle();
        let to_delete = moved.as_ref().ok().cloned().flatten();
        self.tasks.spawn(async move {
            before.await;
            if let Some(moved) = to_delete {
                later.delete_later(moved);
            }
        });
        moved.map(drop)
    }

    /// Renames `path` into the removal directory; `None` if it is missing.
    fn move_aside(&self, path: &Path) -> Result<Option<PathBuf>, RuntimeError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let moved = self
            .dir
            .join(format!("{name}.{:08x}", rand::random::<u32>()));
        match std::fs::rename(path, &moved) {
            Ok(()) => Ok(Some(moved)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!(
                "move {} to {}",
                path.display(),
                moved.display()
            ))(e)),
        }
    }

    /// Unmounts and deletes `moved` on a blocking thread, tracked.
    fn delete_later(&self, moved: PathBuf) {
        self.tasks.spawn_blocking(move || {
            if let Err(e) = remove_now(&moved) {
                tracing::warn!(
                    "removing {} in the background: {}",
                    moved.display(),
                    error_chain(&e)
                );
            }
        });
    }

    fn clone_handle(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            tasks: self.tasks.clone(),
        }
    }

    /// Waits until every removal started so far has finished.
    pub async fn settled(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}

/// Unmounts everything under `path` and deletes it. Blocking.
fn remove_now(path: &Path) -> Result<(), RuntimeError> {
    // A sandbox's disk: its dirty pages are dropped, not written out by the unmount.
    disk::shut_down(&path.join(disk::MOUNT_DIR))?;
    unmount_all_under(path)?;
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
    }
}
