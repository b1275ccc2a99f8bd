//! Account deletion: `DELETE /v1/me`, through [`crate::accounts::delete_account`].
//!
//! Refused while the user owns a team that has other members (they must remove
//! them or delete the team first). Otherwise every team the user owns alone is
//! deleted, then the account is soft-deleted (its API keys go with it). The
//! `account-cleanup` worker removes the account for good after
//! [`crate::workers::account_cleanup::RETENTION_DAYS`] days.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_extension::extract::Json;
use wrenn_extension::{ApiResult, ServerContext, UserAuth};

use super::tags;
use crate::accounts;

/// `DELETE /v1/me` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteAccount {
    /// The account's email, typed again.
    pub confirmation: String,
}

/// Deletes the caller's account and every team they own alone.
#[utoipa::path(delete, path = "/v1/me", tag = tags::ME, security(("bearer" = [])), request_body = DeleteAccount,
    responses((status = 204), (status = 400, description = "The confirmation is not the account's email"), (status = 401),
        (status = 409, description = "`owns_team_with_members`: the user owns a team with other members")))]
async fn delete_me(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(body): Json<DeleteAccount>,
) -> ApiResult<StatusCode> {
    accounts::delete_account(&ctx, &auth, &body.confirmation).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(delete_me))
}
