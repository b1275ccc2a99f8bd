//! Domain records as the stores return them.
//!
//! These are plain data: no I/O, no database types. Ids are the typed ids of
//! [`crate::id`]; timestamps are UTC.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::id::{
    ApiKeyId, BuildId, ChannelId, HostId, HostRefreshTokenId, HostTokenId, SandboxId, TeamId,
    TemplateId, UserId,
};
use crate::lifecycle::{
    DEFAULT_DISK_SIZE_MB, DEFAULT_MEMORY_MB, DEFAULT_VCPUS, HostStatus, SandboxStatus,
};

/// String-to-string metadata attached to sandboxes and templates.
pub type Metadata = BTreeMap<String, String>;

/// The settled machine shape of a sandbox: what it is stored with, placed by and
/// started with. The one list of a capsule's resources; a request for them is
/// [`crate::lifecycle::ResourceRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// vCPUs.
    pub vcpus: i32,
    /// Memory (MiB).
    pub memory_mb: i32,
    /// Root disk size (MiB).
    pub disk_size_mb: i32,
}

impl Resources {
    /// The platform defaults ([`DEFAULT_VCPUS`], [`DEFAULT_MEMORY_MB`],
    /// [`DEFAULT_DISK_SIZE_MB`]).
    pub const DEFAULT: Self = Self {
        vcpus: DEFAULT_VCPUS,
        memory_mb: DEFAULT_MEMORY_MB,
        disk_size_mb: DEFAULT_DISK_SIZE_MB,
    };
}

/// A value that is not one of an enum's wire strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of: {expected}")]
pub struct UnknownValue {
    /// What was being parsed.
    pub kind: &'static str,
    /// The offending value.
    pub value: String,
    /// Valid values.
    pub expected: &'static str,
}

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal { $($(#[$vdoc:meta])* $variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// The stored / wire value.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($wire => Ok(Self::$variant),)+
                    _ => Err(UnknownValue {
                        kind: $kind,
                        value: s.chars().take(64).collect(),
                        expected: concat!($($wire, " "),+),
                    }),
                }
            }
        }
    };
}

wire_enum!(
    /// Account state of a user.
    UserStatus, "user status" {
        /// Can log in.
        Active => "active",
        /// Signed up by email, not yet activated.
        Inactive => "inactive",
        /// Disabled by an admin.
        Disabled => "disabled",
        /// Soft-deleted; hard-deleted after the retention period.
        Deleted => "deleted",
    }
);

wire_enum!(
    /// Who owns a host.
    HostKind, "host type" {
        /// A platform host, shared by every non-BYOC team.
        Regular => "regular",
        /// A team's own host ("bring your own compute").
        Byoc => "byoc",
    }
);

wire_enum!(
    /// How a template came to be.
    TemplateKind, "template type" {
        /// A base image.
        Base => "base",
        /// Captured from a sandbox.
        Snapshot => "snapshot",
    }
);

wire_enum!(
    /// State of a template build.
    BuildStatus, "build status" {
        /// Queued.
        Pending => "pending",
        /// In progress.
        Running => "running",
        /// Finished and produced a template.
        Success => "success",
        /// Finished with an error.
        Failed => "failed",
        /// Cancelled by a user.
        Cancelled => "cancelled",
    }
);

wire_enum!(
    /// Resolution of a per-sandbox metric series.
    MetricTier, "metric tier" {
        /// 10 minutes at high resolution.
        TenMinutes => "10m",
        /// 2 hours.
        TwoHours => "2h",
        /// 24 hours.
        Day => "24h",
    }
);

/// A team: the unit of tenancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    /// Id.
    pub id: TeamId,
    /// Display name.
    pub name: String,
    /// Immutable slug (`xxxxxx-xxxxxx`), reserved forever once used.
    pub slug: String,
    /// Whether the team runs on its own hosts.
    pub is_byoc: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Soft-deletion time.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Unique, lowercased email.
    pub email: String,
    /// argon2id PHC string; `None` for OAuth-only users.
    #[serde(skip_serializing)]
    pub password_hash: Option<String>,
    /// Display name.
    pub name: String,
    /// Platform administrator.
    pub is_admin: bool,
    /// Account state.
    pub status: UserStatus,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
    /// Soft-deletion time.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A user's membership in a team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The user.
    pub user_id: UserId,
    /// The team.
    pub team_id: TeamId,
    /// Role in the team.
    pub role: Role,
    /// The team the user lands in at login.
    pub is_default: bool,
    /// When the user joined.
    pub created_at: DateTime<Utc>,
}

