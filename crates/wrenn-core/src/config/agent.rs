//! The host agent's [`AgentConfig`]: its defaults, the sandbox runtime
//! ([`RuntimeKind`], [`VmAccel`], [`VmGuestAslr`]), sizes, and how it is read from the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::source::{EnvSource, Vars, host_port, http_url};
use super::{ConfigError, DEFAULT_WRENN_DIR, EgressConfig, HostShare, Overcommit, Secret, vars};
use crate::layout::Layout;

/// Default host agent listen address.
pub const DEFAULT_HOST_LISTEN_ADDR: &str = "127.0.0.1:50051";
/// Default rootfs size in MiB.
pub const DEFAULT_ROOTFS_SIZE_MB: u64 = 5120;
/// Default idle time before hibernation.
pub const DEFAULT_HIBERNATE_AFTER: Duration = Duration::from_secs(600);
/// Default firecracker binary.
pub const DEFAULT_FIRECRACKER_BIN: &str = "/usr/local/bin/firecracker";
/// Default [`AgentConfig::warm_capsules`].
pub const DEFAULT_WARM_CAPSULES: usize = 4;
/// Most [`AgentConfig::warm_capsules`].
pub const MAX_WARM_CAPSULES: usize = 64;
/// Default [`AgentConfig::sandboxes_pids_max`].
pub const DEFAULT_SANDBOXES_PIDS_MAX: u64 = 32768;
/// Default [`AgentConfig::heartbeat_interval`] (the control plane's default
/// `WRENN_HOST_UNREACHABLE_AFTER_SECS` is three of them).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Default [`AgentConfig::health_interval`].
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// Default [`AgentConfig::health_timeout`].
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How the host agent runs sandboxes (`WRENN_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// `process`: Linux namespaces + overlayfs + cgroups.
    #[default]
    Process,
    /// `qemu`: QEMU microVMs (KVM, or TCG where KVM cannot boot guests).
    Qemu,
    /// `firecracker`: Firecracker microVMs.
    Firecracker,
}

impl RuntimeKind {
    /// Wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Qemu => "qemu",
            RuntimeKind::Firecracker => "firecracker",
        }
    }
}

/// The uid and gid jailed Firecracker VMMs run as by default (`nobody`): set a
/// dedicated, otherwise unused pair in production.
pub const DEFAULT_JAILER_ID: u32 = 65534;

/// How the `firecracker` runtime confines its VMMs when `WRENN_FIRECRACKER_JAIL=on`:
/// each runs under Firecracker's jailer, as an unprivileged user in a chroot of its
/// own, inside the capsule's network namespace and a cgroup of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerJail {
    /// `WRENN_JAILER_BIN` (default: `jailer` on `PATH`).
    pub jailer_bin: Option<PathBuf>,
    /// `WRENN_JAILER_UID`, default 65534.
    pub uid: u32,
    /// `WRENN_JAILER_GID`, default 65534.
    pub gid: u32,
}

/// The accelerator of the VM runtimes (`WRENN_VM_ACCEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmAccel {
    /// KVM when it boots a guest on this host (probed once), else TCG.
    #[default]
    Auto,
    /// KVM only.
    Kvm,
    /// QEMU's emulator only.
    Tcg,
}

impl FromStr for VmAccel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err("expected one of auto, kvm, tcg".to_owned()),
        }
    }
}

/// Address-space layout randomisation inside the guests of the `qemu` runtime
/// (`WRENN_VM_GUEST_ASLR`).
///
/// Under TCG, QEMU keys the code it has translated by virtual address: a guest whose
/// libraries load at random addresses has `ld.so` and libc translated again at every
/// exec (measured with QEMU 7.2 here: 29 ms against 6 ms to run `/bin/true` in the
/// guest). It is about the guest's own programs; the capsule's boundary is the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmGuestAslr {
    /// On under KVM, off under TCG.
    #[default]
    Auto,
    /// Always on (the kernel's default).
    On,
    /// Always off (the guest kernel boots with `norandmaps`).
    Off,
}

impl FromStr for VmGuestAslr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err("expected one of auto, on, off".to_owned()),
        }
    }
}

