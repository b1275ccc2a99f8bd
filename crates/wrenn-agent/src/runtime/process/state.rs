//! What the process runtime persists about each live sandbox, and how it watches and
//! finds again a sandbox's PID 1.
//!
//! # `sandboxes/{id}/state.json`
//!
//! Written atomically (temporary file + `rename`) once a sandbox's envd answers after
//! create or restore; removed with the sandbox directory. It is what an agent that
//! restarted needs to adopt the sandbox ([`LiveRecord`]): its configuration, its PID 1
//! (host pid **and** start time from `/proc/{pid}/stat`, so a recycled pid is never
//! mistaken for it), its network. The record is versioned and every field added later
//! must be `#[serde(default)]`, so that records written by an older agent still load
//! (other parts of the runtime — disk, network — extend it the same way).
//!
//! # PID 1
//!
//! The sandbox's PID 1 is found without trusting who its parent is (today the
//! `unshare` process the agent spawns; a direct spawn would make it the agent's child):
//! it is the process in the sandbox's cgroup whose `NSpid` line in `/proc/{pid}/status`
//! ends in `1` (its pid inside its own pid namespace). [`wait_exit`] watches it with a
//! pidfd (`pidfd_open` works for processes that are not our children, so it keeps
//! working after an agent restart) registered with Tokio's reactor.

use crate::runtime::error_chain;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use wrenn_core::id::{SandboxId, TeamId};

use super::cgroup::{CgroupDriver, ParentLimits, SandboxCgroup};
use super::template::{self, ConfigRecord};
use super::{Live, ProcessRuntime, ProcessRuntimeOptions, RUNTIME_NAME};
use crate::network::SandboxNet;
use crate::runtime::{
    Adopted, Adoption, EnvdEndpoint, Instance, Lost, RuntimeError, SandboxConfig,
};

/// File name of the record in `sandboxes/{id}/`.
pub const STATE_FILE: &str = "state.json";

/// Version written by this agent.
pub const STATE_VERSION: u32 = 1;

/// The persisted state of one live sandbox (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRecord {
    /// Record format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The sandbox's configuration.
    pub config: ConfigRecord,
    /// Host pid of the sandbox's PID 1.
    pub pid1: i32,
    /// Start time of that process (field 22 of `/proc/{pid}/stat`, clock ticks after
    /// boot); a live process with the same pid but another start time is not it.
    pub pid1_start: u64,
    /// Its network.
    pub net: NetRecord,
    /// envd's version when it started.
    #[serde(default)]
    pub envd_version: String,
    /// The loop device of its disk.
    #[serde(default)]
    pub disk: Option<crate::disk::DeviceId>,
    /// The image build its layers sit on.
    #[serde(default)]
    pub image: Option<crate::image::ImageRef>,
}

/// The network part of a [`LiveRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    /// Network namespace name.
    pub netns: String,
    /// Address slot.
    pub slot: u32,
    /// Host-side veth.
    pub veth: String,
    /// Host end address.
    pub host_addr: std::net::Ipv4Addr,
    /// Sandbox end address.
    pub sandbox_addr: std::net::Ipv4Addr,
}

impl From<&SandboxNet> for NetRecord {
    fn from(n: &SandboxNet) -> Self {
        Self {
            netns: n.netns.clone(),
            slot: n.slot,
            veth: n.veth.clone(),
            host_addr: n.host_addr,
            sandbox_addr: n.sandbox_addr,
        }
    }
}

impl From<&NetRecord> for SandboxNet {
    fn from(n: &NetRecord) -> Self {
        Self {
            netns: n.netns.clone(),
            slot: n.slot,
            veth: n.veth.clone(),
            host_addr: n.host_addr,
            sandbox_addr: n.sandbox_addr,
        }
    }
}

/// Writes `dir/state.json` atomically.
pub fn write(dir: &Path, record: &LiveRecord) -> std::io::Result<()> {
    let raw = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let tmp = dir.join(".state.json.tmp");
    std::fs::write(&tmp, raw)?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))
}

/// Reads `dir/state.json`; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<LiveRecord>, String> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| format!("unreadable {STATE_FILE}: {}", error_chain(&e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {STATE_FILE}: {}", error_chain(&e))),
    }
}

