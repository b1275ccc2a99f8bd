//! A capsule VM's root disk, as large as the capsule's `disk_size_mb`, over the
//! template's read-only image (the image build's `rootfs.ext4`, or a template's disk).
//! The guest grows its file system to the disk at boot (`wrenn.grow=1`,
//! [`super::initramfs::INIT_SCRIPT`]).
//!
//! - QEMU: a copy-on-write qcow2 overlay ([`create_overlay`], with `qemu-img`, Debian:
//!   `qemu-utils`); only the blocks the capsule writes take space.
//! - Firecracker (raw disks only): a raw copy ([`create_raw_copy`]) that shares the
//!   base's blocks where the file system can (a reflink, `FICLONE`) and otherwise
//!   copies only the base's data, leaving its holes as holes.

use crate::runtime::error_chain;
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
    /// A raw copy failed.
    #[error("copy {what}")]
    Copy {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
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
        stderr: format!("unreadable answer: {}", error_chain(&e)),
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

/// Creates `out`, a raw disk of `size_mb` MiB whose first bytes are the raw image
/// `base` (at least `size_mb` large): a reflink where the file system shares blocks,
/// else a copy of `base`'s data extents only (holes stay holes). Fails if `out`
/// exists; leaves nothing on failure.
pub fn create_raw_copy(base: &Path, out: &Path, size_mb: u64) -> Result<(), DiskError> {
    let copy_err = |what: String| move |source| DiskError::Copy { what, source };
    let source = std::fs::File::open(base).map_err(copy_err(format!("open {}", base.display())))?;
    let base_len = source
        .metadata()
        .map_err(copy_err(format!("stat {}", base.display())))?
        .len();
    let base_mb = base_len.div_ceil(1 << 20);
    if size_mb < base_mb {
        return Err(DiskError::TooSmall { size_mb, base_mb });
    }
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(copy_err(format!("create {}", out.display())))?;
    let copied = clone_or_copy_data(&source, &target, base_len)
        .and_then(|()| target.set_len(size_mb << 20))
        .and_then(|()| target.sync_all());
    if let Err(e) = copied {
        let _ = std::fs::remove_file(out);
        return Err(copy_err(format!("{} to {}", base.display(), out.display()))(e));
    }
    Ok(())
}

/// `FICLONE` of all of `source`, else its data extents (`SEEK_DATA`/`SEEK_HOLE`)
/// copied with `copy_file_range`.
fn clone_or_copy_data(
    source: &std::fs::File,
    target: &std::fs::File,
    len: u64,
) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    if rustix::fs::ioctl_ficlone(target, source).is_ok() {
        return Ok(());
    }
    let mut offset = 0u64;
    while offset < len {
        let data = match rustix::fs::seek(source, SeekFrom::Data(offset)) {
            Ok(at) => at,
            Err(rustix::io::Errno::NXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(source, SeekFrom::Hole(data))?.min(len);
        let mut from = data;
        while from < hole {
            let mut off_in = from;
            let mut off_out = from;
            let n = rustix::fs::copy_file_range(
                source,
                Some(&mut off_in),
                target,
                Some(&mut off_out),
                (hole - from) as usize,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            from += n as u64;
        }
        offset = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_raw_copy_keeps_the_bases_data_and_holes_and_has_the_asked_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let mut f = std::fs::File::create(&base).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(std::io::SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        drop(f);
        let out = dir.path().join("disk.raw");
        create_raw_copy(&base, &out, 128).unwrap();
        let copy = std::fs::read(&out).unwrap();
        assert_eq!(copy.len(), 128 << 20);
        assert_eq!(&copy[..4], b"head");
        assert!(copy[40 << 20..(40 << 20) + 8192].iter().all(|b| *b == 7));
        assert!(copy[(40 << 20) + 8192..].iter().all(|b| *b == 0));
        let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
        assert!(allocated < 4 << 20, "holes stayed holes: {allocated} bytes");
        assert!(matches!(
            create_raw_copy(&base, &dir.path().join("small.raw"), 16),
            Err(DiskError::TooSmall { .. })
        ));
        assert!(
            create_raw_copy(&base, &out, 128).is_err(),
            "never overwrites"
        );
        assert!(!dir.path().join("small.raw").exists());
    }
}
