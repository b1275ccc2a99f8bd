//! Cgroup limits, freezing and accounting for process-runtime sandboxes.
//!
//! Detection (at [`ProcessRuntime::new`](super::ProcessRuntime::new)) reads
//! `/proc/self/mountinfo`:
//!
//! - **v2** is used when a `cgroup2` mount offers the `cpu`, `memory` and `pids`
//!   controllers. Sandbox `{id}` gets `<mount>/<parent>/{id}` with `cpu.max`
//!   (`vcpus × period`), `memory.max` (+ `memory.swap.max = 0`), `pids.max`;
//!   pause writes `cgroup.freeze`. When the hierarchy offers the `io` controller, the
//!   sandbox's disk device gets `io.max` (bytes and IOs per second) and `io.weight`
//!   (where the kernel has it: BFQ or `io.cost`). Untested on the hosts we run CI on,
//!   which are v1.
//! - **v1** otherwise, when the `cpu`, `cpuacct`, `memory`, `pids` and `freezer`
//!   hierarchies are all mounted: `<hierarchy>/<parent>/{id}` in each, with
//!   `cpu.cfs_quota_us = vcpus × cpu.cfs_period_us`, `memory.limit_in_bytes` (and
//!   `memory.memsw.limit_in_bytes` when swap accounting exists), `pids.max`, and
//!   `freezer.state` for pause; CPU time comes from `cpuacct.usage`. When the `blkio`
//!   hierarchy is mounted too, the sandbox's disk device gets
//!   `blkio.throttle.{read,write}_{bps,iops}_device`, and `blkio.weight` (or
//!   `blkio.bfq.weight`) where the device's scheduler supports weights (BFQ). On v1
//!   buffered writeback is issued by kernel flusher threads and is not charged to the
//!   sandbox: the write limits bind direct and synchronous writes (and reads) only;
//!   v2 attributes writeback to the cgroup that dirtied the pages.
//!
//! `<parent>` is [`ProcessRuntimeOptions::cgroup_parent`](super::ProcessRuntimeOptions)
//! (`wrenn-sandboxes`), directly under each hierarchy's root, so it is stable across
//! agent restarts and leftovers can be found by sandbox id.

use crate::runtime::error_chain;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// CFS period used for CPU quotas (µs).
const CPU_PERIOD_US: u64 = 100_000;

/// The cgroup version and hierarchies a host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupDriver {
    /// The unified hierarchy, mounted here.
    V2 {
        /// Mount point of the `cgroup2` filesystem.
        mount: PathBuf,
    },
    /// Legacy hierarchies, one mount point per controller.
    V1 {
        /// `cpu` (quota).
        cpu: PathBuf,
        /// `cpuacct` (usage).
        cpuacct: PathBuf,
        /// `memory`.
        memory: PathBuf,
        /// `pids`.
        pids: PathBuf,
        /// `freezer` (pause).
        freezer: PathBuf,
        /// `blkio` (I/O limits), when mounted.
        blkio: Option<PathBuf>,
    },
}

