//! Files of a capsule, all `POST /v1/capsules/{id}/files/…`: `write` and
//! `stream/write` (multipart: a `path` field, then a `file` part), `read` and
//! `stream/read` (raw bytes), `list`, `mkdir`, `remove`.
//!
//! Uploads are relayed to the agent's `WriteFileStream` in chunks of at most
//! [`FILE_CHUNK_SIZE`] as they arrive; downloads are relayed from `ReadFileStream` the same way, so no
//! file is ever held whole in memory. `write` refuses files larger than the
//! configured body limit (`WRENN_MAX_BODY_BYTES`, 100 MiB by default) with 413
//! `too_large`: a declared `Content-Length` over the limit is refused before
//! anything is written, and a chunked upload that crosses it is aborted and the
//! partial file removed. `stream/write` has no limit. Missing paths are 404
//! `not_found` (the original answered 502).

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::agents::HostCallError;
use wrenn_core::data_plane::{self as plane, FileKind};
use wrenn_core::id::SandboxId;
use wrenn_core::model::Sandbox;
use wrenn_extension::extract::{Json, Path};
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

use super::data_plane;
use super::tags;

/// Room for the multipart framing (boundaries, headers, the `path` field) on top of
/// the file size limit when checking a declared `Content-Length`.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// One entry of a capsule file system (SDK `FileEntry`).
#[derive(Debug, Serialize, ToSchema)]
pub struct FileEntry {
    /// Last path component.
    pub name: String,
    /// Absolute path inside the capsule.
    pub path: String,
    /// `file`, `directory` or `symlink` (sockets, FIFOs and devices are listed as `file`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// `ls -l` style permissions, e.g. `-rwxr-xr-x`.
    pub permissions: String,
    /// Owner user name.
    pub owner: String,
    /// Owner group name.
    pub group: String,
    /// Last modification, Unix seconds.
    pub modified_at: i64,
    /// Target of a symlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

impl From<plane::FileEntry> for FileEntry {
    fn from(e: plane::FileEntry) -> Self {
        let kind = match e.kind {
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            // The SDK accepts only file/directory/symlink; anything else is shown as a file.
            FileKind::File | FileKind::Other => "file",
        };
        Self {
            name: e.name,
            path: e.path,
            kind,
            size: e.size,
            mode: e.mode,
            permissions: e.permissions,
            owner: e.owner,
            group: e.group,
            modified_at: e.modified_at,
            symlink_target: e.symlink_target,
        }
    }
}

/// Body of `read`, `stream/read`, `mkdir` and `remove`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PathRequest {
    /// Path inside the capsule (absolute, or relative to the default user's home).
    pub path: Option<String>,
}

/// Body of `list`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ListRequest {
    /// Directory inside the capsule.
    pub path: Option<String>,
    /// Levels to descend (0 and 1: direct children; default 1).
    pub depth: Option<i64>,
}

/// `list` answer (SDK `ListDirResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse {
    /// The entries, parents before their children (always an array).
    pub entries: Vec<FileEntry>,
}

/// `mkdir` answer (SDK `MakeDirResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MakeDirResponse {
    /// The created directory.
    pub entry: FileEntry,
}

/// Multipart upload form (documentation only: the body is streamed).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// Destination path; must come before `file`.
    path: String,
    /// The content.
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
}

