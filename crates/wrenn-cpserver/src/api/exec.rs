//! Running commands in a capsule: `POST /v1/capsules/{id}/exec` (foreground or
//! background) and the WebSocket `GET /v1/capsules/{id}/exec/stream`.
//!
//! Foreground output comes back as UTF-8 text, or — when either stream is not valid
//! UTF-8 — both streams as standard base64 with `encoding: "base64"`. `envs` and
//! `cwd` apply in both modes (the original honoured them only in the background).
//!
//! The exec stream speaks the JSON text frames of SDK 0.3.0 (`wrenn/commands.py`):
//! the client sends `{"type":"start","cmd","args"?}` (plus, as extensions, `envs`,
//! `cwd` and `timeout_sec`) and later `{"type":"stop"}`; the server sends
//! `{"type":"start","pid"}`, `{"type":"stdout"|"stderr","data":"<text>"}`,
//! `{"type":"exit","exit_code"}` (always present, also 0) or `{"type":"error","data"}`,
//! then closes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::data_plane::{Command, HostStream, ProcessEvent};
use wrenn_core::id::SandboxId;
use wrenn_core::model::Sandbox;
use wrenn_extension::extract::{Json, Path};
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

use super::data_plane::{self, Utf8Carry};
use super::tags;

/// Default foreground timeout (the agent's own default for 0).
pub const DEFAULT_EXEC_TIMEOUT_SEC: u32 = 30;

/// `POST /v1/capsules/{id}/exec` body (SDK `ExecRequest`).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ExecRequest {
    /// The program (an absolute path or a name looked up in PATH). Required. The
    /// SDK sends `/bin/sh` with `args: ["-c", line]`.
    pub cmd: Option<String>,
    /// Arguments, not including the program.
    #[serde(default)]
    pub args: Vec<String>,
    /// Foreground timeout in seconds (0 or absent → 30). Ignored in the background.
    pub timeout_sec: Option<i64>,
    /// Start in the background and answer 202 with the pid and tag.
    #[serde(default)]
    pub background: bool,
    /// Tag of a background process (default `proc-` + 8 hex characters).
    pub tag: Option<String>,
    /// Environment variables (both modes).
    pub envs: Option<BTreeMap<String, String>>,
    /// Working directory (both modes; default the user's home).
    pub cwd: Option<String>,
}

/// Foreground exec result (SDK `ExecResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecResponse {
    /// The capsule.
    pub sandbox_id: String,
    /// The program that ran.
    pub cmd: String,
    /// Standard output (UTF-8, or base64 when `encoding` says so).
    pub stdout: String,
    /// Standard error (UTF-8, or base64 when `encoding` says so).
    pub stderr: String,
    /// Exit status; -1 if the process was killed by a signal.
    pub exit_code: i32,
    /// Wall-clock duration in milliseconds.
    pub duration_ms: u64,
    /// `utf-8`, or `base64` when either stream is not valid UTF-8 (then both are).
    pub encoding: &'static str,
    /// Present (and true) when a stream exceeded 16 MiB and the excess was dropped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Background exec result (SDK `BackgroundExecResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BackgroundExecResponse {
    /// The capsule.
    pub sandbox_id: String,
    /// The program started.
    pub cmd: String,
    /// Its pid inside the capsule.
    pub pid: u32,
    /// Its tag (the requested one or a generated `proc-…`).
    pub tag: String,
}

/// A new background-process tag: `proc-` + 8 hex characters.
pub fn new_process_tag() -> String {
    let b: [u8; 4] = rand::random();
    format!("proc-{}", hex::encode(b))
}

/// Whether `tag` is a valid process tag: 1–64 characters of `A-Za-z0-9._-`.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `stdout`/`stderr` as UTF-8 text, or both as base64 when either is not UTF-8.
fn encode_output(stdout: Vec<u8>, stderr: Vec<u8>) -> (String, String, &'static str) {
    match (String::from_utf8(stdout), String::from_utf8(stderr)) {
        (Ok(out), Ok(err)) => (out, err, "utf-8"),
        (out, err) => {
            let out = out.map_or_else(|e| e.into_bytes(), String::into_bytes);
            let err = err.map_or_else(|e| e.into_bytes(), String::into_bytes);
            (
                data_plane::base64_encode(&out),
                data_plane::base64_encode(&err),
                "base64",
            )
        }
    }
}

/// Runs a command: foreground (200 with its output) or background (202 with pid and tag).
#[utoipa::path(post, path = "/v1/capsules/{id}/exec", tag = tags::CAPSULES, request_body = ExecRequest,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 200, body = ExecResponse), (status = 202, body = BackgroundExecResponse),
        (status = 400), (status = 401), (status = 404), (status = 409), (status = 502), (status = 503)))]
