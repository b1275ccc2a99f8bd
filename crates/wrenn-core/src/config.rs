//! Typed configuration from environment variables, plus a best-effort `.env` file.
//!
//! [`Config::from_env`] / [`AgentConfig::from_env`] read the process environment, with
//! values from `./.env` filling in what the real environment does not set (the real
//! environment wins). All parsing happens in the `from_lookup` functions, which take
//! a lookup closure, so tests never touch the process environment.
//!
//! Values are trimmed; a variable set to an empty (or all-whitespace) string counts as
//! unset. Secrets ([`Secret`], the encryption key, passwords inside URLs) are never
//! printed by `Debug` nor echoed in errors.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::layout::Layout;

/// Names of every environment variable read by this module.
pub mod vars {
    /// Data directory of the control plane and the agent.
    pub const WRENN_DIR: &str = "WRENN_DIR";
    /// Control-plane database URL.
    pub const DATABASE_URL: &str = "DATABASE_URL";
    /// Redis URL for the event stream.
    pub const REDIS_URL: &str = "REDIS_URL";
    /// Control-plane listen address.
    pub const WRENN_CP_LISTEN_ADDR: &str = "WRENN_CP_LISTEN_ADDR";
    /// Public base URL of the control plane.
    pub const CP_PUBLIC_URL: &str = "CP_PUBLIC_URL";
    /// JWT signing secret.
    pub const JWT_SECRET: &str = "JWT_SECRET";
    /// mTLS CA certificate path.
    pub const WRENN_CA_CERT: &str = "WRENN_CA_CERT";
    /// mTLS CA private key path.
    pub const WRENN_CA_KEY: &str = "WRENN_CA_KEY";
    /// Key for encrypting channel configs (64 hex characters).
    pub const WRENN_ENCRYPTION_KEY: &str = "WRENN_ENCRYPTION_KEY";
    /// SMTP server host.
    pub const SMTP_HOST: &str = "SMTP_HOST";
    /// SMTP server port.
    pub const SMTP_PORT: &str = "SMTP_PORT";
    /// SMTP user name.
    pub const SMTP_USERNAME: &str = "SMTP_USERNAME";
    /// SMTP password.
    pub const SMTP_PASSWORD: &str = "SMTP_PASSWORD";
    /// Sender address of outgoing email.
    pub const SMTP_FROM_EMAIL: &str = "SMTP_FROM_EMAIL";
    /// Host monitor period in seconds.
    pub const WRENN_HOST_MONITOR_INTERVAL_SECS: &str = "WRENN_HOST_MONITOR_INTERVAL_SECS";
    /// Scheduler strategy.
    pub const WRENN_SCHEDULER: &str = "WRENN_SCHEDULER";
    /// Maximum request body size in bytes.
    pub const WRENN_MAX_BODY_BYTES: &str = "WRENN_MAX_BODY_BYTES";
    /// Most connections the control plane opens to Postgres.
    pub const WRENN_DB_MAX_CONNECTIONS: &str = "WRENN_DB_MAX_CONNECTIONS";
    /// Host agent listen address.
    pub const WRENN_HOST_LISTEN_ADDR: &str = "WRENN_HOST_LISTEN_ADDR";
    /// Control-plane URL the agent registers with.
    pub const WRENN_CP_URL: &str = "WRENN_CP_URL";
    /// Sandbox runtime of the agent.
    pub const WRENN_RUNTIME: &str = "WRENN_RUNTIME";
    /// Default rootfs size (`5G`, `2Gi`, `1000M`, plain = MiB).
    pub const WRENN_DEFAULT_ROOTFS_SIZE: &str = "WRENN_DEFAULT_ROOTFS_SIZE";
    /// Idle time in seconds before a paused sandbox is hibernated.
    pub const WRENN_HIBERNATE_AFTER_SECS: &str = "WRENN_HIBERNATE_AFTER_SECS";
    /// Path of the firecracker binary.
    pub const WRENN_FIRECRACKER_BIN: &str = "WRENN_FIRECRACKER_BIN";
    /// Path of `qemu-system-x86_64` (the `qemu` runtime).
    pub const WRENN_QEMU_BIN: &str = "WRENN_QEMU_BIN";
    /// Accelerator of the VM runtimes (`auto`, `kvm`, `tcg`).
    pub const WRENN_VM_ACCEL: &str = "WRENN_VM_ACCEL";
    /// One-time host registration token (from `POST /v1/hosts`).
    pub const WRENN_REGISTRATION_TOKEN: &str = "WRENN_REGISTRATION_TOKEN";
    /// The `host:port` at which the control plane reaches this agent.
    pub const WRENN_HOST_ADDRESS: &str = "WRENN_HOST_ADDRESS";
    /// Memory overcommit ratio of a host (sandboxes may hold RAM × ratio − reserve).
    pub const WRENN_MEMORY_OVERCOMMIT: &str = "WRENN_MEMORY_OVERCOMMIT";
    /// vCPU overcommit ratio of a host (sandboxes may hold CPUs × ratio vCPUs).
    pub const WRENN_CPU_OVERCOMMIT: &str = "WRENN_CPU_OVERCOMMIT";
    /// Memory (MiB) kept for the host itself, outside every sandbox.
    pub const WRENN_MEMORY_RESERVE_MB: &str = "WRENN_MEMORY_RESERVE_MB";
    /// Most tasks all sandboxes of a host may run together.
    pub const WRENN_SANDBOXES_PIDS_MAX: &str = "WRENN_SANDBOXES_PIDS_MAX";
    /// Capsules the process runtime keeps booted ahead of creates.
    pub const WRENN_WARM_CAPSULES: &str = "WRENN_WARM_CAPSULES";
    /// Seconds between envd health checks of every running sandbox.
    pub const WRENN_HEALTH_INTERVAL_SECS: &str = "WRENN_HEALTH_INTERVAL_SECS";
    /// Seconds one envd health check may take.
    pub const WRENN_HEALTH_TIMEOUT_SECS: &str = "WRENN_HEALTH_TIMEOUT_SECS";
    /// Most live capsules a team may have at once.
    pub const WRENN_TEAM_MAX_CAPSULES: &str = "WRENN_TEAM_MAX_CAPSULES";
    /// Milliseconds `POST /v1/capsules` waits for the capsule to start.
    pub const WRENN_CREATE_WAIT_MS: &str = "WRENN_CREATE_WAIT_MS";
    /// Networks capsules may reach although the default egress policy blocks them.
    pub const WRENN_EGRESS_ALLOW: &str = "WRENN_EGRESS_ALLOW";
    /// Networks capsules may not reach, besides the default egress policy's.
    pub const WRENN_EGRESS_DENY: &str = "WRENN_EGRESS_DENY";
}