fn multipart_error(e: &MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("the upload is larger than the limit")
    } else {
        ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// The multipart body of an upload, after the capsule checks.
async fn multipart(req: Request) -> ApiResult<Multipart> {
    Multipart::from_request(req, &())
        .await
        .map_err(|_| ApiError::bad_request("expected multipart/form-data with a boundary"))
}

/// Reads the `path` field, then relays the `file` part that follows it to the agent.
async fn upload_form(
    ctx: &ServerContext,
    sandbox: &Sandbox,
    form: &mut Multipart,
    limit: Option<u64>,
) -> ApiResult<u64> {
    let mut path = None;
    loop {
        let field = form.next_field().await.map_err(|e| multipart_error(&e))?;
        let Some(field) = field else {
            return Err(ApiError::bad_request(if path.is_none() {
                "the path field is required"
            } else {
                "the file field is required"
            }));
        };
        match field.name() {
            Some("path") => {
                let text = field.text().await.map_err(|e| multipart_error(&e))?;
                if text.trim().is_empty() {
                    return Err(ApiError::bad_request("path is required"));
                }
                path = Some(text);
            }
            Some("file") => {
                let Some(path) = path else {
                    return Err(ApiError::bad_request(
                        "the path field must come before the file field",
                    ));
                };
                return upload(ctx, sandbox, path, field, limit).await;
            }
            // Unknown fields are skipped (their content is drained by next_field).
            _ => {}
        }
    }
}

/// How an upload ended.
enum UploadEnd {
    /// The whole file was sent.
    Done,
    /// The upload must be abandoned with this error.
    Abort(ApiError),
    /// The agent stopped reading (its answer says why).
    AgentGone,
}

/// Relays one uploaded file to the agent chunk by chunk. `limit` caps the file size.
async fn upload(
    ctx: &ServerContext,
    sandbox: &Sandbox,
    path: String,
    mut file: Field<'_>,
    limit: Option<u64>,
) -> ApiResult<u64> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let chunks =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
            .boxed();
    let (plane, capsule, target) = (ctx.data_plane.clone(), sandbox.clone(), path.clone());
    let mut call = tokio::spawn(async move { plane.write_file(&capsule, target, chunks).await });
    let mut total: u64 = 0;
    let end = loop {
        let chunk = match file.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break UploadEnd::Done,
            Err(e) => break UploadEnd::Abort(multipart_error(&e)),
        };
        total += chunk.len() as u64;
        if limit.is_some_and(|l| total > l) {
            break UploadEnd::Abort(too_large(limit.unwrap_or_default()));
        }
        if tx.send(chunk).await.is_err() {
            break UploadEnd::AgentGone;
        }
    };
    drop(tx);
    match end {
        UploadEnd::Abort(err) => {
            // Dropping the call resets the stream: the agent stops writing.
            call.abort();
            let _ = (&mut call).await;
            if err.status == StatusCode::PAYLOAD_TOO_LARGE {
                let removed = ctx.data_plane.remove_path(sandbox, path.clone()).await;
                if let Err(e) = removed.as_ref()
                    && !matches!(e, HostCallError::NotFound(_))
                {
                    tracing::warn!(sandbox_id = %sandbox.id, path, error = %e, "could not remove an oversized partial upload");
                }
            }
            Err(err)
        }
        UploadEnd::Done | UploadEnd::AgentGone => {
            let written = call
                .await
                .map_err(|e| ApiError::internal(format!("upload task failed: {e}")))?;
            Ok(written?)
        }
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::too_large(format!(
        "the file is larger than the upload limit of {limit} bytes; use files/stream/write"
    ))
}

/// Writes a file (multipart `path` then `file`; parents are created; limit 100 MiB).
#[utoipa::path(post, path = "/v1/capsules/{id}/files/write", tag = tags::CAPSULES,
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 404), (status = 409), (status = 413), (status = 503)))]
async fn write(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    req: Request,
) -> ApiResult<StatusCode> {
    let limit = ctx.config.max_body_bytes;
    let sandbox = open_checked(&ctx, &auth, id, declared_length(&req), Some(limit)).await?;
    let mut form = multipart(req).await?;
    let size = upload_form(&ctx, &sandbox, &mut form, Some(limit)).await?;
    tracing::debug!(sandbox_id = %id, team_id = %auth.team_id, size, "file written");
    data_plane::touch(&ctx, &sandbox).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams a file of any size into the capsule (multipart `path` then `file`).
#[utoipa::path(post, path = "/v1/capsules/{id}/files/stream/write", tag = tags::CAPSULES,
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn stream_write(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    req: Request,
) -> ApiResult<StatusCode> {
    let sandbox = open_checked(&ctx, &auth, id, None, None).await?;
    let mut form = multipart(req).await?;
    let size = upload_form(&ctx, &sandbox, &mut form, None).await?;
    tracing::debug!(sandbox_id = %id, team_id = %auth.team_id, size, "file streamed in");
    data_plane::touch(&ctx, &sandbox).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The declared `Content-Length` of a request.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Capsule checks, then the declared size, then the agent connection.
async fn open_checked(
    ctx: &ServerContext,
    auth: &AuthContext,
    id: SandboxId,
    declared: Option<u64>,
    limit: Option<u64>,
) -> ApiResult<Sandbox> {
    let sandbox = data_plane::running_capsule(ctx, auth.team_id, id).await?;
    if let Some(limit) = limit {
        if declared.is_some_and(|len| len > limit.saturating_add(MULTIPART_OVERHEAD)) {
            return Err(too_large(limit));
        }
    }
    data_plane::connect(ctx, &sandbox).await?;
    Ok(sandbox)
}

/// Opens a file for reading and answers with its bytes, relayed as they come.
/// Errors before the first chunk get a proper status; a failure later aborts the
/// body (the client sees a truncated transfer, not a short file).
async fn read_response(
    ctx: &ServerContext,
    auth: &AuthContext,
    id: SandboxId,
    body: &Bytes,
) -> ApiResult<Response> {
    let sandbox = data_plane::running_capsule(ctx, auth.team_id, id).await?;
    let req: PathRequest = data_plane::parse_json(body)?;
    let path = data_plane::required_path(req.path)?;
    let read = ctx.data_plane.read_file(&sandbox, path).await?;
    data_plane::touch(ctx, &sandbox).await;
    let total = read.total_size;
    let chunks = read
        .chunks
        .map(|chunk| chunk.map_err(|e| std::io::Error::other(ApiError::from(e).message)));
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(total) = total {
        builder = builder.header("x-file-size", total);
    }
    builder
        .body(Body::from_stream(chunks))
        .map_err(ApiError::internal)
}

/// Reads a file (raw bytes).
#[utoipa::path(post, path = "/v1/capsules/{id}/files/read", tag = tags::CAPSULES, request_body = PathRequest,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn read(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    body: Bytes,
) -> ApiResult<Response> {
    read_response(&ctx, &auth, id, &body).await
}

/// Streams a file of any size out of the capsule (raw bytes, flushed per chunk).
#[utoipa::path(post, path = "/v1/capsules/{id}/files/stream/read", tag = tags::CAPSULES, request_body = PathRequest,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn stream_read(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    body: Bytes,
) -> ApiResult<Response> {
    read_response(&ctx, &auth, id, &body).await
}

