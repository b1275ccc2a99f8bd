//! Template builds: platform templates under `/v1/admin/builds` (platform admins),
//! team templates under `/v1/builds` (team owners and admins, signed in with a user
//! JWT). Both take the same body and return the same [`BuildBody`]; a team's routes
//! only see its own builds. The recipe language and what a build does are described
//! in [`crate::builds`].

use std::collections::BTreeMap;

use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::auth::Role;
use wrenn_core::id::{BuildId, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId};
use wrenn_core::model::{BuildStatus, TemplateBuild};
use wrenn_extension::extract::{Json, Path};
use wrenn_extension::{AdminAuth, ApiError, ApiResult, ServerContext, UserAuth};

use super::tags;
use crate::builds::{self, BuildRequest};

/// A template build (SDK/admin `Build`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildBody {
    /// `bld-…`.
    #[schema(value_type = String)]
    pub id: BuildId,
    /// Template produced.
    pub name: String,
    /// Team the template belongs to (the platform team for platform templates).
    #[schema(value_type = String)]
    pub team_id: TeamId,
    /// Template the build starts from.
    pub base_template: String,
    /// The steps.
    pub recipe: Vec<String>,
    /// Command retried at the end until it succeeds.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub healthcheck: String,
    /// vCPUs.
    pub vcpus: i32,
    /// Memory (MiB).
    pub memory_mb: i32,
    /// `pending`, `running`, `success`, `failed` or `cancelled`.
    #[schema(value_type = String)]
    pub status: BuildStatus,
    /// Step in progress (1-based; 0 before the first).
    pub current_step: i32,
    /// Number of steps.
    pub total_steps: i32,
    /// Build output so far, line by line.
    pub logs: Vec<String>,
    /// Why the build failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The build capsule (`cl-…`).
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<SandboxId>,
    /// Its host.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<HostId>,
    /// Default user of the template.
    pub default_user: String,
    /// Default environment of the template.
    pub default_env: BTreeMap<String, String>,
    /// Whether the build skips the implicit steps (`apt-get update` before the
    /// recipe, `apt-get clean` after it).
    pub skip_pre_post: bool,
    /// Queued at.
    pub created_at: DateTime<Utc>,
    /// Started at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Finished at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<TemplateBuild> for BuildBody {
    fn from(b: TemplateBuild) -> Self {
        Self {
            id: b.id,
            name: b.name,
            team_id: b.team_id,
            base_template: b.base_template,
            recipe: b.recipe,
            healthcheck: b.healthcheck,
            vcpus: b.vcpus,
            memory_mb: b.memory_mb,
            status: b.status,
            current_step: b.current_step,
            total_steps: b.total_steps,
            logs: b.logs,
            error: b.error,
            sandbox_id: b.sandbox_id,
            host_id: b.host_id,
            default_user: b.default_user,
            default_env: b.default_env,
            skip_pre_post: b.skip_pre_post,
            created_at: b.created_at,
            started_at: b.started_at,
            completed_at: b.completed_at,
        }
    }
}

/// `POST …/builds` as `multipart/form-data` (documentation only: the body is read
/// by [`Submission`]).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct BuildForm {
    /// The build, as the JSON body would be.
    #[schema(value_type = BuildRequest)]
    config: String,
    /// A tar file (plain, or compressed with gzip, bzip2, xz or zstd), at most
    /// 100 MiB, unpacked in the build capsule for the recipe's `COPY` steps.
    #[schema(format = Binary, value_type = Option<String>)]
    archive: Vec<u8>,
}

/// A build request: a JSON [`BuildRequest`], or a [`BuildForm`].
struct Submission {
    request: BuildRequest,
    archive: Option<Vec<u8>>,
}

impl FromRequest<ServerContext> for Submission {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ServerContext) -> Result<Self, ApiError> {
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
        if !multipart {
            let Json(request) = Json::<BuildRequest>::from_request(req, state).await?;
            return Ok(Self {
                request,
                archive: None,
            });
        }
        let mut form = Multipart::from_request(req, state)
            .await
            .map_err(|_| ApiError::bad_request("expected multipart/form-data with a boundary"))?;
        let (mut request, mut archive) = (None, None);
        while let Some(mut field) = form.next_field().await.map_err(|e| form_error(&e))? {
            match field.name() {
                Some("config") => {
                    let text = field.bytes().await.map_err(|e| form_error(&e))?;
                    let parsed = serde_json::from_slice::<BuildRequest>(&text).map_err(|e| {
                        ApiError::bad_request(format!("the config field is not a valid build: {e}"))
                    })?;
                    request = Some(parsed);
                }
                Some("archive") => {
                    let mut data = Vec::new();
                    while let Some(chunk) = field.chunk().await.map_err(|e| form_error(&e))? {
                        if data.len() + chunk.len() > builds::MAX_ARCHIVE_BYTES {
                            return Err(ApiError::too_large(format!(
                                "the archive is larger than {} MiB",
                                builds::MAX_ARCHIVE_BYTES / (1024 * 1024)
                            )));
                        }
                        data.extend_from_slice(&chunk);
                    }
                    archive = Some(data);
                }
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "unknown form field {other:?}; expected config and archive"
                    )));
                }
                None => return Err(ApiError::bad_request("a form field has no name")),
            }
        }
        let request = request.ok_or_else(|| {
            ApiError::bad_request("the config field (the build as JSON) is required")
        })?;
        Ok(Self { request, archive })
    }
}

