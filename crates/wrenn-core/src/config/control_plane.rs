//! The control plane's [`Config`]: its defaults, its fields and how they are read
//! from the environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::secret::{Redacted, redact_url};
use super::source::{EnvSource, Vars, check_scheme, http_url, millis_up_to, secs_between};
use super::{
    ChannelsConfig, ConfigError, DEFAULT_WRENN_DIR, MetricsConfig, Overcommit, ProxyConfig,
    SchedulerKind, Secret, SmtpConfig, vars,
};
use crate::layout::Layout;

/// Default control-plane listen address.
pub const DEFAULT_CP_LISTEN_ADDR: &str = "127.0.0.1:8000";
/// Default host monitor period.
pub const DEFAULT_HOST_MONITOR_INTERVAL: Duration = Duration::from_secs(60);
/// Default [`Config::host_unreachable_after`].
pub const DEFAULT_HOST_UNREACHABLE_AFTER: Duration = Duration::from_secs(90);
/// Default [`Config::transient_grace`].
pub const DEFAULT_TRANSIENT_GRACE: Duration = Duration::from_secs(120);
/// Default [`Config::snapshot_grace`] (a snapshot copies whole disks).
pub const DEFAULT_SNAPSHOT_GRACE: Duration = Duration::from_secs(900);
/// Longest [`Config::host_unreachable_after`], [`Config::transient_grace`] and
/// [`Config::snapshot_grace`]: a week.
pub const MAX_MONITOR_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default [`Config::worker_lease`].
pub const DEFAULT_WORKER_LEASE: Duration = Duration::from_secs(30);
/// Shortest [`Config::worker_lease`]: a holder renews every third of it.
pub const MIN_WORKER_LEASE: Duration = Duration::from_secs(3);
/// Longest [`Config::worker_lease`].
pub const MAX_WORKER_LEASE: Duration = Duration::from_secs(3600);
/// How often team metric snapshots are taken unless configured.
pub const DEFAULT_METRICS_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Default maximum request body size: 100 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;

/// Default [`Config::database_max_connections`]. Postgres serves a pool best when it
/// is about twice the database server's cores; more connections only queue inside
/// the server (measured: 8 beats 16 on a 2-core host, see `scripts/load-api-keys.sh`).
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 8;

/// Largest accepted [`Config::database_max_connections`].
pub const MAX_DB_MAX_CONNECTIONS: u32 = 1024;
/// Default [`Config::create_wait`].
pub const DEFAULT_CREATE_WAIT: Duration = Duration::from_secs(5);
/// Longest [`Config::create_wait`].
pub const MAX_CREATE_WAIT: Duration = Duration::from_secs(60);
/// Default [`Config::lifecycle_wait`]: a process capsule pauses or resumes in
/// milliseconds, a VM in about a second; the SDK polls a pause every 2 s.
pub const DEFAULT_LIFECYCLE_WAIT: Duration = Duration::from_secs(2);
/// Longest [`Config::lifecycle_wait`].
pub const MAX_LIFECYCLE_WAIT: Duration = Duration::from_secs(60);

/// Default [`Config::team_max_capsules`].
pub const DEFAULT_TEAM_MAX_CAPSULES: u32 = 100;

