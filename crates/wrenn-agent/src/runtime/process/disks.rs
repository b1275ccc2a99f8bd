//! A capsule's disk as the runtime handles it: a new one from the pool or a blank, a
//! hibernated one reopened, a pre-disk hibernation converted.

use crate::runtime::error_chain;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;
use wrenn_core::id::SandboxId;

use crate::disk::pool::DiskPool;
use crate::disk::{self, DeviceId, MountedDisk};
use crate::runtime::{RuntimeError, blocking, io_err};

use super::{ProcessRuntime, remove_dir, unmount_all_under};

impl ProcessRuntime {
    /// Gives sandbox `id` (whose directory exists) a fresh, empty disk of `size_mb`
    /// mounted at `sandboxes/{id}/disk`: a pooled one when the size matches the pool's,
    /// else one formatted now. On failure nothing of the disk is left.
    pub(super) async fn new_disk(
        &self,
        id: SandboxId,
        size_mb: u32,
    ) -> Result<DeviceId, RuntimeError> {
        let file = self.layout.sandbox_dir(id).join(disk::DISK_FILE);
        let target = self.disk_mount_point(id);
        let pool = Some(&self.pool).filter(|p| p.size_mb() == size_mb && p.depth() > 0);
        let mut pooled = None;
        while let Some(candidate) = pool.and_then(DiskPool::take) {
            match std::fs::rename(&candidate.file, &file) {
                Ok(()) => {
                    pooled = Some(candidate.disk);
                    break;
                }
                // Dropped (unmounted); its file was removed under us, e.g. by another
                // agent starting on the same directory.
                Err(e) => tracing::warn!(
                    sandbox_id = %id,
                    "skipping pooled disk {}: {}",
                    candidate.file.display(),
                    error_chain(&e)
                ),
            }
        }
        let mounted = match pooled {
            Some(disk) => disk,
            None => {
                tracing::debug!(sandbox_id = %id, size_mb, "making a disk on demand");
                self.blanks.make(&file, size_mb).await?;
                let f = file.clone();
                match blocking(move || MountedDisk::open(&f)).await? {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = std::fs::remove_file(&file);
                        return Err(e.into());
                    }
                }
            }
        };
        // Dropping `mounted` on failure unmounts it; the device unbinds itself.
        mounted.place(&target).map_err(|e| {
            let _ = std::fs::remove_file(&file);
            e.into()
        })
    }

    /// Gives sandbox `id` a new disk holding a copy of `upper` (the upper directory of
    /// a sandbox hibernated before sandboxes had disks).
    pub(super) async fn convert_legacy_upper(
        &self,
        id: SandboxId,
        size_mb: u32,
        upper: &Path,
    ) -> Result<DeviceId, RuntimeError> {
        tracing::info!(sandbox_id = %id, "copying a pre-disk hibernated upper layer into a disk");
        let disk = self.new_disk(id, size_mb).await?;
        let dest = self.disk_mount_point(id).join(disk::UPPER_DIR);
        let out = Command::new("cp")
            .arg("-a")
            .arg(upper.join("."))
            .arg(&dest)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err("run cp"))?;
        if !out.status.success() {
            return Err(RuntimeError::Other(format!(
                "copying the hibernated upper layer of {id} into its {size_mb} MiB disk failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(disk)
    }

    /// Mounts the existing disk file of sandbox `id` at `sandboxes/{id}/disk`.
    pub(super) async fn open_disk(&self, id: SandboxId) -> Result<DeviceId, RuntimeError> {
        let file = self.layout.sandbox_dir(id).join(disk::DISK_FILE);
        let target = self.disk_mount_point(id);
        Ok(blocking(move || MountedDisk::open(&file).and_then(|m| m.place(&target))).await??)
    }

    /// Throws the disk away (shut down, so dirty data is never written out), unmounts
    /// everything under `sandboxes/{id}/` and removes the directory (with the disk
    /// file).
    pub(super) async fn remove_sandbox_dir(&self, id: SandboxId) -> Result<(), RuntimeError> {
        let dir = self.layout.sandbox_dir(id);
        let d = dir.clone();
        let mount_point = self.disk_mount_point(id);
        blocking(move || {
            disk::discard(&mount_point)?;
            unmount_all_under(&d)
        })
        .await??;
        remove_dir(&dir).await
    }
}
