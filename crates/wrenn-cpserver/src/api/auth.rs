//! `/v1/auth/*`: sign-up, activation, login and team switching. The accounts are
//! [`crate::accounts`]'s (purpose tokens, conditional identity writes); team
//! switching is [`crate::teams::switch`].

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::auth::TokenPurpose;
use wrenn_core::id::TeamId;
use wrenn_extension::extract::Json;
use wrenn_extension::{ApiResult, ServerContext, UserAuth};

use super::tags;
use crate::accounts::{self, Session, Signup};
use crate::teams;

// ---------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------

/// A JWT and who it is for; returned by activation, login, team switching and
/// profile updates.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuthResponse {
    /// User JWT (HS256, 6 h) for `Authorization: Bearer`.
    token: String,
    /// The user (`usr-…`).
    user_id: String,
    /// The team the token acts in (`team-…`).
    team_id: String,
    /// The user's email.
    email: String,
    /// The user's display name.
    name: String,
}

/// A human-readable outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MessageResponse {
    /// What happened and what to do next.
    message: String,
}

/// Sign-up form.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct SignupRequest {
    /// Email address (normalised to lowercase).
    email: String,
    /// Password (8–128 characters).
    password: String,
    /// Display name (1–100 characters).
    name: String,
}

/// An activation token from the sign-up email.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct ActivateRequest {
    /// The token.
    token: String,
}

/// Login form.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct LoginRequest {
    /// Email address.
    email: String,
    /// Password.
    password: String,
}

/// The team to act in.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct SwitchTeamRequest {
    /// Team id (`team-…`).
    team_id: String,
}

impl From<Session> for AuthResponse {
    fn from(s: Session) -> Self {
        Self {
            token: s.token,
            user_id: s.user_id.to_string(),
            team_id: s.team_id.to_string(),
            email: s.email,
            name: s.name,
        }
    }
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// Creates an account.
///
/// With a mailer configured the account starts `inactive` and an activation token is
/// emailed (signing up again before activating replaces the password and sends a
/// fresh token). Without one the account is active at once and the message says so.
#[utoipa::path(
    post,
    path = "/v1/auth/signup",
    tag = tags::AUTH,
    request_body = SignupRequest,
    responses(
        (status = 201, description = "Account created", body = MessageResponse),
        (status = 400, description = "Missing or invalid field"),
        (status = 409, description = "`email_taken`"),
        (status = 503, description = "`email_unavailable`: the activation email could not be sent"),
    )
)]
async fn signup(
    State(ctx): State<ServerContext>,
    Json(req): Json<SignupRequest>,
) -> ApiResult<(StatusCode, Json<MessageResponse>)> {
    let message = match accounts::signup(&ctx, &req.email, req.password, &req.name).await? {
        Signup::ActivationSent => format!(
            "account created: check your email for an activation token (valid for {} minutes)",
            TokenPurpose::Activation.lifetime().as_secs() / 60
        ),
        Signup::Active => "account created and active: this server sends no email, so no \
             activation is needed; log in with your email and password"
            .to_owned(),
    };
    Ok((StatusCode::CREATED, Json(MessageResponse { message })))
}

/// Activates an account with the token from the sign-up email and logs in.
///
/// Creates the default team "<name>'s Team" if the user has none; the first account
/// to become active on the platform is made a platform admin.
#[utoipa::path(
    post,
    path = "/v1/auth/activate",
    tag = tags::AUTH,
    request_body = ActivateRequest,
    responses(
        (status = 200, description = "Activated and logged in", body = AuthResponse),
        (status = 400, description = "`invalid_token` (bad, expired or used) or missing field"),
        (status = 409, description = "`already_activated`"),
    )
)]
async fn activate(
    State(ctx): State<ServerContext>,
    Json(req): Json<ActivateRequest>,
) -> ApiResult<Json<AuthResponse>> {
    Ok(Json(accounts::activate(&ctx, &req.token).await?.into()))
}

/// Logs in with email and password; the token acts in the user's default team.
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = tags::AUTH,
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = AuthResponse),
        (status = 400, description = "Missing or malformed field"),
        (status = 401, description = "`unauthorized`: unknown email or wrong password"),
        (status = 403, description = "`account_not_activated` or `account_disabled`"),
    )
)]
async fn login(
    State(ctx): State<ServerContext>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<AuthResponse>> {
    Ok(Json(
        accounts::login(&ctx, &req.email, req.password)
            .await?
            .into(),
    ))
}

/// Re-issues the caller's JWT for another team they belong to (membership and role
/// read from the database).
#[utoipa::path(
    post,
    path = "/v1/auth/switch-team",
    tag = tags::AUTH,
    request_body = SwitchTeamRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Token for the team", body = AuthResponse),
        (status = 400, description = "Malformed team id"),
        (status = 401, description = "Missing or invalid token"),
        (status = 403, description = "Not a member of the team"),
        (status = 404, description = "No such team (or deleted)"),
    )
)]
async fn switch_team(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(req): Json<SwitchTeamRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let team: TeamId = req.team_id.trim().parse()?;
    Ok(Json(teams::switch(&ctx, &auth, team).await?.into()))
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(activate))
        .routes(routes!(login))
        .routes(routes!(switch_team))
}