/// The host pid of the sandbox's PID 1: the process of `cgroup` whose innermost
/// namespace pid is 1.
pub fn find_pid1(cgroup: &SandboxCgroup) -> Option<i32> {
    cgroup
        .pids()
        .into_iter()
        .find(|pid| innermost_pid(*pid) == Some(1))
}

/// The last value of the `NSpid:` line of `/proc/{pid}/status` (the pid as seen in
/// the process's own pid namespace).
fn innermost_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The fields of `/proc/{pid}/stat` after the command name (which may contain spaces
/// and parentheses), so that index 0 is field 3 (`state`).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Start time of `pid` (field 22 of `/proc/{pid}/stat`).
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether `pid` is alive (not a zombie) and started at `start`.
pub fn is_alive(pid: i32, start: u64) -> bool {
    match stat_fields(pid) {
        Some(f) => f.first().is_some_and(|s| s != "Z") && f.get(19) == Some(&start.to_string()),
        None => false,
    }
}

/// The exit status of a zombie `pid` started at `start` (field 52 of
/// `/proc/{pid}/stat`, in `waitpid` encoding), while its parent has not reaped it.
pub fn zombie_exit_code(pid: i32, start: u64) -> Option<i32> {
    let f = stat_fields(pid)?;
    if f.first()? != "Z" || f.get(19)? != &start.to_string() {
        return None;
    }
    f.get(49)?.parse().ok()
}

/// Describes a `waitpid`-encoded status (`killed by signal 9 (SIGKILL)`, `exited
/// with status 1`).
pub fn describe_wait_status(raw: i32) -> String {
    let signal = raw & 0x7f;
    if signal == 0 {
        format!("exited with status {}", (raw >> 8) & 0xff)
    } else {
        describe_signal(signal)
    }
}

/// `killed by signal N (SIGNAME)`.
pub fn describe_signal(signal: i32) -> String {
    const NAMES: [(i32, &str); 10] = [
        (1, "SIGHUP"),
        (2, "SIGINT"),
        (3, "SIGQUIT"),
        (4, "SIGILL"),
        (6, "SIGABRT"),
        (7, "SIGBUS"),
        (9, "SIGKILL"),
        (11, "SIGSEGV"),
        (15, "SIGTERM"),
        (31, "SIGSYS"),
    ];
    match NAMES.iter().find(|(n, _)| *n == signal) {
        Some((_, name)) => format!("killed by signal {signal} ({name})"),
        None => format!("killed by signal {signal}"),
    }
}

/// A pidfd for `pid`, checked to be the process started at `start` (the check runs
/// after the pidfd is open, so the pid cannot be recycled in between).
pub fn open_pidfd(pid: i32, start: u64) -> Result<OwnedFd, String> {
    let raw = rustix::process::Pid::from_raw(pid).ok_or_else(|| format!("invalid pid {pid}"))?;
    let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("pidfd_open({pid}): {}", error_chain(&e)))?;
    if start_time(pid) != Some(start) {
        return Err(format!("process {pid} is gone (its pid was reused)"));
    }
    Ok(fd)
}

/// Resolves once the process behind `pidfd` has exited (the pidfd becomes readable).
pub async fn wait_exit(pidfd: OwnedFd) -> std::io::Result<OwnedFd> {
    let fd = register(pidfd)?;
    let _ready = fd.readable().await?;
    Ok(fd.into_inner())
}

/// Registers an owned descriptor with Tokio's reactor for readability.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that stays open, and
    // `as_raw_fd` returns the same number, for as long as it is owned — here, for the
    // whole life of the `AsyncFd` that takes it.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// The head of the kernel's `struct pidfd_info` (`PIDFD_INFO_SIZE_VER0`, 64 bytes),
/// filled by the `PIDFD_GET_INFO` ioctl (Linux 6.13; exit status since 6.15).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}

/// `PIDFD_INFO_EXIT`: the request/answer bit for `exit_code`.
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// The `waitpid`-encoded exit status of the process behind `pidfd`, once it has been
/// reaped (by whichever process is its parent), on kernels that keep it (6.15+).
#[allow(unsafe_code)]
fn pidfd_exit_code(pidfd: &OwnedFd) -> Option<i32> {
    use rustix::ioctl::{Updater, ioctl, opcode};
    const PIDFD_GET_INFO: rustix::ioctl::Opcode = opcode::read_write::<PidfdInfo>(0xFF, 11);
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: PIDFD_GET_INFO is `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)` and
    // `PidfdInfo` is `#[repr(C)]` with the layout of the first 64 bytes of that struct
    // (the size encoded in the opcode, which the kernel accepts as version 0).
    let done = unsafe { ioctl(pidfd, Updater::<PIDFD_GET_INFO, PidfdInfo>::new(&mut info)) };
    (done.is_ok() && info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code)
}

