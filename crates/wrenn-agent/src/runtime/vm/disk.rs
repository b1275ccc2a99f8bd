//! A capsule VM's root disk: a copy-on-write qcow2 overlay over the template's
//! read-only image (the image build's `rootfs.ext4`, or a template's disk), as large as
//! the capsule's `disk_size_mb`. The guest grows its file system to the disk at boot
//! (`wrenn.grow=1`, [`super::initramfs::INIT_SCRIPT`]). Made with `qemu-img` (Debian:
//! `qemu-utils`); only the blocks the capsule writes take space.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a disk could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `qemu-img` could not be run.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img` refused.
    #[error("qemu-img {action} failed: {stderr}")]
    Failed {
        /// What it was asked to do.
        action: &'static str,
        /// What it said.
        stderr: String,
    },
    /// The requested size is below the base image's.
    #[error("a {size_mb} MiB disk is smaller than its {base_mb} MiB base image")]
    TooSmall {
        /// Requested size (MiB).
        size_mb: u64,
        /// The base image's size (MiB).
        base_mb: u64,
    },
}

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ImageInfo {
    /// `qcow2`, `raw`, …
    pub format: String,
    /// Size the guest sees, bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// The backing file, for an overlay.
    #[serde(rename = "backing-filename", default)]
    pub backing_file: Option<String>,
}

fn run(
    qemu_img: &Path,
    action: &'static str,
    args: &[&std::ffi::OsStr],
) -> Result<String, DiskError> {
    let out = Command::new(qemu_img)
        .args(args)
        .output()
        .map_err(|source| DiskError::Spawn {
            program: qemu_img.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::Failed {
            action,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `qemu-img info` says of `image`.
pub fn info(qemu_img: &Path, image: &Path) -> Result<ImageInfo, DiskError> {
    let json = run(
        qemu_img,
        "info",
        &["info".as_ref(), "--output=json".as_ref(), image.as_os_str()],
    )?;
    serde_json::from_str(&json).map_err(|e| DiskError::Failed {
        action: "info",
        stderr: format!("unreadable answer: {e}"),
    })
}

/// Creates `out`: a qcow2 overlay of `base` (format `base_format`) of `size_mb` MiB,
/// at least the base's size. Fails if `out` exists.
pub fn create_overlay(
    qemu_img: &Path,
    base: &Path,
    base_format: &str,
    out: &Path,
    size_mb: u64,
) -> Result<(), DiskError> {
    let base_info = info(qemu_img, base)?;
    let base_mb = base_info.virtual_size.div_ceil(1 << 20);
    if size_mb < base_mb {
        return Err(DiskError::TooSmall { size_mb, base_mb });
    }
    if out.exists() {
        return Err(DiskError::Failed {
            action: "create",
            stderr: format!("{} exists", out.display()),
        });
    }
    let size = format!("{size_mb}M");
    run(
        qemu_img,
        "create",
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            base_format.as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            out.as_os_str(),
            size.as_ref(),
        ],
    )?;
    Ok(())
}
