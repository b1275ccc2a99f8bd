//! Snapshot templates: `POST /v1/snapshots[?overwrite=true]`, `GET /v1/snapshots`,
//! `DELETE /v1/snapshots/{name}`.
//!
//! A snapshot captures a running or paused capsule into a team template that new
//! capsules can start from; the capsule returns to the status it had. `overwrite=true`
//! replaces a team template of the same name (the original ignored it). Listing shows
//! the team's templates and the platform's; platform, built-in and protected
//! templates cannot be deleted.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{AuditEntry, AuditStatus};
use wrenn_core::events::{Event, EventResource, PLATFORM_STREAM, PlatformEvent, PlatformEventKind};
use wrenn_core::id::{BUILTIN_TEMPLATE_NAME, PLATFORM_TEAM_ID, SandboxId};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::{Metadata, Template, TemplateKind};
use wrenn_core::repo::RepoError;
use wrenn_extension::extract::{Json, Path, Query};
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

/// OpenAPI tag of these routes.
const TAG: &str = "snapshots";

/// A template as the API returns it (SDK `Template`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateBody {
    /// Name (unique per team; platform names are reserved).
    pub name: String,
    /// `base` or `snapshot`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: TemplateKind,
    /// vCPUs (omitted when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub vcpus: i32,
    /// Memory in MiB (omitted when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub memory_mb: i32,
    /// Size on disk in bytes.
    pub size_bytes: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// True for platform templates (visible to every team).
    pub platform: bool,
    /// True for templates that cannot be deleted.
    pub protected: bool,
    /// Metadata (omitted when empty).
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

impl From<Template> for TemplateBody {
    fn from(t: Template) -> Self {
        Self {
            platform: t.team_id == PLATFORM_TEAM_ID,
            protected: t.protected || t.team_id == PLATFORM_TEAM_ID,
            name: t.name,
            kind: t.kind,
            vcpus: t.vcpus,
            memory_mb: t.memory_mb,
            size_bytes: t.size_bytes,
            created_at: t.created_at,
            metadata: t.metadata,
        }
    }
}

/// `POST /v1/snapshots` body (SDK `CreateSnapshotRequest`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateSnapshot {
    /// The running or paused capsule to capture (`cl-…`).
    pub sandbox_id: Option<String>,
    /// Template name (default `template-` + 8 hex characters).
    pub name: Option<String>,
}

/// `POST /v1/snapshots` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CreateQuery {
    /// Replace a team template with the same name.
    pub overwrite: Option<bool>,
}

/// `GET /v1/snapshots` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only `base` or only `snapshot` templates.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

fn audit(auth: &AuthContext, name: &str, action: &str) -> AuditEntry {
    AuditEntry::new(
        auth.team_id,
        auth.actor(),
        "snapshot",
        Some(name.to_owned()),
        action,
    )
}

/// Captures a capsule into a snapshot template.
#[utoipa::path(post, path = "/v1/snapshots", tag = TAG, request_body = CreateSnapshot, params(CreateQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 201, body = TemplateBody), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn create(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Query(q): Query<CreateQuery>,
    Json(body): Json<CreateSnapshot>,
) -> ApiResult<impl IntoResponse> {
    let raw = body
        .sandbox_id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("sandbox_id is required"))?;
    let id: SandboxId = raw.parse()?;
    let name = body.name.filter(|n| !n.is_empty());
    let overwrite = q.overwrite.unwrap_or(false);
    let template = ctx
        .lifecycle
        .snapshot(auth.team_id, id, name, overwrite, &auth.actor())
        .await?;
    tracing::info!(sandbox_id = %id, team_id = %auth.team_id, template = %template.name, overwrite, "snapshot created");
    ctx.audit(
        audit(&auth, &template.name, "create").metadata(serde_json::json!({
            "sandbox_id": id.to_string(),
            "overwrite": overwrite,
        })),
    )
    .await;
    Ok((StatusCode::CREATED, Json(TemplateBody::from(template))))
}

/// The team's templates and the platform's, optionally of one type.
#[utoipa::path(get, path = "/v1/snapshots", tag = TAG, params(ListQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = [TemplateBody]), (status = 400), (status = 401)))]
async fn list(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<TemplateBody>>> {
    let kind = match q.kind.as_deref() {
        None | Some("") => None,
        Some(k) => Some(
            k.parse::<TemplateKind>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
    };
    let templates = ctx
        .store
        .list_templates_for_team(auth.team_id, kind)
        .await?;
    Ok(Json(
        templates.into_iter().map(TemplateBody::from).collect(),
    ))
}

/// Deletes a team snapshot template (its files on every online host, then the row).
#[utoipa::path(delete, path = "/v1/snapshots/{name}", tag = TAG,
    security(("api_key" = []), ("bearer" = [])),
    params(("name" = String, Path, description = "Template name")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
async fn delete(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    wrenn_core::validate::safe_name("name", &name)?;
    let template = match ctx.store.get_template_for_team(auth.team_id, &name).await {
        Ok(t) => t,
        Err(RepoError::NotFound { .. }) => return Err(ApiError::not_found("template")),
        Err(e) => return Err(e.into()),
    };
    if template.team_id == PLATFORM_TEAM_ID || name == BUILTIN_TEMPLATE_NAME || template.protected {
        return Err(ApiError::forbidden(format!(
            "template {name:?} is a platform or protected template and cannot be deleted"
        )));
    }
    // Capsules (in any live status) started from the template still need its files.
    let users: Vec<String> = ctx
        .store
        .list_active_sandboxes_by_team(auth.team_id)
        .await?
        .into_iter()
        .filter(|s| s.template_id == template.id)
        .map(|s| s.id.to_string())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(
            "conflict",
            format!(
                "template {name:?} is used by capsules that still exist: {}",
                users.join(", ")
            ),
        )
        .with_detail("sandbox_ids", serde_json::json!(users)));
    }
    let hosts = ctx.store.list_hosts(None).await?;
    for host in hosts.iter().filter(|h| h.status == HostStatus::Online) {
        if let Err(e) = ctx
            .agents
            .delete_snapshot(host.id, template.team_id, template.id)
            .await
        {
            // A host that cannot delete now keeps an orphaned directory; the row goes
            // regardless so the name is free again.
            tracing::warn!(host_id = %host.id, team_id = %auth.team_id, template = %name, error = %e, "could not delete template files on host");
        }
    }
    if !ctx.store.delete_template(auth.team_id, template.id).await? {
        return Err(ApiError::not_found("template"));
    }
    tracing::info!(team_id = %auth.team_id, template = %name, "snapshot deleted");
    ctx.audit(audit(&auth, &name, "delete").status(AuditStatus::Warning))
        .await;
    let ev = PlatformEvent {
        event: PlatformEventKind::SnapshotDeleted,
        timestamp: Utc::now(),
        team_id: auth.team_id,
        actor: auth.actor(),
        resource: EventResource {
            id: name,
            kind: "template".into(),
        },
    };
    ctx.lifecycle
        .events()
        .publish(PLATFORM_STREAM, Event::Platform(ev))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(delete))
}