impl CgroupDriver {
    /// Finds a usable cgroup setup, or says what is missing.
    pub fn detect() -> Result<Self, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {}", error_chain(&e)))?;
        let mut v1: Vec<(Vec<String>, PathBuf)> = Vec::new();
        let mut v2_missing = String::from("no cgroup2 filesystem is mounted");
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).map(unescape);
            let mut right = right.split(' ');
            let (fstype, super_opts) = (right.next(), right.nth(1));
            let Some(mount_point) = mount_point else {
                continue;
            };
            match fstype {
                Some("cgroup2") => {
                    let controllers = fs::read_to_string(mount_point.join("cgroup.controllers"))
                        .unwrap_or_default();
                    let have: Vec<&str> = controllers.split_whitespace().collect();
                    let missing: Vec<&str> = ["cpu", "memory", "pids"]
                        .into_iter()
                        .filter(|c| !have.contains(c))
                        .collect();
                    if missing.is_empty() {
                        return Ok(Self::V2 { mount: mount_point });
                    }
                    v2_missing = format!(
                        "the cgroup2 hierarchy at {} lacks the {} controller(s)",
                        mount_point.display(),
                        missing.join(", ")
                    );
                }
                Some("cgroup") => {
                    let opts = super_opts
                        .unwrap_or_default()
                        .split(',')
                        .map(str::to_owned)
                        .collect();
                    v1.push((opts, mount_point));
                }
                _ => {}
            }
        }
        let find = |name: &str| {
            v1.iter()
                .find(|(opts, _)| opts.iter().any(|o| o == name))
                .map(|(_, mp)| mp.clone())
        };
        let wanted = ["cpu", "cpuacct", "memory", "pids", "freezer"];
        let found: Vec<Option<PathBuf>> = wanted.iter().map(|c| find(c)).collect();
        let missing: Vec<&str> = wanted
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(c, _)| *c)
            .collect();
        if let [
            Some(cpu),
            Some(cpuacct),
            Some(memory),
            Some(pids),
            Some(freezer),
        ] = found.as_slice()
        {
            return Ok(Self::V1 {
                cpu: cpu.clone(),
                cpuacct: cpuacct.clone(),
                memory: memory.clone(),
                pids: pids.clone(),
                freezer: freezer.clone(),
                blkio: find("blkio"),
            });
        }
        Err(format!(
            "no usable cgroups: {v2_missing}, and the cgroup v1 hierarchies for {} are not mounted",
            missing.join(", ")
        ))
    }

    /// `v1` or `v2`.
    pub fn version(&self) -> &'static str {
        match self {
            Self::V1 { .. } => "v1",
            Self::V2 { .. } => "v2",
        }
    }

    /// The cgroup of sandbox `name` under `parent` (nothing is created).
    pub fn sandbox(&self, parent: &str, name: &str) -> SandboxCgroup {
        match self {
            Self::V2 { mount } => SandboxCgroup::V2 {
                dir: mount.join(parent).join(name),
            },
            Self::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
                freezer,
                blkio,
            } => SandboxCgroup::V1 {
                cpu: cpu.join(parent).join(name),
                cpuacct: cpuacct.join(parent).join(name),
                memory: memory.join(parent).join(name),
                pids: pids.join(parent).join(name),
                freezer: freezer.join(parent).join(name),
                blkio: blkio.as_ref().map(|b| b.join(parent).join(name)),
            },
        }
    }
}

/// Limits of the parent cgroup that holds every sandbox, so that all of them together
/// cannot exhaust the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLimits {
    /// `pids.max`: tasks all sandboxes may run together.
    pub pids_max: u64,
    /// Memory all sandboxes may use together (bytes).
    pub memory_bytes: u64,
}

impl CgroupDriver {
    /// Creates the parent cgroup `parent` (enabling the controllers on the way down,
    /// v2) and applies `limits` to it.
    pub fn limit_parent(&self, parent: &str, limits: ParentLimits) -> io::Result<()> {
        let pids = limits.pids_max.to_string();
        let memory = limits.memory_bytes.to_string();
        match self {
            Self::V2 { mount } => {
                let subtree = mount.join("cgroup.subtree_control");
                let enabled = fs::read_to_string(&subtree).unwrap_or_default();
                for c in ["cpu", "memory", "pids"] {
                    if !enabled.split_whitespace().any(|e| e == c) {
                        write(&subtree, &format!("+{c}"))?;
                    }
                }
                let dir = mount.join(parent);
                mkdir(&dir)?;
                write(&dir.join("pids.max"), &pids)?;
                write(&dir.join("memory.max"), &memory)
            }
            Self::V1 {
                memory: mem,
                pids: pid,
                ..
            } => {
                let (mem, pid) = (mem.join(parent), pid.join(parent));
                mkdir(&mem)?;
                mkdir(&pid)?;
                write(&pid.join("pids.max"), &pids)?;
                write(&mem.join("memory.limit_in_bytes"), &memory)
            }
        }
    }

    /// The `pids.max` and memory limit (bytes) in force on the parent cgroup.
    pub fn parent_limits(&self, parent: &str) -> io::Result<(String, String)> {
        let (pids, memory) = match self {
            Self::V2 { mount } => (
                mount.join(parent).join("pids.max"),
                mount.join(parent).join("memory.max"),
            ),
            Self::V1 { memory, pids, .. } => (
                pids.join(parent).join("pids.max"),
                memory.join(parent).join("memory.limit_in_bytes"),
            ),
        };
        Ok((
            fs::read_to_string(pids)?.trim().to_owned(),
            fs::read_to_string(memory)?.trim().to_owned(),
        ))
    }
}