impl FirecrackerJail {
    fn from_vars(v: &Vars<'_>) -> Result<Option<Self>, ConfigError> {
        let on = v.parse_with(vars::WRENN_FIRECRACKER_JAIL, false, |s| match s {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err("expected on or off".to_owned()),
        })?;
        let id = |var| {
            v.parse_with(var, DEFAULT_JAILER_ID, |s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|id| *id != 0)
                    .ok_or_else(|| "expected a non-zero numeric id (not root)".to_owned())
            })
        };
        let jail = Self {
            jailer_bin: v.get(vars::WRENN_JAILER_BIN).map(PathBuf::from),
            uid: id(vars::WRENN_JAILER_UID)?,
            gid: id(vars::WRENN_JAILER_GID)?,
        };
        Ok(on.then_some(jail))
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuntimeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(Self::Process),
            "qemu" => Ok(Self::Qemu),
            "firecracker" => Ok(Self::Firecracker),
            _ => Err("expected one of process, qemu, firecracker".to_owned()),
        }
    }
}

/// Host agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `WRENN_HOST_LISTEN_ADDR`, default `127.0.0.1:50051`. `:50051` means `0.0.0.0:50051`.
    pub listen_addr: SocketAddr,
    /// `WRENN_CP_URL` (`http(s)://…`, trailing `/` removed): the control plane a
    /// standalone agent registers with. Unset when the agent runs embedded.
    pub cp_url: Option<String>,
    /// `WRENN_DIR`, default `/var/lib/wrenn`.
    pub wrenn_dir: PathBuf,
    /// `WRENN_RUNTIME` (`process` | `qemu` | `firecracker`), default `process`.
    pub runtime: RuntimeKind,
    /// `WRENN_DEFAULT_ROOTFS_SIZE` in MiB, default 5120. Written like `5G`, `2Gi`,
    /// `1000M` (G/Gi = ×1024, T/Ti = ×1024², M/Mi or no suffix = MiB).
    pub default_rootfs_size_mb: u64,
    /// `WRENN_HIBERNATE_AFTER_SECS`, default 600 (at least 1).
    pub hibernate_after: Duration,
    /// `WRENN_FIRECRACKER_BIN`, default `/usr/local/bin/firecracker`.
    pub firecracker_bin: PathBuf,
    /// `WRENN_FIRECRACKER_JAIL` (`on` | `off`, default `off`): `Some` when Firecracker
    /// VMMs run under the jailer (with `WRENN_JAILER_BIN`, `WRENN_JAILER_UID`,
    /// `WRENN_JAILER_GID`); `off` runs them as the agent's children, for development.
    pub firecracker_jail: Option<FirecrackerJail>,
    /// `WRENN_QEMU_BIN`: `qemu-system-x86_64` of the `qemu` runtime (default: found
    /// on `PATH`).
    pub qemu_bin: Option<PathBuf>,
    /// `WRENN_VM_ACCEL` (`auto` | `kvm` | `tcg`), default `auto`.
    pub vm_accel: VmAccel,
    /// `WRENN_VM_GUEST_ASLR` (`auto` | `on` | `off`), default `auto`.
    pub vm_guest_aslr: VmGuestAslr,
    /// `WRENN_REGISTRATION_TOKEN`: a one-time token from `POST /v1/hosts`. When set
    /// (with `cp_url`), the agent registers at startup and stores its credentials;
    /// otherwise it uses the credentials stored by an earlier registration.
    pub registration_token: Option<Secret>,
    /// `WRENN_HOST_ADDRESS`: `host:port` at which the control plane reaches this
    /// agent (reported at registration). Default: `listen_addr`, unless that is an
    /// unspecified address such as `0.0.0.0`.
    pub advertise_address: Option<String>,
    /// Admission: `WRENN_MEMORY_OVERCOMMIT`, `WRENN_CPU_OVERCOMMIT`,
    /// `WRENN_MEMORY_RESERVE_MB`.
    pub overcommit: Overcommit,
    /// `WRENN_SANDBOXES_PIDS_MAX`, default 32768 (at least 1): `pids.max` of the cgroup
    /// holding every sandbox.
    pub sandboxes_pids_max: u64,
    /// `WRENN_WARM_CAPSULES`, default 4 (0–64): capsules of the built-in template the
    /// process runtime keeps booted, so that a create only gives one its identity.
    pub warm_capsules: usize,
    /// `WRENN_HEARTBEAT_INTERVAL_SECS`, default 30 (at least 1): time between
    /// heartbeats. The control plane's `WRENN_HOST_UNREACHABLE_AFTER_SECS` should be
    /// about three of them; the agent pauses its running capsules after two without
    /// an answer.
    pub heartbeat_interval: Duration,
    /// `WRENN_HEALTH_INTERVAL_SECS`, default 10 (at least 1).
    pub health_interval: Duration,
    /// `WRENN_HEALTH_TIMEOUT_SECS`, default 5 (at least 1).
    pub health_timeout: Duration,
    /// `WRENN_EGRESS_ALLOW` and `WRENN_EGRESS_DENY`: the deployment's changes to the
    /// capsules' default egress policy.
    pub egress: EgressConfig,
    /// `WRENN_AGENT_METRICS_ADDR` (`ip:port`, `:port` means `0.0.0.0:port`): a plain
    /// HTTP listener serving the agent's Prometheus metrics at `/metrics`, and nothing
    /// else. Unset: no metrics listener. Bind it to a private interface: it has no
    /// authentication.
    pub metrics_addr: Option<SocketAddr>,
    /// What of the host this agent's capsules use (cgroup parent, address range,
    /// firewall table, veth prefix, uid ranges), so agents can share a host.
    pub host_share: HostShare,
}