/// A team as seen by one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamWithRole {
    /// The team.
    pub team: Team,
    /// The member's role.
    pub role: Role,
    /// Whether it is the member's default team.
    pub is_default: bool,
}

/// A member of a team with the user's details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The user.
    pub user_id: UserId,
    /// Email.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role in the team.
    pub role: Role,
    /// When the user joined.
    pub joined_at: DateTime<Utc>,
}

/// A team API key (never the plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Id.
    pub id: ApiKeyId,
    /// Owning team.
    pub team_id: TeamId,
    /// Display name.
    pub name: String,
    /// SHA-256 hex of the plaintext.
    #[serde(skip_serializing)]
    pub key_hash: String,
    /// First 10 characters of the plaintext, for display.
    pub key_prefix: String,
    /// Creator; `None` once the creator's account is gone.
    pub created_by: Option<UserId>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last authenticated use (updated lazily).
    pub last_used: Option<DateTime<Utc>>,
}

/// An API key with its creator's email (which may be gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyWithCreator {
    /// The key.
    pub key: ApiKey,
    /// Creator's email, if the creator still exists.
    pub creator_email: Option<String>,
}

/// A linked OAuth identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthLink {
    /// Provider name, e.g. `github`.
    pub provider: String,
    /// The provider's user id.
    pub provider_id: String,
    /// The Wrenn user.
    pub user_id: UserId,
    /// Email at the provider.
    pub email: String,
    /// Link time.
    pub created_at: DateTime<Utc>,
}

/// A machine running a host agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Id.
    pub id: HostId,
    /// Regular (platform) or BYOC.
    pub kind: HostKind,
    /// Owning team for BYOC hosts.
    pub team_id: Option<TeamId>,
    /// Cloud provider label.
    pub provider: String,
    /// Availability zone label.
    pub availability_zone: String,
    /// CPU architecture.
    pub arch: String,
    /// Logical CPUs.
    pub cpu_cores: i32,
    /// Memory in MiB.
    pub memory_mb: i32,
    /// Disk in GiB.
    pub disk_gb: i32,
    /// `host:port` of the agent's gRPC endpoint; empty until registered.
    pub address: String,
    /// Status.
    pub status: HostStatus,
    /// Last heartbeat.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Free-form labels.
    pub metadata: serde_json::Value,
    /// Creator, if still present.
    pub created_by: Option<UserId>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
    /// SHA-256 hex of the agent's current certificate (DER).
    pub cert_fingerprint: String,
    /// Expiry of the agent's current certificate.
    pub cert_expires_at: Option<DateTime<Utc>>,
}

/// A host together with what its sandboxes reserve, as the scheduler needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostLoad {
    /// The host.
    pub host: Host,
    /// Memory reserved by running, starting and transient sandboxes (MiB).
    pub running_memory_mb: i64,
    /// vCPUs reserved by running, starting and transient sandboxes.
    pub running_vcpus: i64,
    /// Disk reserved by running, starting and transient sandboxes (MiB).
    pub running_disk_mb: i64,
    /// Memory of paused sandboxes (MiB).
    pub paused_memory_mb: i64,
    /// vCPUs of paused sandboxes.
    pub paused_vcpus: i64,
    /// Disk of paused and hibernated sandboxes (MiB).
    pub paused_disk_mb: i64,
}

/// A one-time registration token record (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostToken {
    /// Id.
    pub id: HostTokenId,
    /// Host it registers.
    pub host_id: HostId,
    /// SHA-256 hex of the token.
    #[serde(skip_serializing)]
    pub token_hash: String,
    /// Creator, if still present.
    pub created_by: Option<UserId>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was consumed.
    pub used_at: Option<DateTime<Utc>>,
}