/// Mountinfo escapes spaces and friends as octal (`\040`).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
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

/// Limits applied to a sandbox's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPUs (quota = vcpus × period).
    pub vcpus: u32,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Maximum number of tasks.
    pub pids_max: u32,
}

/// One sandbox's cgroup(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxCgroup {
    /// `<cgroup2>/<parent>/{id}`.
    V2 {
        /// The cgroup directory.
        dir: PathBuf,
    },
    /// One directory per v1 hierarchy.
    V1 {
        /// In the `cpu` hierarchy.
        cpu: PathBuf,
        /// In the `cpuacct` hierarchy.
        cpuacct: PathBuf,
        /// In the `memory` hierarchy.
        memory: PathBuf,
        /// In the `pids` hierarchy.
        pids: PathBuf,
        /// In the `freezer` hierarchy.
        freezer: PathBuf,
        /// In the `blkio` hierarchy, when it is mounted.
        blkio: Option<PathBuf>,
    },
}

/// I/O limits of a sandbox on its disk's block device. `None` = unlimited.
///
/// The defaults are generous — they stop one sandbox from saturating the host's disk,
/// not ordinary work: 1 GiB/s and 40 000 IOPS each way, weight 100 (the kernel's
/// default; it only matters under contention, with a scheduler that honours weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoLimits {
    /// Proportional weight, 1–10000 on v2 (`io.weight`); clamped to 10–1000 for v1
    /// (`blkio.weight`).
    pub weight: u16,
    /// Read bytes per second.
    pub read_bps: Option<u64>,
    /// Write bytes per second.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

impl Default for IoLimits {
    fn default() -> Self {
        Self {
            weight: 100,
            read_bps: Some(1 << 30),
            write_bps: Some(1 << 30),
            read_iops: Some(40_000),
            write_iops: Some(40_000),
        }
    }
}

impl IoLimits {
    /// The v2 `io.max` line for device `major:minor`.
    pub fn io_max_line(&self, major: u32, minor: u32) -> String {
        let v = |l: Option<u64>| l.map_or_else(|| "max".to_owned(), |n| n.to_string());
        format!(
            "{major}:{minor} rbps={} wbps={} riops={} wiops={}",
            v(self.read_bps),
            v(self.write_bps),
            v(self.read_iops),
            v(self.write_iops)
        )
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {}", path.display(), error_chain(&e)),
        )
    })
}

