//! Fast cgroup migrations: every capsule's init step moves itself into the capsule's
//! cgroups, and by default each first move after a quiet period waits for an RCU grace
//! period (about 10 ms here) on the kernel's global thread-group lock. The cgroup2
//! `favordynmods` flag keeps that lock in its writer-friendly mode (migrations ~0.1 ms,
//! for cgroup v1 hierarchies too, as the lock is shared), at a small cost to `fork` and
//! `exit` host-wide.

use std::path::PathBuf;

use rustix::mount::MountFlags;

/// The option that does it.
const FLAG: &str = "favordynmods";

/// Turns `favordynmods` on for the cgroup2 hierarchy, keeping its other options:
/// remounts a mounted cgroup2 with them plus the flag, or mounts cgroup2 on `scratch`
/// (an empty directory) with the flag and unmounts it again (the flag belongs to the
/// hierarchy, not to the mount). Returns whether the flag was already on.
pub fn enable(scratch: &std::path::Path) -> std::io::Result<bool> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let cgroup2 = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut fields = after.split_whitespace();
        (fields.next()? == "cgroup2").then_some(())?;
        let super_options = fields.nth(1)?.to_owned();
        let mount_point = before.split_whitespace().nth(4)?.to_owned();
        Some((PathBuf::from(mount_point), super_options))
    });
    match cgroup2 {
        Some((_, options)) if options.split(',').any(|o| o == FLAG) => Ok(true),
        Some((mount_point, options)) => {
            let mut kept: Vec<&str> = options
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .collect();
            kept.push(FLAG);
            let data = std::ffi::CString::new(kept.join(","))?;
            rustix::mount::mount_remount(&mount_point, MountFlags::empty(), data.as_c_str())?;
            Ok(false)
        }
        None => {
            std::fs::create_dir_all(scratch)?;
            rustix::mount::mount(
                "none",
                scratch,
                "cgroup2",
                MountFlags::empty(),
                c"favordynmods",
            )?;
            rustix::mount::unmount(scratch, rustix::mount::UnmountFlags::DETACH)?;
            let _ = std::fs::remove_dir(scratch);
            Ok(false)
        }
    }
}
