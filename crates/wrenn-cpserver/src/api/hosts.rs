//! Hosts: onboarding, listing, deletion, tags, and the agent-facing routes
//! (registration, refresh-token rotation, heartbeat).
//!
//! **Who may do what.** A `regular` (platform) host is created and managed by a
//! platform admin only. A `byoc` host belongs to a team that has BYOC enabled; it is
//! created and managed by a platform admin or by that team's owner or admin (roles
//! re-read from the database), and it is visible to every member of that team. A
//! host the caller may not see answers 404, one they may see but not manage 403.
//!
//! **Onboarding.** `POST /v1/hosts` inserts a `pending` host and returns a one-time
//! registration token (64 hex, valid 1 hour, only its SHA-256 stored). The agent
//! trades it at `POST /v1/hosts/register` for a host JWT (7 days) and a refresh token
//! (64 hex, 60 days, stored hashed); the token is consumed by one conditional write,
//! so exactly one of several concurrent registrations wins. `POST
//! /v1/hosts/auth/refresh` rotates the refresh token: the new one is stored first and
//! the old one revoked second, so a crash in between leaves two valid tokens rather
//! than none. Every failure of a presented token — unknown, used, revoked, expired,
//! malformed — is 401; only a missing or mistyped field is 400.
//!
//! **Certificates.** Registration and every refresh also return a fresh TLS server
//! certificate for the agent (`cert_pem`, `key_pem`; ECDSA P-256, CN = the host id,
//! SAN = its address, valid 7 days like the JWT) signed by the control plane's host
//! CA (`ca_cert_pem`); its SHA-256 fingerprint and expiry are recorded on the host.
//! An agent whose address changes gets a certificate for the new one at its next
//! refresh.
//!
//! The handlers check input and access; tokens, credentials and heartbeats are
//! [`crate::host_identity`]'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{AuditEntry, AuditScope, AuditStatus};
use wrenn_core::auth::Role;
use wrenn_core::host_api::{HostHeartbeat, IssuedCredentials, RefreshHost, RegisterHost};
use wrenn_core::id::{HostId, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::{HostStatus, SandboxStatus};
use wrenn_core::model::{Host, HostKind};
use wrenn_core::repo::{HostSpec, NewHost, RepoError};
use wrenn_extension::extract::{Json, Path, Query};
use wrenn_extension::{ApiError, ApiResult, HostAuth, ServerContext, UserAuth};

use super::tags;
use crate::ca::CertificateAuthority;
use crate::host_identity::{self, HeartbeatReport, host_team, issue_registration_token};

/// Sandbox statuses that keep a host from being deleted without `force`.
pub const ACTIVE_SANDBOX_STATUSES: [SandboxStatus; 9] = [
    SandboxStatus::Pending,
    SandboxStatus::Starting,
    SandboxStatus::Running,
    SandboxStatus::Pausing,
    SandboxStatus::Paused,
    SandboxStatus::Resuming,
    SandboxStatus::Snapshotting,
    SandboxStatus::Hibernated,
    SandboxStatus::Missing,
];

/// Longest host tag.
pub const MAX_TAG_LEN: usize = 64;
/// Longest provider / availability-zone label.
pub const MAX_LABEL_LEN: usize = 128;
/// Longest agent address.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Longest architecture label.
pub const MAX_ARCH_LEN: usize = 32;
/// How long a forced delete waits for its sandboxes' destroys before it marks the
/// stragglers `stopped` itself.
pub const FORCE_DELETE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------

/// A host as the API returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostBody {
    /// `host-…`.
    #[schema(value_type = String)]
    pub id: HostId,
    /// `regular` or `byoc`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: HostKind,
    /// Owning team (BYOC hosts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub team_id: Option<TeamId>,
    /// Owning team's name (admin views only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_name: Option<String>,
    /// Cloud provider label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Availability zone label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// CPU architecture (once registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Logical CPUs (once registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<i32>,
    /// Memory in MiB (once registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i32>,
    /// Disk in GiB (once registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<i32>,
    /// `host:port` of the agent (once registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `pending`, `online`, `unreachable`, `offline` or `draining`.
    #[schema(value_type = String)]
    pub status: HostStatus,
    /// Last heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Creator (`usr-…`); absent once the creator's account is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub created_by: Option<UserId>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update.
    pub updated_at: DateTime<Utc>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn positive(n: i32) -> Option<i32> {
    (n > 0).then_some(n)
}

impl HostBody {
    fn new(h: Host, team_name: Option<String>) -> Self {
        Self {
            id: h.id,
            kind: h.kind,
            team_id: h.team_id,
            team_name,
            provider: non_empty(h.provider),
            availability_zone: non_empty(h.availability_zone),
            arch: non_empty(h.arch),
            cpu_cores: positive(h.cpu_cores),
            memory_mb: positive(h.memory_mb),
            disk_gb: positive(h.disk_gb),
            address: non_empty(h.address),
            status: h.status,
            last_heartbeat_at: h.last_heartbeat_at,
            created_by: h.created_by,
            created_at: h.created_at,
            updated_at: h.updated_at,
        }
    }
}

impl From<Host> for HostBody {
    fn from(h: Host) -> Self {
        Self::new(h, None)
    }
}

/// `POST /v1/hosts` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateHost {
    /// `regular` (platform host, admins only) or `byoc` (a team's own host).
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: HostKind,
    /// The owning team; required for `byoc`, refused for `regular`.
    #[schema(value_type = Option<String>)]
    pub team_id: Option<TeamId>,
    /// Cloud provider label.
    pub provider: Option<String>,
    /// Availability zone label.
    pub availability_zone: Option<String>,
}