async fn exec(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    body: Bytes,
) -> ApiResult<Response> {
    let span = tracing::info_span!("capsule.exec", sandbox_id = %id, team_id = %auth.team_id);
    run_exec(ctx, auth, id, body).instrument(span).await
}

async fn run_exec(
    ctx: ServerContext,
    auth: AuthContext,
    id: SandboxId,
    body: Bytes,
) -> ApiResult<Response> {
    let sandbox = data_plane::running_capsule(&ctx, auth.team_id, id).await?;
    let req: ExecRequest = data_plane::parse_json(&body)?;
    let cmd = req
        .cmd
        .clone()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("cmd is required"))?;
    let no_envs = BTreeMap::new();
    wrenn_core::validate::command(
        &cmd,
        &req.args,
        req.envs.as_ref().unwrap_or(&no_envs),
        req.cwd.as_deref(),
    )?;
    let timeout_sec = match req.timeout_sec {
        None | Some(0) => DEFAULT_EXEC_TIMEOUT_SEC,
        Some(t) => u32::try_from(t)
            .ok()
            .filter(|t| *t <= 24 * 3600)
            .ok_or_else(|| ApiError::bad_request("timeout_sec must be between 0 and 86400"))?,
    };
    let tag = match req.tag.as_deref() {
        _ if !req.background => None,
        None | Some("") => Some(new_process_tag()),
        Some(t) if valid_tag(t) => Some(t.to_owned()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "tag must be 1-64 characters of A-Za-z0-9._-",
            ));
        }
    };
    tracing::debug!(host_id = %sandbox.host_id, background = req.background, "exec");
    let command = Command {
        cmd: cmd.clone(),
        args: req.args,
        envs: req.envs.unwrap_or_default(),
        cwd: req.cwd,
    };
    if let Some(tag) = tag {
        let started = ctx
            .data_plane
            .start_background(&sandbox, command, tag)
            .await?;
        data_plane::touch(&ctx, &sandbox).await;
        let body = BackgroundExecResponse {
            sandbox_id: id.to_string(),
            cmd,
            pid: started.pid,
            tag: started.tag,
        };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let started = Instant::now();
    let out = ctx
        .data_plane
        .exec(
            &sandbox,
            command,
            Duration::from_secs(u64::from(timeout_sec)),
        )
        .await?;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    data_plane::touch(&ctx, &sandbox).await;
    let (stdout, stderr, encoding) = encode_output(out.stdout.to_vec(), out.stderr.to_vec());
    Ok(Json(ExecResponse {
        sandbox_id: id.to_string(),
        cmd,
        stdout,
        stderr,
        exit_code: out.exit_code,
        duration_ms,
        encoding,
        truncated: out.truncated,
    })
    .into_response())
}

/// The exec stream's `start` message.
#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    timeout_sec: Option<u32>,
}

/// An exec/process stream error frame.
pub(super) fn error_frame(message: &str) -> serde_json::Value {
    json!({ "type": "error", "data": message })
}

/// Sends an error frame and closes.
pub(super) async fn fail(socket: &mut WebSocket, message: &str) {
    data_plane::send_json(socket, &error_frame(message)).await;
    data_plane::close(socket, "error").await;
}

/// Streams a command's output over a WebSocket.
#[utoipa::path(get, path = "/v1/capsules/{id}/exec/stream", tag = tags::CAPSULES,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 101, description = "WebSocket: client sends {\"type\":\"start\",\"cmd\",\"args\"}; server sends start/stdout/stderr/exit/error frames"),
        (status = 400)))]
async fn exec_stream(
    State(ctx): State<ServerContext>,
    headers: HeaderMap,
    Path(id): Path<SandboxId>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| ApiError::bad_request(format!("expected a WebSocket upgrade: {e}")))?;
    let header_auth = ctx.auth.authenticate(&headers).await;
    Ok(ws.on_upgrade(move |socket| exec_session(ctx, socket, header_auth, id)))
}

