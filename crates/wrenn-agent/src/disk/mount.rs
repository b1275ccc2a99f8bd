//! Mounting a disk's filesystem with the new mount API: `fsopen` + `fsmount` make a
//! *detached* mount (held by a file descriptor, visible nowhere, gone with the fd),
//! `move_mount` attaches it to a directory in O(1). Plus unmounting and finding our
//! mounts in `/proc/self/mountinfo`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags, fsconfig_create,
    fsconfig_set_string, fsmount, fsopen, move_mount,
};

/// How long [`unmount`] retries a busy mount before detaching it lazily.
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// Mounts the ext4 filesystem on `device` as a detached mount with `nodev` (not
/// `nosuid`: set-uid programs of the sandbox's own image must keep working).
pub fn mount_detached(device: &Path) -> io::Result<OwnedFd> {
    let fs = fsopen("ext4", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "source", device)?;
    fsconfig_create(&fs)?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NODEV,
    )?)
}

/// Attaches a detached mount at `target` (an existing directory).
pub fn attach(mount: &OwnedFd, target: &Path) -> io::Result<()> {
    move_mount(
        mount,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// Unmounts `target`; a directory that is no mount point (or does not exist) is
/// fine. A mount still busy after a short retry is detached lazily.
pub fn unmount(target: &Path) -> io::Result<()> {
    let deadline = Instant::now() + BUSY_RETRY;
    loop {
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => return Ok(()),
            Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(rustix::io::Errno::BUSY) => {
                tracing::warn!("{} is busy; detaching it lazily", target.display());
                return match rustix::mount::unmount(
                    target,
                    UnmountFlags::NOFOLLOW | UnmountFlags::DETACH,
                ) {
                    Ok(()) | Err(rustix::io::Errno::INVAL) => Ok(()),
                    Err(e) => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type.
    pub fs_type: String,
    /// The mount source (`/dev/loop3`).
    pub source: String,
}

/// Parses `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = unescape(left.split(' ').nth(4)?);
            let mut right = right.split(' ');
            let fs_type = right.next()?.to_owned();
            let source = right
                .next()
                .map(|s| unescape(s).to_string_lossy().into_owned())?;
            Some(MountEntry {
                mount_point,
                fs_type,
                source,
            })
        })
        .collect()
}

/// Mounts of this mount namespace at or under `dir`, deepest first (the order to
/// unmount them in).
pub fn mounts_under(dir: &Path) -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<MountEntry> = parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    Ok(found)
}

/// Mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_mount_point_type_and_source() {
        let text = "36 27 7:3 / /var/lib/wrenn/sandboxes/cl-1/disk rw,nodev,relatime - ext4 /dev/loop3 rw\n\
                    40 27 0:50 / /tmp/with\\040space rw shared:5 - tmpfs tmpfs rw\n\
                    garbage\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(
            mounts[0].mount_point,
            PathBuf::from("/var/lib/wrenn/sandboxes/cl-1/disk")
        );
        assert_eq!(mounts[0].fs_type, "ext4");
        assert_eq!(mounts[0].source, "/dev/loop3");
        assert_eq!(mounts[1].mount_point, PathBuf::from("/tmp/with space"));
    }
}