/// A host refresh-token record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRefreshToken {
    /// Id.
    pub id: HostRefreshTokenId,
    /// Host.
    pub host_id: HostId,
    /// SHA-256 hex of the token.
    #[serde(skip_serializing)]
    pub token_hash: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A template: a root filesystem (and for snapshots, captured state) sandboxes start from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Id.
    pub id: TemplateId,
    /// Owning team ([`crate::id::PLATFORM_TEAM_ID`] for platform templates).
    pub team_id: TeamId,
    /// Name, unique per team; platform names are reserved for every team.
    pub name: String,
    /// Base image or snapshot.
    pub kind: TemplateKind,
    /// vCPUs sandboxes from this template get (forced for snapshots).
    pub vcpus: i32,
    /// Memory sandboxes from this template get (forced for snapshots).
    pub memory_mb: i32,
    /// Size on disk.
    pub size_bytes: i64,
    /// User processes run as by default.
    pub default_user: String,
    /// Environment every process gets.
    pub default_env: BTreeMap<String, String>,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// Started in the background in every capsule made from this template (empty:
    /// nothing), as the default user with the default environment, in
    /// [`start_cwd`](Self::start_cwd). See [`crate::lifecycle::start_command`].
    #[serde(default)]
    pub start_command: String,
    /// Working directory of the start command (empty: the user's home).
    #[serde(default)]
    pub start_cwd: String,
    /// Protected templates cannot be deleted by teams.
    pub protected: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A sandbox row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Id.
    pub id: SandboxId,
    /// Owning team.
    pub team_id: TeamId,
    /// Host it lives on.
    pub host_id: HostId,
    /// Template name at creation (for display).
    pub template: String,
    /// Template id.
    pub template_id: TemplateId,
    /// Team owning the template.
    pub template_team_id: TeamId,
    /// Status.
    pub status: SandboxStatus,
    /// vCPUs.
    pub vcpus: i32,
    /// Memory (MiB).
    pub memory_mb: i32,
    /// Idle timeout before auto-pause (0 = never).
    pub timeout_sec: i32,
    /// Root disk size (MiB).
    pub disk_size_mb: i32,
    /// Address inside the sandbox network.
    pub guest_ip: String,
    /// Address on the host through which the sandbox is reached.
    pub host_ip: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it last became running.
    pub started_at: Option<DateTime<Utc>>,
    /// Last activity (exec, ping…).
    pub last_active_at: Option<DateTime<Utc>>,
    /// Last row update.
    pub last_updated: DateTime<Utc>,
    /// User metadata plus agent-reported version keys.
    pub metadata: Metadata,
}

impl Sandbox {
    /// Its machine shape (the row keeps the fields flat, as the API returns them).
    pub fn resources(&self) -> Resources {
        Resources {
            vcpus: self.vcpus,
            memory_mb: self.memory_mb,
            disk_size_mb: self.disk_size_mb,
        }
    }
}

/// Everything needed to insert a sandbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSandbox {
    /// Id (generated by the caller).
    pub id: SandboxId,
    /// Owning team.
    pub team_id: TeamId,
    /// Chosen host.
    pub host_id: HostId,
    /// Template name.
    pub template: String,
    /// Template id.
    pub template_id: TemplateId,
    /// Team owning the template.
    pub template_team_id: TeamId,
    /// Initial status (normally `starting`).
    pub status: SandboxStatus,
    /// Machine shape.
    pub resources: Resources,
    /// Idle timeout (s).
    pub timeout_sec: i32,
    /// Metadata.
    pub metadata: Metadata,
}

/// What the sandbox proxy needs, fetched in one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// The sandbox.
    pub sandbox_id: SandboxId,
    /// Its team.
    pub team_id: TeamId,
    /// Its status.
    pub status: SandboxStatus,
    /// Its host.
    pub host_id: HostId,
    /// The host agent's address (empty if unregistered).
    pub host_address: String,
    /// Whether the host agent is reached over mutual TLS (it holds a certificate from
    /// the control plane's CA).
    pub host_tls: bool,
    /// SHA-256 (hex) of the sandbox's access token for public URLs, if it has one.
    pub access_token_hash: Option<String>,
}

/// A team's reservation at one moment: the sampler writes one per team per tick,
/// and usage is the sum of `reservation × period_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Team.
    pub team_id: TeamId,
    /// Sample time.
    pub sampled_at: DateTime<Utc>,
    /// Sandboxes running or starting.
    pub running_count: i32,
    /// vCPUs reserved.
    pub vcpus_reserved: i32,
    /// Memory reserved (MiB), paused sandboxes at half weight.
    pub memory_mb_reserved: i32,
    /// Seconds of usage this snapshot stands for (the sampler's interval when it was
    /// taken); 0 for a live reading that is not stored.
    #[serde(default)]
    pub period_secs: i32,
}

