//! A pool of ready disks of one size, so that creating a sandbox never waits for
//! `mkfs`.
//!
//! Each pooled disk is a sparse file `{dir}/{random}.ext4`, a copy of a blank
//! ([`Blanks`]), bound to a loop device and mounted as a detached mount
//! ([`MountedDisk`]) with its upper and work directories made. [`DiskPool::take`]
//! hands one out (the caller renames the file and places the mount); a background
//! task makes replacements until the pool holds `depth` disks again, paced and at
//! idle priority so that it never competes with creates.
//!
//! Pooled disks live only as long as the agent: the mounts are file descriptors, so
//! an agent that exits or crashes leaves no mount, and the loop devices unbind
//! themselves. [`DiskPool::start`] deletes the files a previous agent left in `dir`.

use crate::runtime::error_chain;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::blank::Blanks;
use super::{DiskError, MountedDisk, loopdev, mount};
use crate::idle::{Pacer, Priority};

/// Pause after a failed refill before trying again.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// A disk taken from the pool: its file and its (unplaced) mount.
#[derive(Debug)]
pub struct PooledDisk {
    /// The disk file, still in the pool directory: rename it to where it belongs.
    pub file: PathBuf,
    /// The mounted disk: place it where it belongs.
    pub disk: MountedDisk,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    blanks: Arc<Blanks>,
    size_mb: u32,
    depth: usize,
    ready: Mutex<VecDeque<PooledDisk>>,
    pacer: Pacer,
    refills: Mutex<Vec<Duration>>,
}

impl Inner {
    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<PooledDisk>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn make_one(&self) -> Result<PooledDisk, DiskError> {
        let file = self
            .dir
            .join(format!("{:016x}.ext4", rand::random::<u64>()));
        self.blanks
            .make_at(&file, self.size_mb, Priority::Idle)
            .await?;
        let path = file.clone();
        let opened = crate::idle::run(move || MountedDisk::open(&path))
            .await
            .map_err(|e| DiskError::io("open a pooled disk")(std::io::Error::other(e)))
            .and_then(|r| r);
        match opened {
            Ok(disk) => Ok(PooledDisk { file, disk }),
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                Err(e)
            }
        }
    }

    async fn refill(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            while self.ready().len() < self.depth {
                tokio::select! {
                    () = self.pacer.turn(|| self.ready().len(), self.depth) => {}
                    () = cancel.cancelled() => return,
                }
                let started = Instant::now();
                // Not cancelled midway: a half-made disk would leave a file behind.
                let made = self.make_one().await;
                match made {
                    Ok(disk) => {
                        let elapsed = started.elapsed();
                        tracing::debug!(
                            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                            "pooled disk ready"
                        );
                        self.refills
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(elapsed);
                        if cancel.is_cancelled() {
                            remove(disk);
                            return;
                        }
                        self.ready().push_back(disk);
                    }
                    Err(e) => {
                        tracing::warn!("preparing a pooled disk failed: {}", error_chain(&e));
                        tokio::select! {
                            () = tokio::time::sleep(RETRY_PAUSE) => {}
                            () = cancel.cancelled() => return,
                        }
                    }
                }
            }
            tokio::select! {
                () = self.pacer.next_take() => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

/// Unmounts a pooled disk and deletes its file.
fn remove(disk: PooledDisk) {
    let PooledDisk { file, disk } = disk;
    drop(disk);
    if let Err(e) = std::fs::remove_file(&file) {
        tracing::warn!(
            "removing pooled disk {}: {}",
            file.display(),
            error_chain(&e)
        );
    }
}

/// Ready disks of one size, refilled in the background. See the [module docs](self).
#[derive(Debug)]
pub struct DiskPool {
    inner: Arc<Inner>,
    cancel: CancellationToken,
}

impl DiskPool {
    /// Cleans `dir` of a previous agent's pooled disks and starts filling it with
    /// `depth` disks of `size_mb` made by `blanks` (on the current tokio runtime).
    /// `dir` must be on the same filesystem as the directories disks are moved to.
    pub fn start(
        dir: &Path,
        blanks: Arc<Blanks>,
        size_mb: u32,
        depth: usize,
    ) -> Result<Self, DiskError> {
        std::fs::create_dir_all(dir).map_err(DiskError::io(format!("create {}", dir.display())))?;
        clean(dir)?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            blanks,
            size_mb,
            depth,
            ready: Mutex::new(VecDeque::new()),
            pacer: Pacer::default(),
            refills: Mutex::new(Vec::new()),
        });
        let cancel = CancellationToken::new();
        if depth > 0 {
            tokio::spawn(inner.clone().refill(cancel.clone()));
        }
        Ok(Self { inner, cancel })
    }

    /// The size of the pooled disks (MiB).
    pub fn size_mb(&self) -> u32 {
        self.inner.size_mb
    }

    /// How many disks the pool keeps ready.
    pub fn depth(&self) -> usize {
        self.inner.depth
    }

    /// How many disks are ready now.
    pub fn ready(&self) -> usize {
        self.inner.ready().len()
    }

    /// How long each refill so far took (copy + bind + mount), oldest first.
    pub fn refill_times(&self) -> Vec<Duration> {
        self.inner
            .refills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A ready disk, if there is one; wakes the refill task.
    pub fn take(&self) -> Option<PooledDisk> {
        let disk = self.inner.ready().pop_front();
        self.inner.pacer.taken();
        disk
    }
}

impl Drop for DiskPool {
    fn drop(&mut self) {
        self.cancel.cancel();
        let disks: Vec<PooledDisk> = self.inner.ready().drain(..).collect();
        for disk in disks {
            remove(disk);
        }
    }
}

/// Removes what a previous agent left in the pool directory: mounts, loop devices
/// bound to its files, and the files.
fn clean(dir: &Path) -> Result<(), DiskError> {
    for m in mount::mounts_under(dir).map_err(DiskError::io("read /proc/self/mountinfo"))? {
        mount::unmount(&m.mount_point).map_err(DiskError::io(format!(
            "unmount {}",
            m.mount_point.display()
        )))?;
    }
    for bound in loopdev::bound_under(dir).map_err(DiskError::io("list loop devices"))? {
        loopdev::detach(bound.number).map_err(DiskError::io(format!(
            "detach {}",
            loopdev::device_path(bound.number).display()
        )))?;
    }
    let entries =
        std::fs::read_dir(dir).map_err(DiskError::io(format!("list {}", dir.display())))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "ext4") {
            std::fs::remove_file(&path)
                .map_err(DiskError::io(format!("remove {}", path.display())))?;
        }
    }
    Ok(())
}