/// A host with a fresh one-time registration token.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostWithToken {
    /// The host (`pending`).
    pub host: HostBody,
    /// 64 hex characters, valid for one hour and one registration. Shown once.
    pub registration_token: String,
}

/// `DELETE /v1/hosts/{id}` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct DeleteParams {
    /// Destroy the host's active capsules instead of refusing.
    pub force: Option<bool>,
}

/// What deleting a host would destroy.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletePreview {
    /// The host.
    pub host: HostBody,
    /// Its active capsules (`cl-…`).
    #[schema(value_type = Vec<String>)]
    pub sandbox_ids: Vec<SandboxId>,
}

/// `POST /v1/hosts/{id}/tags` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddTag {
    /// 1–64 characters of `[a-zA-Z0-9._:-]`.
    pub tag: String,
}

/// Credentials handed to an agent at registration and on refresh: the host, and
/// what was issued to it ([`IssuedCredentials`], the agent↔control-plane contract in
/// [`wrenn_core::host_api`]).
#[derive(Debug, Serialize, ToSchema)]
pub struct HostCredentials {
    /// The host.
    pub host: HostBody,
    /// The JWT, refresh token and TLS material.
    #[serde(flatten)]
    pub credentials: IssuedCredentials,
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Checks a host tag: 1–64 characters of `[a-zA-Z0-9._:-]`.
pub fn validate_tag(tag: &str) -> Result<(), ApiError> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(ApiError::bad_request(format!(
            "tag must be 1-{MAX_TAG_LEN} characters"
        )));
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(ApiError::bad_request(
            "tag may only contain letters, digits, '.', '_', ':' and '-'",
        ));
    }
    Ok(())
}

