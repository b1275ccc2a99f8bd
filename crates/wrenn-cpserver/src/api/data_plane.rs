//! Plumbing shared by the capsule data-plane routes (exec, processes, files, PTY,
//! metrics), which call into capsules through [`ServerContext::data_plane`]: finding
//! the running capsule, parsing bodies in the contract's check order, and the
//! WebSocket authentication handshake.
//!
//! **Check order.** Every data-plane route answers, in this order: 401 (credentials),
//! 400 (malformed capsule id), 404 (no such capsule in the caller's team), 409
//! `invalid_state` (the capsule is not `running`), 400 (malformed body), 503 (the host
//! cannot be reached), then whatever the agent answered. Bodies are therefore read as
//! bytes and parsed only after the capsule checks ([`parse_json`]).
//!
//! **WebSockets.** Credentials in the upgrade request's headers (`X-API-Key` or
//! `Authorization: Bearer`) authenticate before the upgrade. Without valid header
//! credentials the server still upgrades, then expects the first client message to be
//! `{"type":"auth","token":"<user JWT or API key>"}` within [`WS_AUTH_TIMEOUT`]. Every
//! failure after the upgrade is sent as an error frame, then the socket is closed.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use wrenn_core::id::{SandboxId, TeamId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::Sandbox;
use wrenn_core::repo::RepoError;
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

/// How long a WebSocket client that did not authenticate with headers has to send its
/// `auth` message.
pub const WS_AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a WebSocket client has to send its first protocol message (`start`,
/// `connect`) after authenticating.
pub const WS_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The capsule `id` of `team`, which must be `running`: 404 if the team has no such
/// capsule, 409 `invalid_state` otherwise.
pub async fn running_capsule(
    ctx: &ServerContext,
    team: TeamId,
    id: SandboxId,
) -> ApiResult<Sandbox> {
    let sandbox = team_capsule(ctx, team, id).await?;
    if sandbox.status != SandboxStatus::Running {
        return Err(not_running(sandbox.status));
    }
    Ok(sandbox)
}

/// The capsule `id` of `team` in any status (404 if the team has no such capsule).
pub async fn team_capsule(ctx: &ServerContext, team: TeamId, id: SandboxId) -> ApiResult<Sandbox> {
    match ctx.store.get_team_sandbox(team, id).await {
        Ok(sandbox) => Ok(sandbox),
        Err(RepoError::NotFound { .. }) => Err(ApiError::not_found("capsule")),
        Err(e) => Err(e.into()),
    }
}

/// 409 `invalid_state` for a capsule that is not running.
pub fn not_running(status: SandboxStatus) -> ApiError {
    ApiError::conflict(
        "invalid_state",
        format!("capsule is not running (status: {status})"),
    )
}

/// Checks that the capsule's host can be called (503 `host_unavailable` if not),
/// before a route reads its body.
pub async fn connect(ctx: &ServerContext, sandbox: &Sandbox) -> ApiResult<()> {
    ctx.data_plane
        .connect(sandbox)
        .await
        .map_err(ApiError::from)
}

/// Activity is recorded at most this often per capsule (the agent keeps its own
/// precise clock for the idle timeout; the row's `last_active_at` is informational).
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Marks the capsule active now (best effort: a failure is logged), unless the row
/// already says it was active moments ago.
pub async fn touch(ctx: &ServerContext, sandbox: &Sandbox) {
    let now = chrono::Utc::now();
    if sandbox
        .last_active_at
        .is_some_and(|t| now - t < TOUCH_EVERY)
    {
        return;
    }
    if let Err(e) = ctx.store.touch_sandbox(sandbox.id, now).await {
        tracing::warn!(sandbox_id = %sandbox.id, error = %e, "could not record capsule activity");
    }
}

/// Parses a JSON request body that was read as bytes (so that the capsule checks ran
/// first). An empty body is a 400 like any other malformed one.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON request body is required"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// A required, non-empty path from a request body.
pub fn required_path(path: Option<String>) -> ApiResult<String> {
    match path {
        Some(p) if !p.trim().is_empty() => Ok(p),
        _ => Err(ApiError::bad_request("path is required")),
    }
}

// ---------------------------------------------------------------------------------
// Base64 (standard alphabet, padded): exec output and the PTY's legacy JSON input.
// ---------------------------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard, padded base64.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(B64[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// Decodes standard base64 (padding optional, ASCII whitespace ignored).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = false;
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding = true;
            continue;
        }
        if padding {
            return None;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    // Six leftover bits can only come from a truncated quantum.
    (bits < 6).then_some(out)
}

/// Decodes a byte stream that arrives in arbitrary pieces as UTF-8 text without
/// splitting characters across pieces: an incomplete sequence at the end of a piece
/// is held back until the next one. Invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `piece` (plus what was held back), minus a trailing incomplete
    /// character.
    pub fn push(&mut self, piece: &[u8]) -> String {
        self.pending.extend_from_slice(piece);
        let keep = incomplete_tail(&self.pending);
        let split = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..split]).into_owned();
        self.pending.drain(..split);
        text
    }

    /// Whatever is still held back (lossily decoded).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Length of a trailing, possibly incomplete UTF-8 sequence (0 if the data ends on a
