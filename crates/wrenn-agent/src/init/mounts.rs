//! The capsule's mount tree, built by host root in the capsule's mount namespace.
//!
//! Every overlay layer is an idmapped clone attached in a private staging tmpfs (mounted
//! on the sandbox's `rootfs` directory, so nothing of it is visible on the host) and
//! named there by a short relative name: `/proc/self/mountinfo` in the capsule shows
//! `lowerdir=l0:l1,upperdir=s/upper,workdir=s/work`, no host path. After `pivot_root` the
//! staging area is detached with the host's tree.

use std::fs;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::userns::{self, IdMap};
use super::{Context, InitError, InitSpec};

/// Directories under `/proc` hidden under an empty read-only tmpfs (runc's list).
const MASKED_PROC_DIRS: &[&str] = &["acpi", "asound", "scsi"];
/// Files under `/proc` hidden under `/dev/null` (runc's list).
const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
];
/// `/proc` entries made read-only (runc's list).
const READ_ONLY_PROC: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// Directories under `/sys` hidden under an empty read-only tmpfs (runc's list).
const MASKED_SYS_DIRS: &[&str] = &["firmware", "devices/virtual/powercap"];

/// Mounts the capsule's root filesystem in a staging tmpfs on `spec.root` and returns
/// the mount point of the root overlay. Leaves the working directory in the staging
/// area.
pub(super) fn root_filesystem(
    spec: &InitSpec,
    userns: BorrowedFd<'_>,
) -> Result<PathBuf, InitError> {
    let staging = spec.root.as_path();
    mount_fs(
        "tmpfs",
        staging,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "mode=0700,size=1m",
    )?;
    std::env::set_current_dir(staging)
        .context(|| format!("enter the staging area {}", staging.display()))?;

    let mut lowers = Vec::with_capacity(spec.lowers.len());
    for (i, layer) in spec.lowers.iter().enumerate() {
        let path = match &spec.lower_base {
            Some(base) => base.join(layer),
            None => PathBuf::from(layer),
        };
        let name = format!("l{i}");
        attach_idmapped(&path, userns, true, &name)?;
        lowers.push(name);
    }
    if lowers.is_empty() {
        return Err(InitError::invalid("the template has no layers"));
    }

    let (Some(upper_dir), Some(upper_name), Some(work_name)) = (
        spec.upper.parent(),
        spec.upper.file_name(),
        spec.work.file_name(),
    ) else {
        return Err(InitError::invalid(
            "upper and work must be named directories",
        ));
    };
    if spec.work.parent() != Some(upper_dir) {
        return Err(InitError::invalid(
            "upper and work must be in the same directory",
        ));
    }
    attach_idmapped(upper_dir, userns, false, "s")?;
    let options = format!(
        "lowerdir={},upperdir=s/{},workdir=s/{}",
        lowers.join(":"),
        upper_name.to_string_lossy(),
        work_name.to_string_lossy(),
    );
    // Overlayfs works in the upper layer with its mounter's credentials (the work
    // directory, copy-up). Through the idmapped upper mount, host root is unmapped
    // (EOVERFLOW), so mount it as the capsule's root ids, keeping every capability.
    userns::as_fs_ids(spec.id_map.host_base, || {
        mount_fs(
            "overlay",
            Path::new("r"),
            "overlay",
            MountFlags::empty(),
            &options,
        )
    })?;
    Ok(staging.join("r"))
}

/// Writes `content` as `/etc/resolv.conf` of the mounted root `root`, owned by the
/// capsule's root. Whatever stands there (the image's file, or a symlink the capsule
/// made) is replaced through a rename in `/etc`, so no link is ever followed; a root
/// without a real `/etc` directory is left alone.
pub(super) fn write_resolv_conf(root: &Path, content: &str, map: IdMap) -> Result<(), InitError> {
    let etc = root.join("etc");
    if !fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let staged = etc.join(".resolv.conf.wrenn");
    let target = etc.join("resolv.conf");
    userns::as_fs_ids(map.host_base, || {
        let _ = fs::remove_file(&staged);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&staged)
            .context(|| format!("create {}", staged.display()))?;
        std::io::Write::write_all(&mut file, content.as_bytes())
            .context(|| format!("write {}", staged.display()))?;
        fs::rename(&staged, &target).context(|| format!("replace {}", target.display()))
    })
}

/// Clones `source` idmapped (read-only if asked) and attaches it at `name` in the
/// current directory.
fn attach_idmapped(
    source: &Path,
    userns: BorrowedFd<'_>,
    read_only: bool,
    name: &str,
) -> Result<(), InitError> {
    let tree = userns::idmapped_clone(source, userns, read_only)?;
    mkdir(Path::new(name), 0o700)?;
    userns::attach(tree.as_fd(), Path::new(name))
}

/// `chown` to what host ids `uid`/`gid` look like through the idmapped root: capsule
/// ids `uid`/`gid` (unmapped ids stay as they are).
fn chown(path: &Path, map: IdMap, uid: u32, gid: u32) -> Result<(), InitError> {
    let uid = map.to_host(uid).unwrap_or(uid);
    let gid = map.to_host(gid).unwrap_or(gid);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .context(|| format!("chown {}", path.display()))
}

