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
//! The handlers check the shape of the input and shape the answers: managing hosts
//! (access rules included) is [`crate::host_admin`]'s; tokens, credentials and
//! heartbeats are [`crate::host_identity`]'s.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::auth::OpaqueToken;
use wrenn_core::host_api::{HostHeartbeat, IssuedCredentials, RefreshHost, RegisterHost};
use wrenn_core::id::{HostId, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::{Host, HostKind};
use wrenn_core::repo::HostSpec;
use wrenn_extension::extract::{Json, Path, Query};
use wrenn_extension::{ApiError, ApiResult, HostAuth, ServerContext, UserAuth};

use super::tags;
use crate::ca::CertificateAuthority;
use crate::host_admin::{self, HostRequest, MAX_ARCH_LEN, label, resource, validate_address};
use crate::host_identity::{self, HeartbeatReport};

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

impl HostWithToken {
    fn new(host: Host, token: &OpaqueToken) -> Self {
        Self {
            host: host.into(),
            registration_token: token.expose_secret().to_owned(),
        }
    }
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
// User-facing routes
// ---------------------------------------------------------------------------

/// Creates a `pending` host and returns it with a one-time registration token
/// (shown once; valid for one hour). A `regular` host needs a platform admin; a
/// `byoc` host needs `team_id` of a live team with BYOC enabled, and the caller must
/// be a platform admin or that team's owner or admin.
#[utoipa::path(post, path = "/v1/hosts", tag = tags::HOSTS, security(("bearer" = [])), request_body = CreateHost,
    responses((status = 201, body = HostWithToken), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn create(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(body): Json<CreateHost>,
) -> ApiResult<(StatusCode, Json<HostWithToken>)> {
    let req = HostRequest {
        kind: body.kind,
        team_id: body.team_id,
        provider: body.provider,
        availability_zone: body.availability_zone,
    };
    let (host, token) = host_admin::create(&ctx, &auth, req).await?;
    Ok((StatusCode::CREATED, Json(HostWithToken::new(host, &token))))
}

/// Hosts the caller may see: every host (with `team_name`) for platform admins, the
/// token team's BYOC hosts for everyone else.
#[utoipa::path(get, path = "/v1/hosts", tag = tags::HOSTS, security(("bearer" = [])),
    responses((status = 200, body = [HostBody]), (status = 401)))]
async fn list(State(ctx): State<ServerContext>, auth: UserAuth) -> ApiResult<Json<Vec<HostBody>>> {
    let hosts = host_admin::list(&ctx, &auth).await?;
    Ok(Json(
        hosts
            .into_iter()
            .map(|(h, team_name)| HostBody::new(h, team_name))
            .collect(),
    ))
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
    let (host, team_name) = host_admin::get(&ctx, &auth, id).await?;
    Ok(Json(HostBody::new(host, team_name)))
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
async fn delete(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
    Query(params): Query<DeleteParams>,
) -> ApiResult<StatusCode> {
    host_admin::delete(&ctx, &auth, id, params.force.unwrap_or(false)).await?;
    Ok(StatusCode::NO_CONTENT)
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
    let (host, sandbox_ids) = host_admin::delete_preview(&ctx, &auth, id).await?;
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
async fn regenerate_token(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
) -> ApiResult<(StatusCode, Json<HostWithToken>)> {
    let (host, token) = host_admin::regenerate_token(&ctx, &auth, id).await?;
    Ok((StatusCode::CREATED, Json(HostWithToken::new(host, &token))))
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
    Ok(Json(host_admin::list_tags(&ctx, &auth, id).await?))
}

/// Adds a tag (idempotent).
#[utoipa::path(post, path = "/v1/hosts/{id}/tags", tag = tags::HOSTS, security(("bearer" = [])), request_body = AddTag,
    params(("id" = String, Path, description = "Host id (`host-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn add_tag(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<HostId>,
    Json(body): Json<AddTag>,
) -> ApiResult<StatusCode> {
    host_admin::add_tag(&ctx, &auth, id, &body.tag).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a tag (removing an absent tag changes nothing and also answers 204).
#[utoipa::path(delete, path = "/v1/hosts/{id}/tags/{tag}", tag = tags::HOSTS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Host id (`host-…`)"), ("tag" = String, Path, description = "The tag")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn remove_tag(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path((id, tag)): Path<(HostId, String)>,
) -> ApiResult<StatusCode> {
    host_admin::remove_tag(&ctx, &auth, id, &tag).await?;
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
