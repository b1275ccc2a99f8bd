//! The capsule proxy: a request whose `Host` is `{port}-{capsule_id}.{domain}` goes to
//! that port inside the capsule, through its host agent's port proxy
//! (`/proxy/{capsule_id}/{port}/…`), streamed both ways; WebSockets and other upgrades
//! pass through. It wraps the whole router: any other `Host` reaches the API.
//!
//! - **Authentication** (unlike the original, which was open to the internet): the
//!   owning team's API key (`X-API-Key`) or a user's JWT (`Authorization: Bearer`), as
//!   on the API, or — for a capsule whose team made it public — the capsule's access
//!   token (`credentials`). The credential is removed before the request is
//!   forwarded — the capsule never sees it. Another team's capsule is unknown (404),
//!   never a leak.
//! - **Answers of its own**, as JSON errors like the API's: 400 malformed port or
//!   capsule id, 401 no or bad credentials, 404 unknown capsule, 409 capsule not running
//!   (or not resumable), 502 nothing listens on the port or the host is unreachable,
//!   503 the capsule's host has no address, 504 the capsule's server did not start
//!   answering within `WRENN_PROXY_UPSTREAM_TIMEOUT_SECS`. Anything else is the
//!   capsule's own answer.
//! - **Paused capsules resume** (`WRENN_PROXY_RESUME_PAUSED`, default on): a request to
//!   a paused or hibernated capsule resumes it and is forwarded once it runs; one to a
//!   capsule still starting, resuming or pausing waits for it (up to [`START_WAIT`]).
//! - **Targets** (host address and status, one query) are cached for 120 s per running
//!   capsule (`targets`), and forgotten as soon as the capsule stops running. A
//!   request without a body that meets a stale target (the agent says the capsule is
//!   not running there) is sent again after a fresh lookup.
//! - `Location` headers lose the agent's `/proxy/{id}/{port}` prefix again, and the
//!   request gains `X-Forwarded-Host`, `X-Forwarded-Proto` and `X-Forwarded-For`.

mod credentials;
mod host_name;
mod targets;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Version};
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use tracing::Instrument;
use wrenn_core::audit::Actor;
use wrenn_core::auth::hash_token;
use wrenn_core::config::ProxyConfig;
use wrenn_core::id::SandboxId;
use wrenn_core::id::TeamId;
use wrenn_core::lifecycle::{Lifecycle, LifecycleError, SandboxStatus};
use wrenn_core::model::ProxyTarget;
use wrenn_core::repo::Store;
use wrenn_core::report::error_chain;
use wrenn_extension::auth::Authenticate;
use wrenn_extension::{ApiError, ServerContext};
use wrenn_proto::http_proxy::{is_upgrade, strip_hop_by_hop};
use wrenn_proto::routing::PROXY_ERROR_HEADER;

use self::credentials::Presented;
use self::host_name::{CapsulePort, Routed};
use self::targets::Targets;
use self::upstream::{SendError, Upstream};
use crate::ca::CertificateAuthority;

pub use self::credentials::{ACCESS_TOKEN_HEADER, ACCESS_TOKEN_PARAM};
pub use self::targets::TARGET_TTL;

/// How long a request waits for a capsule that is starting, resuming or pausing (then
/// resumed) to run.
pub const START_WAIT: Duration = Duration::from_secs(60);

/// The capsule proxy's state.
pub struct CapsuleProxy {
    store: Arc<dyn Store>,
    auth: Arc<dyn Authenticate>,
    lifecycle: Lifecycle,
    config: ProxyConfig,
    targets: Arc<Targets>,
    upstream: Upstream,
}

impl std::fmt::Debug for CapsuleProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapsuleProxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CapsuleProxy {
    /// The proxy of `ctx`'s capsules; agents with certificates are trusted through `ca`.
    pub fn new(ctx: &ServerContext, ca: Arc<CertificateAuthority>) -> Self {
        Self {
            store: Arc::clone(&ctx.store),
            auth: Arc::clone(&ctx.auth),
            lifecycle: ctx.lifecycle.clone(),
            config: ctx.config.proxy.clone(),
            targets: Arc::default(),
            upstream: Upstream::new(ca),
        }
    }

    /// `router` behind the proxy: requests for capsule URLs are proxied, the rest
    /// reach `router`. Starts the task that keeps the target cache in step with the
    /// platform's events (it ends with `ctx.shutdown`).
    pub fn wrap(self: Arc<Self>, ctx: &ServerContext, router: Router) -> Router {
        tokio::spawn(targets::evict_on_events(
            Arc::clone(&self.targets),
            Arc::clone(&ctx.events),
            ctx.shutdown.clone(),
        ));
        Router::new()
            .fallback_service(router)
            .layer(axum::middleware::from_fn_with_state(self, dispatch))
    }