/// Mounts `/proc`, `/sys`, `/dev` (with `pts`, `shm`) and `/run` in the new root
/// `root`, owned by capsule root. `/tmp` stays the root filesystem's, on the capsule's
/// sized disk.
pub(super) fn capsule_filesystems(root: &Path, spec: &InitSpec) -> Result<(), InitError> {
    let owner = spec.id_map.host_base;
    proc(root)?;
    sys(root)?;
    dev(root, spec)?;
    let run = root.join("run");
    mount_fs(
        "tmpfs",
        &run,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("mode=0755,size=64m,uid={owner},gid={owner}"),
    )?;
    let lock = run.join("lock");
    mkdir(&lock, 0o1777)?;
    chown(&lock, spec.id_map, 0, 0)
}

/// A private `/proc` for the new pid namespace with runc's masked and read-only paths.
fn proc(root: &Path) -> Result<(), InitError> {
    let proc_dir = root.join("proc");
    mount_fs(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    for ro in READ_ONLY_PROC {
        let path = proc_dir.join(ro);
        if path.exists() {
            rustix::mount::mount_bind(&path, &path)
                .context(|| format!("bind {}", path.display()))?;
            remount_read_only(&path)?;
        }
    }
    for masked in MASKED_PROC_FILES {
        let path = proc_dir.join(masked);
        if path.exists() {
            rustix::mount::mount_bind("/dev/null", &path)
                .context(|| format!("mask {}", path.display()))?;
        }
    }
    for masked in MASKED_PROC_DIRS {
        mask_dir(&proc_dir.join(masked))?;
    }
    Ok(())
}

/// A read-only `/sys` (showing the capsule's network namespace) with runc's masks.
fn sys(root: &Path) -> Result<(), InitError> {
    let sys = root.join("sys");
    mount_fs(
        "sysfs",
        &sys,
        "sysfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    for masked in MASKED_SYS_DIRS {
        mask_dir(&sys.join(masked))?;
    }
    Ok(())
}

/// Hides a directory under an empty read-only tmpfs, if it exists.
fn mask_dir(path: &Path) -> Result<(), InitError> {
    if path.is_dir() {
        rustix::mount::mount(
            "tmpfs",
            path,
            "tmpfs",
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"size=0,mode=0555",
        )
        .context(|| format!("mask {}", path.display()))?;
    }
    Ok(())
}

/// `/dev`: a tmpfs with the host's harmless character devices bound in, a new `devpts`
/// instance (group `tty` = capsule gid 5) and a sized `/dev/shm`.
fn dev(root: &Path, spec: &InitSpec) -> Result<(), InitError> {
    let owner = spec.id_map.host_base;
    let dev = root.join("dev");
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        &format!("mode=0755,size=64k,uid={owner},gid={owner}"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        fs::File::create(&target).context(|| format!("create {}", target.display()))?;
        rustix::mount::mount_bind(Path::new("/dev").join(node), &target)
            .context(|| format!("bind /dev/{node}"))?;
    }
    let tty_gid = spec.id_map.to_host(5).unwrap_or(owner);
    mount_fs(
        "devpts",
        &dev.join("pts"),
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        &format!("newinstance,gid={tty_gid},mode=0620,ptmxmode=0666"),
    )?;
    mount_fs(
        "tmpfs",
        &dev.join("shm"),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("mode=1777,size={},uid={owner},gid={owner}", spec.shm_size),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        symlink(target, &path).context(|| format!("symlink {}", path.display()))?;
        chown(&path, spec.id_map, 0, 0)?;
    }
    Ok(())
}

/// Makes every mount of the (new) mount namespace private.
pub(super) fn make_private() -> Result<(), InitError> {
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .context(|| "make mounts private".into())
}

/// `pivot_root` into `root` and detach the old root (runc's `pivot_root(".", ".")`).
pub(super) fn pivot_into(root: &Path) -> Result<(), InitError> {
    std::env::set_current_dir(root).context(|| format!("enter {}", root.display()))?;
    rustix::process::pivot_root(".", ".").context(|| "pivot_root".into())?;
    rustix::mount::mount_change(
        ".",
        MountPropagationFlags::REC | MountPropagationFlags::DOWNSTREAM,
    )
    .context(|| "make the old root a slave".into())?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).context(|| "detach the old root".into())?;
    std::env::set_current_dir("/").context(|| "enter /".into())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), InitError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => {}
        Err(e) => return Err(InitError::new(format!("create {}", path.display()), e)),
    }
    // The umask may have cut the mode (sticky and group bits matter here).
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .context(|| format!("chmod {}", path.display()))
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), InitError> {
    if !target.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(target)
            .context(|| format!("create {}", target.display()))?;
    }
    let c = std::ffi::CString::new(data)
        .map_err(|_| InitError::invalid("mount options contain a NUL byte"))?;
    rustix::mount::mount(source, target, fstype, flags, c.as_c_str())
        .context(|| format!("mount {fstype} ({data}) on {}", target.display()))
}

fn remount_read_only(target: &Path) -> Result<(), InitError> {
    rustix::mount::mount_remount(
        target,
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .context(|| format!("remount {} read-only", target.display()))
}