fn read_u64(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a number: {text:?}", path.display()),
        )
    })
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`).
fn read_key(path: &Path, key: &str) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0))
}

fn mkdir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("create cgroup {}: {}", path.display(), error_chain(&e)),
        )),
    }
}

impl SandboxCgroup {
    /// Every directory of this cgroup.
    pub fn dirs(&self) -> Vec<&Path> {
        match self {
            Self::V2 { dir } => vec![dir],
            Self::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
                freezer,
                blkio,
            } => {
                let mut dirs: Vec<&Path> = vec![cpu, cpuacct, memory, pids, freezer];
                dirs.extend(blkio.as_deref());
                dirs
            }
        }
    }

    /// Whether any directory of this cgroup exists.
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.is_dir())
    }

    /// The `cgroup.procs` files a process writes `0` to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Creates the cgroup (and its parent) and applies `limits`.
    pub fn create(&self, limits: Limits) -> io::Result<()> {
        match self {
            Self::V2 { dir } => {
                let parent = dir.parent().unwrap_or(dir);
                // Controllers must be enabled on the way down: in the hierarchy's root
                // (exempt from the no-internal-processes rule) and in the parent.
                for level in [parent.parent(), Some(parent)].into_iter().flatten() {
                    if !level.is_dir() {
                        mkdir(level)?;
                    }
                    let subtree = level.join("cgroup.subtree_control");
                    let enabled = fs::read_to_string(&subtree).unwrap_or_default();
                    let available =
                        fs::read_to_string(level.join("cgroup.controllers")).unwrap_or_default();
                    // `io` is optional: without it the disk is still sized, not throttled.
                    let io = available.split_whitespace().any(|c| c == "io");
                    for c in ["cpu", "memory", "pids"]
                        .into_iter()
                        .chain(io.then_some("io"))
                    {
                        if !enabled.split_whitespace().any(|e| e == c) {
                            write(&subtree, &format!("+{c}"))?;
                        }
                    }
                }
                mkdir(dir)?;
            }
            Self::V1 { .. } => {
                for d in self.dirs() {
                    if let Some(parent) = d.parent() {
                        mkdir(parent)?;
                    }
                    mkdir(d)?;
                }
            }
        }
        self.set_limits(limits)
    }

    /// Applies `limits` (CPU quota, memory, tasks) to the existing cgroup.
    pub fn set_limits(&self, limits: Limits) -> io::Result<()> {
        let quota = u64::from(limits.vcpus.max(1)) * CPU_PERIOD_US;
        match self {
            Self::V2 { dir } => {
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
            }
            Self::V1 {
                cpu, memory, pids, ..
            } => {
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(
                    &memory.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &limits.memory_bytes.to_string())?;
                }
                write(&pids.join("pids.max"), &limits.pids_max.to_string())?;
            }
        }
        Ok(())
    }

    /// Renames this cgroup to `to` (same hierarchies and parent) with its processes
    /// and limits. Cgroup v1 allows it; the unified hierarchy (v2) refuses renames
    /// (`EPERM`). On failure every directory already renamed is renamed back.
    pub fn rename_to(&self, to: &SandboxCgroup) -> io::Result<()> {
        let pairs: Vec<(&Path, &Path)> = self.dirs().into_iter().zip(to.dirs()).collect();
        for (done, (from, into)) in pairs.iter().enumerate() {
            if let Err(e) = fs::rename(from, into) {
                for (from, into) in &pairs[..done] {
                    let _ = fs::rename(into, from);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Applies `limits` to block device `major:minor` (the sandbox's disk). A
    /// hierarchy without I/O control (v1 without `blkio`, v2 without `io`) is left
    /// alone; weights are written only where the kernel offers them.
    pub fn set_io_limits(&self, major: u32, minor: u32, limits: &IoLimits) -> io::Result<()> {
        match self {
            Self::V2 { dir } => {
                let max = dir.join("io.max");
                if max.exists() {
                    write(&max, &limits.io_max_line(major, minor))?;
                }
                let weight = dir.join("io.weight");
                if weight.exists() {
                    write(
                        &weight,
                        &format!("default {}", limits.weight.clamp(1, 10_000)),
                    )?;
                }
            }
            Self::V1 {
                blkio: Some(blkio), ..
            } => {
                let weight = limits.weight.clamp(10, 1000).to_string();
                for file in ["blkio.weight", "blkio.bfq.weight"] {
                    let path = blkio.join(file);
                    if path.exists() {
                        write(&path, &weight)?;
                    }
                }
                // 0 removes a rule, so "unlimited" is written as 0.
                for (file, value) in [
                    ("blkio.throttle.read_bps_device", limits.read_bps),
                    ("blkio.throttle.write_bps_device", limits.write_bps),
                    ("blkio.throttle.read_iops_device", limits.read_iops),
                    ("blkio.throttle.write_iops_device", limits.write_iops),
                ] {
                    let path = blkio.join(file);
                    let rule = format!("{major}:{minor} {}", value.unwrap_or(0));
                    write(&path, &rule)?;
                }
            }
            Self::V1 { blkio: None, .. } => {}
        }
        Ok(())
    }

    /// The memory limit in force (bytes).
    pub fn memory_limit(&self) -> io::Result<u64> {
        match self {
            Self::V2 { dir } => read_u64(&dir.join("memory.max")),
            Self::V1 { memory, .. } => read_u64(&memory.join("memory.limit_in_bytes")),
        }
    }

    /// Memory in use, without reclaimable inactive page cache (bytes).
    pub fn memory_usage(&self) -> io::Result<u64> {
        let (usage, stat, inactive_key) = match self {
            Self::V2 { dir } => (
                read_u64(&dir.join("memory.current"))?,
                dir.join("memory.stat"),
                "inactive_file",
            ),
            Self::V1 { memory, .. } => (
                read_u64(&memory.join("memory.usage_in_bytes"))?,
                memory.join("memory.stat"),
                "total_inactive_file",
            ),
        };
        let inactive = read_key(&stat, inactive_key).unwrap_or(0);
        Ok(usage.saturating_sub(inactive))
    }

    /// Total CPU time used by the sandbox (ns).
    pub fn cpu_usage_ns(&self) -> io::Result<u64> {
        match self {
            Self::V2 { dir } => Ok(read_key(&dir.join("cpu.stat"), "usage_usec")? * 1000),
            Self::V1 { cpuacct, .. } => read_u64(&cpuacct.join("cpuacct.usage")),
        }
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let file = match self {
            Self::V2 { dir } => dir.join("cgroup.procs"),
            Self::V1 { freezer, .. } => freezer.join("cgroup.procs"),
        };
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Freezes every process and waits until the kernel reports the cgroup frozen.
    pub fn freeze(&self, timeout: Duration) -> io::Result<()> {
        self.set_frozen(true, timeout)
    }

    /// Thaws the cgroup.
    pub fn thaw(&self, timeout: Duration) -> io::Result<()> {
        self.set_frozen(false, timeout)
    }

    /// Whether the cgroup is frozen.
    pub fn is_frozen(&self) -> io::Result<bool> {
        match self {
            Self::V2 { dir } => Ok(read_key(&dir.join("cgroup.events"), "frozen")? == 1),
            Self::V1 { freezer, .. } => {
                Ok(fs::read_to_string(freezer.join("freezer.state"))?.trim() == "FROZEN")
            }
        }
    }

    fn set_frozen(&self, frozen: bool, timeout: Duration) -> io::Result<()> {
        match self {
            Self::V2 { dir } => write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?,
            Self::V1 { freezer, .. } => write(
                &freezer.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            )?,
        }
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            if self.is_frozen()? == frozen {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "cgroup did not become {} within {timeout:?}",
                        if frozen { "frozen" } else { "thawed" }
                    ),
                ));
            }
            // v1 re-tries freezing tasks that were busy on each write of FROZEN.
            if frozen {
                if let Self::V1 { freezer, .. } = self {
                    write(&freezer.join("freezer.state"), "FROZEN")?;
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// SIGKILLs every process in the cgroup (thawing it so they can die) and waits
    /// until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> io::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if !self.kill_now() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "processes of {:?} did not exit within {timeout:?}",
                        self.dirs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Ids of every thread in the cgroup.
    pub fn threads(&self) -> Vec<i32> {
        let file = match self {
            Self::V2 { dir } => dir.join("cgroup.threads"),
            Self::V1 { cpu, .. } => cpu.join("tasks"),
        };
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `SIGKILL` to every process in the cgroup once (and thaws it, so frozen
    /// ones die), without waiting for them to exit. Returns whether there was any.
    pub fn kill_now(&self) -> bool {
        let pids = self.pids();
        if pids.is_empty() {
            return false;
        }
        if let Self::V2 { dir } = self {
            let kill = dir.join("cgroup.kill");
            if kill.exists() {
                let _ = write(&kill, "1");
            }
        }
        for pid in pids {
            kill_pid(pid);
        }
        let _ = self.set_frozen_nowait(false);
        true
    }

    fn set_frozen_nowait(&self, frozen: bool) -> io::Result<()> {
        match self {
            Self::V2 { dir } => write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
            Self::V1 { freezer, .. } => write(
                &freezer.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
        }
    }

    /// Removes the cgroup directories (retrying while the kernel still holds exited
    /// tasks). Missing directories are fine.
    pub fn remove(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        for dir in self.dirs() {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("remove cgroup {}: {}", dir.display(), error_chain(&e)),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// SIGKILL, ignoring processes that are already gone.
pub fn kill_pid(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_max_lines_name_the_device_and_write_max_for_unlimited() {
        let limits = IoLimits {
            weight: 100,
            read_bps: Some(1024),
            write_bps: None,
            read_iops: Some(10),
            write_iops: None,
        };
        assert_eq!(
            limits.io_max_line(7, 3),
            "7:3 rbps=1024 wbps=max riops=10 wiops=max"
        );
    }
}