/// How a process that has exited ended: from its zombie's `/proc` entry while its
/// parent has not reaped it, else from the pidfd once it has (a short wait covers the
/// moment in between).
async fn exit_status(pid: i32, start: u64, pidfd: Option<&OwnedFd>) -> Option<i32> {
    for _ in 0..50 {
        if let Some(code) = zombie_exit_code(pid, start) {
            return Some(code);
        }
        if let Some(code) = pidfd.and_then(pidfd_exit_code) {
            return Some(code);
        }
        // Without a pidfd there is nothing more to wait for.
        pidfd?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Replaces every occurrence of the host's data directory in `text` (log lines that
/// name host paths) with `$WRENN_DIR`.
pub fn redact(text: &str, root: &Path) -> String {
    let root = root.to_string_lossy();
    if root.is_empty() || root == "/" {
        return text.to_owned();
    }
    text.replace(root.as_ref(), "$WRENN_DIR")
}

/// `sandboxes/{id}` directories that hold a [`STATE_FILE`].
pub fn recorded_dirs(sandboxes: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sandboxes) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(STATE_FILE).is_file())
        .collect()
}

/// Applies the parent cgroup's limits ([`ProcessRuntimeOptions::sandboxes_pids_max`],
/// host memory minus [`ProcessRuntimeOptions::sandboxes_memory_reserve_mb`]); a
/// failure is logged (the per-sandbox limits still hold).
pub(super) fn limit_parent_cgroup(cgroups: &CgroupDriver, options: &ProcessRuntimeOptions) {
    let total_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024);
    let Some(total_mb) = total_mb else {
        tracing::warn!(
            "cannot read the host's memory: the sandboxes' parent cgroup has no memory limit"
        );
        return;
    };
    let limits = ParentLimits {
        pids_max: options.sandboxes_pids_max.max(1),
        memory_bytes: total_mb
            .saturating_sub(options.sandboxes_memory_reserve_mb)
            .max(64)
            * 1024
            * 1024,
    };
    if let Err(e) = cgroups.limit_parent(&options.cgroup_parent, limits) {
        tracing::warn!(
            "cannot limit the sandboxes' parent cgroup: {}",
            error_chain(&e)
        );
    }
}

/// Bytes of envd's log put into a death or adoption report.
const REPORT_LOG_BYTES: usize = 1024;
/// How long the watcher waits for the runtime's child to be reaped after PID 1 died.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Health budget of an adoption (envd must answer within it).
const ADOPT_HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

impl ProcessRuntime {
    /// PID 1 of a sandbox that has just started, with its start time.
    pub(super) fn find_pid1(&self, cgroup: &SandboxCgroup) -> Result<(i32, u64), RuntimeError> {
        find_pid1(cgroup)
            .and_then(|pid| start_time(pid).map(|start| (pid, start)))
            .ok_or_else(|| {
                RuntimeError::Other("the sandbox's PID 1 is not in its cgroup".to_owned())
            })
    }

    /// Writes `sandboxes/{id}/state.json` for a sandbox that has just started (a
    /// failure is logged: the sandbox runs, it just cannot be adopted after a restart).
    pub(super) fn record_live(&self, live: &Live, envd_version: &str) {
        let id = live.config.id;
        let record = LiveRecord {
            version: STATE_VERSION,
            config: (&live.config).into(),
            pid1: live.pid1.0,
            pid1_start: live.pid1.1,
            net: (&live.net).into(),
            envd_version: envd_version.to_owned(),
            disk: Some(live.disk),
            image: Some(self.image.clone()),
        };
        if let Err(e) = write(&self.layout.sandbox_dir(id), &record) {
            tracing::warn!(sandbox_id = %id, "cannot persist the sandbox state: {}", error_chain(&e));
        }
    }

