//! `GET /v1/users/search`: find users by email prefix, to add them to a team.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::model::UserStatus;
use wrenn_extension::extract::{Json, Query};
use wrenn_extension::{ApiError, ApiResult, ServerContext, UserAuth};

use super::tags;

/// Shortest prefix accepted, in characters.
const MIN_PREFIX_LEN: usize = 3;
/// Most matches returned.
const MAX_RESULTS: usize = 10;
/// Rows read from the store before inactive accounts are filtered out.
const FETCH_LIMIT: u32 = 50;

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
    let prefix = q.email.unwrap_or_default().trim().to_lowercase();
    if prefix.chars().count() < MIN_PREFIX_LEN {
        return Err(ApiError::bad_request(format!(
            "email must be a prefix of at least {MIN_PREFIX_LEN} characters"
        )));
    }
    if !prefix.contains('@') {
        return Err(ApiError::bad_request(
            "email must be a prefix that includes the '@'",
        ));
    }
    if prefix.chars().count() > wrenn_core::validate::MAX_EMAIL_LEN {
        return Err(ApiError::bad_request("email prefix is too long"));
    }
    let users = ctx
        .store
        .search_users_by_email_prefix(&prefix, FETCH_LIMIT)
        .await?;
    let matches: Vec<UserMatch> = users
        .into_iter()
        .filter(|u| u.status == UserStatus::Active)
        .take(MAX_RESULTS)
        .map(|u| UserMatch {
            user_id: u.id.to_string(),
            email: u.email,
        })
        .collect();
    tracing::debug!(user_id = %auth.user.id, team_id = %auth.team_id, found = matches.len(), "user search");
    Ok(Json(matches))
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(search_users))
}