impl AgentConfig {
    /// Reads the process environment, with `./.env` (best-effort) filling in unset
    /// variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let env = EnvSource::load(".env");
        Self::from_lookup(|k| env.get(k))
    }

    /// Builds the configuration from `lookup(variable name)`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars(&lookup);
        Ok(Self {
            listen_addr: v.socket_addr(vars::WRENN_HOST_LISTEN_ADDR, DEFAULT_HOST_LISTEN_ADDR)?,
            cp_url: v
                .get(vars::WRENN_CP_URL)
                .map(|url| http_url(vars::WRENN_CP_URL, url))
                .transpose()?,
            wrenn_dir: v.path(vars::WRENN_DIR, DEFAULT_WRENN_DIR),
            runtime: v.parse_with(vars::WRENN_RUNTIME, RuntimeKind::default(), |s| s.parse())?,
            default_rootfs_size_mb: v.parse_with(
                vars::WRENN_DEFAULT_ROOTFS_SIZE,
                DEFAULT_ROOTFS_SIZE_MB,
                |s| {
                    parse_size_mb(s).ok_or_else(|| {
                        "expected a positive size like 5G, 2Gi, 1000M or a number of MiB".into()
                    })
                },
            )?,
            hibernate_after: Duration::from_secs(v.positive(
                vars::WRENN_HIBERNATE_AFTER_SECS,
                DEFAULT_HIBERNATE_AFTER.as_secs(),
                "a whole number of seconds",
            )?),
            firecracker_bin: v.path(vars::WRENN_FIRECRACKER_BIN, DEFAULT_FIRECRACKER_BIN),
            firecracker_jail: FirecrackerJail::from_vars(&v)?,
            qemu_bin: v.get(vars::WRENN_QEMU_BIN).map(PathBuf::from),
            vm_accel: v.parse_with(vars::WRENN_VM_ACCEL, VmAccel::default(), |s| s.parse())?,
            vm_guest_aslr: v.parse_with(
                vars::WRENN_VM_GUEST_ASLR,
                VmGuestAslr::default(),
                |s| s.parse(),
            )?,
            registration_token: v.get(vars::WRENN_REGISTRATION_TOKEN).map(Secret::new),
            advertise_address: v
                .get(vars::WRENN_HOST_ADDRESS)
                .map(|a| host_port(vars::WRENN_HOST_ADDRESS, a))
                .transpose()?,
            overcommit: Overcommit::from_vars(&v)?,
            sandboxes_pids_max: v.positive(
                vars::WRENN_SANDBOXES_PIDS_MAX,
                DEFAULT_SANDBOXES_PIDS_MAX,
                "a whole number of tasks",
            )?,
            warm_capsules: v.parse_with(vars::WRENN_WARM_CAPSULES, DEFAULT_WARM_CAPSULES, |s| {
                s.parse::<usize>()
                    .ok()
                    .filter(|n| *n <= MAX_WARM_CAPSULES)
                    .ok_or_else(|| format!("expected a whole number from 0 to {MAX_WARM_CAPSULES}"))
            })?,
            heartbeat_interval: Duration::from_secs(v.positive(
                vars::WRENN_HEARTBEAT_INTERVAL_SECS,
                DEFAULT_HEARTBEAT_INTERVAL.as_secs(),
                "a whole number of seconds",
            )?),
            health_interval: Duration::from_secs(v.positive(
                vars::WRENN_HEALTH_INTERVAL_SECS,
                DEFAULT_HEALTH_INTERVAL.as_secs(),
                "a whole number of seconds",
            )?),
            health_timeout: Duration::from_secs(v.positive(
                vars::WRENN_HEALTH_TIMEOUT_SECS,
                DEFAULT_HEALTH_TIMEOUT.as_secs(),
                "a whole number of seconds",
            )?),
            egress: EgressConfig {
                allow: v.cidrs(vars::WRENN_EGRESS_ALLOW)?,
                deny: v.cidrs(vars::WRENN_EGRESS_DENY)?,
            },
            metrics_addr: match v.get(vars::WRENN_AGENT_METRICS_ADDR) {
                Some(_) => Some(v.socket_addr(vars::WRENN_AGENT_METRICS_ADDR, "")?),
                None => None,
            },
            host_share: HostShare::from_vars(&v)?,
        })
    }

    /// The `host:port` to report to the control plane: `advertise_address`, else
    /// `listen_addr` when it names a specific IP; `None` when the agent listens on an
    /// unspecified address (`0.0.0.0`, `[::]`) and no address is configured.
    pub fn reported_address(&self) -> Option<String> {
        self.advertise_address.clone().or_else(|| {
            (!self.listen_addr.ip().is_unspecified()).then(|| self.listen_addr.to_string())
        })
    }

    /// The host paths under `wrenn_dir`.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.wrenn_dir)
    }
}