/// Default `WRENN_DIR`.
pub const DEFAULT_WRENN_DIR: &str = "/var/lib/wrenn";
/// Default control-plane listen address.
pub const DEFAULT_CP_LISTEN_ADDR: &str = "127.0.0.1:8000";
/// Default host agent listen address.
pub const DEFAULT_HOST_LISTEN_ADDR: &str = "127.0.0.1:50051";
/// Default SMTP port (submission).
pub const DEFAULT_SMTP_PORT: u16 = 587;
/// Default sender address.
pub const DEFAULT_SMTP_FROM_EMAIL: &str = "noreply@wrenn.dev";
/// Default host monitor period.
pub const DEFAULT_HOST_MONITOR_INTERVAL: Duration = Duration::from_secs(60);
/// Default maximum request body size: 100 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;

/// Default [`Config::database_max_connections`]. Postgres serves a pool best when it
/// is about twice the database server's cores; more connections only queue inside
/// the server (measured: 8 beats 16 on a 2-core host, see `scripts/load-api-keys.sh`).
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 8;

/// Largest accepted [`Config::database_max_connections`].
pub const MAX_DB_MAX_CONNECTIONS: u32 = 1024;
/// Default rootfs size in MiB.
pub const DEFAULT_ROOTFS_SIZE_MB: u64 = 5120;
/// Default idle time before hibernation.
pub const DEFAULT_HIBERNATE_AFTER: Duration = Duration::from_secs(600);
/// Default firecracker binary.
pub const DEFAULT_FIRECRACKER_BIN: &str = "/usr/local/bin/firecracker";
/// Default [`Overcommit::memory`].
pub const DEFAULT_MEMORY_OVERCOMMIT: f64 = 1.0;
/// Default [`Overcommit::cpu`].
pub const DEFAULT_CPU_OVERCOMMIT: f64 = 4.0;
/// Default [`Overcommit::memory_reserve_mb`].
pub const DEFAULT_MEMORY_RESERVE_MB: u64 = 1024;
/// Default [`AgentConfig::warm_capsules`].
pub const DEFAULT_WARM_CAPSULES: usize = 4;
/// Most [`AgentConfig::warm_capsules`].
pub const MAX_WARM_CAPSULES: usize = 64;
/// Default [`AgentConfig::sandboxes_pids_max`].
pub const DEFAULT_SANDBOXES_PIDS_MAX: u64 = 32768;
/// Default [`AgentConfig::health_interval`].
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// Default [`AgentConfig::health_timeout`].
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`Config::create_wait`].
pub const DEFAULT_CREATE_WAIT: Duration = Duration::from_secs(5);
/// Longest [`Config::create_wait`].
pub const MAX_CREATE_WAIT: Duration = Duration::from_secs(60);

/// Default [`Config::team_max_capsules`].
pub const DEFAULT_TEAM_MAX_CAPSULES: u32 = 100;
/// Largest accepted overcommit ratio.
pub const MAX_OVERCOMMIT: f64 = 100.0;

/// How much of a host sandboxes may hold: the agent admits work against it, and the
/// control plane refuses at once a capsule no host could ever hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overcommit {
    /// `WRENN_MEMORY_OVERCOMMIT`, default 1.0 (above 0, at most 100): sandboxes may
    /// hold `host memory × memory − memory_reserve_mb` MiB.
    pub memory: f64,
    /// `WRENN_CPU_OVERCOMMIT`, default 4.0 (above 0, at most 100): sandboxes may hold
    /// `host CPUs × cpu` vCPUs.
    pub cpu: f64,
    /// `WRENN_MEMORY_RESERVE_MB`, default 1024: memory kept for the host itself.
    pub memory_reserve_mb: u64,
}

// The ratios are finite (never NaN) when read from the environment, so equality is
// total.
impl Eq for Overcommit {}

impl Default for Overcommit {
    fn default() -> Self {
        Self {
            memory: DEFAULT_MEMORY_OVERCOMMIT,
            cpu: DEFAULT_CPU_OVERCOMMIT,
            memory_reserve_mb: DEFAULT_MEMORY_RESERVE_MB,
        }
    }
}

impl Overcommit {
    fn from_vars(v: &Vars<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            memory: v.ratio(vars::WRENN_MEMORY_OVERCOMMIT, DEFAULT_MEMORY_OVERCOMMIT)?,
            cpu: v.ratio(vars::WRENN_CPU_OVERCOMMIT, DEFAULT_CPU_OVERCOMMIT)?,
            memory_reserve_mb: v.parse_with(
                vars::WRENN_MEMORY_RESERVE_MB,
                DEFAULT_MEMORY_RESERVE_MB,
                |s| {
                    s.parse::<u64>()
                        .map_err(|_| "expected a whole number of MiB".to_owned())
                },
            )?,
        })
    }

    /// Memory (MiB) sandboxes may hold together on a host with `host_memory_mb`.
    pub fn memory_limit_mb(&self, host_memory_mb: u64) -> u64 {
        ((host_memory_mb as f64 * self.memory) as u64).saturating_sub(self.memory_reserve_mb)
    }

    /// vCPUs sandboxes may hold together on a host with `host_cpus`.
    pub fn vcpu_limit(&self, host_cpus: u64) -> u64 {
        (host_cpus as f64 * self.cpu) as u64
    }
}

/// Minimum length of `JWT_SECRET`, in characters.
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// Why the configuration could not be built. Every variant names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable has a value that cannot be used.
    #[error("invalid {var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// The value (truncated, with any URL password redacted).
        value: String,
        /// What is expected.
        reason: String,
    },
    /// A secret variable has a value that cannot be used; the value is not shown.
    #[error("invalid {var}: {reason} (value not shown)")]
    InvalidSecret {
        /// The variable.
        var: &'static str,
        /// What is expected.
        reason: String,
    },
    /// A variable is set but another one that it needs is not.
    #[error("{var} is set but {missing} is not: set both or neither")]
    Incomplete {
        /// The variable that is set.
        var: &'static str,
        /// The variable that is missing.
        missing: &'static str,
    },
}

