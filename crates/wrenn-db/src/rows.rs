//! Row structs as the queries return them, and their conversions into
//! [`wrenn_core::model`] records. Enumerations are stored as their wire strings; a
//! value that does not parse is [`RepoError::Corrupt`], never a panic.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use chrono::NaiveDate;
use sqlx::types::Json;
use uuid::Uuid;
use wrenn_core::audit::{Actor, ActorKind, AuditEntry, AuditRecord, AuditScope, AuditStatus};
use wrenn_core::id::{
    ApiKeyId, AuditLogId, BuildId, ChannelId, HostId, HostRefreshTokenId, HostTokenId, SandboxId,
    TeamId, TemplateId, UserId,
};
use wrenn_core::model::{
    ApiKey, ApiKeyWithCreator, Channel, ChannelDeadLetter, DailyUsage, Host, HostLoad,
    HostRefreshToken, HostToken, Member, Membership, Metadata, MetricPoint, MetricsSnapshot,
    OAuthLink, ProxyTarget, Sandbox, Team, TeamWithRole, Template, TemplateBuild, User,
};
use wrenn_core::repo::{ApiKeyAuth, RepoError, RepoResult};

use crate::timestamp::Ts;

/// Parses a stored enumeration value.
pub(crate) fn parse_stored<T>(column: &'static str, value: &str) -> RepoResult<T>
where
    T: FromStr,
    T::Err: Display,
{
    value
        .parse()
        .map_err(|e| RepoError::Corrupt(format!("{column}: {e}")))
}

/// Narrows an aggregate to `i32`.
pub(crate) fn narrow(column: &'static str, value: i64) -> RepoResult<i32> {
    i32::try_from(value).map_err(|_| RepoError::Corrupt(format!("{column}: {value} overflows i32")))
}

fn ts(t: Option<Ts>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.map(Ts::get)
}

#[derive(sqlx::FromRow)]
pub(crate) struct TeamRow {
    id: Uuid,
    name: String,
    slug: String,
    is_byoc: bool,
    created_at: Ts,
    deleted_at: Option<Ts>,
}

impl From<TeamRow> for Team {
    fn from(r: TeamRow) -> Self {
        Team {
            id: TeamId::from_uuid(r.id),
            name: r.name,
            slug: r.slug,
            is_byoc: r.is_byoc,
            created_at: r.created_at.get(),
            deleted_at: ts(r.deleted_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: Uuid,
    email: String,
    password_hash: Option<String>,
    name: String,
    is_admin: bool,
    status: String,
    created_at: Ts,
    updated_at: Ts,
    deleted_at: Option<Ts>,
}

impl TryFrom<UserRow> for User {
    type Error = RepoError;
    fn try_from(r: UserRow) -> RepoResult<Self> {
        Ok(User {
            id: UserId::from_uuid(r.id),
            email: r.email,
            password_hash: r.password_hash,
            name: r.name,
            is_admin: r.is_admin,
            status: parse_stored("users.status", &r.status)?,
            created_at: r.created_at.get(),
            updated_at: r.updated_at.get(),
            deleted_at: ts(r.deleted_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MembershipRow {
    user_id: Uuid,
    team_id: Uuid,
    role: String,
    is_default: bool,
    created_at: Ts,
}

impl TryFrom<MembershipRow> for Membership {
    type Error = RepoError;
    fn try_from(r: MembershipRow) -> RepoResult<Self> {
        Ok(Membership {
            user_id: UserId::from_uuid(r.user_id),
            team_id: TeamId::from_uuid(r.team_id),
            role: parse_stored("users_teams.role", &r.role)?,
            is_default: r.is_default,
            created_at: r.created_at.get(),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TeamWithRoleRow {
    #[sqlx(flatten)]
    team: TeamRow,
    role: String,
    is_default: bool,
}

impl TryFrom<TeamWithRoleRow> for TeamWithRole {
    type Error = RepoError;
    fn try_from(r: TeamWithRoleRow) -> RepoResult<Self> {
        Ok(TeamWithRole {
            team: r.team.into(),
            role: parse_stored("users_teams.role", &r.role)?,
            is_default: r.is_default,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    user_id: Uuid,
    email: String,
    name: String,
    role: String,
    joined_at: Ts,
}

impl TryFrom<MemberRow> for Member {
    type Error = RepoError;
    fn try_from(r: MemberRow) -> RepoResult<Self> {
        Ok(Member {
            user_id: UserId::from_uuid(r.user_id),
            email: r.email,
            name: r.name,
            role: parse_stored("users_teams.role", &r.role)?,
            joined_at: r.joined_at.get(),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: Uuid,
    team_id: Uuid,
    name: String,
    key_hash: String,
    key_prefix: String,
    created_by: Option<Uuid>,
    created_at: Ts,
    last_used: Option<Ts>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(r: ApiKeyRow) -> Self {
        ApiKey {
            id: ApiKeyId::from_uuid(r.id),
            team_id: TeamId::from_uuid(r.team_id),
            name: r.name,
            key_hash: r.key_hash,
            key_prefix: r.key_prefix,
            created_by: r.created_by.map(UserId::from_uuid),
            created_at: r.created_at.get(),
            last_used: ts(r.last_used),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyWithCreatorRow {
    #[sqlx(flatten)]
    key: ApiKeyRow,
    creator_email: Option<String>,
}

impl From<ApiKeyWithCreatorRow> for ApiKeyWithCreator {
    fn from(r: ApiKeyWithCreatorRow) -> Self {
        ApiKeyWithCreator {
            key: r.key.into(),
            creator_email: r.creator_email,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyAuthRow {
    #[sqlx(flatten)]
    key: ApiKeyRow,
    team_is_byoc: bool,
}

impl From<ApiKeyAuthRow> for ApiKeyAuth {
    fn from(r: ApiKeyAuthRow) -> Self {
        ApiKeyAuth {
            key: r.key.into(),
            team_is_byoc: r.team_is_byoc,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct OAuthRow {
    provider: String,
    provider_id: String,
    user_id: Uuid,
    email: String,
    created_at: Ts,
}

impl From<OAuthRow> for OAuthLink {
    fn from(r: OAuthRow) -> Self {
        OAuthLink {
            provider: r.provider,
            provider_id: r.provider_id,
            user_id: UserId::from_uuid(r.user_id),
            email: r.email,
            created_at: r.created_at.get(),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct HostRow {
    id: Uuid,
    #[sqlx(rename = "type")]
    kind: String,
    team_id: Option<Uuid>,
    provider: String,
    availability_zone: String,
    arch: String,
    cpu_cores: i32,
    memory_mb: i32,
    disk_gb: i32,
    address: String,
    status: String,
    last_heartbeat_at: Option<Ts>,
    metadata: Json<serde_json::Value>,
    created_by: Option<Uuid>,
    created_at: Ts,
    updated_at: Ts,
    cert_fingerprint: String,
    cert_expires_at: Option<Ts>,
}

impl TryFrom<HostRow> for Host {
    type Error = RepoError;
    fn try_from(r: HostRow) -> RepoResult<Self> {
        Ok(Host {
            id: HostId::from_uuid(r.id),
            kind: parse_stored("hosts.type", &r.kind)?,
            team_id: r.team_id.map(TeamId::from_uuid),
            provider: r.provider,
            availability_zone: r.availability_zone,
            arch: r.arch,
            cpu_cores: r.cpu_cores,
            memory_mb: r.memory_mb,
            disk_gb: r.disk_gb,
            address: r.address,
            status: parse_stored("hosts.status", &r.status)?,
            last_heartbeat_at: ts(r.last_heartbeat_at),
            metadata: r.metadata.0,
            created_by: r.created_by.map(UserId::from_uuid),
            created_at: r.created_at.get(),
            updated_at: r.updated_at.get(),
            cert_fingerprint: r.cert_fingerprint,
            cert_expires_at: ts(r.cert_expires_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct HostLoadRow {
    #[sqlx(flatten)]
    host: HostRow,
    running_memory_mb: i64,
    running_vcpus: i64,
    running_disk_mb: i64,
    paused_memory_mb: i64,
    paused_vcpus: i64,
    paused_disk_mb: i64,
}

impl TryFrom<HostLoadRow> for HostLoad {
    type Error = RepoError;
    fn try_from(r: HostLoadRow) -> RepoResult<Self> {
        Ok(HostLoad {
            host: r.host.try_into()?,
            running_memory_mb: r.running_memory_mb,
            running_vcpus: r.running_vcpus,
            running_disk_mb: r.running_disk_mb,
            paused_memory_mb: r.paused_memory_mb,
            paused_vcpus: r.paused_vcpus,
            paused_disk_mb: r.paused_disk_mb,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct HostTokenRow {
    id: Uuid,
    host_id: Uuid,
    token_hash: String,
    created_by: Option<Uuid>,
    created_at: Ts,
    expires_at: Ts,
    used_at: Option<Ts>,
}

impl From<HostTokenRow> for HostToken {
    fn from(r: HostTokenRow) -> Self {
        HostToken {
            id: HostTokenId::from_uuid(r.id),
            host_id: HostId::from_uuid(r.host_id),
            token_hash: r.token_hash,
            created_by: r.created_by.map(UserId::from_uuid),
            created_at: r.created_at.get(),
            expires_at: r.expires_at.get(),
            used_at: ts(r.used_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RefreshTokenRow {
    id: Uuid,
    host_id: Uuid,
    token_hash: String,
    expires_at: Ts,
    created_at: Ts,
    revoked_at: Option<Ts>,
}

impl From<RefreshTokenRow> for HostRefreshToken {
    fn from(r: RefreshTokenRow) -> Self {
        HostRefreshToken {
            id: HostRefreshTokenId::from_uuid(r.id),
            host_id: HostId::from_uuid(r.host_id),
            token_hash: r.token_hash,
            expires_at: r.expires_at.get(),
            created_at: r.created_at.get(),
            revoked_at: ts(r.revoked_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TemplateRow {
    id: Uuid,
    team_id: Uuid,
    name: String,
    #[sqlx(rename = "type")]
    kind: String,
    vcpus: i32,
    memory_mb: i32,
    size_bytes: i64,
    default_user: String,
    default_env: Json<BTreeMap<String, String>>,
    metadata: Json<Metadata>,
    protected: bool,
    created_at: Ts,
    start_command: String,
    start_cwd: String,
}

impl TryFrom<TemplateRow> for Template {
    type Error = RepoError;
    fn try_from(r: TemplateRow) -> RepoResult<Self> {
        Ok(Template {
            id: TemplateId(r.id),
            team_id: TeamId::from_uuid(r.team_id),
            name: r.name,
            kind: parse_stored("templates.type", &r.kind)?,
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            size_bytes: r.size_bytes,
            default_user: r.default_user,
            default_env: r.default_env.0,
            metadata: r.metadata.0,
            start_command: r.start_command,
            start_cwd: r.start_cwd,
            protected: r.protected,
            created_at: r.created_at.get(),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SandboxRow {
    id: Uuid,
    team_id: Uuid,
    host_id: Uuid,
    template: String,
    template_id: Uuid,
    template_team_id: Uuid,
    status: String,
    vcpus: i32,
    memory_mb: i32,
    timeout_sec: i32,
    disk_size_mb: i32,
    guest_ip: String,
    host_ip: String,
    created_at: Ts,
    started_at: Option<Ts>,
    last_active_at: Option<Ts>,
    last_updated: Ts,
    metadata: Json<Metadata>,
}

impl TryFrom<SandboxRow> for Sandbox {
    type Error = RepoError;
    fn try_from(r: SandboxRow) -> RepoResult<Self> {
        Ok(Sandbox {
            id: SandboxId::from_uuid(r.id),
            team_id: TeamId::from_uuid(r.team_id),
            host_id: HostId::from_uuid(r.host_id),
            template: r.template,
            template_id: TemplateId(r.template_id),
            template_team_id: TeamId::from_uuid(r.template_team_id),
            status: parse_stored("sandboxes.status", &r.status)?,
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            timeout_sec: r.timeout_sec,
            disk_size_mb: r.disk_size_mb,
            guest_ip: r.guest_ip,
            host_ip: r.host_ip,
            created_at: r.created_at.get(),
            started_at: ts(r.started_at),
            last_active_at: ts(r.last_active_at),
            last_updated: r.last_updated.get(),
            metadata: r.metadata.0,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ProxyTargetRow {
    sandbox_id: Uuid,
    team_id: Uuid,
    status: String,
    host_id: Uuid,
    host_address: String,
    host_tls: bool,
    access_token_hash: String,
}

impl TryFrom<ProxyTargetRow> for ProxyTarget {
    type Error = RepoError;
    fn try_from(r: ProxyTargetRow) -> RepoResult<Self> {
        Ok(ProxyTarget {
            sandbox_id: SandboxId::from_uuid(r.sandbox_id),
            team_id: TeamId::from_uuid(r.team_id),
            status: parse_stored("sandboxes.status", &r.status)?,
            host_id: HostId::from_uuid(r.host_id),
            host_address: r.host_address,
            host_tls: r.host_tls,
            access_token_hash: (!r.access_token_hash.is_empty()).then_some(r.access_token_hash),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    team_id: Uuid,
    sampled_at: Ts,
    running_count: i32,
    vcpus_reserved: i32,
    memory_mb_reserved: i32,
    period_secs: i32,
}

impl From<SnapshotRow> for MetricsSnapshot {
    fn from(r: SnapshotRow) -> Self {
        MetricsSnapshot {
            team_id: TeamId::from_uuid(r.team_id),
            sampled_at: r.sampled_at.get(),
            running_count: r.running_count,
            vcpus_reserved: r.vcpus_reserved,
            memory_mb_reserved: r.memory_mb_reserved,
            period_secs: r.period_secs,
        }
    }
}

/// One team's live reservation, as `sample_team_usage` aggregates it.
#[derive(sqlx::FromRow)]
pub(crate) struct UsageSampleRow {
    team_id: Uuid,
    running_count: i64,
    vcpus_reserved: i64,
    memory_mb_reserved: i64,
}

impl UsageSampleRow {
    pub(crate) fn into_snapshot(self, at: Ts) -> RepoResult<MetricsSnapshot> {
        Ok(MetricsSnapshot {
            team_id: TeamId::from_uuid(self.team_id),
            sampled_at: at.get(),
            running_count: narrow("running_count", self.running_count)?,
            vcpus_reserved: narrow("vcpus_reserved", self.vcpus_reserved)?,
            memory_mb_reserved: narrow("memory_mb_reserved", self.memory_mb_reserved)?,
            period_secs: 0,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SandboxCountRow {
    host_id: Uuid,
    status: String,
    count: i64,
}

impl TryFrom<SandboxCountRow> for wrenn_core::repo::SandboxCount {
    type Error = RepoError;
    fn try_from(r: SandboxCountRow) -> RepoResult<Self> {
        Ok(Self {
            host_id: HostId::from_uuid(r.host_id),
            status: parse_stored("sandboxes.status", &r.status)?,
            count: r.count,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MetricPointRow {
    ts: i64,
    cpu_pct: f64,
    mem_bytes: i64,
    disk_bytes: i64,
}

impl From<MetricPointRow> for MetricPoint {
    fn from(r: MetricPointRow) -> Self {
        MetricPoint {
            ts: r.ts,
            cpu_pct: r.cpu_pct,
            mem_bytes: r.mem_bytes,
            disk_bytes: r.disk_bytes,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DailyUsageRow {
    team_id: Uuid,
    day: NaiveDate,
    cpu_minutes: f64,
    ram_mb_minutes: f64,
}

impl From<DailyUsageRow> for DailyUsage {
    fn from(r: DailyUsageRow) -> Self {
        DailyUsage {
            team_id: TeamId::from_uuid(r.team_id),
            day: r.day,
            cpu_minutes: r.cpu_minutes,
            ram_mb_minutes: r.ram_mb_minutes,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ChannelRow {
    id: Uuid,
    team_id: Uuid,
    name: String,
    provider: String,
    config: Json<BTreeMap<String, String>>,
    event_types: Json<Vec<String>>,
    created_at: Ts,
    updated_at: Ts,
}

impl From<ChannelRow> for Channel {
    fn from(r: ChannelRow) -> Self {
        Channel {
            id: ChannelId::from_uuid(r.id),
            team_id: TeamId::from_uuid(r.team_id),
            name: r.name,
            provider: r.provider,
            config: r.config.0,
            event_types: r.event_types.0,
            created_at: r.created_at.get(),
            updated_at: r.updated_at.get(),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ChannelDeadLetterRow {
    id: Uuid,
    channel_id: Uuid,
    team_id: Uuid,
    delivery_id: Uuid,
    event_type: String,
    payload: Json<serde_json::Value>,
    attempts: i32,
    last_status: Option<i32>,
    error: String,
    created_at: Ts,
}

impl TryFrom<ChannelDeadLetterRow> for ChannelDeadLetter {
    type Error = RepoError;
    fn try_from(r: ChannelDeadLetterRow) -> RepoResult<Self> {
        Ok(ChannelDeadLetter {
            id: r.id,
            channel_id: ChannelId::from_uuid(r.channel_id),
            team_id: TeamId::from_uuid(r.team_id),
            delivery_id: r.delivery_id,
            event_type: r.event_type,
            payload: r.payload.0,
            attempts: u32::try_from(r.attempts).map_err(|_| {
                RepoError::Corrupt(format!(
                    "channel_dead_letters.attempts: {} is negative",
                    r.attempts
                ))
            })?,
            last_status: r
                .last_status
                .map(|s| {
                    u16::try_from(s).map_err(|_| {
                        RepoError::Corrupt(format!(
                            "channel_dead_letters.last_status: {s} is not an HTTP status"
                        ))
                    })
                })
                .transpose()?,
            error: r.error,
            created_at: r.created_at.get(),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct BuildRow {
    id: Uuid,
    team_id: Uuid,
    name: String,
    base_template: String,
    recipe: Json<Vec<String>>,
    healthcheck: String,
    skip_pre_post: bool,
    default_user: String,
    default_env: Json<BTreeMap<String, String>>,
    vcpus: i32,
    memory_mb: i32,
    status: String,
    current_step: i32,
    total_steps: i32,
    logs: Json<Vec<String>>,
    error: String,
    sandbox_id: Option<Uuid>,
    host_id: Option<Uuid>,
    template_id: Option<Uuid>,
    created_at: Ts,
    started_at: Option<Ts>,
    completed_at: Option<Ts>,
}

impl TryFrom<BuildRow> for TemplateBuild {
    type Error = RepoError;
    fn try_from(r: BuildRow) -> RepoResult<Self> {
        Ok(TemplateBuild {
            id: BuildId::from_uuid(r.id),
            team_id: TeamId::from_uuid(r.team_id),
            name: r.name,
            base_template: r.base_template,
            recipe: r.recipe.0,
            healthcheck: r.healthcheck,
            skip_pre_post: r.skip_pre_post,
            default_user: r.default_user,
            default_env: r.default_env.0,
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            status: parse_stored("template_builds.status", &r.status)?,
            current_step: r.current_step,
            total_steps: r.total_steps,
            logs: r.logs.0,
            error: r.error,
            sandbox_id: r.sandbox_id.map(SandboxId::from_uuid),
            host_id: r.host_id.map(HostId::from_uuid),
            template_id: r.template_id.map(TemplateId),
            created_at: r.created_at.get(),
            started_at: ts(r.started_at),
            completed_at: ts(r.completed_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    id: Uuid,
    team_id: Uuid,
    actor_type: String,
    actor_id: Option<String>,
    actor_name: String,
    resource_type: String,
    resource_id: Option<String>,
    action: String,
    scope: String,
    status: String,
    metadata: Json<serde_json::Value>,
    created_at: Ts,
}

fn actor_kind(value: &str) -> RepoResult<ActorKind> {
    [ActorKind::User, ActorKind::ApiKey, ActorKind::System]
        .into_iter()
        .find(|k| k.as_str() == value)
        .ok_or_else(|| RepoError::Corrupt(format!("audit_logs.actor_type: unknown {value:?}")))
}

fn audit_scope(value: &str) -> RepoResult<AuditScope> {
    [AuditScope::Team, AuditScope::Admin]
        .into_iter()
        .find(|s| s.as_str() == value)
        .ok_or_else(|| RepoError::Corrupt(format!("audit_logs.scope: unknown {value:?}")))
}

fn audit_status(value: &str) -> RepoResult<AuditStatus> {
    [
        AuditStatus::Success,
        AuditStatus::Info,
        AuditStatus::Warning,
        AuditStatus::Error,
    ]
    .into_iter()
    .find(|s| s.as_str() == value)
    .ok_or_else(|| RepoError::Corrupt(format!("audit_logs.status: unknown {value:?}")))
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = RepoError;
    fn try_from(r: AuditRow) -> RepoResult<Self> {
        Ok(AuditRecord {
            id: AuditLogId::from_uuid(r.id),
            entry: AuditEntry {
                team_id: TeamId::from_uuid(r.team_id),
                actor: Actor {
                    kind: actor_kind(&r.actor_type)?,
                    id: r.actor_id,
                    name: r.actor_name,
                },
                resource_type: r.resource_type,
                resource_id: r.resource_id,
                action: r.action,
                scope: audit_scope(&r.scope)?,
                status: audit_status(&r.status)?,
                metadata: r.metadata.0,
            },
            created_at: r.created_at.get(),
        })
    }
}

/// Converts every row, failing on the first corrupt one.
pub(crate) fn convert_all<R, T>(rows: Vec<R>) -> RepoResult<Vec<T>>
where
    T: TryFrom<R, Error = RepoError>,
{
    rows.into_iter().map(T::try_from).collect()
}
