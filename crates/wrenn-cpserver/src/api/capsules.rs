//! Capsule lifecycle: create, list, get, destroy, pause, resume, ping.
//!
//! The host agent is driven in the background after the first conditional write
//! (`→ starting`, `pausing`, …); the final status is visible through
//! `GET /v1/capsules/{id}` and the event stream. The answer waits a short grace for
//! that outcome, so that clients see fast operations settled without polling (the SDK
//! polls every 0.5 s, every 2 s for a pause, and skips it when the answer already
//! carries the status it waits for): create waits up to `WRENN_CREATE_WAIT_MS` and
//! answers `201` with the capsule `running` when it got there; pause, resume and
//! destroy wait up to `WRENN_LIFECYCLE_WAIT_MS` and answer `202` with the capsule as it
//! is then — settled when the agent was done in time, else in its transient status.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{AuditEntry, AuditStatus};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::{CreateSandbox, ResourceRequest, SandboxStatus};
use wrenn_core::model::Sandbox;
use wrenn_extension::extract::{Json, Path};
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

use super::tags;

/// The shortest idle timeout the agent honours; smaller positive values are raised.
pub const MIN_TIMEOUT_SEC: i64 = 60;

/// A capsule as the API returns it (SDK 0.3.0 `Capsule`). Empty optional fields
/// are omitted.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Capsule {
    /// `cl-…`.
    #[schema(value_type = String, example = "cl-0abc…")]
    pub id: SandboxId,
    /// Status (`starting`, `running`, `paused`, …).
    #[schema(value_type = String)]
    pub status: wrenn_core::lifecycle::SandboxStatus,
    /// Template name.
    pub template: String,
    /// vCPUs.
    pub vcpus: i32,
    /// Memory (MiB).
    pub memory_mb: i32,
    /// Idle seconds before auto-pause (0 = never).
    pub timeout_sec: i32,
    /// Disk capacity (MiB).
    pub disk_size_mb: i32,
    /// Address inside the sandbox network.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub guest_ip: String,
    /// Address on the host.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it last became running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Last activity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<DateTime<Utc>>,
    /// Last change.
    pub last_updated: DateTime<Utc>,
    /// User labels plus agent-reported versions.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl From<Sandbox> for Capsule {
    fn from(s: Sandbox) -> Self {
        Self {
            id: s.id,
            status: s.status,
            template: s.template,
            vcpus: s.vcpus,
            memory_mb: s.memory_mb,
            timeout_sec: s.timeout_sec,
            disk_size_mb: s.disk_size_mb,
            guest_ip: s.guest_ip,
            host_ip: s.host_ip,
            created_at: s.created_at,
            started_at: s.started_at,
            last_active_at: s.last_active_at,
            last_updated: s.last_updated,
            metadata: s.metadata,
        }
    }
}

// The wire keeps the resource fields flat (serde's `flatten` would disable
// `deny_unknown_fields`); `into_request` is the one conversion into the domain's
// `CreateSandbox`. (Doc comments here are the OpenAPI schema's description.)
/// `POST /v1/capsules` body. Every field is optional; `vcpus`/`memory_mb` ≤ 0 take
/// the defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCapsule {
    /// Template name (default `minimal`).
    pub template: Option<String>,
    /// vCPUs (default 1).
    pub vcpus: Option<i64>,
    /// Memory in MiB (default 512).
    pub memory_mb: Option<i64>,
    /// Idle seconds before auto-pause; 0 = never; 1–59 are raised to 60.
    pub timeout_sec: Option<i64>,
    /// Disk capacity in MiB (default 20480).
    pub disk_size_mb: Option<i64>,
    /// Labels (≤ 20 keys; reserved version keys refused).
    pub metadata: Option<BTreeMap<String, String>>,
}

impl CreateCapsule {
    /// The lifecycle request: empty template and non-positive vCPUs/memory take the
    /// defaults, a positive timeout below [`MIN_TIMEOUT_SEC`] is raised to it.
    fn into_request(self) -> Result<CreateSandbox, ApiError> {
        let positive = |v: Option<i64>| v.filter(|v| *v > 0);
        let timeout_sec = match self.timeout_sec {
            Some(t) if t < 0 => {
                return Err(ApiError::bad_request(
                    "timeout_sec must be 0 (never) or a positive number of seconds",
                ));
            }
            Some(t) if t > 0 && t < MIN_TIMEOUT_SEC => Some(MIN_TIMEOUT_SEC),
            other => other,
        };
        Ok(CreateSandbox {
            template: self.template.filter(|t| !t.is_empty()),
            resources: ResourceRequest {
                vcpus: positive(self.vcpus),
                memory_mb: positive(self.memory_mb),
                disk_size_mb: self.disk_size_mb,
            },
            timeout_sec,
            metadata: self.metadata.unwrap_or_default(),
        })
    }
}

/// The audit entry of `action` on capsule `id` by `auth`.
pub(super) fn audit(auth: &AuthContext, id: SandboxId, action: &str) -> AuditEntry {
    AuditEntry::new(
        auth.team_id,
        auth.actor(),
        "sandbox",
        Some(id.to_string()),
        action,
    )
}

