//! Admin capsules: `/v1/admin/capsules[/…]` — the platform team's capsules, driven by
//! platform admins (user JWT with `is_admin`). Every route is the team capsule route of
//! the same name acting for the platform team: `POST /v1/admin/capsules` is
//! `POST /v1/capsules`, `/v1/admin/capsules/{id}/exec` is `/v1/capsules/{id}/exec`,
//! and so on for get, list, delete, pause, resume, files, processes, metrics, exec and
//! PTY streams. `POST /v1/admin/capsules/{id}/snapshot` `{name?}` is
//! `POST /v1/snapshots?overwrite=true` for that capsule: it replaces a platform template
//! of that name. One handler per action, two front ends.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tower::ServiceExt;
use wrenn_core::id::PLATFORM_TEAM_ID;
use wrenn_extension::auth::{AuthContext, Principal, bearer};
use wrenn_extension::{ApiError, ServerContext};

/// Largest body of an admin snapshot request.
const SNAPSHOT_BODY_LIMIT: usize = 64 * 1024;

/// The admin capsule routes, answered by `api` (the API router) on the platform
/// team's behalf.
pub(crate) fn routes(ctx: ServerContext, api: Router) -> Router {
    let (c1, a1) = (ctx.clone(), api.clone());
    Router::new()
        .route(
            "/v1/admin/capsules",
            any(move |req: Request| act_for_platform(c1.clone(), a1.clone(), req)),
        )
        .route(
            "/v1/admin/capsules/{*rest}",
            any(move |req: Request| act_for_platform(ctx.clone(), api.clone(), req)),
        )
}

async fn act_for_platform(ctx: ServerContext, api: Router, req: Request) -> Response {
    match rewrite(&ctx, req).await {
        Ok(req) => match api.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        Err(e) => e.into_response(),
    }
}

/// The team route `req` stands for, authenticated as a platform admin acting for the
/// platform team.
async fn rewrite(ctx: &ServerContext, req: Request) -> Result<Request, ApiError> {
    let token = bearer(req.headers())?
        .ok_or_else(|| ApiError::unauthorized("Authorization: Bearer <token> required"))?;
    let user = ctx.auth.user_token(token).await?;
    if !user.user.is_admin {
        return Err(ApiError::forbidden("admin access required"));
    }
    let acting = AuthContext {
        team_id: PLATFORM_TEAM_ID,
        principal: Principal::User(user.user),
    };
    let (mut parts, body) = req.into_parts();
    let rest = parts
        .uri
        .path()
        .strip_prefix("/v1/admin/capsules")
        .unwrap_or_default()
        .to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let snapshot = rest
        .strip_suffix("/snapshot")
        .filter(|id| parts.method == Method::POST && !id.is_empty() && !id[1..].contains('/'));
    let (path, body) = match snapshot {
        Some(id) => {
            let bytes = axum::body::to_bytes(body, SNAPSHOT_BODY_LIMIT)
                .await
                .map_err(|_| ApiError::too_large("snapshot request body too large"))?;
            let name = if bytes.is_empty() {
                None
            } else {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
                v.get("name").cloned()
            };
            let body = serde_json::json!({ "sandbox_id": &id[1..], "name": name });
            parts.headers.insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("static"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            (
                "/v1/snapshots?overwrite=true".to_owned(),
                Body::from(body.to_string()),
            )
        }
        None => {
            let path = format!("/v1/capsules{rest}");
            (
                match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                },
                body,
            )
        }
    };
    parts.uri = path
        .parse::<Uri>()
        .map_err(|_| ApiError::bad_request("invalid path"))?;
    // A fresh set of extensions: the outer route's path parameters must not reach the
    // inner route's. What the inner routes need comes along: the connection's upgrade
    // (WebSockets) and peer address, and who acts.
    let mut extensions = axum::http::Extensions::new();
    if let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        extensions.insert(upgrade);
    }
    if let Some(peer) = parts
        .extensions
        .remove::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        extensions.insert(peer);
    }
    extensions.insert(acting);
    parts.extensions = extensions;
    Ok(Request::from_parts(parts, body))
}