    /// The [`Instance`] of a live sandbox.
    fn instance_of(&self, id: SandboxId, net: &SandboxNet, envd_version: &str) -> Instance {
        let mut metadata = BTreeMap::new();
        metadata.insert("runtime".to_owned(), RUNTIME_NAME.to_owned());
        metadata.insert("envd_version".to_owned(), envd_version.to_owned());
        metadata.insert("cgroup".to_owned(), self.cgroups.version().to_owned());
        metadata.insert("netns".to_owned(), net.netns.clone());
        metadata.insert("veth".to_owned(), net.veth.clone());
        Instance {
            id,
            envd: EnvdEndpoint::Unix(self.envd_socket(id)),
            host_ip: net.sandbox_addr.to_string(),
            metadata,
        }
    }

    /// The tail of a sandbox's envd log, host paths redacted.
    fn log_tail(&self, id: SandboxId) -> String {
        let tail = super::tail(
            &self.layout.sandbox_dir(id).join("envd.log"),
            REPORT_LOG_BYTES,
        );
        redact(&tail, self.layout.root())
    }

    /// `how`, followed by envd's log tail when there is one.
    fn report(&self, id: SandboxId, how: &str) -> String {
        let tail = self.log_tail(id);
        if tail.is_empty() || tail.starts_with("(cannot read") {
            how.to_owned()
        } else {
            format!("{how}; envd log: {tail}")
        }
    }

