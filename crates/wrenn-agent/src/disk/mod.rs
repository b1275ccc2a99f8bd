//! Sized writable disks: a sparse ext4 file on a loop device.
//!
//! A disk is a file (`disk.ext4`) holding an ext4 filesystem of the requested size.
//! It is bound to a loop device in-process ([`loopdev`]: `LOOP_CONFIGURE`, autoclear,
//! direct I/O where the host filesystem allows it, 4 KiB blocks) and mounted with the
//! new mount API ([`mount`]) as a *detached* mount (`nodev`), which
//! [`MountedDisk::place`] then moves onto a directory. Inside the filesystem,
//! [`UPPER_DIR`] (0755) and [`WORK_DIR`] (0700), owned by root, are the overlay upper
//! and work directories of the process runtime. The size is a hard limit: writes past
//! it fail with `ENOSPC`, and the host file never grows beyond it.
//!
//! Formatting ([`ext4::format`], `mkfs.ext4`) costs an external process, so disks
//! are copies of one formatted image per size ([`blank::Blanks`]), and
//! [`pool::DiskPool`] keeps a few formatted, attached and mounted disks of the
//! default size ready and refills them in the background: taking one costs a
//! `rename` and a `move_mount`.
//!
//! Nothing here is specific to the process runtime: VM runtimes make their disk files
//! the same way (or by copying a base image) and hand the file to the VMM instead of
//! mounting it.

pub mod blank;
pub mod ext4;
pub mod loopdev;
pub mod mount;
pub mod pool;

use crate::runtime::error_chain;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Smallest disk accepted (MiB): room for ext4's metadata and a useful upper layer.
pub const MIN_SIZE_MB: u32 = 64;
/// The disk file in a sandbox (or snapshot) directory.
pub const DISK_FILE: &str = "disk.ext4";
/// Where a sandbox's disk is mounted, in its directory.
pub const MOUNT_DIR: &str = "disk";
/// The overlay upper directory inside a disk.
pub const UPPER_DIR: &str = "upper";
/// The overlay work directory inside a disk.
pub const WORK_DIR: &str = "work";

/// A disk failure.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The requested size is below [`MIN_SIZE_MB`].
    #[error("disk_size_mb {size_mb} is below the minimum of {MIN_SIZE_MB} MiB")]
    TooSmall {
        /// The requested size (MiB).
        size_mb: u32,
    },
    /// The requested size exceeds the free space of the host's filesystem.
    #[error("disk_size_mb {size_mb} exceeds the {free_mb} MiB free on this host's disk")]
    NoSpace {
        /// The requested size (MiB).
        size_mb: u32,
        /// Free space where disks are kept (MiB).
        free_mb: u64,
    },
    /// The requested size exceeds the size of the host's filesystem.
    #[error("disk_size_mb {size_mb} exceeds this host's {capacity_mb} MiB disk")]
    TooLarge {
        /// The requested size (MiB).
        size_mb: u32,
        /// Size of the filesystem where disks are kept (MiB).
        capacity_mb: u64,
    },
    /// `mkfs.ext4` failed.
    #[error("mkfs.ext4 {path} failed ({status}): {stderr}")]
    Mkfs {
        /// The file being formatted.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// A system call failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl DiskError {
    /// A closure wrapping an [`io::Error`] with `context`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Which sizes a host accepts besides the minimum. Disks are sparse: a new disk takes
/// a few MiB, and the host's space is consumed only as sandboxes write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpaceCheck {
    /// Refuse a disk larger than the space free now on the filesystem holding the
    /// disks (so one sandbox alone cannot fill the host; several still can).
    FreeSpace,
    /// Refuse a disk larger than that filesystem's total size (never satisfiable);
    /// free space is overcommitted as with any thin provisioning. The default: with
    /// the control plane's 20 GiB default disk, `FreeSpace` refuses every default
    /// sandbox on a machine with less than 20 GiB free.
    #[default]
    Capacity,
}