/// A secret string. `Debug` prints `[redacted]`; read it with [`expose_secret`](Self::expose_secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret value.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// How the control plane picks a host for a new sandbox (`WRENN_SCHEDULER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// `least_loaded`: the host with the most free resources.
    #[default]
    LeastLoaded,
    /// `round_robin`: hosts in turn.
    RoundRobin,
    /// `single_host`: always the only online host.
    SingleHost,
}

impl SchedulerKind {
    /// Wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::LeastLoaded => "least_loaded",
            SchedulerKind::RoundRobin => "round_robin",
            SchedulerKind::SingleHost => "single_host",
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchedulerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "least_loaded" => Ok(Self::LeastLoaded),
            "round_robin" => Ok(Self::RoundRobin),
            "single_host" => Ok(Self::SingleHost),
            _ => Err("expected one of least_loaded, round_robin, single_host".to_owned()),
        }
    }
}

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

/// Outgoing email settings; present when `SMTP_HOST` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// `SMTP_HOST` (required for email to be sent).
    pub host: String,
    /// `SMTP_PORT`, default 587.
    pub port: u16,
    /// `SMTP_USERNAME`, optional.
    pub username: Option<String>,
    /// `SMTP_PASSWORD`, optional.
    pub password: Option<Secret>,
    /// `SMTP_FROM_EMAIL`, default `noreply@wrenn.dev`.
    pub from_email: String,
}

