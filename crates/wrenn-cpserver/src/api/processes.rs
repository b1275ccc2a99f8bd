//! Processes of a capsule: `GET /v1/capsules/{id}/processes`,
//! `DELETE /v1/capsules/{id}/processes/{selector}` and the WebSocket
//! `GET /v1/capsules/{id}/processes/{selector}/stream`.
//!
//! A selector made only of digits is a pid, anything else a tag. The process stream
//! takes no client message: it attaches (with the agent's buffer of recent output
//! replayed first) and relays the same frames as the exec stream (see `exec`).
//! Closing the socket detaches; the process keeps running.

use axum::extract::State;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::data_plane::{ProcessRef, Signal};
use wrenn_core::id::SandboxId;
use wrenn_extension::extract::{Json, Path, Query};
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

use super::data_plane;
use super::exec::{self, valid_tag};
use super::tags;

/// One live process (SDK `ProcessEntry`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessEntry {
    /// Its pid inside the capsule.
    pub pid: u32,
    /// Its tag, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The program.
    pub cmd: String,
    /// Its arguments (omitted when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// `GET /v1/capsules/{id}/processes` answer (SDK `ProcessListResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessList {
    /// The live processes (always an array).
    pub processes: Vec<ProcessEntry>,
}

/// `DELETE …/processes/{selector}` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct KillQuery {
    /// `SIGKILL` (default), `SIGTERM`, `SIGINT` or `SIGHUP`.
    pub signal: Option<String>,
}

/// Parses a path selector: digits → pid (> 0), anything else → tag.
fn selector(raw: &str) -> ApiResult<ProcessRef> {
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        match raw.parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(ProcessRef::Pid(pid)),
            _ => Err(ApiError::bad_request(format!("invalid pid {raw:?}"))),
        }
    } else if valid_tag(raw) {
        Ok(ProcessRef::Tag(raw.to_owned()))
    } else {
        Err(ApiError::bad_request(
            "the selector must be a pid or a tag (1-64 characters of A-Za-z0-9._-)",
        ))
    }
}

fn signal(name: Option<&str>) -> ApiResult<Signal> {
    match name.map(|s| s.trim().to_ascii_uppercase()).as_deref() {
        None | Some("") | Some("SIGKILL") | Some("KILL") | Some("9") => Ok(Signal::Kill),
        Some("SIGTERM") | Some("TERM") | Some("15") => Ok(Signal::Terminate),
        Some("SIGINT") | Some("INT") | Some("2") => Ok(Signal::Interrupt),
        Some("SIGHUP") | Some("HUP") | Some("1") => Ok(Signal::Hangup),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown signal {other:?}; expected SIGKILL, SIGTERM, SIGINT or SIGHUP"
        ))),
    }
}

/// The live processes of a running capsule.
#[utoipa::path(get, path = "/v1/capsules/{id}/processes", tag = tags::CAPSULES,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 200, body = ProcessList), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn list(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
) -> ApiResult<Json<ProcessList>> {
    let sandbox = exec::open(&ctx, &auth, id).await?;
    let listed = ctx.data_plane.list_processes(&sandbox).await?;
    let mut processes: Vec<ProcessEntry> = listed
        .into_iter()
        .map(|p| ProcessEntry {
            pid: p.pid,
            tag: Some(p.tag).filter(|t| !t.is_empty()),
            cmd: p.cmd,
            args: p.args,
        })
        .collect();
    processes.sort_by_key(|p| p.pid);
    Ok(Json(ProcessList { processes }))
}

/// Signals a process (by pid or tag); SIGKILL unless `signal` says otherwise.
#[utoipa::path(delete, path = "/v1/capsules/{id}/processes/{selector}", tag = tags::CAPSULES,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)"),
        ("selector" = String, Path, description = "A pid, or a process tag"), KillQuery),
    responses((status = 204), (status = 400), (status = 401), (status = 404), (status = 409), (status = 503)))]
async fn kill(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path((id, raw)): Path<(SandboxId, String)>,
    Query(q): Query<KillQuery>,
) -> ApiResult<StatusCode> {
    let sandbox = data_plane::running_capsule(&ctx, auth.team_id, id).await?;
    let process = selector(&raw)?;
    let signal = signal(q.signal.as_deref())?;
    ctx.data_plane
        .kill_process(&sandbox, process, signal)
        .await?;
    tracing::info!(sandbox_id = %id, team_id = %auth.team_id, selector = %raw, ?signal, "process signalled");
    data_plane::touch(&ctx, &sandbox).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Attaches to a process and streams its output over a WebSocket.
#[utoipa::path(get, path = "/v1/capsules/{id}/processes/{selector}/stream", tag = tags::CAPSULES,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)"),
        ("selector" = String, Path, description = "A pid, or a process tag")),
    responses((status = 101, description = "WebSocket: server sends start/stdout/stderr/exit/error frames"), (status = 400)))]
async fn stream(
    State(ctx): State<ServerContext>,
    headers: HeaderMap,
    Path((id, raw)): Path<(SandboxId, String)>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let process = selector(&raw)?;
    let ws = ws.map_err(|e| ApiError::bad_request(format!("expected a WebSocket upgrade: {e}")))?;
    let header_auth = ctx.auth.authenticate(&headers).await;
    Ok(ws.on_upgrade(move |socket| session(ctx, socket, header_auth, id, process)))
}

async fn session(
    ctx: ServerContext,
    mut socket: WebSocket,
    header_auth: ApiResult<AuthContext>,
    id: SandboxId,
    process: ProcessRef,
) {
    let auth = match data_plane::ws_authenticate(&ctx, &mut socket, header_auth).await {
        Ok(a) => a,
        Err(msg) => return exec::fail(&mut socket, &msg).await,
    };
    let sandbox = match exec::open(&ctx, &auth, id).await {
        Ok(c) => c,
        Err(e) => return exec::fail(&mut socket, &e.message).await,
    };
    let events = match ctx.data_plane.connect_process(&sandbox, process).await {
        Ok(events) => events,
        Err(e) => return exec::fail(&mut socket, &ApiError::from(e).message).await,
    };
    tracing::info!(sandbox_id = %id, team_id = %auth.team_id, "process stream attached");
    data_plane::touch(&ctx, &sandbox).await;
    exec::forward_exec_events(&ctx, socket, events, false).await;
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(kill))
        .routes(routes!(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_pids_or_tags() {
        assert_eq!(selector("42").unwrap(), ProcessRef::Pid(42));
        assert_eq!(selector("web-1").unwrap(), ProcessRef::Tag("web-1".into()));
        assert!(selector("0").is_err());
        assert!(selector("99999999999").is_err());
        assert!(selector("a b").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(signal(None).unwrap(), Signal::Kill);
        assert_eq!(signal(Some("SIGTERM")).unwrap(), Signal::Terminate);
        assert!(signal(Some("SIGSEGV")).is_err());
    }
}
