//! Interactive terminals: the WebSocket `GET /v1/capsules/{id}/pty`.
//!
//! Frames follow SDK 0.3.0 (`wrenn/pty.py`):
//! - client, first message: `{"type":"start","cmd"?,"args"?,"cols"?,"rows"?,"envs"?,"cwd"?,"user"?}`
//!   (defaults `/bin/bash`, 80×24) or `{"type":"connect","tag":"pty-…"}` to reattach;
//! - client, then: **binary** frames with raw keystrokes (also accepted as
//!   `{"type":"input","data":"<base64>"}`), `{"type":"resize","cols","rows"}` (ignored if
//!   either is 0), `{"type":"kill"}`, and `{"type":"pong"}` answers to pings;
//! - server: `{"type":"started","tag","pid"}`, terminal output as **binary** frames,
//!   `{"type":"exit","exit_code"}` (always present), `{"type":"error","data","fatal"?}`
//!   (`fatal` only when true), and `{"type":"ping"}` every 30 s.
//!
//! The terminal outlives the socket: closing it detaches, and `connect` reattaches by
//! tag; the process ends with `kill` or on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::data_plane::{Command, HostStream, PtyEvent, PtySpec};
use wrenn_core::id::SandboxId;
use wrenn_core::model::Sandbox;
use wrenn_extension::extract::Path;
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

use super::data_plane;
use super::{exec, tags};

/// How often the server pings an idle terminal client.
pub const PTY_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default terminal program.
pub const DEFAULT_PTY_CMD: &str = "/bin/bash";

/// A client control message.
#[derive(Debug, Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    cmd: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    cols: Option<u32>,
    #[serde(default)]
    rows: Option<u32>,
    #[serde(default)]
    envs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

/// A new PTY tag: `pty-` + 8 hex characters.
pub fn new_pty_tag() -> String {
    format!("pty-{}", wrenn_core::id::new_pty_tag())
}

fn error_frame(message: &str, fatal: bool) -> Message {
    let mut v = json!({ "type": "error", "data": message });
    if fatal {
        v["fatal"] = json!(true);
    }
    Message::Text(v.to_string().into())
}

async fn fail(socket: &mut WebSocket, message: &str) {
    let _ = socket.send(error_frame(message, true)).await;
    data_plane::close(socket, "error").await;
}

/// Opens (or reattaches to) a terminal in the capsule over a WebSocket.
#[utoipa::path(get, path = "/v1/capsules/{id}/pty", tag = tags::CAPSULES,
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 101, description = "WebSocket: client sends start/connect, then binary input, resize, kill; server sends started, binary output, exit, error, ping"),
        (status = 400)))]
async fn pty(
    State(ctx): State<ServerContext>,
    headers: HeaderMap,
    Path(id): Path<SandboxId>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| ApiError::bad_request(format!("expected a WebSocket upgrade: {e}")))?;
    let header_auth = ctx.auth.authenticate(&headers).await;
    Ok(ws.on_upgrade(move |socket| session(ctx, socket, header_auth, id)))
}

/// The terminal the first client message asks for.
fn attach_request(first: ClientMessage) -> Result<PtySpec, String> {
    match first.kind.as_str() {
        "start" => {
            let cmd = first
                .cmd
                .filter(|c| !c.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_PTY_CMD.into());
            let envs = first.envs.unwrap_or_default();
            wrenn_core::validate::command(&cmd, &first.args, &envs, first.cwd.as_deref())
                .map_err(|e| e.to_string())?;
            Ok(PtySpec {
                tag: new_pty_tag(),
                command: Command {
                    cmd,
                    args: first.args,
                    envs,
                    cwd: first.cwd.filter(|c| !c.is_empty()),
                },
                cols: first.cols.filter(|c| *c > 0).unwrap_or(80),
                rows: first.rows.filter(|r| *r > 0).unwrap_or(24),
                user: first.user.filter(|u| !u.is_empty()),
            })
        }
        "connect" => {
            let tag = first
                .tag
                .filter(|t| exec::valid_tag(t))
                .ok_or("connect needs the tag of a terminal")?;
            Ok(PtySpec {
                tag,
                command: Command::default(),
                cols: first.cols.unwrap_or(0),
                rows: first.rows.unwrap_or(0),
                user: None,
            })
        }
        other => Err(format!(
            "expected a start or connect message, got {other:?}"
        )),
    }
}