/// Control-plane configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// `WRENN_DIR`, default `/var/lib/wrenn`.
    pub wrenn_dir: PathBuf,
    /// `DATABASE_URL` (`postgres://…`, `postgresql://…` or `sqlite:…`), default
    /// `sqlite://{WRENN_DIR}/wrenn.db`.
    pub database_url: String,
    /// `REDIS_URL` (`redis://`, `rediss://`, `redis+unix://`, `unix://`); unset → the
    /// in-process event bus.
    pub redis_url: Option<String>,
    /// `WRENN_CP_LISTEN_ADDR`, default `127.0.0.1:8000`. `:8000` means `0.0.0.0:8000`.
    pub listen_addr: SocketAddr,
    /// `CP_PUBLIC_URL` (`http(s)://…`, trailing `/` removed), optional.
    pub public_url: Option<String>,
    /// `JWT_SECRET` (at least 32 characters); unset → the server generates one into
    /// `WRENN_DIR`.
    pub jwt_secret: Option<Secret>,
    /// `WRENN_CA_CERT`: mTLS CA certificate (PEM path); set together with `ca_key`.
    /// Unset → the server generates a CA into `WRENN_DIR`.
    pub ca_cert: Option<PathBuf>,
    /// `WRENN_CA_KEY`: mTLS CA private key (PEM path); set together with `ca_cert`.
    pub ca_key: Option<PathBuf>,
    /// `WRENN_ENCRYPTION_KEY`: 64 hex characters (32 bytes) for channel secrets; optional.
    pub encryption_key: Option<[u8; 32]>,
    /// SMTP settings (`SMTP_*`); unset `SMTP_HOST` → no email is sent.
    pub smtp: Option<SmtpConfig>,
    /// `WRENN_HOST_MONITOR_INTERVAL_SECS`, default 60 (at least 1).
    pub host_monitor_interval: Duration,
    /// `WRENN_SCHEDULER` (`least_loaded` | `round_robin` | `single_host`), default
    /// `least_loaded`.
    pub scheduler: SchedulerKind,
    /// `WRENN_MAX_BODY_BYTES`, default 104857600 (100 MiB, at least 1).
    pub max_body_bytes: u64,
    /// `WRENN_DB_MAX_CONNECTIONS`: most connections opened to Postgres, default 8
    /// (1 to 1024). SQLite ignores it.
    pub database_max_connections: u32,
    /// The hosts' overcommit (`WRENN_MEMORY_OVERCOMMIT`, `WRENN_CPU_OVERCOMMIT`,
    /// `WRENN_MEMORY_RESERVE_MB`): a capsule larger than what any host could hold is
    /// refused at once.
    pub overcommit: Overcommit,
    /// `WRENN_TEAM_MAX_CAPSULES`, default 100 (at least 1): most capsules a team may
    /// have in `starting`, `running`, `pausing`, `paused`, `resuming` or
    /// `snapshotting` at once (hibernated, stopped and errored ones do not count).
    pub team_max_capsules: u32,
    /// `WRENN_CREATE_WAIT_MS`, default 5000 (0 to 60000): how long `POST /v1/capsules`
    /// waits for the capsule's start before answering — `201` with it `running`, else
    /// `202` with it as it is then (`starting`, or `error`). 0 answers at once.
    pub create_wait: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured without `..` so a new field cannot be forgotten here.
        let Config {
            wrenn_dir,
            database_url,
            redis_url,
            listen_addr,
            public_url,
            jwt_secret,
            ca_cert,
            ca_key,
            encryption_key,
            smtp,
            host_monitor_interval,
            scheduler,
            max_body_bytes,
            database_max_connections,
            overcommit,
            team_max_capsules,
            create_wait,
        } = self;
        f.debug_struct("Config")
            .field("wrenn_dir", wrenn_dir)
            .field("database_url", &redact_url(database_url))
            .field("redis_url", &redis_url.as_deref().map(redact_url))
            .field("listen_addr", listen_addr)
            .field("public_url", public_url)
            .field("jwt_secret", jwt_secret)
            .field("ca_cert", ca_cert)
            .field("ca_key", ca_key)
            .field("encryption_key", &encryption_key.map(|_| Redacted))
            .field("smtp", smtp)
            .field("host_monitor_interval", host_monitor_interval)
            .field("scheduler", scheduler)
            .field("max_body_bytes", max_body_bytes)
            .field("database_max_connections", database_max_connections)
            .field("overcommit", overcommit)
            .field("team_max_capsules", team_max_capsules)
            .field("create_wait", create_wait)
            .finish()
    }
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Config {
    /// Reads the process environment, with `./.env` (best-effort) filling in unset
    /// variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let env = EnvSource::load(".env");
        Self::from_lookup(|k| env.get(k))
    }

    /// Builds the configuration from `lookup(variable name)`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars(&lookup);
        let wrenn_dir = v.path(vars::WRENN_DIR, DEFAULT_WRENN_DIR);
        let database_url = match v.get(vars::DATABASE_URL) {
            Some(url) => check_scheme(
                vars::DATABASE_URL,
                url,
                &["postgres://", "postgresql://", "sqlite:"],
            )?,
            None => format!(
                "sqlite://{}",
                Layout::new(&wrenn_dir).sqlite_db_file().display()
            ),
        };
        let redis_url = v
            .get(vars::REDIS_URL)
            .map(|url| {
                check_scheme(
                    vars::REDIS_URL,
                    url,
                    &["redis://", "rediss://", "redis+unix://", "unix://"],
                )
            })
            .transpose()?;
        let listen_addr = v.socket_addr(vars::WRENN_CP_LISTEN_ADDR, DEFAULT_CP_LISTEN_ADDR)?;
        let public_url = v
            .get(vars::CP_PUBLIC_URL)
            .map(|url| http_url(vars::CP_PUBLIC_URL, url))
            .transpose()?;
        let jwt_secret = match v.get(vars::JWT_SECRET) {
            Some(s) if s.chars().count() < MIN_JWT_SECRET_LEN => {
                return Err(ConfigError::InvalidSecret {
                    var: vars::JWT_SECRET,
                    reason: format!(
                        "must be at least {MIN_JWT_SECRET_LEN} characters long (got {})",
                        s.chars().count()
                    ),
                });
            }
            s => s.map(Secret),
        };
        let ca_cert = v.get(vars::WRENN_CA_CERT).map(PathBuf::from);
        let ca_key = v.get(vars::WRENN_CA_KEY).map(PathBuf::from);
        match (&ca_cert, &ca_key) {
            (Some(_), None) => {
                return Err(ConfigError::Incomplete {
                    var: vars::WRENN_CA_CERT,
                    missing: vars::WRENN_CA_KEY,
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Incomplete {
                    var: vars::WRENN_CA_KEY,
                    missing: vars::WRENN_CA_CERT,
                });
            }
            _ => {}
        }
        let encryption_key = v
            .get(vars::WRENN_ENCRYPTION_KEY)
            .map(|s| encryption_key(&s))
            .transpose()?;
        let smtp = match v.get(vars::SMTP_HOST) {
            None => None,
            Some(host) => Some(SmtpConfig {
                host,
                port: v.parse_with(vars::SMTP_PORT, DEFAULT_SMTP_PORT, |s| match s.parse() {
                    Ok(0) | Err(_) => Err("expected a port number between 1 and 65535".into()),
                    Ok(p) => Ok(p),
                })?,
                username: v.get(vars::SMTP_USERNAME),
                password: v.get(vars::SMTP_PASSWORD).map(Secret),
                from_email: match v.get(vars::SMTP_FROM_EMAIL) {
                    None => DEFAULT_SMTP_FROM_EMAIL.to_owned(),
                    Some(e) => crate::validate::email(&e)
                        .map_err(|err| invalid(vars::SMTP_FROM_EMAIL, &e, err.to_string()))?,
                },
            }),
        };
        let host_monitor_interval = Duration::from_secs(v.positive(
            vars::WRENN_HOST_MONITOR_INTERVAL_SECS,
            DEFAULT_HOST_MONITOR_INTERVAL.as_secs(),
            "a whole number of seconds",
        )?);
        let scheduler = v.parse_with(vars::WRENN_SCHEDULER, SchedulerKind::default(), |s| {
            s.parse()
        })?;
        let max_body_bytes = v.positive(
            vars::WRENN_MAX_BODY_BYTES,
            DEFAULT_MAX_BODY_BYTES,
            "a whole number of bytes",
        )?;
        let database_max_connections = v.parse_with(
            vars::WRENN_DB_MAX_CONNECTIONS,
            DEFAULT_DB_MAX_CONNECTIONS,
            |s| match s.parse::<u32>() {
                Ok(n) if (1..=MAX_DB_MAX_CONNECTIONS).contains(&n) => Ok(n),
                _ => Err(format!(
                    "expected a whole number from 1 to {MAX_DB_MAX_CONNECTIONS}"
                )),
            },
        )?;
        Ok(Self {
            wrenn_dir,
            database_url,
            redis_url,
            listen_addr,
            public_url,
            jwt_secret,
            ca_cert,
            ca_key,
            encryption_key,
            smtp,
            host_monitor_interval,
            scheduler,
            max_body_bytes,
            database_max_connections,
            overcommit: Overcommit::from_vars(&v)?,
            team_max_capsules: v.parse_with(
                vars::WRENN_TEAM_MAX_CAPSULES,
                DEFAULT_TEAM_MAX_CAPSULES,
                |s| match s.parse::<u32>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err("expected a whole number of capsules greater than 0".to_owned()),
                },
            )?,
            create_wait: v.parse_with(
                vars::WRENN_CREATE_WAIT_MS,
                DEFAULT_CREATE_WAIT,
                |s| match s.parse::<u64>().map(Duration::from_millis) {
                    Ok(d) if d <= MAX_CREATE_WAIT => Ok(d),
                    _ => Err(format!(
                        "expected a whole number of milliseconds from 0 to {}",
                        MAX_CREATE_WAIT.as_millis()
                    )),
                },
            )?,
        })
    }

    /// The host paths under `wrenn_dir`.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.wrenn_dir)
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
    /// `WRENN_QEMU_BIN`: `qemu-system-x86_64` of the `qemu` runtime (default: found
    /// on `PATH`).
    pub qemu_bin: Option<PathBuf>,
    /// `WRENN_VM_ACCEL` (`auto` | `kvm` | `tcg`), default `auto`.
    pub vm_accel: VmAccel,
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
    /// `WRENN_HEALTH_INTERVAL_SECS`, default 10 (at least 1).
    pub health_interval: Duration,
    /// `WRENN_HEALTH_TIMEOUT_SECS`, default 5 (at least 1).
    pub health_timeout: Duration,
    /// `WRENN_EGRESS_ALLOW` and `WRENN_EGRESS_DENY`: the deployment's changes to the
    /// capsules' default egress policy.
    pub egress: EgressConfig,
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
            qemu_bin: v.get(vars::WRENN_QEMU_BIN).map(PathBuf::from),
            vm_accel: v.parse_with(vars::WRENN_VM_ACCEL, VmAccel::default(), |s| s.parse())?,
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

