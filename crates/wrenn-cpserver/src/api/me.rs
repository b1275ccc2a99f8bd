//! `/v1/me`: the logged-in user's profile and password, and the password-reset flow.
//!
//! `DELETE /v1/me` (account deletion) lives in its own module.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{Actor, AuditEntry, AuditStatus};
use wrenn_core::auth::{TokenPurpose, check_password_policy, constant_time_eq};
use wrenn_core::model::{User, UserStatus};
use wrenn_core::repo::RepoError;
use wrenn_core::validate;
use wrenn_extension::extract::Json;
use wrenn_extension::{ApiError, ApiResult, Email, ServerContext, UserAuth};

use super::auth::{
    AuthResponse, check_name, hash_password_blocking, invalid_token, issue_token, password_error,
    reset_binding, verify_password_blocking,
};
use super::tags;

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

fn password_change_entry(team: wrenn_core::id::TeamId, user: &User, method: &str) -> AuditEntry {
    AuditEntry::new(
        team,
        Actor::user(user.id, user.email.clone()),
        "user",
        Some(user.id.to_string()),
        "password_change",
    )
    .status(AuditStatus::Info)
    .metadata(serde_json::json!({ "method": method }))
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
    let name = check_name(&req.name)?;
    let user = ctx.store.update_user_name(auth.user.id, &name).await?;
    ctx.audit(
        AuditEntry::new(
            auth.team_id,
            auth.actor(),
            "user",
            Some(user.id.to_string()),
            "update",
        )
        .status(AuditStatus::Info)
        .metadata(serde_json::json!({ "fields": ["name"] })),
    )
    .await;
    tracing::info!(user_id = %user.id, team_id = %auth.team_id, "user renamed");
    issue_token(
        &ctx,
        user.id,
        &user.email,
        &user.name,
        user.is_admin,
        auth.team_id,
        auth.user.role,
    )
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
    if req
        .confirm_password
        .as_ref()
        .is_some_and(|c| *c != req.new_password)
    {
        return Err(ApiError::bad_request(
            "confirm_password does not match new_password",
        ));
    }
    check_password_policy(&req.new_password).map_err(|e| password_error("new_password", e))?;
    let user = ctx.store.get_user(auth.user.id).await?;
    if let Some(phc) = user.password_hash.clone() {
        let current = req
            .current_password
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ApiError::bad_request("current_password is required"))?;
        if !verify_password_blocking(current, Some(phc)).await? {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "wrong_password",
                "the current password is incorrect",
            ));
        }
    }
    let hash = hash_password_blocking("new_password", req.new_password).await?;
    ctx.store.update_password(user.id, &hash).await?;
    ctx.audit(password_change_entry(auth.team_id, &user, "change"))
        .await;
    tracing::info!(user_id = %user.id, team_id = %auth.team_id, "password changed");
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
        tokio::spawn(send_reset(ctx, email));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn send_reset(ctx: ServerContext, email: String) {
    let Some(mailer) = ctx.mailer.clone() else {
        return;
    };
    let user = match ctx.store.get_user_by_email(&email).await {
        Ok(u) if u.status == UserStatus::Active => u,
        Ok(_) | Err(RepoError::NotFound { .. }) => return,
        Err(e) => {
            tracing::warn!(error = %e, "password reset: could not look the user up");
            return;
        }
    };
    let purpose = TokenPurpose::PasswordReset;
    let token = match ctx.auth.jwt().sign_purpose(
        purpose,
        user.id,
        &reset_binding(&user),
        purpose.lifetime(),
    ) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(user_id = %user.id, error = %e, "password reset: could not sign");
            return;
        }
    };
    let body = format!(
        "Hello {name},\n\n\
         Someone asked to reset the password of your Wrenn account. Use this token \
         (valid for {minutes} minutes, once):\n\n\
         Token: {token}\n\n\
         Send it with your new password as {{\"token\": \"…\", \"new_password\": \"…\"}} to \
         POST {base}/v1/me/password/reset/confirm, or paste it into the dashboard.\n\n\
         If you did not ask for this, ignore this email: your password is unchanged.\n",
        name = user.name,
        minutes = purpose.lifetime().as_secs() / 60,
        base = ctx.config.public_url.as_deref().unwrap_or(""),
    );
    let sent = mailer
        .send(Email {
            to: user.email.clone(),
            subject: "Reset your Wrenn password".to_owned(),
            body,
        })
        .await;
    match sent {
        Ok(()) => tracing::info!(user_id = %user.id, "password reset email sent"),
        Err(e) => tracing::warn!(user_id = %user.id, error = %e, "could not send reset email"),
    }
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
    check_password_policy(&req.new_password).map_err(|e| password_error("new_password", e))?;
    let (user_id, binding) = ctx
        .auth
        .jwt()
        .verify_purpose(req.token.trim(), TokenPurpose::PasswordReset)
        .map_err(|_| invalid_token("reset"))?;
    let hash = hash_password_blocking("new_password", req.new_password).await?;
    let user = match ctx.store.get_user(user_id).await {
        Ok(u) if u.status == UserStatus::Active => u,
        Ok(_) | Err(RepoError::NotFound { .. }) => return Err(invalid_token("reset")),
        Err(e) => return Err(e.into()),
    };
    if !constant_time_eq(binding.as_bytes(), reset_binding(&user).as_bytes()) {
        return Err(invalid_token("reset"));
    }
    // The token is bound to the password it was issued for: it is spent by the one
    // request (on any replica) that replaces that password.
    let expected = user.password_hash.as_deref().unwrap_or_default();
    if !ctx
        .store
        .update_password_if(user.id, expected, &hash)
        .await?
    {
        return Err(invalid_token("reset"));
    }
    match ctx.store.default_team_for_user(user.id).await {
        Ok(Some(team)) => {
            ctx.audit(password_change_entry(team.team.id, &user, "reset"))
                .await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(user_id = %user.id, error = %e, "password reset: no audit team"),
    }
    tracing::info!(user_id = %user.id, "password reset");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(get_me, update_me))
        .routes(routes!(change_password))
        .routes(routes!(request_reset))
        .routes(routes!(confirm_reset))
}
