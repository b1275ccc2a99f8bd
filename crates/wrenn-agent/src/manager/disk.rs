//! Disk accounting (allocated bytes of a directory tree) and the blocking filesystem
//! helpers of the manager, run off the async threads.

use std::path::{Path, PathBuf};

pub(super) async fn path_exists(p: PathBuf) -> bool {
    tokio::task::spawn_blocking(move || p.exists())
        .await
        .unwrap_or(false)
}

pub(super) async fn remove_dir_all_async(p: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(p))
        .await
        .map_err(std::io::Error::other)?
}

/// Allocated bytes (`st_blocks × 512`) of everything under `dir`; 0 if it is missing.
pub async fn dir_allocated_bytes(dir: PathBuf) -> u64 {
    tokio::task::spawn_blocking(move || allocated(&dir))
        .await
        .unwrap_or(0)
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = md.blocks() * 512;
    if md.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += allocated(&e.path());
            }
        }
    }
    total
}