/// Where capsules may send traffic, on top of the agent's default egress policy (which
/// blocks private, link-local, CGNAT, loopback, multicast and reserved ranges and the
/// host's own networks, and allows the rest of the internet).
///
/// Entries of both lists are matched most specific first (a deny wins a tie) and take
/// precedence over the defaults: `WRENN_EGRESS_ALLOW=10.1.0.0/16` opens one private
/// network, `WRENN_EGRESS_DENY=0.0.0.0/0` with `WRENN_EGRESS_ALLOW=1.2.3.0/24` allows
/// only that network. Capsules never reach each other, whatever the lists say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// `WRENN_EGRESS_ALLOW`: comma- or space-separated CIDRs (or single addresses).
    pub allow: Vec<Cidr>,
    /// `WRENN_EGRESS_DENY`: comma- or space-separated CIDRs (or single addresses).
    pub deny: Vec<Cidr>,
}

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `2001:db8::/32`, or a single address (a /32
/// or /128). Host bits must be zero (`10.0.0.1/8` is refused), so a typo cannot widen or
/// shift a rule silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`; `None` if the prefix is longer than the address or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let cidr = Self { addr, prefix };
        (prefix <= cidr.max_prefix() && cidr.network_bits() == cidr.host_bits_cleared())
            .then_some(cidr)
    }

    /// The network `addr/prefix` containing `addr` (host bits cleared); `None` if the
    /// prefix is longer than the address.
    pub fn containing(addr: IpAddr, prefix: u8) -> Option<Self> {
        let wide = Self { addr, prefix };
        if prefix > wide.max_prefix() {
            return None;
        }
        let bits = wide.host_bits_cleared();
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(((bits >> 96) as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        };
        Some(Self { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies in this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && Self {
                addr: ip,
                prefix: self.prefix,
            }
            .host_bits_cleared()
                == self.network_bits()
    }

    /// Whether `other` lies entirely in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// The network mask as bytes (4 for IPv4, 16 for IPv6).
    pub fn mask_bytes(&self) -> Vec<u8> {
        let bits = self.max_prefix();
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        mask.to_be_bytes()[..usize::from(bits / 8)].to_vec()
    }

    fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// The address as a left-aligned 128-bit number.
    fn network_bits(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// [`network_bits`](Self::network_bits) with the host part zeroed.
    fn host_bits_cleared(&self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            self.network_bits() & (u128::MAX << (128 - u32::from(self.prefix)))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Cidr::new(addr, prefix).ok_or_else(|| {
            let network = Cidr::containing(addr, prefix).map(|c| c.to_string());
            format!(
                "{s:?} has host bits set; did you mean {}?",
                network.unwrap_or_default()
            )
        })
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

/// The process environment with a `.env` file underneath it: a variable set in the
/// real environment wins over the file.
#[derive(Clone, Default)]
pub struct EnvSource {
    dotenv: HashMap<String, String>,
}

impl fmt::Debug for EnvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvSource")
            .field("dotenv_vars", &self.dotenv.len())
            .finish()
    }
}

impl EnvSource {
    /// Loads the `.env` file at `path`, best-effort: a missing file is ignored, and a
    /// malformed line is logged (without its content) and ends the reading.
    pub fn load(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let mut dotenv = HashMap::new();
        match dotenvy::from_path_iter(path) {
            Ok(iter) => {
                for item in iter {
                    match item {
                        Ok((k, v)) => {
                            dotenv.insert(k, v);
                        }
                        Err(e) => {
                            let what = match e {
                                dotenvy::Error::LineParse(_, idx) => {
                                    format!("parse error at position {idx}")
                                }
                                _ => "read error".to_owned(),
                            };
                            tracing::warn!(path = %path.display(), "ignoring rest of .env file: {what}");
                            break;
                        }
                    }
                }
            }
            Err(e) if e.not_found() => {}
            Err(_) => tracing::warn!(path = %path.display(), "could not read .env file"),
        }
        Self { dotenv }
    }

    /// The value of `key`: the real environment first, then the `.env` file.
    pub fn get(&self, key: &str) -> Option<String> {
        std::env::var_os(key)
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| self.dotenv.get(key).cloned())
    }
}

/// Typed access to a lookup function.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    /// Trimmed value; empty counts as unset.
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    fn path(&self, var: &str, default: &str) -> PathBuf {
        PathBuf::from(self.get(var).unwrap_or_else(|| default.to_owned()))
    }

    fn parse_with<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(s) => parse(&s).map_err(|reason| invalid(var, &s, reason)),
        }
    }

    fn positive(&self, var: &'static str, default: u64, what: &str) -> Result<u64, ConfigError> {
        self.parse_with(var, default, |s| match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("expected {what} greater than 0")),
        })
    }

    /// A finite ratio above 0 and at most [`MAX_OVERCOMMIT`].
    fn ratio(&self, var: &'static str, default: f64) -> Result<f64, ConfigError> {
        self.parse_with(var, default, |s| match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 && r <= MAX_OVERCOMMIT => Ok(r),
            _ => Err(format!(
                "expected a ratio above 0 and at most {MAX_OVERCOMMIT}, e.g. 1.5"
            )),
        })
    }

    /// A comma- or whitespace-separated list of [`Cidr`]s; unset = empty.
    fn cidrs(&self, var: &'static str) -> Result<Vec<Cidr>, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(Vec::new());
        };
        raw.split([',', ' ', '\t', '\n'])
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|reason| invalid(var, &raw, reason)))
            .collect()
    }

    fn socket_addr(&self, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.get(var).unwrap_or_else(|| default.to_owned());
        let full = if raw.starts_with(':') {
            format!("0.0.0.0{raw}")
        } else {
            raw.clone()
        };
        full.parse().map_err(|_| {
            invalid(
                var,
                &raw,
                "expected ip:port, e.g. 127.0.0.1:8000, [::1]:8000 or :8000".to_owned(),
            )
        })
    }
}

fn invalid(var: &'static str, value: &str, reason: String) -> ConfigError {
    let mut shown: String = redact_url(value).chars().take(200).collect();
    if value.chars().count() > 200 {
        shown.push('…');
    }
    ConfigError::Invalid {
        var,
        value: shown,
        reason,
    }
}