/// Lists a directory.
#[utoipa::path(post, path = "/v1/capsules/{id}/files/list", tag = tags::CAPSULES, request_body = ListRequest,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 200, body = ListResponse), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn list(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    body: Bytes,
) -> ApiResult<Json<ListResponse>> {
    let sandbox = data_plane::running_capsule(&ctx, auth.team_id, id).await?;
    let req: ListRequest = data_plane::parse_json(&body)?;
    let path = data_plane::required_path(req.path)?;
    let depth = match req.depth {
        None => 1,
        Some(d) => u32::try_from(d)
            .map_err(|_| ApiError::bad_request("depth must be a non-negative integer"))?,
    };
    let entries = ctx.data_plane.list_dir(&sandbox, path, depth).await?;
    data_plane::touch(&ctx, &sandbox).await;
    Ok(Json(ListResponse {
        entries: entries.into_iter().map(FileEntry::from).collect(),
    }))
}

/// Creates a directory and its parents (an existing path is 409 `conflict`).
#[utoipa::path(post, path = "/v1/capsules/{id}/files/mkdir", tag = tags::CAPSULES, request_body = PathRequest,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 200, body = MakeDirResponse), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn mkdir(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    body: Bytes,
) -> ApiResult<Json<MakeDirResponse>> {
    let sandbox = data_plane::running_capsule(&ctx, auth.team_id, id).await?;
    let req: PathRequest = data_plane::parse_json(&body)?;
    let path = data_plane::required_path(req.path)?;
    let entry = ctx.data_plane.make_dir(&sandbox, path).await?;
    data_plane::touch(&ctx, &sandbox).await;
    Ok(Json(MakeDirResponse {
        entry: entry.into(),
    }))
}

/// Removes a file or directory (recursively).
#[utoipa::path(post, path = "/v1/capsules/{id}/files/remove", tag = tags::CAPSULES, request_body = PathRequest,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn remove(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let sandbox = data_plane::running_capsule(&ctx, auth.team_id, id).await?;
    let req: PathRequest = data_plane::parse_json(&body)?;
    let path = data_plane::required_path(req.path)?;
    ctx.data_plane.remove_path(&sandbox, path).await?;
    data_plane::touch(&ctx, &sandbox).await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    // Uploads count their own bytes (`write` against the configured limit, `stream/write`
    // not at all), so the router-wide body limit must not cut them short.
    let uploads = OpenApiRouter::new()
        .routes(routes!(write))
        .routes(routes!(stream_write))
        .layer(DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .merge(uploads)
        .routes(routes!(read))
        .routes(routes!(stream_read))
        .routes(routes!(list))
        .routes(routes!(mkdir))
        .routes(routes!(remove))
}