fn label(field: &str, value: Option<String>, max: usize) -> Result<String, ApiError> {
    let value = value.as_deref().map(str::trim).unwrap_or_default();
    if value.chars().count() > max {
        return Err(ApiError::bad_request(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(value.to_owned())
}

fn hostname_ok(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Checks an agent address: `host:port` or `http://host:port`, where host is an IP
/// address (IPv6 in brackets) or a DNS name and port is 1–65535. Returns it trimmed.
pub fn validate_address(address: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "address must be host:port (or http://host:port) with a port between 1 and 65535",
        )
    };
    let address = address.trim();
    if address.is_empty() || address.len() > MAX_ADDRESS_LEN {
        return Err(bad());
    }
    let authority = address.strip_prefix("http://").unwrap_or(address);
    if let Ok(sa) = authority.parse::<std::net::SocketAddr>() {
        return if sa.port() == 0 {
            Err(bad())
        } else {
            Ok(address.to_owned())
        };
    }
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || !hostname_ok(host) {
        return Err(bad());
    }
    Ok(address.to_owned())
}

fn resource(field: &str, value: Option<i32>) -> Result<Option<i32>, ApiError> {
    match value {
        Some(v) if v < 0 => Err(ApiError::bad_request(format!(
            "{field} must not be negative"
        ))),
        other => Ok(other),
    }
}

// ---------------------------------------------------------------------------
// Access rules
// ---------------------------------------------------------------------------

/// Whether the caller may see the host: admins see all, team members their team's
/// BYOC hosts.
fn can_see(auth: &UserAuth, host: &Host) -> bool {
    auth.user.is_admin || (host.kind == HostKind::Byoc && host.team_id == Some(auth.team_id))
}

/// Whether the caller may change the host: admins, or an owner/admin of the BYOC
/// host's team (role from the database).
fn can_manage(auth: &UserAuth, host: &Host) -> bool {
    auth.user.is_admin
        || (host.kind == HostKind::Byoc
            && host.team_id == Some(auth.team_id)
            && matches!(auth.user.role, Role::Owner | Role::Admin))
}

/// The host, or 404 when it does not exist or the caller may not see it.
async fn visible_host(ctx: &ServerContext, auth: &UserAuth, id: HostId) -> ApiResult<Host> {
    match ctx.store.get_host(id).await {
        Ok(h) if can_see(auth, &h) => Ok(h),
        Ok(_) | Err(RepoError::NotFound { .. }) => Err(ApiError::not_found("host")),
        Err(e) => Err(e.into()),
    }
}

/// The host, 404 when invisible, 403 when visible but not manageable.
async fn managed_host(
    ctx: &ServerContext,
    auth: &UserAuth,
    id: HostId,
    what: &str,
) -> ApiResult<Host> {
    let host = visible_host(ctx, auth, id).await?;
    if !can_manage(auth, &host) {
        return Err(ApiError::forbidden(format!(
            "only a platform admin or an owner/admin of the host's team may {what}"
        )));
    }
    Ok(host)
}

fn host_audit(auth: &UserAuth, host: &Host, action: &str) -> AuditEntry {
    AuditEntry::new(
        host_team(host),
        auth.actor(),
        "host",
        Some(host.id.to_string()),
        action,
    )
    .scope(AuditScope::Admin)
}

/// Host bodies with team names (admin views).
async fn with_team_names(ctx: &ServerContext, hosts: Vec<Host>) -> ApiResult<Vec<HostBody>> {
    let mut names: HashMap<TeamId, Option<String>> = HashMap::new();
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        let name = match h.team_id {
            None => None,
            Some(team) => match names.get(&team) {
                Some(n) => n.clone(),
                None => {
                    let n = match ctx.store.get_team(team).await {
                        Ok(t) => Some(t.name),
                        Err(RepoError::NotFound { .. }) => None,
                        Err(e) => return Err(e.into()),
                    };
                    names.insert(team, n.clone());
                    n
                }
            },
        };
        out.push(HostBody::new(h, name));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// User-facing routes
// ---------------------------------------------------------------------------

/// Creates a `pending` host and returns it with a one-time registration token
/// (shown once; valid for one hour). A `regular` host needs a platform admin; a
/// `byoc` host needs `team_id` of a live team with BYOC enabled, and the caller must
/// be a platform admin or that team's owner or admin.
#[utoipa::path(post, path = "/v1/hosts", tag = tags::HOSTS, security(("bearer" = [])), request_body = CreateHost,
    responses((status = 201, body = HostWithToken), (status = 400), (status = 401), (status = 403), (status = 404)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn create(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(body): Json<CreateHost>,
) -> ApiResult<(StatusCode, Json<HostWithToken>)> {
    let provider = label("provider", body.provider, MAX_LABEL_LEN)?;
    let availability_zone = label("availability_zone", body.availability_zone, MAX_LABEL_LEN)?;
    let team_id = match body.kind {
        HostKind::Regular => {
            if body.team_id.is_some() {
                return Err(ApiError::bad_request(
                    "team_id is only accepted for byoc hosts",
                ));
            }
            if !auth.user.is_admin {
                return Err(ApiError::forbidden(
                    "only a platform admin may create regular hosts",
                ));
            }
            None
        }
        HostKind::Byoc => {
            let team_id = body
                .team_id
                .ok_or_else(|| ApiError::bad_request("team_id is required for byoc hosts"))?;
            let team = match ctx.store.get_team(team_id).await {
                Ok(t) if t.deleted_at.is_none() => t,
                Ok(_) | Err(RepoError::NotFound { .. }) => return Err(ApiError::not_found("team")),
                Err(e) => return Err(e.into()),
            };
            if !auth.user.is_admin {
                let role = ctx
                    .store
                    .get_membership(team.id, auth.user.id)
                    .await?
                    .map(|m| m.role);
                if !matches!(role, Some(Role::Owner | Role::Admin)) {
                    return Err(ApiError::forbidden(
                        "only a platform admin or an owner/admin of the team may create its hosts",
                    ));
                }
            }
            if !team.is_byoc {
                return Err(ApiError::forbidden("BYOC is not enabled for this team"));
            }
            Some(team.id)
        }
    };
    let host = ctx
        .store
        .create_host(NewHost {
            id: HostId::new(),
            kind: body.kind,
            team_id,
            provider,
            availability_zone,
            created_by: Some(auth.user.id),
        })
        .await?;
    let token = issue_registration_token(ctx.store.as_ref(), host.id, auth.user.id).await?;
    tracing::info!(host_id = %host.id, kind = host.kind.as_str(), "host created");
    ctx.audit(host_audit(&auth, &host, "create").metadata(json!({
        "type": host.kind.as_str(),
        "team_id": host.team_id.map(|t| t.to_string()),
    })))
    .await;
    Ok((
        StatusCode::CREATED,
        Json(HostWithToken {
            host: host.into(),
            registration_token: token.expose_secret().to_owned(),
        }),
    ))
}

/// Hosts the caller may see: every host (with `team_name`) for platform admins, the
/// token team's BYOC hosts for everyone else.
#[utoipa::path(get, path = "/v1/hosts", tag = tags::HOSTS, security(("bearer" = [])),
    responses((status = 200, body = [HostBody]), (status = 401)))]
async fn list(State(ctx): State<ServerContext>, auth: UserAuth) -> ApiResult<Json<Vec<HostBody>>> {
    if auth.user.is_admin {
        let hosts = ctx.store.list_hosts(None).await?;
        return Ok(Json(with_team_names(&ctx, hosts).await?));
    }
    let hosts = ctx.store.list_hosts(Some(auth.team_id)).await?;
    Ok(Json(hosts.into_iter().map(Into::into).collect()))
}

/// One host (404 if it does not exist or the caller may not see it).
#[utoipa::path(get, path = "/v1/hosts/{id}", tag = tags::HOSTS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Host id (`host-…`)")),
    responses((status = 200, body = HostBody), (status = 400), (status = 401), (status = 404)))]