    /// Forwards `req` to `to`.
    async fn forward(&self, to: CapsulePort, mut req: Request) -> Result<Response, ApiError> {
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let original_host = request_host(&req).map(str::to_owned);
        let (mut parts, body) = req.into_parts();

        let (team, actor, token_cookie) = match credentials::presented(&parts) {
            Presented::Team => {
                let caller = self.auth.authenticate(&parts.headers).await?;
                credentials::strip_team_credential(&mut parts.headers);
                (caller.team_id, caller.actor(), None)
            }
            Presented::AccessToken { token, from_query } => {
                let team = self.check_access_token(to.id, &token).await?;
                let cookie = from_query
                    .then(|| credentials::token_cookie(&token))
                    .flatten();
                (team, Actor::system(), cookie)
            }
            Presented::None => {
                return Err(ApiError::unauthorized(
                    "X-API-Key, Authorization: Bearer <token> or the capsule's access token \
                     (X-Wrenn-Access-Token) required",
                ));
            }
        };
        credentials::strip_access_token(&mut parts);
        strip_hop_by_hop(&mut parts.headers, upgrade);
        add_forwarded(&mut parts.headers, original_host.as_deref(), peer);
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_11;
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();

        // A cached target can be stale (the capsule was paused or destroyed since, on
        // this replica or another): the agent then refuses, and a request without a
        // body is sent again on a fresh lookup — which resumes a paused capsule.
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        let mut resp = loop {
            let (target, cached) = self.target(to.id, team, &actor).await?;
            let uri = upstream::agent_uri(&target, to.port, &path_and_query).map_err(|e| {
                tracing::warn!(host_id = %target.host_id, "{}", error_chain(&e));
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "host_unavailable",
                    "the capsule's host has no usable address",
                )
            })?;
            let mut req = http::Request::builder()
                .method(parts.method.clone())
                .uri(uri)
                .version(Version::HTTP_11)
                .body(body.take().unwrap_or_else(Body::empty))
                .map_err(ApiError::internal)?;
            *req.headers_mut() = parts.headers.clone();
            let resp = self.send(to, req).await?;
            if !resp.headers().contains_key(PROXY_ERROR_HEADER) {
                break resp;
            }
            let stale = matches!(resp.status(), StatusCode::NOT_FOUND | StatusCode::CONFLICT);
            if !(stale && cached && replayable) {
                return Err(self.agent_refused(to, resp).await);
            }
            self.targets.evict(to.id);
        };
        strip_location_prefix(resp.headers_mut(), &format!("/proxy/{}/{}", to.id, to.port));
        if let Some(cookie) = token_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let id = to.id;
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((down, up)) => {
                        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                    Err(e) => {
                        tracing::debug!(sandbox_id = %id, "proxied upgrade failed: {}", error_chain(&e));
                    }
                }
            });
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// Sends `req` to the agent, within the upstream timeout (for the answer's head).
    async fn send(
        &self,
        to: CapsulePort,
        req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, ApiError> {
        let sent =
            tokio::time::timeout(self.config.upstream_timeout, self.upstream.send(req)).await;
        match sent {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.targets.evict(to.id);
                tracing::debug!("{}", error_chain(&e));
                Err(match e {
                    SendError::Setup(_) => ApiError::internal(error_chain(&e)),
                    SendError::Request(_) => ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unreachable",
                        "the capsule's host could not be reached",
                    ),
                })
            }
            Err(_) => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "port {} of the capsule did not answer within {}s",
                    to.port,
                    self.config.upstream_timeout.as_secs()
                ),
            )),
        }
    }

    /// The running target of `id` for `team`, and whether it came from the cache: from
    /// the cache, else looked up — resuming a paused capsule and waiting for one in
    /// transit.
    async fn target(
        &self,
        id: SandboxId,
        team: TeamId,
        actor: &Actor,
    ) -> Result<(ProxyTarget, bool), ApiError> {
        if let Some(t) = self.targets.get(id)
            && t.team_id == team
        {
            return Ok((t, true));
        }
        let deadline = Instant::now() + START_WAIT;
        let mut resumed = false;
        loop {
            let target = self
                .store
                .proxy_target(id)
                .await?
                .filter(|t| t.team_id == team)
                .ok_or_else(|| ApiError::not_found("capsule"))?;
            use SandboxStatus::*;
            let status = target.status;
            match status {
                Running if target.host_address.trim().is_empty() => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "host_unavailable",
                        "the capsule's host has no address",
                    ));
                }
                Running => {
                    self.targets.insert(target.clone());
                    return Ok((target, false));
                }
                Paused | Hibernated if self.config.resume_paused => {
                    if resumed {
                        return Err(not_running(id, status, "it could not be resumed"));
                    }
                    resumed = true;
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match self.lifecycle.resume_waiting(team, id, actor, wait).await {
                        // Raced with another resume, pause or destroy: look again.
                        Ok(_) | Err(LifecycleError::InvalidState { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
                Starting | Resuming | Snapshotting => {}
                Pausing if self.config.resume_paused => {}
                _ => return Err(not_running(id, status, "")),
            }
            if Instant::now() >= deadline {
                return Err(not_running(
                    id,
                    status,
                    &format!("still so after {}s", START_WAIT.as_secs()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The team of capsule `id` when `token` is its access token; 401 otherwise
    /// (whether the capsule exists or not). Checked against the store on every
    /// request, so a revoked token stops working at once.
    async fn check_access_token(&self, id: SandboxId, token: &str) -> Result<TeamId, ApiError> {
        let refused = || ApiError::unauthorized("invalid access token for this capsule");
        let target = self.store.proxy_target(id).await?.ok_or_else(refused)?;
        let stored = target.access_token_hash.as_deref().ok_or_else(refused)?;
        let presented = hash_token(token);
        if !constant_time_eq(presented.as_bytes(), stored.as_bytes()) {
            return Err(refused());
        }
        Ok(target.team_id)
    }

    /// The answer to an agent's refusal (its own error, not the capsule's): the
    /// cached target goes, and the caller learns why in the API's terms.
    async fn agent_refused(
        &self,
        to: CapsulePort,
        resp: http::Response<hyper::body::Incoming>,
    ) -> ApiError {
        self.targets.evict(to.id);
        let status = resp.status();
        let body =
            http_body_util::BodyExt::collect(http_body_util::Limited::new(resp.into_body(), 4096))
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
        tracing::debug!(%status, body, "the host agent refused the proxied request");
        match status {
            StatusCode::BAD_GATEWAY => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_refused",
                format!("nothing answers on port {} of the capsule", to.port),
            ),
            StatusCode::FORBIDDEN => ApiError::forbidden(body),
            StatusCode::NOT_FOUND | StatusCode::CONFLICT => ApiError::conflict(
                "capsule_not_running",
                format!("capsule {} is not running on its host", to.id),
            ),
            _ => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the capsule's host refused the request",
            ),
        }
    }
}

fn not_running(id: SandboxId, status: SandboxStatus, why: &str) -> ApiError {
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(": {why}")
    };
    ApiError::conflict(
        "capsule_not_running",
        format!("capsule {id} is {status}, not running{why}"),
    )
}

/// The middleware: capsule URLs go to the proxy, the rest to the API.
async fn dispatch(State(proxy): State<Arc<CapsuleProxy>>, req: Request, next: Next) -> Response {
    let routed = request_host(&req).map(|h| host_name::route(h, proxy.config.domain.as_deref()));
    match routed {
        Some(Routed::Capsule(to)) => match proxy
            .forward(to, req)
            .instrument(tracing::info_span!("capsule_proxy", sandbox_id = %to.id, port = to.port))
            .await
        {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        },
        Some(Routed::Malformed(why)) => ApiError::bad_request(why).into_response(),
        Some(Routed::Api) | None => next.run(req).await,
    }
}

/// The request's host: its `Host` header, else its URI's authority (HTTP/2).
fn request_host(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Adds `X-Forwarded-Host`, `X-Forwarded-Proto` (kept if a front proxy set it) and
/// `X-Forwarded-For` (appended to).
fn add_forwarded(headers: &mut HeaderMap, host: Option<&str>, peer: Option<std::net::IpAddr>) {
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert("x-forwarded-host", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Some(peer) = peer {
        let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {peer}"),
            None => peer.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert("x-forwarded-for", v);
        }
    }
}

/// Whether two byte strings are equal, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Strips the agent's `/proxy/{id}/{port}` prefix from a `Location`.
fn strip_location_prefix(headers: &mut HeaderMap, prefix: &str) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Some(rest) = loc.strip_prefix(prefix) else {
        return;
    };
    let new = if rest.is_empty() { "/" } else { rest };
    if (new.starts_with('/') || new.starts_with('?'))
        && let Ok(v) = HeaderValue::from_str(new)
    {
        headers.insert(header::LOCATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_lose_the_agent_prefix() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("/proxy/cl-a/80/login?x=1"),
        );
        strip_location_prefix(&mut h, "/proxy/cl-a/80");
        assert_eq!(h[header::LOCATION], "/login?x=1");
        h.insert(header::LOCATION, HeaderValue::from_static("/proxy/cl-a/80"));
        strip_location_prefix(&mut h, "/proxy/cl-a/80");
        assert_eq!(h[header::LOCATION], "/");
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("https://example.com/"),
        );
        strip_location_prefix(&mut h, "/proxy/cl-a/80");
        assert_eq!(h[header::LOCATION], "https://example.com/");
    }

    #[test]
    fn forwarded_headers_name_the_original_host_and_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        add_forwarded(
            &mut h,
            Some("8000-cl-x.localhost:9000"),
            Some([127, 0, 0, 1].into()),
        );
        assert_eq!(h["x-forwarded-host"], "8000-cl-x.localhost:9000");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    }
}