/// Minimum length of `JWT_SECRET`, in characters.
pub const MIN_JWT_SECRET_LEN: usize = 32;

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
    /// `WRENN_ENCRYPTION_KEY`: 64 hex characters (32 bytes), the AES-256-GCM key of
    /// channel configs; anything else is a startup error. Unset → the server generates
    /// one into `WRENN_DIR` once, reads it back on later starts and fills it in here
    /// (every replica must then share that directory, or set the variable).
    pub encryption_key: Option<[u8; 32]>,
    /// SMTP settings (`SMTP_*`); unset `SMTP_HOST` → no email is sent.
    pub smtp: Option<SmtpConfig>,
    /// `WRENN_HOST_MONITOR_INTERVAL_SECS`, default 60 (at least 1).
    pub host_monitor_interval: Duration,
    /// `WRENN_HOST_UNREACHABLE_AFTER_SECS`, default 90 (1 to 604800): heartbeat age
    /// after which the host monitor marks a host `unreachable` and its capsules
    /// `missing`. Keep it well above the agents' heartbeat period (30 s).
    pub host_unreachable_after: Duration,
    /// `WRENN_TRANSIENT_GRACE_SECS`, default 120 (1 to 604800): how long a capsule
    /// may stay `starting`, `resuming`, `pausing` or `stopping` before the host
    /// monitor resolves it from what its host reports.
    pub transient_grace: Duration,
    /// `WRENN_SNAPSHOT_GRACE_SECS`, default 900 (1 to 604800): the same for
    /// `snapshotting`, which copies whole disks.
    pub snapshot_grace: Duration,
    /// `WRENN_WORKER_LEASE_SECS`, default 30 (3 to 3600): time to live of the leases
    /// (in the database) that run each singleton worker — host monitor, metrics
    /// sampler, usage roll-up, account clean-up, template builds — on one replica at
    /// a time. The holder renews every third of it; when a replica dies, another
    /// takes its workers over within this time (at once when it stops cleanly).
    pub worker_lease: Duration,
    /// `WRENN_METRICS_SAMPLE_INTERVAL_SECS`, default 10 (at least 1): how often each
    /// team's reservation is snapshotted (the stats charts and usage are made of these).
    pub metrics_sample_interval: Duration,
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
    /// `WRENN_LIFECYCLE_WAIT_MS`, default 2000 (0 to 60000): how long pause, resume and
    /// destroy wait for their outcome before answering `202` with the capsule — settled
    /// (`paused`, `running`, `stopped`, …) when it finished in time, else in its
    /// transient status. 0 answers at once.
    pub lifecycle_wait: Duration,
    /// The capsule proxy (`WRENN_PROXY_*`).
    pub proxy: ProxyConfig,
    /// Exposure of `GET /metrics` (`WRENN_METRICS_*`).
    pub metrics: MetricsConfig,
    /// Notification-channel delivery (`WRENN_CHANNELS_*`).
    pub channels: ChannelsConfig,
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
            host_unreachable_after,
            transient_grace,
            snapshot_grace,
            worker_lease,
            metrics_sample_interval,
            scheduler,
            max_body_bytes,
            database_max_connections,
            overcommit,
            team_max_capsules,
            create_wait,
            lifecycle_wait,
            proxy,
            metrics,
            channels,
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
            .field("host_unreachable_after", host_unreachable_after)
            .field("transient_grace", transient_grace)
            .field("snapshot_grace", snapshot_grace)
            .field("worker_lease", worker_lease)
            .field("metrics_sample_interval", metrics_sample_interval)
            .field("scheduler", scheduler)
            .field("max_body_bytes", max_body_bytes)
            .field("database_max_connections", database_max_connections)
            .field("overcommit", overcommit)
            .field("team_max_capsules", team_max_capsules)
            .field("create_wait", create_wait)
            .field("lifecycle_wait", lifecycle_wait)
            .field("proxy", proxy)
            .field("metrics", metrics)
            .field("channels", channels)
            .finish()
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
            s => s.map(Secret::new),
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
        let smtp = SmtpConfig::from_vars(&v)?;
        let host_monitor_interval = Duration::from_secs(v.positive(
            vars::WRENN_HOST_MONITOR_INTERVAL_SECS,
            DEFAULT_HOST_MONITOR_INTERVAL.as_secs(),
            "a whole number of seconds",
        )?);
        let monitor_grace = |var, default: Duration| {
            v.parse_with(
                var,
                default,
                secs_between(Duration::from_secs(1), MAX_MONITOR_GRACE),
            )
        };
        let host_unreachable_after = monitor_grace(
            vars::WRENN_HOST_UNREACHABLE_AFTER_SECS,
            DEFAULT_HOST_UNREACHABLE_AFTER,
        )?;
        let transient_grace =
            monitor_grace(vars::WRENN_TRANSIENT_GRACE_SECS, DEFAULT_TRANSIENT_GRACE)?;
        let snapshot_grace =
            monitor_grace(vars::WRENN_SNAPSHOT_GRACE_SECS, DEFAULT_SNAPSHOT_GRACE)?;
        let worker_lease = v.parse_with(
            vars::WRENN_WORKER_LEASE_SECS,
            DEFAULT_WORKER_LEASE,
            secs_between(MIN_WORKER_LEASE, MAX_WORKER_LEASE),
        )?;
        let metrics_sample_interval = Duration::from_secs(v.positive(
            vars::WRENN_METRICS_SAMPLE_INTERVAL_SECS,
            DEFAULT_METRICS_SAMPLE_INTERVAL.as_secs(),
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
            host_unreachable_after,
            transient_grace,
            snapshot_grace,
            worker_lease,
            metrics_sample_interval,
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
                millis_up_to(MAX_CREATE_WAIT),
            )?,
            lifecycle_wait: v.parse_with(
                vars::WRENN_LIFECYCLE_WAIT_MS,
                DEFAULT_LIFECYCLE_WAIT,
                millis_up_to(MAX_LIFECYCLE_WAIT),
            )?,
            proxy: ProxyConfig::from_vars(&v)?,
            metrics: MetricsConfig::from_vars(&v)?,
            channels: ChannelsConfig::from_vars(&v)?,
        })
    }

    /// The host paths under `wrenn_dir`.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.wrenn_dir)
    }
}

