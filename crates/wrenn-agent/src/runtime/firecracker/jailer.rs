//! Firecracker's jailer: it makes a chroot at `<chroot_base>/<exec file name>/<id>/root/`
//! (with a copy of the Firecracker binary and the device nodes it needs), puts the
//! process into cgroups and a network namespace, drops to an unprivileged uid/gid and
//! execs Firecracker inside the chroot.
//!
//! Every path Firecracker is given (API socket, kernel, disks, snapshots) is then
//! relative to that root: [`JailerConfig::stage`] hard-links host files into it
//! before the start and [`JailerConfig::host_path`] maps a jailed path back. The
//! jailer removes nothing: [`JailerConfig::cleanup`] removes the chroot and the
//! VMM's cgroups once it has exited.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::vmm::VmmError;

/// The cgroup the jailer puts VMM cgroups under when none is given.
pub const DEFAULT_PARENT_CGROUP: &str = "firecracker";
/// How long a VMM's cgroup may stay busy after the VMM was reaped.
const CGROUP_RMDIR_PATIENCE: Duration = Duration::from_secs(2);

/// The cgroup hierarchy the jailer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/<controller>/…`).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// The hierarchy this host uses: v2 where the unified hierarchy is mounted at
    /// `/sys/fs/cgroup`, else v1.
    pub fn of_host() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        match cgroup_mount(&mounts, "cgroup2", None) {
            Some(mount) if mount == Path::new("/sys/fs/cgroup") => CgroupVersion::V2,
            _ => CgroupVersion::V1,
        }
    }

    /// The value of `--cgroup-version`.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }
}

/// One `--cgroup <file>=<value>`, e.g. `cpu.cfs_quota_us=50000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// The cgroup file; its controller is the part before the first `.`.
    pub file: String,
    /// The value written to it.
    pub value: String,
}

impl CgroupSetting {
    /// A setting.
    pub fn new(file: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            value: value.into(),
        }
    }

    /// The controller the file belongs to.
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// How the jailer confines one VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// The jailer binary.
    pub jailer: PathBuf,
    /// The Firecracker binary it copies into the chroot and execs (its file name must
    /// contain `firecracker`).
    pub exec_file: PathBuf,
    /// The uid Firecracker runs as.
    pub uid: u32,
    /// The gid Firecracker runs as.
    pub gid: u32,
    /// Where chroots are made.
    pub chroot_base: PathBuf,
    /// A network namespace (`/run/netns/…`) the VMM joins.
    pub netns: Option<PathBuf>,
    /// The cgroup hierarchy.
    pub cgroup_version: CgroupVersion,
    /// Cgroup values for the VMM's cgroups (none: the VMM stays in the jailer's).
    pub cgroups: Vec<CgroupSetting>,
    /// The parent of the VMM's cgroups (default [`DEFAULT_PARENT_CGROUP`]).
    pub parent_cgroup: Option<String>,
    /// `--daemonize`: the jailer calls `setsid` and sends standard I/O to
    /// `/dev/null`, so none of the VMM's output is forwarded.
    pub daemonize: bool,
}

impl JailerConfig {
    /// A configuration with no network namespace, cgroup v1 and no cgroup settings.
    pub fn new(
        jailer: impl Into<PathBuf>,
        exec_file: impl Into<PathBuf>,
        uid: u32,
        gid: u32,
        chroot_base: impl Into<PathBuf>,
    ) -> Self {
        Self {
            jailer: jailer.into(),
            exec_file: exec_file.into(),
            uid,
            gid,
            chroot_base: chroot_base.into(),
            netns: None,
            cgroup_version: CgroupVersion::V1,
            cgroups: Vec::new(),
            parent_cgroup: None,
            daemonize: false,
        }
    }

