//! The HTTP port proxy: `/proxy/{sandbox_id}/{port}/{path…}` on the agent's listener
//! forwards to port `{port}` of a running sandbox — a server bound to `0.0.0.0` or the
//! sandbox's address, or one bound to its loopback only (127.0.0.1, ::1, `localhost`).
//!
//! - **Connections** ([`upstream`]): TCP to `{host_ip}:{port}` first; only when that is
//!   refused, a tunnel through the sandbox's guest agent to `localhost:{port}` inside
//!   the sandbox ([`tunnel`]; envd dials nothing but the sandbox's loopback, never its
//!   own port, and only for holders of the sandbox's access token — the agent). Both
//!   kinds are pooled per sandbox and port.
//! - The query string is kept; `Host` is rewritten to `{host_ip}:{port}` (whichever way
//!   the connection goes); hop-by-hop headers are dropped (except
//!   `Connection: upgrade` / `Upgrade` on upgrades) ([`headers`]).
//! - Answers: **400** malformed id or port (1–65535), **403** the guest agent's port
//!   ([`wrenn_proto::ENVD_PORT`], never proxied), **404** unknown sandbox, **409**
//!   sandbox not running (or draining for a pause), **502** upstream failure (the
//!   message says which: nothing accepts connections on the port, neither at the
//!   sandbox's address nor on its loopback; a connection failure; a bad response),
//!   **401** missing agent token (when one is configured). These answers of its own
//!   carry [`PROXY_ERROR_HEADER`]; the app's answers never do (the header is removed
//!   from them).
//! - **Upgrades** (WebSocket and any other `Upgrade`) pass through either kind of
//!   connection: when the upstream answers 101 the two connections are spliced byte for
//!   byte.
//! - Root-relative `Location` headers (and absolute ones pointing at
//!   `http://{host_ip}:{port}`) are rewritten under `/proxy/{id}/{port}`.
//! - Every request holds a [`ConnGuard`] of the sandbox's
//!   [`ConnTracker`](crate::conntrack::ConnTracker) until its response body (or the
//!   upgraded connection) ends, so a pause can drain it; it also counts as activity.
//! - **Authentication**: when the agent has an auth token, proxy requests must carry
//!   it in `X-Wrenn-Agent-Token` (a dedicated header, so the sandbox app's own
//!   `Authorization` passes through untouched); the header is removed before
//!   forwarding.

pub mod headers;
pub mod tunnel;
pub mod upstream;

use crate::runtime::error_chain;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderValue};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_proto::routing::PROXY_ERROR_HEADER;

use crate::conntrack::ConnGuard;
use crate::manager::{Sandbox, SandboxManager};
use headers::rewrite_location;
use upstream::{UpstreamConnector, UpstreamError, socket_authority, upstream_uri};
use wrenn_proto::http_proxy::{is_upgrade, strip_hop_by_hop};

/// Header that carries the agent's auth token on proxy requests.
pub const AGENT_TOKEN_HEADER: &str = "x-wrenn-agent-token";

/// Shared state of the proxy routes.
#[derive(Clone)]
struct ProxyState {
    manager: Arc<SandboxManager>,
    client: Client<UpstreamConnector, Body>,
    token: Option<Arc<str>>,
}

/// The proxy routes (`/proxy/…`), to be merged into the agent's router.
pub fn router(manager: Arc<SandboxManager>, token: Option<String>) -> Router {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(20)
        .build(UpstreamConnector::new(Arc::clone(&manager)));
    let state = ProxyState {
        manager,
        client,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/proxy/{id}/{port}", any(handle))
        .route("/proxy/{id}/{port}/", any(handle))
        .route("/proxy/{id}/{port}/{*rest}", any(handle))
        .with_state(state)
}

fn plain(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(PROXY_ERROR_HEADER, HeaderValue::from_static("1"))],
        msg.into(),
    )
        .into_response()
}