async fn session(
    ctx: ServerContext,
    mut socket: WebSocket,
    header_auth: ApiResult<AuthContext>,
    id: SandboxId,
) {
    let auth = match data_plane::ws_authenticate(&ctx, &mut socket, header_auth).await {
        Ok(a) => a,
        Err(msg) => return fail(&mut socket, &msg).await,
    };
    let sandbox = match exec::open(&ctx, &auth, id).await {
        Ok(c) => c,
        Err(e) => return fail(&mut socket, &e.message).await,
    };
    let first = match tokio::time::timeout(
        data_plane::WS_START_TIMEOUT,
        data_plane::next_command(&mut socket),
    )
    .await
    {
        Ok(Some(text)) => text,
        Ok(None) => return,
        Err(_) => return fail(&mut socket, "no start or connect message received").await,
    };
    let req = match serde_json::from_str::<ClientMessage>(&first)
        .map_err(|e| format!("invalid message: {e}"))
        .and_then(attach_request)
    {
        Ok(r) => r,
        Err(msg) => return fail(&mut socket, &msg).await,
    };
    let tag = req.tag.clone();
    let events = match ctx.data_plane.pty_attach(&sandbox, req).await {
        Ok(events) => events,
        Err(e) => return fail(&mut socket, &ApiError::from(e).message).await,
    };
    tracing::info!(sandbox_id = %id, team_id = %auth.team_id, host_id = %sandbox.host_id, tag, "terminal attached");
    data_plane::touch(&ctx, &sandbox).await;
    relay(&ctx, &sandbox, socket, events, tag).await;
}

/// Relays terminal output to the client and client input to the terminal.
async fn relay(
    ctx: &ServerContext,
    sandbox: &Sandbox,
    socket: WebSocket,
    mut events: HostStream<PtyEvent>,
    mut tag: String,
) {
    let (mut tx, mut rx) = socket.split();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + PTY_PING_INTERVAL,
        PTY_PING_INTERVAL,
    );
    let mut started = false;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(PtyEvent::Started { pid, tag: started_tag })) => {
                    if !started_tag.is_empty() {
                        tag = started_tag;
                    }
                    started = true;
                    let frame = json!({ "type": "started", "tag": tag, "pid": pid });
                    if tx.send(Message::Text(frame.to_string().into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(PtyEvent::Output(data))) => {
                    if !data.is_empty() && tx.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(PtyEvent::Exited { exit_code, error })) => {
                    let mut frame = json!({ "type": "exit", "exit_code": exit_code });
                    if let Some(err) = error {
                        frame["error"] = json!(err);
                    }
                    let _ = tx.send(Message::Text(frame.to_string().into())).await;
                    break;
                }
                None => {
                    let _ = tx.send(error_frame("the terminal stream ended without an exit status", true)).await;
                    break;
                }
                Some(Err(e)) => {
                    let _ = tx.send(error_frame(&ApiError::from(e).message, true)).await;
                    break;
                }
            },
            // Input is only forwarded once the terminal exists.
            msg = rx.next(), if started => {
                let reply = match msg {
                    Some(Ok(Message::Binary(b))) => send_input(ctx, sandbox, &tag, b).await,
                    Some(Ok(Message::Text(t))) => control(ctx, sandbox, &tag, t.as_str()).await,
                    Some(Ok(Message::Close(_))) => {
                    // Lets the automatic close reply go out.
                    let _ = tx.flush().await;
                    return;
                }
                Some(Err(_)) | None => return,
                    Some(Ok(_)) => None,
                };
                if let Some(err) = reply
                    && tx.send(error_frame(&err, false)).await.is_err()
                {
                    return;
                }
            }
            _ = ping.tick() => {
                if tx.send(Message::Text(json!({ "type": "ping" }).to_string().into())).await.is_err() {
                    return;
                }
            }
            () = ctx.shutdown.cancelled() => {
                let _ = tx.send(error_frame("the server is shutting down; reconnect with the tag", true)).await;
                break;
            }
        }
    }
    data_plane::close_split(&mut tx, &mut rx).await;
}

/// The error text of a failed terminal call, if it failed.
fn failure(result: Result<(), wrenn_core::agents::HostCallError>) -> Option<String> {
    result.err().map(|e| ApiError::from(e).message)
}

/// Writes keystrokes; the error text of a failure, if any.
async fn send_input(
    ctx: &ServerContext,
    sandbox: &Sandbox,
    tag: &str,
    data: bytes::Bytes,
) -> Option<String> {
    if data.is_empty() {
        return None;
    }
    failure(ctx.data_plane.pty_input(sandbox, tag, data).await)
}

/// Handles a JSON control message; the error text of a failure, if any.
async fn control(ctx: &ServerContext, sandbox: &Sandbox, tag: &str, text: &str) -> Option<String> {
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return Some(format!("invalid message: {e}")),
    };
    match msg.kind.as_str() {
        "input" => match msg.data.as_deref().map(data_plane::base64_decode) {
            Some(Some(data)) => send_input(ctx, sandbox, tag, data.into()).await,
            _ => Some("input data must be base64".into()),
        },
        "resize" => {
            let (cols, rows) = (msg.cols.unwrap_or(0), msg.rows.unwrap_or(0));
            if cols == 0 || rows == 0 {
                return None;
            }
            failure(ctx.data_plane.pty_resize(sandbox, tag, cols, rows).await)
        }
        "kill" => failure(ctx.data_plane.pty_kill(sandbox, tag).await),
        "pong" | "ping" => None,
        other => Some(format!("unknown message type {other:?}")),
    }
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(pty))
}