fn form_error(e: &MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!(
            "the body is larger than the {} MiB an archive may have",
            builds::MAX_ARCHIVE_BYTES / (1024 * 1024)
        ))
    } else {
        ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
    }
}

fn team_admin(auth: &UserAuth) -> Result<(), wrenn_extension::ApiError> {
    auth.require(
        |r| matches!(r, Role::Owner | Role::Admin),
        "build templates",
    )
}

/// Queues a build of a platform template: the build as JSON, or as a form with the
/// archive its `COPY` steps read.
#[utoipa::path(post, path = "/v1/admin/builds", tag = tags::ADMIN, security(("bearer" = [])),
    request_body(content((BuildRequest = "application/json"), (BuildForm = "multipart/form-data"))),
    responses((status = 201, body = BuildBody), (status = 400), (status = 401), (status = 403), (status = 409), (status = 413)))]
async fn admin_create(
    State(ctx): State<ServerContext>,
    auth: AdminAuth,
    body: Submission,
) -> ApiResult<impl IntoResponse> {
    let build = builds::submit(
        &ctx,
        PLATFORM_TEAM_ID,
        body.request,
        body.archive,
        &auth.0.actor(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(BuildBody::from(build))))
}

/// Every build (all teams), newest first (at most 200).
#[utoipa::path(get, path = "/v1/admin/builds", tag = tags::ADMIN, security(("bearer" = [])),
    responses((status = 200, body = [BuildBody]), (status = 401), (status = 403)))]
async fn admin_list(
    State(ctx): State<ServerContext>,
    _auth: AdminAuth,
) -> ApiResult<Json<Vec<BuildBody>>> {
    let list = builds::list(&ctx, None).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// One build, with its logs so far.
#[utoipa::path(get, path = "/v1/admin/builds/{id}", tag = tags::ADMIN, security(("bearer" = [])),
    params(("id" = String, Path, description = "Build id (`bld-…`)")),
    responses((status = 200, body = BuildBody), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn admin_get(
    State(ctx): State<ServerContext>,
    _auth: AdminAuth,
    Path(id): Path<BuildId>,
) -> ApiResult<Json<BuildBody>> {
    Ok(Json(builds::get(&ctx, None, id).await?.into()))
}

/// Cancels a pending or running build (409 if it already finished).
#[utoipa::path(post, path = "/v1/admin/builds/{id}/cancel", tag = tags::ADMIN, security(("bearer" = [])),
    params(("id" = String, Path, description = "Build id (`bld-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
async fn admin_cancel(
    State(ctx): State<ServerContext>,
    auth: AdminAuth,
    Path(id): Path<BuildId>,
) -> ApiResult<StatusCode> {
    builds::cancel(&ctx, None, id, &auth.0.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Queues a build of a template of the caller's team (owners and admins): the build
/// as JSON, or as a form with the archive its `COPY` steps read.
#[utoipa::path(post, path = "/v1/builds", tag = tags::BUILDS, security(("bearer" = [])),
    request_body(content((BuildRequest = "application/json"), (BuildForm = "multipart/form-data"))),
    responses((status = 201, body = BuildBody), (status = 400), (status = 401), (status = 403), (status = 409), (status = 413)))]
async fn team_create(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    body: Submission,
) -> ApiResult<impl IntoResponse> {
    team_admin(&auth)?;
    let build = builds::submit(
        &ctx,
        auth.team_id,
        body.request,
        body.archive,
        &auth.actor(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(BuildBody::from(build))))
}

/// The team's builds, newest first.
#[utoipa::path(get, path = "/v1/builds", tag = tags::BUILDS, security(("bearer" = [])),
    responses((status = 200, body = [BuildBody]), (status = 401), (status = 403)))]
async fn team_list(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
) -> ApiResult<Json<Vec<BuildBody>>> {
    team_admin(&auth)?;
    let list = builds::list(&ctx, Some(auth.team_id)).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// One of the team's builds.
#[utoipa::path(get, path = "/v1/builds/{id}", tag = tags::BUILDS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Build id (`bld-…`)")),
    responses((status = 200, body = BuildBody), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn team_get(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<BuildId>,
) -> ApiResult<Json<BuildBody>> {
    team_admin(&auth)?;
    Ok(Json(
        builds::get(&ctx, Some(auth.team_id), id).await?.into(),
    ))
}

/// Cancels one of the team's pending or running builds.
#[utoipa::path(post, path = "/v1/builds/{id}/cancel", tag = tags::BUILDS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Build id (`bld-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
async fn team_cancel(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<BuildId>,
) -> ApiResult<StatusCode> {
    team_admin(&auth)?;
    builds::cancel(&ctx, Some(auth.team_id), id, &auth.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    // A build may carry an archive: room for it and the form around it.
    let submissions = OpenApiRouter::new()
        .routes(routes!(admin_create, admin_list))
        .routes(routes!(team_create, team_list))
        .layer(DefaultBodyLimit::max(
            builds::MAX_ARCHIVE_BYTES + 1024 * 1024,
        ));
    OpenApiRouter::new()
        .merge(submissions)
        .routes(routes!(admin_get))
        .routes(routes!(admin_cancel))
        .routes(routes!(team_get))
        .routes(routes!(team_cancel))
}