/// Creates a capsule. It starts in the background; the answer waits for the start up
/// to `WRENN_CREATE_WAIT_MS` (default 5 s): `201` with the capsule `running`, else
/// `202` with it as it is then (`starting`, or `error` with the reason).
#[utoipa::path(post, path = "/v1/capsules", tag = tags::CAPSULES, request_body = CreateCapsule,
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = Capsule, description = "running"), (status = 202, body = Capsule, description = "still starting (or failed: status error)"), (status = 400, description = "bad input, or capsule_too_large: no host could ever hold it"), (status = 401), (status = 404),
        (status = 429, description = "quota_exceeded (the team's live-capsule quota) or insufficient_capacity (every host is full)"), (status = 503)))]
async fn create(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    // An empty body means "all defaults" (the SDK sends `{}`, curl users often nothing).
    let body: CreateCapsule = if body.iter().all(u8::is_ascii_whitespace) {
        CreateCapsule::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let req = body.into_request()?;
    let template = req
        .template
        .clone()
        .unwrap_or_else(|| wrenn_core::id::BUILTIN_TEMPLATE_NAME.into());
    let sb = ctx
        .lifecycle
        .create_waiting(auth.team_id, &auth.actor(), req, ctx.config.create_wait)
        .await?;
    ctx.audit(audit(&auth, sb.id, "create").metadata(serde_json::json!({ "template": template })))
        .await;
    let status = if sb.status == SandboxStatus::Running {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(Capsule::from(sb))))
}

/// The team's capsules, newest first (stopped and errored ones are hidden).
#[utoipa::path(get, path = "/v1/capsules", tag = tags::CAPSULES, security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = [Capsule]), (status = 401)))]
async fn list(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
) -> ApiResult<Json<Vec<Capsule>>> {
    let rows = ctx.store.list_sandboxes(auth.team_id).await?;
    Ok(Json(rows.into_iter().map(Capsule::from).collect()))
}

/// One capsule, in any status (including `stopped`).
#[utoipa::path(get, path = "/v1/capsules/{id}", tag = tags::CAPSULES, security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 200, body = Capsule), (status = 400), (status = 401), (status = 404)))]
async fn get_one(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
) -> ApiResult<Json<Capsule>> {
    // Only a capsule the team does not have is a 404: a database that cannot answer
    // is a server error, never "not found" (clients give up on a capsule that is).
    Ok(Json(
        super::data_plane::team_capsule(&ctx, auth.team_id, id)
            .await?
            .into(),
    ))
}

/// Destroys a capsule (the row is kept as `stopped`).
#[utoipa::path(delete, path = "/v1/capsules/{id}", tag = tags::CAPSULES, security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 202, body = Capsule), (status = 400), (status = 401), (status = 404)))]
async fn destroy(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
) -> ApiResult<impl IntoResponse> {
    let sb = ctx
        .lifecycle
        .destroy_waiting(auth.team_id, id, &auth.actor(), ctx.config.lifecycle_wait)
        .await?;
    ctx.audit(audit(&auth, id, "destroy").status(AuditStatus::Warning))
        .await;
    Ok((StatusCode::ACCEPTED, Json(Capsule::from(sb))))
}

/// Pauses a running capsule (memory kept).
#[utoipa::path(post, path = "/v1/capsules/{id}/pause", tag = tags::CAPSULES, security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 202, body = Capsule), (status = 400), (status = 401), (status = 404), (status = 409)))]
async fn pause(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
) -> ApiResult<impl IntoResponse> {
    let sb = ctx
        .lifecycle
        .pause_waiting(auth.team_id, id, &auth.actor(), ctx.config.lifecycle_wait)
        .await?;
    ctx.audit(audit(&auth, id, "pause")).await;
    Ok((StatusCode::ACCEPTED, Json(Capsule::from(sb))))
}

/// Resumes a paused or hibernated capsule.
#[utoipa::path(post, path = "/v1/capsules/{id}/resume", tag = tags::CAPSULES, security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 202, body = Capsule), (status = 400), (status = 401), (status = 404), (status = 409),
        (status = 429, description = "quota_exceeded: resuming a hibernated capsule would exceed the team's live-capsule quota")))]
async fn resume(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
) -> ApiResult<impl IntoResponse> {
    let sb = ctx
        .lifecycle
        .resume_waiting(auth.team_id, id, &auth.actor(), ctx.config.lifecycle_wait)
        .await?;
    ctx.audit(audit(&auth, id, "resume")).await;
    Ok((StatusCode::ACCEPTED, Json(Capsule::from(sb))))
}

/// Marks a running capsule active (resets its idle timer).
#[utoipa::path(post, path = "/v1/capsules/{id}/ping", tag = tags::CAPSULES, security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 404), (status = 409)))]
async fn ping(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
) -> ApiResult<StatusCode> {
    ctx.lifecycle.ping(auth.team_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, destroy))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(ping))
}