    /// [`Runtime::wait_exit`]: waits on a pidfd of the sandbox's PID 1, then reaps the
    /// runtime's child for it (when this agent spawned it) and describes the exit.
    pub(super) async fn watch_pid1(&self, id: SandboxId) -> Result<String, RuntimeError> {
        let live = self.get(id)?;
        let (pid, start) = live.pid1;
        // A pidfd that cannot be opened means the process is already gone.
        let pidfd = match open_pidfd(pid, start) {
            Ok(fd) => Some(
                wait_exit(fd)
                    .await
                    .map_err(super::io_err(format!("watch the PID 1 of {id}")))?,
            ),
            Err(_) => None,
        };
        let mut how = exit_status(pid, start, pidfd.as_ref())
            .await
            .map(describe_wait_status);
        if let Some(child) = &live.child {
            let mut child = child.lock().await;
            // `unshare --fork` exits the way its child (PID 1) did.
            match tokio::time::timeout(REAP_TIMEOUT, child.wait()).await {
                Ok(Ok(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    if how.is_none() {
                        how = Some(match (status.code(), status.signal()) {
                            (Some(code), _) => format!("exited with status {code}"),
                            (None, Some(sig)) => describe_signal(sig),
                            (None, None) => "exited".to_owned(),
                        });
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(sandbox_id = %id, "reaping the sandbox process: {}", error_chain(&e))
                }
                Err(_) => {
                    tracing::warn!(sandbox_id = %id, "the sandbox process outlived its PID 1")
                }
            }
        }
        let how = how.unwrap_or_else(|| "exited".to_owned());
        Ok(self.report(id, &format!("the capsule's init (envd) {how}")))
    }

    /// [`Runtime::adopt`]: every `sandboxes/{id}/state.json` whose PID 1 still runs and
    /// whose envd answers (or that is frozen) becomes live again; the others are torn
    /// down and reported.
    pub(super) async fn adopt_recorded(&self) -> Result<Adoption, RuntimeError> {
        let mut out = Adoption::default();
        for dir in recorded_dirs(&self.layout.sandboxes_dir()) {
            let Some(id) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<SandboxId>().ok())
            else {
                continue;
            };
            if self.lock_live().contains_key(&id) {
                continue;
            }
            let record = match read(&dir) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    self.give_up(&mut out, id, None, e).await;
                    continue;
                }
            };
            let team = record.config.team_id;
            match self.adopt_one(id, record).await {
                Ok(adopted) => out.adopted.push(adopted),
                Err(reason) => self.give_up(&mut out, id, Some(team), reason).await,
            }
        }
        Ok(out)
    }

    async fn give_up(&self, out: &mut Adoption, id: SandboxId, team: Option<TeamId>, why: String) {
        let reason = self.report(id, &why);
        tracing::warn!(sandbox_id = %id, "not adopted: {reason}");
        if let Err(e) = self.remove_sandbox(id).await {
            tracing::warn!(sandbox_id = %id, "cleaning up a sandbox that was not adopted: {}", error_chain(&e));
        }
        out.lost.push(Lost {
            id,
            team_id: team,
            reason,
        });
    }

    async fn adopt_one(&self, id: SandboxId, record: LiveRecord) -> Result<Adopted, String> {
        let (pid, start) = (record.pid1, record.pid1_start);
        if !is_alive(pid, start) {
            let how = zombie_exit_code(pid, start)
                .map(describe_wait_status)
                .unwrap_or_else(|| "exited".to_owned());
            return Err(format!(
                "the capsule's init (envd) {how} while the host agent was down"
            ));
        }
        let cgroup = self.sandbox_cgroup(id);
        let paused = {
            let cg = cgroup.clone();
            super::blocking(move || cg.is_frozen())
                .await
                .map_err(|e| error_chain(&e))?
                .unwrap_or(false)
        };
        let config: SandboxConfig = record.config.clone().into();
        let socket = self.envd_socket(id);
        let version = if paused {
            record.envd_version.clone()
        } else {
            match tokio::time::timeout(ADOPT_HEALTH_TIMEOUT, super::health(&socket)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(format!("envd does not answer ({e})")),
                Err(_) => {
                    return Err(format!(
                        "envd did not answer within {ADOPT_HEALTH_TIMEOUT:?}"
                    ));
                }
            }
        };
        let image = record
            .image
            .as_ref()
            .filter(|i| template::check_image(i).is_ok())
            .unwrap_or(&self.image);
        let lowers = template::resolve(
            &self.layout,
            image,
            config.template_team_id,
            config.template_id,
        )
        .map_err(|e| format!("its template is gone: {}", error_chain(&e)))?;
        let disk = record
            .disk
            .ok_or_else(|| "its state record names no disk".to_owned())?;
        let net: SandboxNet = (&record.net).into();
        // Its DNS forwarder lived in the previous agent: serve it again (and hold the slot).
        self.network
            .adopt(&net, &id.to_string())
            .await
            .map_err(|e| format!("its network cannot be taken over: {}", error_chain(&e)))?;
        let usage = cgroup.cpu_usage_ns().unwrap_or(0);
        let live = Arc::new(Live {
            config: config.clone(),
            lowers,
            cgroup,
            net: net.clone(),
            disk,
            child: None,
            pid1: (pid, start),
            cpu: Mutex::new((usage, Instant::now())),
        });
        self.lock_live().insert(id, live);
        tracing::info!(sandbox_id = %id, paused, "sandbox adopted after an agent restart");
        Ok(Adopted {
            instance: self.instance_of(id, &net, &version),
            config,
            paused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_are_described() {
        assert_eq!(describe_wait_status(9), "killed by signal 9 (SIGKILL)");
        assert_eq!(describe_wait_status(1 << 8), "exited with status 1");
    }

    #[test]
    fn this_process_is_alive_and_its_start_time_is_known() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("start time");
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start + 1));
        assert_eq!(zombie_exit_code(me, start), None);
    }

    #[test]
    fn a_record_without_later_fields_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = serde_json::json!({
            "version": 1,
            "config": serde_json::to_value(ConfigRecord::from(&crate::runtime::SandboxConfig {
                id: wrenn_core::id::SandboxId::new(),
                team_id: wrenn_core::id::TeamId::new(),
                template_team_id: wrenn_core::id::TeamId::new(),
                template_id: wrenn_core::id::TemplateId::new(),
                vcpus: 1,
                memory_mb: 64,
                disk_size_mb: 128,
                default_user: String::new(),
                default_env: Default::default(),
            })).expect("config"),
            "pid1": 42,
            "pid1_start": 7,
            "net": {"netns": "wrenn-x", "slot": 3, "veth": "wrenn-p3",
                    "host_addr": "10.200.0.13", "sandbox_addr": "10.200.0.14"},
        });
        std::fs::write(dir.path().join(STATE_FILE), raw.to_string()).expect("write");
        let rec = read(dir.path()).expect("read").expect("some");
        assert_eq!(
            (rec.pid1, rec.pid1_start, rec.envd_version.as_str()),
            (42, 7, "")
        );
        write(dir.path(), &rec).expect("rewrite");
        assert_eq!(read(dir.path()).expect("read").expect("some"), rec);
    }

    #[test]
    fn host_paths_are_redacted() {
        assert_eq!(
            redact("exec /var/lib/wrenn/x failed", Path::new("/var/lib/wrenn")),
            "exec $WRENN_DIR/x failed"
        );
    }
}
