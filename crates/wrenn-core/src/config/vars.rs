//! Names of every environment variable read by this module.

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
/// Heartbeat age in seconds after which the host monitor marks a host unreachable.
pub const WRENN_HOST_UNREACHABLE_AFTER_SECS: &str = "WRENN_HOST_UNREACHABLE_AFTER_SECS";
/// Seconds a capsule may stay in a transient status before the host monitor resolves it.
pub const WRENN_TRANSIENT_GRACE_SECS: &str = "WRENN_TRANSIENT_GRACE_SECS";
/// Seconds a capsule may stay `snapshotting` before the host monitor resolves it.
pub const WRENN_SNAPSHOT_GRACE_SECS: &str = "WRENN_SNAPSHOT_GRACE_SECS";
/// Time to live in seconds of the leases that run singleton workers on one replica.
pub const WRENN_WORKER_LEASE_SECS: &str = "WRENN_WORKER_LEASE_SECS";
/// Team metrics sampler period in seconds.
pub const WRENN_METRICS_SAMPLE_INTERVAL_SECS: &str = "WRENN_METRICS_SAMPLE_INTERVAL_SECS";
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
/// Whether Firecracker VMMs run under the jailer (`on`, `off`).
pub const WRENN_FIRECRACKER_JAIL: &str = "WRENN_FIRECRACKER_JAIL";
/// Path of Firecracker's jailer.
pub const WRENN_JAILER_BIN: &str = "WRENN_JAILER_BIN";
/// The uid jailed Firecracker VMMs run as.
pub const WRENN_JAILER_UID: &str = "WRENN_JAILER_UID";
/// The gid jailed Firecracker VMMs run as.
pub const WRENN_JAILER_GID: &str = "WRENN_JAILER_GID";
/// Path of `qemu-system-x86_64` (the `qemu` runtime).
pub const WRENN_QEMU_BIN: &str = "WRENN_QEMU_BIN";
/// Accelerator of the VM runtimes (`auto`, `kvm`, `tcg`).
pub const WRENN_VM_ACCEL: &str = "WRENN_VM_ACCEL";
/// Address-space randomisation inside QEMU guests (`auto`, `on`, `off`).
pub const WRENN_VM_GUEST_ASLR: &str = "WRENN_VM_GUEST_ASLR";
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
/// Cgroup directory holding the agent's capsule cgroups.
pub const WRENN_CGROUP_PARENT: &str = "WRENN_CGROUP_PARENT";
/// IPv4 range capsule addresses come from.
pub const WRENN_CAPSULE_NETWORK: &str = "WRENN_CAPSULE_NETWORK";
/// The agent's nftables table.
pub const WRENN_FIREWALL_TABLE: &str = "WRENN_FIREWALL_TABLE";
/// Prefix of the host ends of capsule veth pairs.
pub const WRENN_VETH_PREFIX: &str = "WRENN_VETH_PREFIX";
/// First host uid/gid of the capsules' id ranges.
pub const WRENN_CAPSULE_ID_BASE: &str = "WRENN_CAPSULE_ID_BASE";
/// How many capsule id ranges (of 65536 ids) the agent hands out.
pub const WRENN_CAPSULE_ID_RANGES: &str = "WRENN_CAPSULE_ID_RANGES";
/// Capsules the process runtime keeps booted ahead of creates.
pub const WRENN_WARM_CAPSULES: &str = "WRENN_WARM_CAPSULES";
/// Seconds between the agent's heartbeats to the control plane.
pub const WRENN_HEARTBEAT_INTERVAL_SECS: &str = "WRENN_HEARTBEAT_INTERVAL_SECS";
/// Seconds between envd health checks of every running sandbox.
pub const WRENN_HEALTH_INTERVAL_SECS: &str = "WRENN_HEALTH_INTERVAL_SECS";
/// Seconds one envd health check may take.
pub const WRENN_HEALTH_TIMEOUT_SECS: &str = "WRENN_HEALTH_TIMEOUT_SECS";
/// Most live capsules a team may have at once.
pub const WRENN_TEAM_MAX_CAPSULES: &str = "WRENN_TEAM_MAX_CAPSULES";
/// Milliseconds `POST /v1/capsules` waits for the capsule to start.
pub const WRENN_CREATE_WAIT_MS: &str = "WRENN_CREATE_WAIT_MS";
/// Milliseconds pause, resume and destroy wait for their outcome before answering.
pub const WRENN_LIFECYCLE_WAIT_MS: &str = "WRENN_LIFECYCLE_WAIT_MS";
/// Networks capsules may reach although the default egress policy blocks them.
pub const WRENN_EGRESS_ALLOW: &str = "WRENN_EGRESS_ALLOW";
/// Networks capsules may not reach, besides the default egress policy's.
pub const WRENN_EGRESS_DENY: &str = "WRENN_EGRESS_DENY";
/// Host suffix of capsule URLs (`{port}-{capsule_id}.{domain}`).
pub const WRENN_PROXY_DOMAIN: &str = "WRENN_PROXY_DOMAIN";
/// Whether a proxied request resumes a paused capsule.
pub const WRENN_PROXY_RESUME_PAUSED: &str = "WRENN_PROXY_RESUME_PAUSED";
/// Seconds the capsule proxy waits for a capsule's server to answer.
pub const WRENN_PROXY_UPSTREAM_TIMEOUT_SECS: &str = "WRENN_PROXY_UPSTREAM_TIMEOUT_SECS";
/// Bearer token required on the control plane's `/metrics`.
pub const WRENN_METRICS_TOKEN: &str = "WRENN_METRICS_TOKEN";
/// Separate listen address of the control plane's `/metrics`.
pub const WRENN_METRICS_ADDR: &str = "WRENN_METRICS_ADDR";
/// Whether the API listener serves `/metrics` to anyone (no token).
pub const WRENN_METRICS_OPEN: &str = "WRENN_METRICS_OPEN";
/// Listen address of the host agent's `/metrics` (plain HTTP; unset: not served).
pub const WRENN_AGENT_METRICS_ADDR: &str = "WRENN_AGENT_METRICS_ADDR";
/// Whether channel targets may resolve to non-public addresses.
pub const WRENN_CHANNELS_ALLOW_PRIVATE: &str = "WRENN_CHANNELS_ALLOW_PRIVATE";
/// Non-public networks channel targets may resolve to.
pub const WRENN_CHANNELS_ALLOW: &str = "WRENN_CHANNELS_ALLOW";
/// Attempts of one channel delivery before it is dead-lettered.
pub const WRENN_CHANNELS_MAX_ATTEMPTS: &str = "WRENN_CHANNELS_MAX_ATTEMPTS";
/// Milliseconds before the second attempt of a channel delivery (doubling after).
pub const WRENN_CHANNELS_RETRY_BASE_MS: &str = "WRENN_CHANNELS_RETRY_BASE_MS";
/// Longest wait in milliseconds between two attempts of a channel delivery.
pub const WRENN_CHANNELS_RETRY_MAX_MS: &str = "WRENN_CHANNELS_RETRY_MAX_MS";
/// Milliseconds one channel delivery attempt may take.
pub const WRENN_CHANNELS_TIMEOUT_MS: &str = "WRENN_CHANNELS_TIMEOUT_MS";
/// Milliseconds an unacknowledged event stays with a dispatcher before another takes it.
pub const WRENN_CHANNELS_CLAIM_AFTER_MS: &str = "WRENN_CHANNELS_CLAIM_AFTER_MS";
/// Channel delivery attempts in flight at once per control plane.
pub const WRENN_CHANNELS_CONCURRENCY: &str = "WRENN_CHANNELS_CONCURRENCY";