    /// The jailer's arguments for VMM `id`, followed by Firecracker's own (which must
    /// not repeat `--id`: the jailer passes it).
    pub fn args(&self, id: &str, firecracker_args: &[OsString]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            id.into(),
            "--exec-file".into(),
            self.exec_file.clone().into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
        ];
        if let Some(netns) = &self.netns {
            args.extend(["--netns".into(), netns.clone().into()]);
        }
        args.extend([
            "--cgroup-version".into(),
            self.cgroup_version.as_str().into(),
        ]);
        for setting in &self.cgroups {
            args.extend([
                "--cgroup".into(),
                format!("{}={}", setting.file, setting.value).into(),
            ]);
        }
        if let Some(parent) = &self.parent_cgroup {
            args.extend(["--parent-cgroup".into(), parent.into()]);
        }
        if self.daemonize {
            args.push("--daemonize".into());
        }
        args.push("--".into());
        args.extend(firecracker_args.iter().cloned());
        args
    }

    /// `<chroot_base>/<exec file name>/<id>`: everything the jail of `id` has.
    pub fn chroot_dir(&self, id: &str) -> PathBuf {
        let exec_name = self.exec_file.file_name().unwrap_or_default();
        self.chroot_base.join(exec_name).join(id)
    }

    /// The root of the jail of `id` (`/` for the VMM).
    pub fn root_dir(&self, id: &str) -> PathBuf {
        self.chroot_dir(id).join("root")
    }

    /// The host path of `inside`, a path as the jailed VMM of `id` sees it.
    pub fn host_path(&self, id: &str, inside: &Path) -> PathBuf {
        // Resolved lexically, as the chroot would (`..` stops at its root).
        let mut relative = PathBuf::new();
        for component in inside.components() {
            match component {
                Component::Normal(c) => relative.push(c),
                Component::ParentDir => {
                    relative.pop();
                }
                _ => {}
            }
        }
        self.root_dir(id).join(relative)
    }

    /// Where the jailer records the pid of the VMM of `id` (inside its root).
    pub fn pid_file(&self, id: &str) -> PathBuf {
        let exec_name = self.exec_file.file_name().unwrap_or_default();
        let mut name = exec_name.to_owned();
        name.push(".pid");
        self.root_dir(id).join(name)
    }

    /// The ids of the jails under the chroot base (running or left behind).
    pub fn jails(&self) -> Vec<String> {
        let exec_name = self.exec_file.file_name().unwrap_or_default();
        std::fs::read_dir(self.chroot_base.join(exec_name))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// The pid of the VMM of `id` while it runs, from its pid file (checked against
    /// the process's own `--id`, so a recycled pid is never taken for it).
    pub fn running_pid(&self, id: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file(id))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
            .then_some(pid)
    }

    /// Kills a VMM of `id` that outlived its agent (a jailed VMM is not the agent's
    /// child once the jailer dropped privileges, so it does not die with the agent),
    /// waits for it to go, and removes its jail and cgroups.
    pub async fn kill_and_cleanup(&self, id: &str) -> Result<(), VmmError> {
        if let Some(pid) = self.running_pid(id) {
            // SAFETY: a plain syscall on a pid just checked to be this VMM's.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let deadline = Instant::now() + CGROUP_RMDIR_PATIENCE;
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.cleanup(id).await
    }

    /// Hard-links `source` into the root of the jail of `id` as `name` (before the
    /// VMM starts) and returns its path as the VMM sees it (`/<name>`). A `writable`
    /// file is given to the jail's uid and gid — the same inode as `source`, so
    /// `source` changes owner too. A read-only file the jail's user could not read, or
    /// one on another file system, is copied instead; a writable one must be on the
    /// chroot's file system.
    pub fn stage(
        &self,
        id: &str,
        source: &Path,
        name: &str,
        writable: bool,
    ) -> Result<PathBuf, VmmError> {
        let mut components = Path::new(name).components();
        if !matches!(
            (components.next(), components.next()),
            (Some(Component::Normal(_)), None)
        ) {
            return Err(VmmError::InvalidName(name.to_owned()));
        }
        let root = self.root_dir(id);
        std::fs::create_dir_all(&root).map_err(VmmError::io("create", &root))?;
        let target = root.join(name);
        if writable {
            std::fs::hard_link(source, &target).map_err(VmmError::io("hard-link", source))?;
            std::os::unix::fs::chown(&target, Some(self.uid), Some(self.gid))
                .map_err(VmmError::io("chown", &target))?;
            return Ok(Path::new("/").join(name));
        }
        let meta = std::fs::metadata(source).map_err(VmmError::io("read", source))?;
        let readable = {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let mode = meta.permissions().mode();
            mode & 0o004 != 0
                || (meta.uid() == self.uid && mode & 0o400 != 0)
                || (meta.gid() == self.gid && mode & 0o040 != 0)
        };
        let linked = readable && std::fs::hard_link(source, &target).is_ok();
        if !linked {
            std::fs::copy(source, &target).map_err(VmmError::io("copy", source))?;
            std::os::unix::fs::chown(&target, Some(self.uid), Some(self.gid))
                .map_err(VmmError::io("chown", &target))?;
        }
        Ok(Path::new("/").join(name))
    }

    /// The cgroup directories the jailer makes for VMM `id`: one per configured
    /// controller (v1) or one in the unified hierarchy (v2); none without settings.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        if self.cgroups.is_empty() {
            return Vec::new();
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let parent = self
            .parent_cgroup
            .as_deref()
            .unwrap_or(DEFAULT_PARENT_CGROUP);
        let mut mount_points = Vec::new();
        match self.cgroup_version {
            CgroupVersion::V1 => {
                for setting in &self.cgroups {
                    if let Some(mount) = cgroup_mount(&mounts, "cgroup", Some(setting.controller()))
                        && !mount_points.contains(&mount)
                    {
                        mount_points.push(mount);
                    }
                }
            }
            CgroupVersion::V2 => mount_points.extend(cgroup_mount(&mounts, "cgroup2", None)),
        }
        mount_points
            .into_iter()
            .map(|m| m.join(parent.trim_matches('/')).join(id))
            .collect()
    }

    /// Removes the jail of `id` and its cgroups (the VMM must have exited). The
    /// parent cgroup stays: other VMMs share it. Missing pieces are fine.
    pub async fn cleanup(&self, id: &str) -> Result<(), VmmError> {
        let mut first_error = None;
        let chroot = self.chroot_dir(id);
        if let Err(e) = tokio::fs::remove_dir_all(&chroot).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            first_error = Some(VmmError::io("remove", &chroot)(e));
        }
        for dir in self.cgroup_dirs(id) {
            if let Err(e) = remove_cgroup(&dir).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The mount point of the cgroup file system of `fstype` (with `controller` among
/// its options for v1) in `/proc/self/mounts` text.
fn cgroup_mount(mounts: &str, fstype: &str, controller: Option<&str>) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, kind, options, ..] = fields[..] else {
            return None;
        };
        let fits = kind == fstype && controller.is_none_or(|c| options.split(',').any(|o| o == c));
        fits.then(|| PathBuf::from(mount_point))
    })
}