/// `WRENN_ENCRYPTION_KEY`: 64 hex characters; the value never appears in the error.
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::test_support::{KEY_HEX, SECRET, cfg, err_var};

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
        assert_eq!(c.host_unreachable_after, Duration::from_secs(90));
        assert_eq!(c.transient_grace, Duration::from_secs(120));
        assert_eq!(c.snapshot_grace, Duration::from_secs(900));
        assert_eq!(c.worker_lease, Duration::from_secs(30));
        assert_eq!(c.metrics_sample_interval, Duration::from_secs(10));
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
    fn host_monitor_and_worker_lease_values() {
        let c = cfg(&[
            ("WRENN_HOST_MONITOR_INTERVAL_SECS", "5"),
            ("WRENN_HOST_UNREACHABLE_AFTER_SECS", "45"),
            ("WRENN_TRANSIENT_GRACE_SECS", "20"),
            ("WRENN_SNAPSHOT_GRACE_SECS", " 300 "),
            ("WRENN_WORKER_LEASE_SECS", "10"),
        ])
        .unwrap();
        assert_eq!(c.host_monitor_interval, Duration::from_secs(5));
        assert_eq!(c.host_unreachable_after, Duration::from_secs(45));
        assert_eq!(c.transient_grace, Duration::from_secs(20));
        assert_eq!(c.snapshot_grace, Duration::from_secs(300));
        assert_eq!(c.worker_lease, Duration::from_secs(10));
        // The bounds themselves are accepted.
        let c = cfg(&[
            ("WRENN_WORKER_LEASE_SECS", "3"),
            ("WRENN_TRANSIENT_GRACE_SECS", "1"),
            ("WRENN_SNAPSHOT_GRACE_SECS", "604800"),
        ])
        .unwrap();
        assert_eq!(c.worker_lease, MIN_WORKER_LEASE);
        assert_eq!(c.transient_grace, Duration::from_secs(1));
        assert_eq!(c.snapshot_grace, MAX_MONITOR_GRACE);
        assert_eq!(
            cfg(&[("WRENN_WORKER_LEASE_SECS", "3600")])
                .unwrap()
                .worker_lease,
            MAX_WORKER_LEASE
        );
        let err = cfg(&[("WRENN_WORKER_LEASE_SECS", "2")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid WRENN_WORKER_LEASE_SECS=\"2\": expected a whole number of seconds from 3 to 3600"
        );
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
            ("WRENN_METRICS_SAMPLE_INTERVAL_SECS", "0"),
            ("WRENN_HOST_MONITOR_INTERVAL_SECS", "1m"),
            ("WRENN_HOST_MONITOR_INTERVAL_SECS", "-5"),
            ("WRENN_HOST_UNREACHABLE_AFTER_SECS", "0"),
            ("WRENN_HOST_UNREACHABLE_AFTER_SECS", "90s"),
            ("WRENN_TRANSIENT_GRACE_SECS", "0"),
            ("WRENN_TRANSIENT_GRACE_SECS", "604801"),
            ("WRENN_SNAPSHOT_GRACE_SECS", "-1"),
            ("WRENN_SNAPSHOT_GRACE_SECS", "99999999999999999999"),
            ("WRENN_WORKER_LEASE_SECS", "0"),
            ("WRENN_WORKER_LEASE_SECS", "2"),
            ("WRENN_WORKER_LEASE_SECS", "3601"),
            ("WRENN_WORKER_LEASE_SECS", "1.5"),
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
}
