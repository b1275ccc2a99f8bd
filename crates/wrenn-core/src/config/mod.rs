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

mod agent;
mod channels;
mod control_plane;
mod egress;
mod error;
mod host_share;
mod metrics;
mod overcommit;
mod proxy;
mod scheduler;
mod secret;
mod smtp;
mod source;
#[cfg(test)]
mod test_support;
pub mod vars;

pub use agent::{
    AgentConfig, DEFAULT_FIRECRACKER_BIN, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HIBERNATE_AFTER, DEFAULT_HOST_LISTEN_ADDR,
    DEFAULT_JAILER_ID, DEFAULT_ROOTFS_SIZE_MB, DEFAULT_SANDBOXES_PIDS_MAX, DEFAULT_WARM_CAPSULES,
    FirecrackerJail, MAX_WARM_CAPSULES, RuntimeKind, VmAccel, VmGuestAslr, parse_size_mb,
};
pub use channels::{
    ChannelsConfig, DEFAULT_CHANNEL_CLAIM_AFTER, DEFAULT_CHANNEL_CONCURRENCY,
    DEFAULT_CHANNEL_DELIVERY_TIMEOUT, DEFAULT_CHANNEL_MAX_ATTEMPTS, DEFAULT_CHANNEL_RETRY_BASE,
    DEFAULT_CHANNEL_RETRY_MAX, MAX_CHANNEL_DURATION, MAX_CHANNEL_MAX_ATTEMPTS,
};
pub use control_plane::{
    Config, DEFAULT_CP_LISTEN_ADDR, DEFAULT_CREATE_WAIT, DEFAULT_DB_MAX_CONNECTIONS,
    DEFAULT_HOST_MONITOR_INTERVAL, DEFAULT_HOST_UNREACHABLE_AFTER, DEFAULT_LIFECYCLE_WAIT,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_METRICS_SAMPLE_INTERVAL, DEFAULT_SNAPSHOT_GRACE,
    DEFAULT_TEAM_MAX_CAPSULES, DEFAULT_TRANSIENT_GRACE, DEFAULT_WORKER_LEASE, MAX_CREATE_WAIT,
    MAX_DB_MAX_CONNECTIONS, MAX_LIFECYCLE_WAIT, MAX_MONITOR_GRACE, MAX_WORKER_LEASE,
    MIN_JWT_SECRET_LEN, MIN_WORKER_LEASE,
};
pub use egress::{Cidr, EgressConfig};
pub use error::ConfigError;
pub use host_share::{
    CAPSULE_ID_RANGE_SIZE, DEFAULT_CAPSULE_ID_BASE, DEFAULT_CAPSULE_ID_RANGES,
    DEFAULT_CAPSULE_NETWORK, DEFAULT_CGROUP_PARENT, DEFAULT_FIREWALL_TABLE, DEFAULT_VETH_PREFIX,
    HostShare, MAX_VETH_PREFIX_LEN,
};
pub use metrics::{MIN_METRICS_TOKEN_LEN, MetricsConfig};
pub use overcommit::{
    DEFAULT_CPU_OVERCOMMIT, DEFAULT_MEMORY_OVERCOMMIT, DEFAULT_MEMORY_RESERVE_MB, MAX_OVERCOMMIT,
    Overcommit,
};
pub use proxy::{DEFAULT_PROXY_UPSTREAM_TIMEOUT, MAX_PROXY_UPSTREAM_TIMEOUT, ProxyConfig};
pub use scheduler::SchedulerKind;
pub use secret::Secret;
pub use smtp::{DEFAULT_SMTP_FROM_EMAIL, DEFAULT_SMTP_PORT, SmtpConfig};
pub use source::EnvSource;

/// Default `WRENN_DIR`.
pub const DEFAULT_WRENN_DIR: &str = "/var/lib/wrenn";