fn check_scheme(var: &'static str, url: String, schemes: &[&str]) -> Result<String, ConfigError> {
    if schemes.iter().any(|s| url.starts_with(s)) {
        Ok(url)
    } else {
        Err(invalid(
            var,
            &url,
            format!("expected a URL starting with one of {}", schemes.join(", ")),
        ))
    }
}

fn http_url(var: &'static str, url: String) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => {
            Ok(url.trim_end_matches('/').to_owned())
        }
        _ => Err(invalid(
            var,
            &url,
            "expected an http:// or https:// URL, e.g. https://wrenn.example.com".to_owned(),
        )),
    }
}

/// `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 address, and a port
/// from 1 to 65535).
fn host_port(var: &'static str, value: String) -> Result<String, ConfigError> {
    let bad = |value: &str| {
        invalid(
            var,
            value,
            "expected host:port, e.g. 10.0.0.5:50051 or agent-1.internal:50051".to_owned(),
        )
    };
    if let Ok(sa) = value.parse::<SocketAddr>() {
        return if sa.port() == 0 {
            Err(bad(&value))
        } else {
            Ok(value)
        };
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(bad(&value));
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(value),
        _ => Err(bad(&value)),
    }
}

fn encryption_key(s: &str) -> Result<[u8; 32], ConfigError> {
    let mut key = [0u8; 32];
    if s.len() != 64 || hex::decode_to_slice(s, &mut key).is_err() {
        return Err(ConfigError::InvalidSecret {
            var: vars::WRENN_ENCRYPTION_KEY,
            reason: "expected 64 hex characters (32 bytes)".to_owned(),
        });
    }
    Ok(key)
}

