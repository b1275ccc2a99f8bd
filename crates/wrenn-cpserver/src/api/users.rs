//! `GET /v1/users/search`: find users by email prefix, to add them to a team.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_extension::extract::{Json, Query};
use wrenn_extension::{ApiResult, ServerContext, UserAuth};

use super::tags;
use crate::accounts::search;

/// Search parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// Email prefix: at least 3 characters, including the `@`.
    email: Option<String>,
}

/// A matching user.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct UserMatch {
    /// The user (`usr-…`).
    user_id: String,
    /// Their email.
    email: String,
}

/// Active users whose email starts with the prefix (at most 10, by email). The
/// prefix must include the `@`, so the search cannot be used to list accounts by
/// their first letters.
#[utoipa::path(
    get,
    path = "/v1/users/search",
    tag = tags::USERS,
    params(SearchQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Matches", body = [UserMatch]),
        (status = 400, description = "Missing prefix, shorter than 3 characters or without '@'"),
        (status = 401, description = "Missing or invalid token"),
    )
)]
async fn search_users(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<Vec<UserMatch>>> {
    let users = search::by_email_prefix(&ctx, q.email.as_deref().unwrap_or_default()).await?;
    tracing::debug!(user_id = %auth.user.id, team_id = %auth.team_id, found = users.len(), "user search");
    let matches = users
        .into_iter()
        .map(|u| UserMatch {
            user_id: u.id.to_string(),
            email: u.email,
        })
        .collect();
    Ok(Json(matches))
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(search_users))
}