/// character boundary or with bytes that can never complete).
fn incomplete_tail(data: &[u8]) -> usize {
    for back in 1..=3.min(data.len()) {
        let b = data[data.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if back < needed { back } else { 0 };
    }
    0
}

// ---------------------------------------------------------------------------------
// WebSocket helpers
// ---------------------------------------------------------------------------------

/// The first-message authentication of a WebSocket client.
#[derive(Deserialize)]
struct AuthMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    token: String,
}

/// Authenticates a WebSocket session: `header` is the outcome of the upgrade
/// request's header credentials; without it the first client message must be
/// `{"type":"auth","token":…}` (a user JWT or an API key) within [`WS_AUTH_TIMEOUT`].
/// The error is the text of the error frame to send.
pub async fn ws_authenticate(
    ctx: &ServerContext,
    socket: &mut WebSocket,
    header: Result<AuthContext, ApiError>,
) -> Result<AuthContext, String> {
    let header_error = match header {
        Ok(auth) => return Ok(auth),
        Err(e) => e.message,
    };
    let first = tokio::time::timeout(WS_AUTH_TIMEOUT, next_text(socket)).await;
    let text = match first {
        Err(_) => {
            return Err(format!(
                "unauthorized: no auth message within {}s ({header_error})",
                WS_AUTH_TIMEOUT.as_secs()
            ));
        }
        Ok(None) => return Err("unauthorized: connection closed before authenticating".into()),
        Ok(Some(text)) => text,
    };
    let msg: AuthMessage = serde_json::from_str(&text).map_err(|_| {
        format!("unauthorized: the first message must be {{\"type\":\"auth\",\"token\":…}} ({header_error})")
    })?;
    if msg.kind != "auth" {
        return Err(format!(
            "unauthorized: the first message must be {{\"type\":\"auth\",\"token\":…}}, got {:?} ({header_error})",
            msg.kind
        ));
    }
    let token = msg.token.trim();
    let result = if wrenn_core::auth::looks_like_api_key(token) {
        ctx.auth.api_key(token).await
    } else {
        ctx.auth.user_token(token).await.map(|u| AuthContext {
            team_id: u.team_id,
            principal: wrenn_extension::Principal::User(u.user),
        })
    };
    result.map_err(|e| format!("unauthorized: {}", e.message))
}

/// The next text message from the client, skipping pings, pongs and binary frames;
/// `None` once the client closes or the connection fails.
pub async fn next_text(socket: &mut WebSocket) -> Option<String> {
    while let Some(msg) = socket.recv().await {
        match msg {
            Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

/// The next protocol message: like [`next_text`], but a redundant `auth` message (a
/// client that always authenticates by message, although its headers already did)
/// is skipped.
pub async fn next_command(socket: &mut WebSocket) -> Option<String> {
    loop {
        let text = next_text(socket).await?;
        let is_auth = serde_json::from_str::<AuthMessage>(&text).is_ok_and(|m| m.kind == "auth");
        if !is_auth {
            return Some(text);
        }
    }
}

/// Sends a JSON text frame; `false` if the client is gone.
pub async fn send_json(socket: &mut WebSocket, value: &serde_json::Value) -> bool {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

/// How long the server waits for the client to answer its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A normal close frame.
pub fn close_frame(reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::NORMAL,
        reason: reason.chars().take(120).collect::<String>().into(),
    }))
}

/// Closes the connection properly: sends a close frame, then reads (and discards)
/// what the client still sends until it answers with its own close frame (or
/// [`CLOSE_GRACE`] passes). Dropping the connection at once could reset it and lose
/// the frames just sent if the client's last message is still unread.
pub async fn close(socket: &mut WebSocket, reason: &str) {
    if socket.send(close_frame(reason)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// [`close`] for a socket that was split into a sink and a stream.
pub async fn close_split<Tx, Rx>(tx: &mut Tx, rx: &mut Rx)
where
    Tx: futures::Sink<Message> + Unpin,
    Rx: futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    use futures::{SinkExt, StreamExt};
    if tx.send(close_frame("")).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(msg)) = rx.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            let enc = base64_encode(&data[..n]);
            assert_eq!(enc.len() % 4, 0);
            assert_eq!(base64_decode(&enc).unwrap(), &data[..n], "length {n}");
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert!(base64_decode("a$==").is_none());
        assert!(base64_decode("a").is_none());
    }

    #[test]
    fn utf8_carry_never_splits_a_character() {
        let text = "héllo → wörld ✓ 🎉";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut carry = Utf8Carry::default();
            let mut out = carry.push(&bytes[..cut]);
            out.push_str(&carry.push(&bytes[cut..]));
            out.push_str(&carry.finish());
            assert_eq!(out, text, "cut at {cut}");
        }
        let mut carry = Utf8Carry::default();
        assert_eq!(carry.push(&[0xff, b'a']), "\u{fffd}a");
    }
}
