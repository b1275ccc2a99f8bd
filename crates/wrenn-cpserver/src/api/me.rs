//! `/v1/me`: the logged-in user's profile and password, and the password-reset flow.
//!
//! `DELETE /v1/me` (account deletion) lives in its own module; the rules are
//! [`crate::accounts`]'s.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::validate;
use wrenn_extension::extract::Json;
use wrenn_extension::{ApiResult, ServerContext, UserAuth};

use super::auth::AuthResponse;
use super::tags;
use crate::accounts::{self, PasswordChange};

/// The logged-in user's profile.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MeResponse {
    /// Display name.
    name: String,
    /// Email.
    email: String,
    /// Whether the account has a password (OAuth-only accounts do not).
    has_password: bool,
    /// Linked OAuth providers (e.g. `github`).
    providers: Vec<String>,
}

/// Profile changes.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct UpdateMeRequest {
    /// New display name (1–100 characters).
    name: String,
}

/// A password change.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ChangePasswordRequest {
    /// The current password; required when the account has one.
    #[serde(default)]
    current_password: Option<String>,
    /// The new password (8–128 characters).
    new_password: String,
    /// Must equal `new_password` when given.
    #[serde(default)]
    confirm_password: Option<String>,
}

/// Asks for a password-reset email.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ResetRequest {
    /// The account's email.
    email: String,
}

/// Sets a new password with a reset token.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ResetConfirmRequest {
    /// The token from the reset email.
    token: String,
    /// The new password (8–128 characters).
    new_password: String,
}

/// The caller's profile.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = tags::ME,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Profile", body = MeResponse),
        (status = 401, description = "Missing or invalid token"),
    )
)]
async fn get_me(State(ctx): State<ServerContext>, auth: UserAuth) -> ApiResult<Json<MeResponse>> {
    let user = ctx.store.get_user(auth.user.id).await?;
    Ok(Json(MeResponse {
        name: user.name,
        email: user.email,
        has_password: user.password_hash.is_some(),
        // The user repository can look identities up by provider id only, not list a
        // user's links; providers stay empty until it can.
        providers: Vec::new(),
    }))
}

/// Changes the caller's display name; returns a new token carrying it.
#[utoipa::path(
    patch,
    path = "/v1/me",
    tag = tags::ME,
    request_body = UpdateMeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Updated; new token", body = AuthResponse),
        (status = 400, description = "Missing or invalid name"),
        (status = 401, description = "Missing or invalid token"),
    )
)]
async fn update_me(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(req): Json<UpdateMeRequest>,
) -> ApiResult<Json<AuthResponse>> {
    Ok(Json(accounts::rename(&ctx, &auth, &req.name).await?.into()))
}

/// Changes the caller's password. An account without a password (OAuth only) may
/// set one without `current_password`.
#[utoipa::path(
    post,
    path = "/v1/me/password",
    tag = tags::ME,
    request_body = ChangePasswordRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Password changed"),
        (status = 400, description = "Policy violation, mismatch or missing field"),
        (status = 401, description = "`wrong_password`, or missing or invalid token"),
    )
)]
async fn change_password(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(req): Json<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    let change = PasswordChange {
        current: req.current_password,
        new: req.new_password,
        confirm: req.confirm_password,
    };
    accounts::change_password(&ctx, &auth, change).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Emails a password-reset token to the account, if it exists, is active and a
/// mailer is configured. Always answers 204, and does the work in the background so
/// the response time does not reveal whether the account exists.
#[utoipa::path(
    post,
    path = "/v1/me/password/reset",
    tag = tags::ME,
    request_body = ResetRequest,
    responses(
        (status = 204, description = "Accepted (whether or not the account exists)"),
        (status = 400, description = "Missing or malformed email"),
    )
)]
async fn request_reset(
    State(ctx): State<ServerContext>,
    Json(req): Json<ResetRequest>,
) -> ApiResult<StatusCode> {
    let email = validate::email(&req.email)?;
    if ctx.mailer.is_some() {
        tokio::spawn(accounts::send_reset(ctx, email));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Sets a new password with a reset token. The token works once: it is bound to the
/// password it replaces.
#[utoipa::path(
    post,
    path = "/v1/me/password/reset/confirm",
    tag = tags::ME,
    request_body = ResetConfirmRequest,
    responses(
        (status = 204, description = "Password changed"),
        (status = 400, description = "`invalid_token` (bad, expired or used), policy violation or missing field"),
    )
)]
async fn confirm_reset(
    State(ctx): State<ServerContext>,
    Json(req): Json<ResetConfirmRequest>,
) -> ApiResult<StatusCode> {
    accounts::confirm_reset(&ctx, &req.token, req.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(get_me, update_me))
        .routes(routes!(change_password))
        .routes(routes!(request_reset))
        .routes(routes!(confirm_reset))
}
