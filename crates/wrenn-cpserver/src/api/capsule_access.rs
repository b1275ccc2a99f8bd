//! Public capsule URLs: `POST /v1/capsules/{id}/access-token` gives a capsule an access
//! token (a new one on every call; the previous one stops working), `DELETE` takes it
//! away. Whoever holds the token reaches the capsule's ports through the capsule proxy
//! (`http://{port}-{id}.{domain}/…` with `X-Wrenn-Access-Token: <token>`, or
//! `?wrenn_access_token=<token>` on a link) without a team credential. Only a hash is
//! stored; the token is shown once.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::AuditStatus;
use wrenn_core::auth::OpaqueToken;
use wrenn_core::id::SandboxId;
use wrenn_extension::extract::{Json, Path};
use wrenn_extension::{ApiResult, AuthContext, ServerContext};

use super::capsules::audit;
use super::tags;
use crate::capsule_proxy::{ACCESS_TOKEN_HEADER, ACCESS_TOKEN_PARAM};

/// A capsule's new access token.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessToken {
    /// The token (shown once).
    pub token: String,
    /// The header that carries it on a request to a capsule URL.
    pub header: &'static str,
    /// The query parameter that carries it on a link to a capsule URL.
    pub query_param: &'static str,
}

/// Makes the capsule's URLs public to holders of a new access token (replacing the
/// previous token, if any).
#[utoipa::path(post, path = "/v1/capsules/{id}/access-token", tag = tags::CAPSULES, security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 201, body = AccessToken), (status = 400), (status = 401), (status = 404)))]
async fn issue(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
) -> ApiResult<(StatusCode, Json<AccessToken>)> {
    let token = OpaqueToken::generate();
    ctx.store
        .set_sandbox_access_token(auth.team_id, id, Some(&token.hash()))
        .await?;
    ctx.audit(audit(&auth, id, "access_token_issue").status(AuditStatus::Warning))
        .await;
    Ok((
        StatusCode::CREATED,
        Json(AccessToken {
            token: token.expose_secret().to_owned(),
            header: ACCESS_TOKEN_HEADER,
            query_param: ACCESS_TOKEN_PARAM,
        }),
    ))
}

/// Revokes the capsule's access token: its URLs need a team credential again.
#[utoipa::path(delete, path = "/v1/capsules/{id}/access-token", tag = tags::CAPSULES, security(("api_key" = []), ("bearer" = [])),
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 404)))]
async fn revoke(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
) -> ApiResult<StatusCode> {
    ctx.store
        .set_sandbox_access_token(auth.team_id, id, None)
        .await?;
    ctx.audit(audit(&auth, id, "access_token_revoke")).await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(issue, revoke))
}