/// Refuses a size below [`MIN_SIZE_MB`] or above what `check` allows on the
/// filesystem holding `dir`.
pub fn check_size(size_mb: u32, dir: &Path, check: SpaceCheck) -> Result<(), DiskError> {
    if size_mb < MIN_SIZE_MB {
        return Err(DiskError::TooSmall { size_mb });
    }
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| DiskError::io(format!("statvfs {}", dir.display()))(e.into()))?;
    let mib = |blocks: u64| blocks.saturating_mul(st.f_frsize) / (1024 * 1024);
    match check {
        SpaceCheck::FreeSpace if u64::from(size_mb) > mib(st.f_bavail) => Err(DiskError::NoSpace {
            size_mb,
            free_mb: mib(st.f_bavail),
        }),
        SpaceCheck::Capacity if u64::from(size_mb) > mib(st.f_blocks) => Err(DiskError::TooLarge {
            size_mb,
            capacity_mb: mib(st.f_blocks),
        }),
        _ => Ok(()),
    }
}

/// Bytes of a disk of `size_mb` MiB.
pub fn size_bytes(size_mb: u32) -> u64 {
    u64::from(size_mb) * 1024 * 1024
}

/// The loop device a disk is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceId {
    /// `N` of `/dev/loopN`.
    pub number: u32,
    /// Device major number (for cgroup I/O limits).
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Whether the device does direct I/O on its file.
    pub direct_io: bool,
}

/// A disk bound to a loop device and mounted, not yet placed anywhere: dropping it
/// unmounts the filesystem and unbinds the device.
#[derive(Debug)]
pub struct MountedDisk {
    device: DeviceId,
    mount: OwnedFd,
}

impl MountedDisk {
    /// Binds the ext4 file at `path` to a loop device and mounts it (detached), making
    /// [`UPPER_DIR`] and [`WORK_DIR`] if they are missing. Blocking.
    pub fn open(path: &Path) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(DiskError::io(format!("open {}", path.display())))?;
        let device = loopdev::attach(
            &file,
            loopdev::AttachOptions {
                block_size: ext4::BLOCK_SIZE,
                ..Default::default()
            },
        )
        .map_err(DiskError::io(format!(
            "bind {} to a loop device",
            path.display()
        )))?;
        drop(file);
        // The mount holds the device from here; when our fd closes (end of this
        // function) the device unbinds itself as soon as the mount is gone.
        let mount = mount::mount_detached(&device.path()).map_err(DiskError::io(format!(
            "mount {} ({})",
            device.path().display(),
            path.display()
        )))?;
        for (dir, mode) in [(UPPER_DIR, 0o755), (WORK_DIR, 0o700)] {
            make_dir(&mount, dir, mode)
                .map_err(DiskError::io(format!("create {dir} in {}", path.display())))?;
        }
        Ok(Self {
            device: DeviceId {
                number: device.number,
                major: device.major,
                minor: device.minor,
                direct_io: device.direct_io(),
            },
            mount,
        })
    }

    /// The loop device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Mounts the disk at `target` (an existing directory).
    pub fn place(self, target: &Path) -> Result<DeviceId, DiskError> {
        mount::attach(&self.mount, target).map_err(DiskError::io(format!(
            "mount the disk at {}",
            target.display()
        )))?;
        Ok(self.device)
    }
}

