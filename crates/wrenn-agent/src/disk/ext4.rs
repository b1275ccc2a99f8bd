//! Making and measuring ext4 filesystems in sparse files.
//!
//! [`format()`] runs `mkfs.ext4` (e2fsprogs) on a sparse file with what makes it cheap
//! to create and quick to mount: no journal (a sandbox's disk never outlives a host
//! crash — leftovers are swept — and hibernation unmounts cleanly first, so the
//! journal would only double every metadata write), no reserved blocks (the sandbox
//! gets the whole size), 4 KiB blocks, and lazy inode-table init. On a
//! regular file mke2fs discards (punches) the whole range first and marks every
//! inode table zeroed, so the kernel's lazy-init thread never writes them either:
//! a fresh 20 GiB disk allocates a few MiB on the host.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::DiskError;

/// Block size of the filesystems made here (and of their loop devices).
pub const BLOCK_SIZE: u32 = 4096;

/// The `mkfs.ext4` arguments before the file name.
pub const MKFS_ARGS: &[&str] = &[
    "-q",
    "-F",
    "-t",
    "ext4",
    "-b",
    "4096",
    "-m",
    "0",
    "-O",
    "^has_journal",
    "-E",
    "lazy_itable_init=1,root_owner=0:0",
];

/// Finds `mkfs.ext4` (e2fsprogs) in `PATH` or the sbin directories.
pub fn find_mkfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

/// Creates `path` (which must not exist) as a sparse file of `size_bytes` holding an
/// empty ext4 filesystem. On failure the file is removed.
pub async fn format(mkfs: &Path, path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let result = async {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(DiskError::io(format!("create {}", path.display())))?;
        file.set_len(size_bytes)
            .map_err(DiskError::io(format!("size {}", path.display())))?;
        drop(file);
        let out = tokio::process::Command::new(mkfs)
            .args(MKFS_ARGS)
            .arg(path)
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(DiskError::io(format!("run {}", mkfs.display())))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DiskError::Mkfs {
                path: path.to_path_buf(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Size and use of a mounted filesystem, from one `statfs` (O(1)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes the filesystem offers (what `df` shows as its size).
    pub total_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes still free.
    pub free_bytes: u64,
}

/// The [`Usage`] of the filesystem mounted at `mount_point`.
pub fn usage(mount_point: &Path) -> io::Result<Usage> {
    let st = rustix::fs::statfs(mount_point)?;
    let block = st.f_bsize as u64;
    let blocks = st.f_blocks as u64;
    let free = st.f_bfree as u64;
    Ok(Usage {
        total_bytes: blocks * block,
        used_bytes: blocks.saturating_sub(free) * block,
        free_bytes: free * block,
    })
}

/// `EXT4_IOC_SHUTDOWN` = `_IOR('X', 125, __u32)`.
const EXT4_IOC_SHUTDOWN: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<u32>(b'X', 125);
/// `EXT4_GOING_FLAGS_NOLOGFLUSH`: stop at once, without flushing the journal or data.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// Shuts the ext4 filesystem of `root` (an open directory on it) down: every later
/// read or write fails, dirty data is dropped. For filesystems about to be deleted.
#[allow(unsafe_code)]
pub fn shutdown(root: impl AsFd) -> io::Result<()> {
    // SAFETY: EXT4_IOC_SHUTDOWN reads one `__u32` of flags from the pointer, which the
    // setter holds for the duration of the call.
    let shutdown = unsafe {
        rustix::ioctl::Setter::<EXT4_IOC_SHUTDOWN, u32>::new(EXT4_GOING_FLAGS_NOLOGFLUSH)
    };
    // SAFETY: see above.
    unsafe { rustix::ioctl::ioctl(root, shutdown) }?;
    Ok(())
}