/// Constant-time comparison of two tokens.
pub fn token_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/proxy/{id}/{port}{rest}` → (id, port, rest starting with `/`).
fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/proxy/")?;
    let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (port, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    Some((id, port, tail))
}

async fn handle(State(st): State<ProxyState>, mut req: Request) -> Response {
    if let Some(token) = &st.token {
        let given = req
            .headers()
            .get(AGENT_TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !token_eq(given, token.as_bytes()) {
            return plain(StatusCode::UNAUTHORIZED, "missing or wrong agent token");
        }
    }
    req.headers_mut().remove(AGENT_TOKEN_HEADER);

    let path = req.uri().path().to_owned();
    let Some((id, port, tail)) = split_path(&path) else {
        return plain(StatusCode::NOT_FOUND, "not a proxy path");
    };
    let id: SandboxId = match id.parse() {
        Ok(id) => id,
        Err(e) => return plain(StatusCode::BAD_REQUEST, error_chain(&e)),
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("invalid port {port:?}: expected 1 to 65535"),
            );
        }
    };
    if port == wrenn_proto::ENVD_PORT {
        return plain(
            StatusCode::FORBIDDEN,
            "the guest agent's port is not proxied",
        );
    }
    let sb = match st.manager.get(id) {
        Ok(sb) => sb,
        Err(_) => return plain(StatusCode::NOT_FOUND, format!("sandbox {id} not found")),
    };
    let Some(host_ip) = sb.running_host_ip() else {
        let status = sb.status();
        return plain(
            StatusCode::CONFLICT,
            format!("sandbox {id} is {status}, not running"),
        );
    };
    let Some(guard) = sb.conns().acquire() else {
        return plain(StatusCode::CONFLICT, format!("sandbox {id} is pausing"));
    };
    // The status may have changed between the check and the acquire (a pause sets the
    // status before draining): re-check under the guard.
    if sb.status() != SandboxStatus::Running {
        return plain(StatusCode::CONFLICT, format!("sandbox {id} is not running"));
    }
    sb.touch();

    let authority = socket_authority(&host_ip, port);
    let tail = if tail.is_empty() { "/" } else { tail };
    let pq = match req.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_owned(),
    };
    let uri = match upstream_uri(id, port, &pq) {
        Ok(u) => u,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("invalid path: {}", error_chain(&e)),
            );
        }
    };

    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, v);
    }
    let upstream_req = http::Request::from_parts(parts, body);

    let mut resp = match st.client.request(upstream_req).await {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, upstream_failure(&e)),
    };
    let prefix = format!("/proxy/{id}/{port}");
    rewrite_location(resp.headers_mut(), &prefix, &authority);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let sb2 = Arc::clone(&sb);
            tokio::spawn(async move {
                let _guard = guard;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((down, up)) => {
                        let mut down = TokioIo::new(down);
                        let mut up = TokioIo::new(up);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                    Err(e) => {
                        tracing::debug!(sandbox_id = %sb2.id(), "proxy upgrade failed: {}", error_chain(&e))
                    }
                }
                sb2.touch();
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, Body::empty());
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(PROXY_ERROR_HEADER);
    Response::from_parts(
        parts,
        Body::new(Guarded {
            inner: body,
            guard: Some(guard),
            sb,
        }),
    )
}

/// The message of a 502: the connector's own error when it failed (it says what was
/// tried), else the client's whole error chain.
fn upstream_failure(err: &hyper_util::client::legacy::Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(upstream) = e.downcast_ref::<UpstreamError>() {
            return format!("proxy error: {}", error_chain(upstream));
        }
        cause = e.source();
    }
    format!("proxy error: {}", error_chain(err))
}

/// A response body that keeps the connection counted (and the sandbox active) until
/// it is finished or dropped.
struct Guarded {
    inner: Incoming,
    guard: Option<ConnGuard>,
    sb: Arc<Sandbox>,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &poll {
            self.guard.take();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.sb.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(split_path("/proxy/cl-x/80"), Some(("cl-x", "80", "")));
        assert_eq!(split_path("/proxy/cl-x/80/"), Some(("cl-x", "80", "/")));
        assert_eq!(
            split_path("/proxy/cl-x/80/a/b"),
            Some(("cl-x", "80", "/a/b"))
        );
        assert_eq!(split_path("/other"), None);
    }

    #[test]
    fn tokens() {
        assert!(token_eq(b"abc", b"abc") && !token_eq(b"abc", b"abd") && !token_eq(b"a", b"ab"));
    }
}