async fn get_one(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
) -> ApiResult<Json<HostBody>> {
    let host = visible_host(&ctx, &auth, id).await?;
    if auth.user.is_admin {
        let mut bodies = with_team_names(&ctx, vec![host]).await?;
        if let Some(body) = bodies.pop() {
            return Ok(Json(body));
        }
        return Err(ApiError::not_found("host"));
    }
    Ok(Json(host.into()))
}

async fn active_sandboxes(
    ctx: &ServerContext,
    host: HostId,
) -> ApiResult<Vec<wrenn_core::model::Sandbox>> {
    Ok(ctx
        .store
        .list_sandboxes_by_host(host, &ACTIVE_SANDBOX_STATUSES)
        .await?)
}

/// Deletes a host. With active capsules it answers 409 `host_has_sandboxes` (their
/// ids in `error.sandbox_ids`) unless `?force=true`, which destroys them first
/// (best effort; any the agent does not confirm within a few seconds are marked
/// `stopped`). The host's refresh tokens are revoked and its connection dropped, so
/// its agent is locked out at once.
#[utoipa::path(delete, path = "/v1/hosts/{id}", tag = tags::HOSTS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Host id (`host-…`)"), DeleteParams),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "`host_has_sandboxes`, with `error.sandbox_ids`")))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id, host_id = %id))]
async fn delete(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
    Query(params): Query<DeleteParams>,
) -> ApiResult<StatusCode> {
    let host = managed_host(&ctx, &auth, id, "delete it").await?;
    let force = params.force.unwrap_or(false);
    let active = active_sandboxes(&ctx, host.id).await?;
    let sandbox_ids: Vec<SandboxId> = active.iter().map(|s| s.id).collect();
    if !active.is_empty() && !force {
        return Err(ApiError::conflict(
            "host_has_sandboxes",
            format!(
                "the host has {} active capsule(s); destroy them or delete with force=true",
                active.len()
            ),
        )
        .with_detail("sandbox_ids", json!(sandbox_ids)));
    }
    if !active.is_empty() {
        destroy_all(&ctx, &auth, &active).await?;
    }
    let revoked = ctx.store.revoke_host_refresh_tokens(host.id).await?;
    ctx.hosts.evict(host.id);
    ctx.store.delete_host(host.id).await?;
    tracing::warn!(
        revoked,
        sandboxes = sandbox_ids.len(),
        force,
        "host deleted"
    );
    ctx.audit(
        host_audit(&auth, &host, "delete")
            .status(AuditStatus::Warning)
            .metadata(json!({ "force": force, "sandbox_ids": sandbox_ids })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Destroys the sandboxes through the lifecycle (best effort), waits a bounded time
/// for the agent to confirm, then marks whatever is still live `stopped` (the host is
/// going away, so nothing will settle them later).
async fn destroy_all(
    ctx: &ServerContext,
    auth: &UserAuth,
    sandboxes: &[wrenn_core::model::Sandbox],
) -> ApiResult<()> {
    let actor = auth.actor();
    for sb in sandboxes {
        if let Err(e) = ctx.lifecycle.destroy(sb.team_id, sb.id, &actor).await {
            tracing::warn!(sandbox_id = %sb.id, error = %e, "could not destroy sandbox of a deleted host");
        }
    }
    let ids: Vec<SandboxId> = sandboxes.iter().map(|s| s.id).collect();
    let deadline = tokio::time::Instant::now() + FORCE_DELETE_WAIT;
    loop {
        let mut live: Vec<(SandboxId, SandboxStatus)> = Vec::new();
        for id in &ids {
            match ctx.store.get_sandbox(*id).await {
                Ok(sb) if !sb.status.is_terminal() => live.push((sb.id, sb.status)),
                Ok(_) | Err(RepoError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let mut by_status: HashMap<SandboxStatus, Vec<SandboxId>> = HashMap::new();
            for (id, status) in live {
                by_status.entry(status).or_default().push(id);
            }
            for (status, ids) in by_status {
                let moved = ctx
                    .store
                    .bulk_status_if(&ids, status, SandboxStatus::Stopped)
                    .await?;
                tracing::warn!(from = %status, count = moved.len(), "marked sandboxes of a deleted host stopped");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What deleting the host would destroy: its active capsules.
#[utoipa::path(get, path = "/v1/hosts/{id}/delete-preview", tag = tags::HOSTS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Host id (`host-…`)")),
    responses((status = 200, body = DeletePreview), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn delete_preview(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
) -> ApiResult<Json<DeletePreview>> {
    let host = managed_host(&ctx, &auth, id, "delete it").await?;
    let sandbox_ids = active_sandboxes(&ctx, host.id)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    Ok(Json(DeletePreview {
        host: host.into(),
        sandbox_ids,
    }))
}

/// Issues a new registration token for a host that has not registered yet (409
/// `invalid_state` otherwise).
#[utoipa::path(post, path = "/v1/hosts/{id}/token", tag = tags::HOSTS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Host id (`host-…`)")),
    responses((status = 201, body = HostWithToken), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id, host_id = %id))]
async fn regenerate_token(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
) -> ApiResult<(StatusCode, Json<HostWithToken>)> {
    let host = managed_host(&ctx, &auth, id, "issue registration tokens for it").await?;
    if host.status != HostStatus::Pending {
        return Err(ApiError::conflict(
            "invalid_state",
            format!(
                "the host is {}; registration tokens are only issued for pending hosts",
                host.status.as_str()
            ),
        ));
    }
    let token = issue_registration_token(ctx.store.as_ref(), host.id, auth.user.id).await?;
    ctx.audit(host_audit(&auth, &host, "regenerate_token").status(AuditStatus::Info))
        .await;
    Ok((
        StatusCode::CREATED,
        Json(HostWithToken {
            host: host.into(),
            registration_token: token.expose_secret().to_owned(),
        }),
    ))
}

/// The host's tags, sorted.
#[utoipa::path(get, path = "/v1/hosts/{id}/tags", tag = tags::HOSTS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Host id (`host-…`)")),
    responses((status = 200, body = [String]), (status = 400), (status = 401), (status = 404)))]
async fn list_tags(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
) -> ApiResult<Json<Vec<String>>> {
    let host = visible_host(&ctx, &auth, id).await?;
    Ok(Json(ctx.store.list_host_tags(host.id).await?))
}

/// Adds a tag (idempotent).
#[utoipa::path(post, path = "/v1/hosts/{id}/tags", tag = tags::HOSTS, security(("bearer" = [])), request_body = AddTag,
    params(("id" = String, Path, description = "Host id (`host-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id, host_id = %id))]
async fn add_tag(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
    Json(body): Json<AddTag>,
) -> ApiResult<StatusCode> {
    validate_tag(&body.tag)?;
    let host = managed_host(&ctx, &auth, id, "tag it").await?;
    ctx.store.add_host_tag(host.id, &body.tag).await?;
    ctx.audit(
        host_audit(&auth, &host, "tag_add")
            .status(AuditStatus::Info)
            .metadata(json!({ "tag": body.tag })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a tag (removing an absent tag changes nothing and also answers 204).
#[utoipa::path(delete, path = "/v1/hosts/{id}/tags/{tag}", tag = tags::HOSTS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Host id (`host-…`)"), ("tag" = String, Path, description = "The tag")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id, host_id = %id))]
async fn remove_tag(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path((id, tag)): Path<(HostId, String)>,
) -> ApiResult<StatusCode> {
    validate_tag(&tag)?;
    let host = managed_host(&ctx, &auth, id, "untag it").await?;
    if ctx.store.remove_host_tag(host.id, &tag).await? {
        ctx.audit(
            host_audit(&auth, &host, "tag_remove")
                .status(AuditStatus::Info)
                .metadata(json!({ "tag": tag })),
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Agent-facing routes
// ---------------------------------------------------------------------------

/// An agent trades its one-time registration token for credentials: a host JWT (7
/// days), a refresh token (60 days), and a TLS server certificate for its address
/// signed by the host CA (7 days) with the CA's certificate. The host goes `pending`
/// → `online` with the reported address and resources. The token works once (of
/// concurrent attempts exactly one wins); an unknown, used or expired token is 401.
#[utoipa::path(post, path = "/v1/hosts/register", tag = tags::HOSTS, request_body = RegisterHost,
    responses((status = 201, body = HostCredentials), (status = 400), (status = 401)))]
async fn register(
    State(ctx): State<ServerContext>,
    Extension(ca): Extension<Arc<CertificateAuthority>>,
    Json(body): Json<RegisterHost>,
) -> ApiResult<(StatusCode, Json<HostCredentials>)> {
    let address = validate_address(&body.address)?;
    let machine = body.machine;
    let spec = HostSpec {
        address,
        arch: label("arch", machine.arch, MAX_ARCH_LEN)?,
        cpu_cores: resource("cpu_cores", machine.cpu_cores)?.unwrap_or(0),
        memory_mb: resource("memory_mb", machine.memory_mb)?.unwrap_or(0),
        disk_gb: resource("disk_gb", machine.disk_gb)?.unwrap_or(0),
    };
    let (host, credentials) = host_identity::register(&ctx, &ca, &body.token, &spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(HostCredentials {
            host: host.into(),
            credentials,
        }),
    ))
}

/// An agent trades its refresh token for a new host JWT and a new refresh token.
/// The new token is stored before the old one is revoked (a crash in between leaves
/// two valid tokens, never none); of two concurrent refreshes with the same token
/// only one succeeds. Any failure of the token (unknown, revoked, expired,
/// malformed) is 401; a missing field is 400. The answer carries a new certificate
/// (the previous one stays valid until it expires).
#[utoipa::path(post, path = "/v1/hosts/auth/refresh", tag = tags::HOSTS, request_body = RefreshHost,
    responses((status = 200, body = HostCredentials), (status = 400), (status = 401)))]
async fn refresh(
    State(ctx): State<ServerContext>,
    Extension(ca): Extension<Arc<CertificateAuthority>>,
    Json(body): Json<RefreshHost>,
) -> ApiResult<Json<HostCredentials>> {
    let (host, credentials) = host_identity::refresh(&ctx, &ca, &body.refresh_token).await?;
    Ok(Json(HostCredentials {
        host: host.into(),
        credentials,
    }))
}

/// The agent's heartbeat (host token). The body may be empty; reported fields
/// replace the stored ones. A host that was `unreachable` comes back `online`
/// (audited as `host/marked_up`, published as `host.up`).
#[utoipa::path(post, path = "/v1/hosts/{id}/heartbeat", tag = tags::HOSTS, security(("host_token" = [])),
    params(("id" = String, Path, description = "Host id (`host-…`)")),
    request_body(content = HostHeartbeat, description = "optional; may be empty"),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn heartbeat(
    State(ctx): State<ServerContext>,
    HostAuth(token_host): HostAuth,
    Path(id): Path<HostId>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    if id != token_host {
        return Err(ApiError::forbidden("host ID mismatch"));
    }
    let report: HostHeartbeat = if body.iter().all(u8::is_ascii_whitespace) {
        HostHeartbeat::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid heartbeat: {e}")))?
    };
    let machine = report.machine;
    let report = HeartbeatReport {
        address: report
            .address
            .as_deref()
            .map(validate_address)
            .transpose()?,
        arch: match machine.arch {
            Some(a) => Some(label("arch", Some(a), MAX_ARCH_LEN)?),
            None => None,
        },
        cpu_cores: resource("cpu_cores", machine.cpu_cores)?,
        memory_mb: resource("memory_mb", machine.memory_mb)?,
        disk_gb: resource("disk_gb", machine.disk_gb)?,
    };
    host_identity::heartbeat(&ctx, id, report).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, delete))
        .routes(routes!(delete_preview))
        .routes(routes!(regenerate_token))
        .routes(routes!(list_tags, add_tag))
        .routes(routes!(remove_tag))
        .routes(routes!(register))
        .routes(routes!(refresh))
        .routes(routes!(heartbeat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for ok in [
            "127.0.0.1:50051",
            "http://10.0.0.2:1",
            "agent-1.example.com:443",
            "[::1]:50051",
            " localhost:8080 ",
        ] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "host:port",
            "https://a:1",
            "a b:1",
            ":50051",
            "-bad.example:1",
            "a:1/path",
        ] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_are_short_and_plain() {
        assert!(validate_tag("gpu").is_ok());
        assert!(validate_tag("zone:eu-west-1.a_b").is_ok());
        assert!(validate_tag(&"a".repeat(64)).is_ok());
        assert!(validate_tag("").is_err());
        assert!(validate_tag(&"a".repeat(65)).is_err());
        assert!(validate_tag("a b").is_err());
        assert!(validate_tag("a/b").is_err());
        assert!(validate_tag("é").is_err());
    }
}