/// `mkdirat` + `fchmodat` (the mode must not depend on the umask); an existing
/// directory is kept as it is.
fn make_dir(parent: impl AsFd, name: &str, mode: u32) -> io::Result<()> {
    let mode = rustix::fs::Mode::from_raw_mode(mode);
    match rustix::fs::mkdirat(&parent, name, mode) {
        Ok(()) => {
            rustix::fs::chmodat(&parent, name, mode, rustix::fs::AtFlags::empty())?;
            Ok(())
        }
        Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Unmounts a placed disk at `mount_point` (nothing mounted there is fine). Its loop
/// device unbinds itself once no mount of the filesystem is left.
pub fn unmount(mount_point: &Path) -> Result<(), DiskError> {
    mount::unmount(mount_point).map_err(DiskError::io(format!("unmount {}", mount_point.display())))
}

/// Unmounts a placed disk whose contents are being thrown away (destroy): the
/// filesystem is shut down first (`EXT4_IOC_SHUTDOWN`, no log flush), so dirty data
/// the sandbox left in the page cache is dropped instead of written out by the
/// unmount. Nothing mounted there is fine.
pub fn discard(mount_point: &Path) -> Result<(), DiskError> {
    if shut_down(mount_point)? {
        unmount(mount_point)
    } else {
        Ok(())
    }
}

/// Shuts down the ext4 filesystem whose root is `mount_point` (see [`discard`]);
/// returns whether `mount_point` exists. Another filesystem, or none, is left alone.
pub fn shut_down(mount_point: &Path) -> Result<bool, DiskError> {
    match std::fs::File::open(mount_point) {
        Ok(dir) => {
            // A directory that is not the root of an ext4 mount (nothing mounted, or
            // something else): ENOTTY/EINVAL/EPERM, and the plain unmount below copes.
            if is_mount_root(&dir, mount_point) {
                if let Err(e) = ext4::shutdown(&dir) {
                    tracing::debug!(
                        "shutting down {} failed: {}",
                        mount_point.display(),
                        error_chain(&e)
                    );
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(DiskError::io(format!("open {}", mount_point.display()))(e)),
    }
    Ok(true)
}

/// Whether `dir` (opened at `path`) is the root of a filesystem mounted there.
fn is_mount_root(dir: &std::fs::File, path: &Path) -> bool {
    let (Ok(own), Some(parent)) = (rustix::fs::fstat(dir), path.parent()) else {
        return false;
    };
    rustix::fs::stat(parent).is_ok_and(|p| p.st_dev != own.st_dev)
}

/// Waits until `/dev/loopN` no longer holds `file` (the filesystem is shut down
/// everywhere, including in mount namespaces that are being torn down), so the file
/// can be moved and mounted again safely.
pub fn wait_released(number: u32, file: &Path, timeout: Duration) -> Result<(), DiskError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    while loopdev::backing_file(number).is_some_and(|b| b == file) {
        if Instant::now() >= deadline {
            return Err(DiskError::Io {
                context: format!(
                    "loop device {} is still in use after {timeout:?} (mounted in another mount namespace?)",
                    loopdev::device_path(number).display()
                ),
                source: io::ErrorKind::TimedOut.into(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_below_the_minimum_are_refused() {
        let err = check_size(MIN_SIZE_MB - 1, Path::new("/"), SpaceCheck::Capacity).unwrap_err();
        assert!(matches!(err, DiskError::TooSmall { size_mb } if size_mb == MIN_SIZE_MB - 1));
        assert!(error_chain(&err).contains("minimum of 64 MiB"), "{err}");
    }

    #[test]
    fn sizes_above_the_free_space_or_the_capacity_are_refused() {
        let st = rustix::fs::statvfs("/").unwrap();
        let free_mb = st.f_bavail * st.f_frsize / (1024 * 1024);
        let capacity_mb = st.f_blocks * st.f_frsize / (1024 * 1024);
        let above_free = u32::try_from(free_mb + 1024).unwrap();
        let err = check_size(above_free, Path::new("/"), SpaceCheck::FreeSpace).unwrap_err();
        assert!(
            matches!(err, DiskError::NoSpace { size_mb, .. } if size_mb == above_free),
            "{err}"
        );
        if u64::from(above_free) <= capacity_mb {
            check_size(above_free, Path::new("/"), SpaceCheck::Capacity).unwrap();
        }
        let err = check_size(u32::MAX, Path::new("/"), SpaceCheck::Capacity).unwrap_err();
        assert!(
            matches!(err, DiskError::TooLarge { size_mb, capacity_mb: c } if size_mb == u32::MAX && c == capacity_mb),
            "{err}"
        );
        check_size(MIN_SIZE_MB, Path::new("/"), SpaceCheck::FreeSpace).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_it() {
        let err = check_size(
            MIN_SIZE_MB,
            Path::new("/nonexistent/wrenn-disk"),
            SpaceCheck::Capacity,
        )
        .unwrap_err();
        assert!(
            matches!(&err, DiskError::Io { context, .. } if context.contains("/nonexistent/wrenn-disk"))
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