async fn exec_session(
    ctx: ServerContext,
    mut socket: WebSocket,
    header_auth: ApiResult<AuthContext>,
    id: SandboxId,
) {
    let auth = match data_plane::ws_authenticate(&ctx, &mut socket, header_auth).await {
        Ok(a) => a,
        Err(msg) => return fail(&mut socket, &msg).await,
    };
    let sandbox = match open(&ctx, &auth, id).await {
        Ok(c) => c,
        Err(e) => return fail(&mut socket, &e.message).await,
    };
    let start = match tokio::time::timeout(
        data_plane::WS_START_TIMEOUT,
        data_plane::next_command(&mut socket),
    )
    .await
    {
        Ok(Some(text)) => text,
        Ok(None) => return,
        Err(_) => return fail(&mut socket, "no start message received").await,
    };
    let start: StartMessage = match serde_json::from_str(&start) {
        Ok(s) => s,
        Err(e) => return fail(&mut socket, &format!("invalid start message: {e}")).await,
    };
    if start.kind != "start" {
        return fail(
            &mut socket,
            &format!("expected a start message, got {:?}", start.kind),
        )
        .await;
    }
    if start.cmd.trim().is_empty() {
        return fail(&mut socket, "cmd is required").await;
    }
    let no_envs = BTreeMap::new();
    if let Err(e) = wrenn_core::validate::command(
        &start.cmd,
        &start.args,
        start.envs.as_ref().unwrap_or(&no_envs),
        start.cwd.as_deref(),
    ) {
        return fail(&mut socket, &e.to_string()).await;
    }
    tracing::info!(sandbox_id = %id, team_id = %auth.team_id, host_id = %sandbox.host_id, "exec stream started");
    let command = Command {
        cmd: start.cmd,
        args: start.args,
        envs: start.envs.unwrap_or_default(),
        cwd: start.cwd,
    };
    let timeout = start
        .timeout_sec
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(u64::from(t)));
    let events = match ctx.data_plane.exec_stream(&sandbox, command, timeout).await {
        Ok(events) => events,
        Err(e) => return fail(&mut socket, &ApiError::from(e).message).await,
    };
    data_plane::touch(&ctx, &sandbox).await;
    forward_exec_events(&ctx, socket, events, true).await;
}

/// The running capsule of the caller's team, its host reachable.
pub(super) async fn open(
    ctx: &ServerContext,
    auth: &AuthContext,
    id: SandboxId,
) -> ApiResult<Sandbox> {
    let sandbox = data_plane::running_capsule(ctx, auth.team_id, id).await?;
    data_plane::connect(ctx, &sandbox).await?;
    Ok(sandbox)
}

/// Relays an agent process stream (ExecStream, ConnectProcess) to the client as SDK
/// stream frames until the process ends, the client goes away (which cancels the
/// agent stream: for an exec stream that kills the process, for an attached process
/// it only detaches) or `{"type":"stop"}` arrives (when `stoppable`).
pub(super) async fn forward_exec_events(
    ctx: &ServerContext,
    socket: WebSocket,
    mut events: HostStream<ProcessEvent>,
    stoppable: bool,
) {
    let (mut tx, mut rx) = socket.split();
    let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
    let send = |v: serde_json::Value| Message::Text(v.to_string().into());
    use futures::SinkExt;
    loop {
        tokio::select! {
            ev = events.next() => {
                let frame = match ev {
                    Some(Ok(ProcessEvent::Started { pid, .. })) => json!({ "type": "start", "pid": pid }),
                    Some(Ok(ProcessEvent::Stdout(b))) => json!({ "type": "stdout", "data": out.push(&b) }),
                    Some(Ok(ProcessEvent::Stderr(b))) => json!({ "type": "stderr", "data": err.push(&b) }),
                    Some(Ok(ProcessEvent::Ended { exit_code, error })) => {
                        for (kind, carry) in [("stdout", &mut out), ("stderr", &mut err)] {
                            let rest = carry.finish();
                            if !rest.is_empty() && tx.send(send(json!({ "type": kind, "data": rest }))).await.is_err() {
                                return;
                            }
                        }
                        let mut frame = json!({ "type": "exit", "exit_code": exit_code });
                        if let Some(e) = error {
                            frame["error"] = json!(e);
                        }
                        let _ = tx.send(send(frame)).await;
                        break;
                    }
                    None => {
                        let _ = tx.send(send(error_frame("the process stream ended without an exit status"))).await;
                        break;
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(send(error_frame(&ApiError::from(e).message))).await;
                        break;
                    }
                };
                if tx.send(send(frame)).await.is_err() {
                    return;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let stop = serde_json::from_str::<serde_json::Value>(t.as_str())
                        .is_ok_and(|v| v["type"] == "stop");
                    if stop && stoppable {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    // Lets the automatic close reply go out.
                    let _ = tx.flush().await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            () = ctx.shutdown.cancelled() => {
                let _ = tx.send(send(error_frame("the server is shutting down"))).await;
                break;
            }
        }
    }
    data_plane::close_split(&mut tx, &mut rx).await;
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(exec))
        .routes(routes!(exec_stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_base64_for_both_streams_when_either_is_binary() {
        assert_eq!(
            encode_output(b"hi".to_vec(), b"".to_vec()),
            ("hi".into(), "".into(), "utf-8")
        );
        let (out, err, enc) = encode_output(b"hi".to_vec(), vec![0xff]);
        assert_eq!(
            (out.as_str(), err.as_str(), enc),
            ("aGk=", "/w==", "base64")
        );
    }

    #[test]
    fn tags() {
        let t = new_process_tag();
        assert!(t.starts_with("proc-") && t.len() == 13 && valid_tag(&t));
        assert!(!valid_tag("") && !valid_tag("a b") && !valid_tag(&"x".repeat(65)));
    }
}