/// Parses a size into MiB: a positive whole number followed by an optional
/// case-insensitive unit — none, `M` or `Mi` (MiB), `G` or `Gi` (GiB), `T` or `Ti`
/// (TiB). `None` if malformed, zero or overflowing.
pub fn parse_size_mb(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mi" => 1,
        "g" | "gi" => 1024,
        "t" | "ti" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor).filter(|&mb| mb > 0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::test_support::{agent, cfg, err_var};
    use crate::config::{DEFAULT_CREATE_WAIT, DEFAULT_LIFECYCLE_WAIT};

    #[test]
    fn agent_defaults() {
        let a = agent(&[]).unwrap();
        assert_eq!(a.listen_addr, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(a.cp_url, None);
        assert_eq!(a.wrenn_dir, Path::new("/var/lib/wrenn"));
        assert_eq!(a.runtime, RuntimeKind::Process);
        assert_eq!(a.default_rootfs_size_mb, 5120);
        assert_eq!(a.hibernate_after, Duration::from_secs(600));
        assert_eq!(a.firecracker_bin, Path::new("/usr/local/bin/firecracker"));
        assert_eq!(a.layout(), Layout::new("/var/lib/wrenn"));
        assert_eq!(a.registration_token, None);
        assert_eq!(a.reported_address().as_deref(), Some("127.0.0.1:50051"));
        let wildcard = agent(&[("WRENN_HOST_LISTEN_ADDR", ":50051")]).unwrap();
        assert_eq!(wildcard.reported_address(), None);
        assert_eq!(a.metrics_addr, None);
    }

    #[test]
    fn agent_metrics_address() {
        let a = agent(&[("WRENN_AGENT_METRICS_ADDR", ":9464")]).unwrap();
        assert_eq!(a.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
        let err = agent(&[("WRENN_AGENT_METRICS_ADDR", "9464")]).unwrap_err();
        assert_eq!(err_var(&err), "WRENN_AGENT_METRICS_ADDR");
    }

    #[test]
    fn agent_values() {
        let a = agent(&[
            ("WRENN_HOST_LISTEN_ADDR", "[::]:6000"),
            ("WRENN_CP_URL", "http://10.0.0.1:8000/"),
            ("WRENN_DIR", "/data"),
            ("WRENN_RUNTIME", "firecracker"),
            ("WRENN_DEFAULT_ROOTFS_SIZE", "2Gi"),
            ("WRENN_HIBERNATE_AFTER_SECS", "30"),
            ("WRENN_FIRECRACKER_BIN", "/opt/fc"),
            ("WRENN_REGISTRATION_TOKEN", "ab12"),
            ("WRENN_HOST_ADDRESS", "agent-1.internal:6000"),
        ])
        .unwrap();
        assert_eq!(a.listen_addr, "[::]:6000".parse().unwrap());
        assert_eq!(
            a.registration_token.as_ref().map(Secret::expose_secret),
            Some("ab12")
        );
        assert_eq!(
            a.reported_address().as_deref(),
            Some("agent-1.internal:6000")
        );
        assert_eq!(a.cp_url.as_deref(), Some("http://10.0.0.1:8000"));
        assert_eq!(a.wrenn_dir, Path::new("/data"));
        assert_eq!(a.runtime, RuntimeKind::Firecracker);
        assert_eq!(a.default_rootfs_size_mb, 2048);
        assert_eq!(a.hibernate_after, Duration::from_secs(30));
        assert_eq!(a.firecracker_bin, Path::new("/opt/fc"));
        let q = agent(&[
            ("WRENN_RUNTIME", "qemu"),
            ("WRENN_VM_ACCEL", "tcg"),
            ("WRENN_QEMU_BIN", "/opt/qemu"),
            ("WRENN_VM_GUEST_ASLR", "on"),
        ])
        .unwrap();
        assert_eq!(q.runtime, RuntimeKind::Qemu);
        assert_eq!(q.vm_accel, VmAccel::Tcg);
        assert_eq!(q.qemu_bin.as_deref(), Some(Path::new("/opt/qemu")));
        assert_eq!(q.vm_guest_aslr, VmGuestAslr::On);
        assert_eq!(agent(&[]).unwrap().vm_accel, VmAccel::Auto);
        assert_eq!(agent(&[]).unwrap().firecracker_jail, None);
        let jailed = agent(&[
            ("WRENN_FIRECRACKER_JAIL", "on"),
            ("WRENN_JAILER_BIN", "/opt/jailer"),
            ("WRENN_JAILER_UID", "990"),
        ])
        .unwrap();
        assert_eq!(
            jailed.firecracker_jail,
            Some(FirecrackerJail {
                jailer_bin: Some("/opt/jailer".into()),
                uid: 990,
                gid: DEFAULT_JAILER_ID,
            })
        );
        assert_eq!(agent(&[]).unwrap().vm_guest_aslr, VmGuestAslr::Auto);
    }

    #[test]
    fn agent_parse_errors_name_their_variable() {
        for (var, value) in [
            ("WRENN_HOST_LISTEN_ADDR", "50051"),
            ("WRENN_CP_URL", "ftp://cp"),
            ("WRENN_RUNTIME", "docker"),
            ("WRENN_VM_ACCEL", "hvf"),
            ("WRENN_VM_GUEST_ASLR", "yes"),
            ("WRENN_DEFAULT_ROOTFS_SIZE", "5X"),
            ("WRENN_DEFAULT_ROOTFS_SIZE", "0"),
            ("WRENN_HIBERNATE_AFTER_SECS", "0"),
            ("WRENN_HIBERNATE_AFTER_SECS", "ten"),
            ("WRENN_HOST_ADDRESS", "10.0.0.5"),
            ("WRENN_HOST_ADDRESS", "10.0.0.5:0"),
            ("WRENN_HOST_ADDRESS", "bad host:1"),
            ("WRENN_HOST_ADDRESS", ":50051"),
            ("WRENN_FIRECRACKER_JAIL", "yes"),
            ("WRENN_JAILER_UID", "0"),
            ("WRENN_JAILER_GID", "nobody"),
        ] {
            let err = agent(&[(var, value)]).unwrap_err();
            assert_eq!(err_var(&err), var, "{var}={value}: {err}");
            assert!(err.to_string().contains(var), "{err}");
        }
        let err = agent(&[("WRENN_RUNTIME", "docker")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid WRENN_RUNTIME=\"docker\": expected one of process, qemu, firecracker"
        );
    }

    #[test]
    fn admission_and_liveness_settings() {
        let a = agent(&[]).unwrap();
        assert_eq!(a.overcommit, Overcommit::default());
        assert_eq!(a.sandboxes_pids_max, 32768);
        assert_eq!(a.health_interval, Duration::from_secs(10));
        assert_eq!(a.health_timeout, Duration::from_secs(5));
        assert_eq!(a.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
        assert_eq!(cfg(&[]).unwrap().team_max_capsules, 100);
        assert_eq!(cfg(&[]).unwrap().create_wait, DEFAULT_CREATE_WAIT);
        assert_eq!(
            cfg(&[("WRENN_CREATE_WAIT_MS", "0")]).unwrap().create_wait,
            Duration::ZERO
        );
        for bad in ["-1", "60001", "soon"] {
            assert!(cfg(&[("WRENN_CREATE_WAIT_MS", bad)]).is_err(), "{bad}");
            assert!(cfg(&[("WRENN_LIFECYCLE_WAIT_MS", bad)]).is_err(), "{bad}");
        }
        assert_eq!(cfg(&[]).unwrap().lifecycle_wait, DEFAULT_LIFECYCLE_WAIT);
        assert_eq!(
            cfg(&[("WRENN_LIFECYCLE_WAIT_MS", "250")])
                .unwrap()
                .lifecycle_wait,
            Duration::from_millis(250)
        );
        let a = agent(&[
            ("WRENN_MEMORY_OVERCOMMIT", "1.5"),
            ("WRENN_CPU_OVERCOMMIT", "8"),
            ("WRENN_MEMORY_RESERVE_MB", "0"),
            ("WRENN_SANDBOXES_PIDS_MAX", "1000"),
            ("WRENN_HEALTH_INTERVAL_SECS", "3"),
            ("WRENN_HEALTH_TIMEOUT_SECS", "2"),
            ("WRENN_HEARTBEAT_INTERVAL_SECS", "5"),
        ])
        .unwrap();
        assert_eq!(a.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(
            a.overcommit,
            Overcommit {
                memory: 1.5,
                cpu: 8.0,
                memory_reserve_mb: 0
            }
        );
        assert_eq!(a.overcommit.memory_limit_mb(1000), 1500);
        assert_eq!(a.overcommit.vcpu_limit(2), 16);
        assert_eq!(Overcommit::default().memory_limit_mb(24576), 23552);
        assert_eq!(Overcommit::default().memory_limit_mb(512), 0);
        assert_eq!(
            (a.sandboxes_pids_max, a.health_interval, a.health_timeout),
            (1000, Duration::from_secs(3), Duration::from_secs(2))
        );
        let c = cfg(&[
            ("WRENN_TEAM_MAX_CAPSULES", "5"),
            ("WRENN_CPU_OVERCOMMIT", "2"),
        ])
        .unwrap();
        assert_eq!((c.team_max_capsules, c.overcommit.cpu), (5, 2.0));
        for (var, value) in [
            ("WRENN_MEMORY_OVERCOMMIT", "0"),
            ("WRENN_MEMORY_OVERCOMMIT", "-1"),
            ("WRENN_MEMORY_OVERCOMMIT", "NaN"),
            ("WRENN_CPU_OVERCOMMIT", "inf"),
            ("WRENN_CPU_OVERCOMMIT", "101"),
            ("WRENN_CPU_OVERCOMMIT", "four"),
            ("WRENN_MEMORY_RESERVE_MB", "-5"),
            ("WRENN_SANDBOXES_PIDS_MAX", "0"),
            ("WRENN_HEALTH_INTERVAL_SECS", "0"),
            ("WRENN_HEALTH_TIMEOUT_SECS", "x"),
            ("WRENN_HEARTBEAT_INTERVAL_SECS", "0"),
            ("WRENN_HEARTBEAT_INTERVAL_SECS", "soon"),
        ] {
            let err = agent(&[(var, value)]).unwrap_err();
            assert_eq!(err_var(&err), var, "{var}={value}: {err}");
        }
        for (var, value) in [
            ("WRENN_TEAM_MAX_CAPSULES", "0"),
            ("WRENN_TEAM_MAX_CAPSULES", "many"),
            ("WRENN_MEMORY_OVERCOMMIT", "0.0"),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err_var(&err), var, "{var}={value}: {err}");
        }
    }

    #[test]
    fn sizes() {
        for (s, mb) in [
            ("5G", 5120),
            ("5g", 5120),
            ("2Gi", 2048),
            ("1000M", 1000),
            ("1000Mi", 1000),
            ("1000", 1000),
            ("1T", 1_048_576),
            (" 7G ", 7168),
        ] {
            assert_eq!(parse_size_mb(s), Some(mb), "{s}");
        }
        for bad in [
            "",
            "G",
            "0",
            "0G",
            "-1G",
            "1.5G",
            "5GB",
            "5 G",
            "5K",
            "99999999999999999999",
            &format!("{}T", u64::MAX),
        ] {
            assert_eq!(parse_size_mb(bad), None, "{bad}");
        }
    }
}