/// One per-sandbox metric sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Unix seconds.
    pub ts: i64,
    /// CPU percent.
    pub cpu_pct: f64,
    /// Memory in bytes.
    pub mem_bytes: i64,
    /// Disk in bytes.
    pub disk_bytes: i64,
}

/// A sandbox's samples in the agent's three tiers, handed over when sampling stops
/// (pause, hibernation, destruction, death) so the control plane can keep them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricHistory {
    /// 500 ms samples of the last 10 minutes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ten_minutes: Vec<MetricPoint>,
    /// 30 s points of the last 2 hours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub two_hours: Vec<MetricPoint>,
    /// 5 min points of the last 24 hours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub day: Vec<MetricPoint>,
}

impl MetricHistory {
    /// No points in any tier.
    pub fn is_empty(&self) -> bool {
        self.ten_minutes.is_empty() && self.two_hours.is_empty() && self.day.is_empty()
    }

    /// Each tier with its points.
    pub fn tiers(&self) -> [(MetricTier, &[MetricPoint]); 3] {
        [
            (MetricTier::TenMinutes, &self.ten_minutes),
            (MetricTier::TwoHours, &self.two_hours),
            (MetricTier::Day, &self.day),
        ]
    }
}

/// Usage of one team on one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyUsage {
    /// Team.
    pub team_id: TeamId,
    /// UTC day.
    pub day: NaiveDate,
    /// vCPU-minutes.
    pub cpu_minutes: f64,
    /// MiB-minutes of memory.
    pub ram_mb_minutes: f64,
}

/// A notification channel (config values are stored encrypted by the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Id.
    pub id: ChannelId,
    /// Team.
    pub team_id: TeamId,
    /// Unique per team.
    pub name: String,
    /// Provider, e.g. `webhook`.
    pub provider: String,
    /// Provider config (values encrypted).
    pub config: BTreeMap<String, String>,
    /// Event types delivered.
    pub event_types: Vec<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
}

/// A channel delivery that failed every attempt (a dead letter of the dispatcher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelDeadLetter {
    /// Id.
    pub id: uuid::Uuid,
    /// The channel it was for.
    pub channel_id: ChannelId,
    /// The channel's team.
    pub team_id: TeamId,
    /// The delivery id every attempt carried (`X-Wrenn-Delivery`); unique per channel.
    pub delivery_id: uuid::Uuid,
    /// Event type (`capsule.created`, …).
    pub event_type: String,
    /// The event payload as delivered.
    pub payload: serde_json::Value,
    /// Attempts made.
    pub attempts: u32,
    /// HTTP status of the last attempt, when the target answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub error: String,
    /// When it was dead-lettered.
    pub created_at: DateTime<Utc>,
}

/// A template build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateBuild {
    /// Id.
    pub id: BuildId,
    /// Team the resulting template belongs to.
    pub team_id: TeamId,
    /// Name of the template to produce.
    pub name: String,
    /// Template to start from.
    pub base_template: String,
    /// Build steps.
    pub recipe: Vec<String>,
    /// Command that must succeed at the end.
    pub healthcheck: String,
    /// Skips the implicit steps (`apt-get update` before the recipe, `apt-get clean`
    /// after it).
    #[serde(default)]
    pub skip_pre_post: bool,
    /// Default user of the resulting template.
    #[serde(default)]
    pub default_user: String,
    /// Default environment of the resulting template.
    #[serde(default)]
    pub default_env: BTreeMap<String, String>,
    /// vCPUs.
    pub vcpus: i32,
    /// Memory (MiB).
    pub memory_mb: i32,
    /// Status.
    pub status: BuildStatus,
    /// Step in progress.
    pub current_step: i32,
    /// Step count.
    pub total_steps: i32,
    /// Log lines.
    pub logs: Vec<String>,
    /// Failure reason.
    pub error: String,
    /// Build sandbox.
    pub sandbox_id: Option<SandboxId>,
    /// Build host.
    pub host_id: Option<HostId>,
    /// Resulting template.
    pub template_id: Option<TemplateId>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// First `running`.
    pub started_at: Option<DateTime<Utc>>,
    /// Reached a final status.
    pub completed_at: Option<DateTime<Utc>>,
}