/// Replaces the password in `scheme://user:password@host…` with `[redacted]`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let auth_start = scheme_end + 3;
    let rest = &url[auth_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:[redacted]{}",
            &url[..auth_start],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    fn agent(pairs: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AgentConfig::from_lookup(|k| map.get(k).cloned())
    }

    fn err_var(e: &ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { var, .. }
            | ConfigError::InvalidSecret { var, .. }
            | ConfigError::Incomplete { var, .. } => var,
        }
    }

    const SECRET: &str = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
    const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn control_plane_defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.wrenn_dir, Path::new("/var/lib/wrenn"));
        assert_eq!(c.database_url, "sqlite:///var/lib/wrenn/wrenn.db");
        assert_eq!(c.redis_url, None);
        assert_eq!(c.listen_addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.public_url, None);
        assert_eq!(c.jwt_secret, None);
        assert_eq!((c.ca_cert.clone(), c.ca_key.clone()), (None, None));
        assert_eq!(c.encryption_key, None);
        assert_eq!(c.smtp, None);
        assert_eq!(c.host_monitor_interval, Duration::from_secs(60));
        assert_eq!(c.scheduler, SchedulerKind::LeastLoaded);
        assert_eq!(c.max_body_bytes, 100 * 1024 * 1024);
        assert_eq!(c.database_max_connections, DEFAULT_DB_MAX_CONNECTIONS);
        assert_eq!(c.layout(), Layout::new("/var/lib/wrenn"));
    }

    #[test]
    fn control_plane_values() {
        let c = cfg(&[
            ("WRENN_DIR", "/srv/wrenn"),
            ("DATABASE_URL", "postgres://wrenn:pw@db:5432/wrenn"),
            ("REDIS_URL", "redis://localhost:6379/0"),
            ("WRENN_CP_LISTEN_ADDR", ":9000"),
            ("CP_PUBLIC_URL", "https://wrenn.example.com/"),
            ("JWT_SECRET", SECRET),
            ("WRENN_CA_CERT", "/etc/wrenn/ca.pem"),
            ("WRENN_CA_KEY", "/etc/wrenn/ca-key.pem"),
            ("WRENN_ENCRYPTION_KEY", KEY_HEX),
            ("SMTP_HOST", "smtp.example.com"),
            ("SMTP_PORT", "465"),
            ("SMTP_USERNAME", "mailer"),
            ("SMTP_PASSWORD", "mail-pass"),
            ("SMTP_FROM_EMAIL", " Wrenn@Example.com "),
            ("WRENN_HOST_MONITOR_INTERVAL_SECS", "15"),
            ("WRENN_SCHEDULER", "round_robin"),
            ("WRENN_MAX_BODY_BYTES", "1024"),
            ("WRENN_DB_MAX_CONNECTIONS", "32"),
        ])
        .unwrap();
        assert_eq!(c.database_max_connections, 32);
        assert_eq!(c.wrenn_dir, Path::new("/srv/wrenn"));
        assert_eq!(c.database_url, "postgres://wrenn:pw@db:5432/wrenn");
        assert_eq!(c.redis_url.as_deref(), Some("redis://localhost:6379/0"));
        assert_eq!(c.listen_addr, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.public_url.as_deref(), Some("https://wrenn.example.com"));
        assert_eq!(
            c.jwt_secret.as_ref().map(Secret::expose_secret),
            Some(SECRET)
        );
        assert_eq!(c.ca_cert.as_deref(), Some(Path::new("/etc/wrenn/ca.pem")));
        assert_eq!(
            c.ca_key.as_deref(),
            Some(Path::new("/etc/wrenn/ca-key.pem"))
        );
        let key = c.encryption_key.unwrap();
        assert_eq!((key[0], key[1], key[31]), (0x00, 0x11, 0xff));
        let smtp = c.smtp.clone().unwrap();
        assert_eq!(smtp.host, "smtp.example.com");
        assert_eq!(smtp.port, 465);
        assert_eq!(smtp.username.as_deref(), Some("mailer"));
        assert_eq!(smtp.password, Some(Secret::new("mail-pass")));
        assert_eq!(smtp.from_email, "wrenn@example.com");
        assert_eq!(c.host_monitor_interval, Duration::from_secs(15));
        assert_eq!(c.scheduler, SchedulerKind::RoundRobin);
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(c.layout().root(), Path::new("/srv/wrenn"));
    }

    #[test]
    fn database_url_follows_wrenn_dir_and_smtp_defaults() {
        let c = cfg(&[("WRENN_DIR", "/tmp/w"), ("SMTP_HOST", "mail")]).unwrap();
        assert_eq!(c.database_url, "sqlite:///tmp/w/wrenn.db");
        let smtp = c.smtp.unwrap();
        assert_eq!(
            (smtp.port, smtp.from_email.as_str()),
            (587, "noreply@wrenn.dev")
        );
        assert_eq!((smtp.username, smtp.password), (None, None));
        for db in ["sqlite::memory:", "postgresql://x/y", "sqlite:///a/b.db"] {
            assert_eq!(cfg(&[("DATABASE_URL", db)]).unwrap().database_url, db);
        }
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = cfg(&[
            ("REDIS_URL", ""),
            ("JWT_SECRET", "   "),
            ("WRENN_SCHEDULER", ""),
        ])
        .unwrap();
        assert_eq!(c.redis_url, None);
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.scheduler, SchedulerKind::LeastLoaded);
    }

    #[test]
    fn every_parse_error_names_its_variable() {
        let cases: &[(&str, &str)] = &[
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "localhost:6379"),
            ("WRENN_CP_LISTEN_ADDR", "localhost"),
            ("WRENN_CP_LISTEN_ADDR", "127.0.0.1:99999"),
            ("CP_PUBLIC_URL", "wrenn.example.com"),
            ("CP_PUBLIC_URL", "https://"),
            ("JWT_SECRET", "short"),
            ("WRENN_ENCRYPTION_KEY", "abc"),
            ("WRENN_ENCRYPTION_KEY", &"zz".repeat(32)),
            ("WRENN_HOST_MONITOR_INTERVAL_SECS", "0"),
            ("WRENN_HOST_MONITOR_INTERVAL_SECS", "1m"),
            ("WRENN_HOST_MONITOR_INTERVAL_SECS", "-5"),
            ("WRENN_SCHEDULER", "random"),
            ("WRENN_MAX_BODY_BYTES", "0"),
            ("WRENN_MAX_BODY_BYTES", "100MiB"),
            ("WRENN_DB_MAX_CONNECTIONS", "0"),
            ("WRENN_DB_MAX_CONNECTIONS", "1025"),
            ("WRENN_DB_MAX_CONNECTIONS", "lots"),
        ];
        for (var, value) in cases {
            let err = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err_var(&err), *var, "{var}={value}: {err}");
            assert!(err.to_string().contains(var), "{err}");
        }
        // SMTP variables are only read when SMTP_HOST is set.
        assert!(cfg(&[("SMTP_PORT", "x")]).is_ok());
        for (var, value) in [
            ("SMTP_PORT", "0"),
            ("SMTP_PORT", "70000"),
            ("SMTP_FROM_EMAIL", "nope"),
        ] {
            let err = cfg(&[("SMTP_HOST", "mail"), (var, value)]).unwrap_err();
            assert_eq!(err_var(&err), var, "{err}");
        }
        let err = cfg(&[("WRENN_SCHEDULER", "random")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid WRENN_SCHEDULER=\"random\": expected one of least_loaded, round_robin, single_host"
        );
    }

    #[test]
    fn ca_paths_come_in_pairs() {
        let err = cfg(&[("WRENN_CA_CERT", "/a")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Incomplete {
                var: "WRENN_CA_CERT",
                missing: "WRENN_CA_KEY"
            }
        );
        assert!(err.to_string().contains("set both or neither"));
        let err = cfg(&[("WRENN_CA_KEY", "/a")]).unwrap_err();
        assert_eq!(err_var(&err), "WRENN_CA_KEY");
    }

    #[test]
    fn scheduler_values() {
        for (s, k) in [
            ("least_loaded", SchedulerKind::LeastLoaded),
            ("round_robin", SchedulerKind::RoundRobin),
            ("single_host", SchedulerKind::SingleHost),
        ] {
            assert_eq!(cfg(&[("WRENN_SCHEDULER", s)]).unwrap().scheduler, k);
            assert_eq!(k.to_string(), s);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn secrets_never_appear_in_debug_or_errors() {
        let c = cfg(&[
            ("DATABASE_URL", "postgres://wrenn:dbpass@db/wrenn"),
            ("REDIS_URL", "redis://:redispass@redis:6379/0"),
            ("JWT_SECRET", SECRET),
            ("WRENN_ENCRYPTION_KEY", KEY_HEX),
            ("SMTP_HOST", "mail"),
            ("SMTP_PASSWORD", "smtppass"),
        ])
        .unwrap();
        let dbg = format!("{c:?} {c:#?}");
        for secret in [
            SECRET,
            KEY_HEX,
            "dbpass",
            "redispass",
            "smtppass",
            "221, 238",
        ] {
            assert!(!dbg.contains(secret), "{secret} leaked: {dbg}");
        }
        assert!(
            dbg.contains("postgres://wrenn:[redacted]@db/wrenn"),
            "{dbg}"
        );
        assert!(dbg.contains("[redacted]"));
        assert_eq!(format!("{:?}", Secret::new("x")), "[redacted]");

        let err = cfg(&[("JWT_SECRET", "tooshort-secret")]).unwrap_err();
        assert!(!err.to_string().contains("tooshort-secret"), "{err}");
        assert!(err.to_string().contains("at least 32 characters"), "{err}");
        let bad_key = "g".repeat(64);
        let err = cfg(&[("WRENN_ENCRYPTION_KEY", &bad_key)]).unwrap_err();
        assert!(!err.to_string().contains(&bad_key), "{err}");
        let err = cfg(&[("DATABASE_URL", "mysql://root:rootpass@db/x")]).unwrap_err();
        assert!(!err.to_string().contains("rootpass"), "{err}");
    }

    #[test]
    fn url_redaction() {
        assert_eq!(
            redact_url("postgres://u:p@h/db"),
            "postgres://u:[redacted]@h/db"
        );
        assert_eq!(redact_url("redis://:p@h:1/0"), "redis://:[redacted]@h:1/0");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://h/db?x=a@b:c"),
            "postgres://h/db?x=a@b:c"
        );
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
        assert_eq!(redact_url("u:p@h"), "u:p@h");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:[redacted]@h/db"
        );
    }

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
        ])
        .unwrap();
        assert_eq!(q.runtime, RuntimeKind::Qemu);
        assert_eq!(q.vm_accel, VmAccel::Tcg);
        assert_eq!(q.qemu_bin.as_deref(), Some(Path::new("/opt/qemu")));
        assert_eq!(agent(&[]).unwrap().vm_accel, VmAccel::Auto);
    }

    #[test]
    fn agent_parse_errors_name_their_variable() {
        for (var, value) in [
            ("WRENN_HOST_LISTEN_ADDR", "50051"),
            ("WRENN_CP_URL", "ftp://cp"),
            ("WRENN_RUNTIME", "docker"),
            ("WRENN_VM_ACCEL", "hvf"),
            ("WRENN_DEFAULT_ROOTFS_SIZE", "5X"),
            ("WRENN_DEFAULT_ROOTFS_SIZE", "0"),
            ("WRENN_HIBERNATE_AFTER_SECS", "0"),
            ("WRENN_HIBERNATE_AFTER_SECS", "ten"),
            ("WRENN_HOST_ADDRESS", "10.0.0.5"),
            ("WRENN_HOST_ADDRESS", "10.0.0.5:0"),
            ("WRENN_HOST_ADDRESS", "bad host:1"),
            ("WRENN_HOST_ADDRESS", ":50051"),
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
        assert_eq!(cfg(&[]).unwrap().team_max_capsules, 100);
        assert_eq!(cfg(&[]).unwrap().create_wait, DEFAULT_CREATE_WAIT);
        assert_eq!(
            cfg(&[("WRENN_CREATE_WAIT_MS", "0")]).unwrap().create_wait,
            Duration::ZERO
        );
        for bad in ["-1", "60001", "soon"] {
            assert!(cfg(&[("WRENN_CREATE_WAIT_MS", bad)]).is_err(), "{bad}");
        }
        let a = agent(&[
            ("WRENN_MEMORY_OVERCOMMIT", "1.5"),
            ("WRENN_CPU_OVERCOMMIT", "8"),
            ("WRENN_MEMORY_RESERVE_MB", "0"),
            ("WRENN_SANDBOXES_PIDS_MAX", "1000"),
            ("WRENN_HEALTH_INTERVAL_SECS", "3"),
            ("WRENN_HEALTH_TIMEOUT_SECS", "2"),
        ])
        .unwrap();
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
    fn egress_lists_parse_cidrs_and_single_addresses() {
        let a = agent(&[]).unwrap();
        assert_eq!(a.egress, EgressConfig::default());
        let a = agent(&[
            ("WRENN_EGRESS_ALLOW", "10.1.0.0/16, 192.168.7.9 fd12::/16"),
            ("WRENN_EGRESS_DENY", "0.0.0.0/0,\t::/0"),
        ])
        .unwrap();
        let shown: Vec<String> = a.egress.allow.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.1.0.0/16", "192.168.7.9/32", "fd12::/16"]);
        let shown: Vec<String> = a.egress.deny.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["0.0.0.0/0", "::/0"]);
    }

    #[test]
    fn bad_egress_entries_are_refused_naming_the_variable() {
        for (var, value, reason) in [
            (
                "WRENN_EGRESS_ALLOW",
                "10.0.0.1/8",
                "did you mean 10.0.0.0/8?",
            ),
            (
                "WRENN_EGRESS_ALLOW",
                "10.0.0.0/33",
                "prefix length must be 0 to 32",
            ),
            ("WRENN_EGRESS_DENY", "fd00::1/8", "did you mean fd00::/8?"),
            ("WRENN_EGRESS_DENY", "example.com", "is not an IP address"),
            ("WRENN_EGRESS_DENY", "10.0.0.0/-1", "prefix length"),
            ("WRENN_EGRESS_DENY", "10.0.0.0/+8", "prefix length"),
            ("WRENN_EGRESS_DENY", "10.0.0.0/", "prefix length"),
        ] {
            let err = agent(&[(var, value)]).unwrap_err();
            assert_eq!(err_var(&err), var, "{var}={value}: {err}");
            assert!(err.to_string().contains(reason), "{var}={value}: {err}");
        }
    }

    #[test]
    fn cidrs_contain_what_they_cover() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.255.255.53".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            !net.contains("::a00:1".parse().unwrap()),
            "never across families"
        );
        assert!(net.covers(&"10.200.0.0/16".parse().unwrap()));
        assert!(!net.covers(&"0.0.0.0/0".parse().unwrap()));
        assert_eq!(net.mask_bytes(), [255, 0, 0, 0]);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.80".parse().unwrap()));
        assert_eq!(all.mask_bytes(), [0, 0, 0, 0]);
        let ula: Cidr = "fc00::/7".parse().unwrap();
        assert!(ula.contains("fd00::2".parse().unwrap()));
        assert!(!ula.contains("fe80::1".parse().unwrap()));
        assert_eq!(ula.mask_bytes()[..2], [0xfe, 0]);
        assert_eq!(
            Cidr::containing("192.0.2.2".parse().unwrap(), 24).map(|c| c.to_string()),
            Some("192.0.2.0/24".to_owned())
        );
        assert_eq!(Cidr::containing("192.0.2.2".parse().unwrap(), 33), None);
        assert_eq!(Cidr::new("192.0.2.2".parse().unwrap(), 24), None);
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

    #[test]
    fn env_source_reads_dotenv_under_the_real_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        // PATH is set in the real environment and must win over the file.
        std::fs::write(
            &path,
            "WRENN_TEST_ONLY_IN_DOTENV_7f3a=from-file\nPATH=/from/dotenv\n# comment\n",
        )
        .unwrap();
        let env = EnvSource::load(&path);
        assert_eq!(
            env.get("WRENN_TEST_ONLY_IN_DOTENV_7f3a").as_deref(),
            Some("from-file")
        );
        assert_ne!(env.get("PATH").as_deref(), Some("/from/dotenv"));
        assert_eq!(env.get("WRENN_TEST_NOWHERE_7f3a"), None);
        // A missing file and a malformed file are not errors.
        let missing = EnvSource::load(dir.path().join("nope"));
        assert_eq!(missing.get("WRENN_TEST_ONLY_IN_DOTENV_7f3a"), None);
        std::fs::write(&path, "GOOD_7f3a=1\nthis is not valid\nLATER_7f3a=2\n").unwrap();
        let env = EnvSource::load(&path);
        assert_eq!(env.get("GOOD_7f3a").as_deref(), Some("1"));
        assert!(!format!("{env:?}").contains("GOOD_7f3a"));
    }
}