/// Removes a cgroup directory, retrying while the kernel still counts the exited VMM.
async fn remove_cgroup(dir: &Path) -> Result<(), VmmError> {
    let deadline = Instant::now() + CGROUP_RMDIR_PATIENCE;
    loop {
        match tokio::fs::remove_dir(dir).await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(VmmError::io("remove", dir)(e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JailerConfig {
        let mut config = JailerConfig::new(
            "/usr/bin/jailer",
            "/opt/fc/firecracker",
            65534,
            65534,
            "/srv/jailer",
        );
        config.netns = Some("/run/netns/wrenn-x".into());
        config.cgroups = vec![CgroupSetting::new("cpu.cfs_quota_us", "50000")];
        config
    }

    #[test]
    fn the_jailer_argv_is_exact() {
        let args = config().args(
            "cl-1",
            &["--api-sock".into(), "/run/firecracker.socket".into()],
        );
        let line: Vec<_> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            line.join(" "),
            "--id cl-1 --exec-file /opt/fc/firecracker --uid 65534 --gid 65534 \
             --chroot-base-dir /srv/jailer --netns /run/netns/wrenn-x --cgroup-version 1 \
             --cgroup cpu.cfs_quota_us=50000 -- --api-sock /run/firecracker.socket"
        );
    }

    #[test]
    fn jailed_paths_map_into_the_chroot() {
        let c = config();
        assert_eq!(
            c.root_dir("cl-1"),
            Path::new("/srv/jailer/firecracker/cl-1/root")
        );
        assert_eq!(
            c.host_path("cl-1", Path::new("/../run/./x/../firecracker.socket")),
            Path::new("/srv/jailer/firecracker/cl-1/root/run/firecracker.socket")
        );
    }

    #[test]
    fn cgroup_mounts_are_found_per_controller() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            cgroup_mount(mounts, "cgroup", Some("cpuacct")),
            Some(PathBuf::from("/sys/fs/cgroup/cpuacct"))
        );
        assert_eq!(
            cgroup_mount(mounts, "cgroup2", None),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup_mount(mounts, "cgroup", Some("memory")), None);
    }

    #[test]
    fn staged_names_are_plain_file_names() {
        for bad in ["", "a/b", "..", "/x"] {
            assert!(
                matches!(
                    config().stage("cl-1", Path::new("/nope"), bad, false),
                    Err(VmmError::InvalidName(_))
                ),
                "{bad}"
            );
        }
    }
}
