//! `/v1/auth/*`: sign-up, activation, login and team switching.
//!
//! Activation (and password reset, in [`super::me`]) use stateless purpose tokens
//! ([`TokenPurpose`]): short-lived JWTs that carry a `binding` — a fingerprint of the
//! account state they act on. Acting changes that state, so a token works once.
//!
//! Everything that decides a role re-reads the database: the role and admin flag in
//! an issued JWT are copies for the UI, never trusted on the way back in.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::auth::{
    PasswordError, Role, TokenPurpose, UserClaims, binding_digest, check_password_policy,
    constant_time_eq, hash_password, verify_password, verify_password_dummy,
};
use wrenn_core::id::{TeamId, UserId, new_team_slug};
use wrenn_core::model::{User, UserStatus};
use wrenn_core::repo::{NewTeam, NewUser, RepoError};
use wrenn_core::validate;
use wrenn_extension::extract::Json;
use wrenn_extension::{ApiError, ApiResult, Email, ServerContext, UserAuth};

use super::tags;

/// Maximum length of a user's display name on the API, in characters.
pub(super) const MAX_NAME_LEN: usize = 100;

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

// ---------------------------------------------------------------------------
// Helpers shared with `me`
// ---------------------------------------------------------------------------

/// 400 `invalid_token`.
pub(super) fn invalid_token(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_token",
        format!("{what} token is invalid, expired or already used"),
    )
}

/// A password policy violation as a 400.
pub(super) fn password_error(field: &str, e: PasswordError) -> ApiError {
    match e {
        PasswordError::TooShort { .. } | PasswordError::TooLong { .. } => {
            ApiError::bad_request(format!("{field}: {e}"))
        }
        other => ApiError::internal(other),
    }
}

/// Checks a display name: trimmed, 1–100 characters, no control characters.
pub(super) fn check_name(name: &str) -> ApiResult<String> {
    let name = validate::user_name(name)?;
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "name must be at most {MAX_NAME_LEN} characters long"
        )));
    }
    Ok(name)
}

/// Hashes a password on the blocking pool (argon2id is deliberately slow).
pub(super) async fn hash_password_blocking(field: &str, password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| password_error(field, e))
}

/// Verifies a password on the blocking pool. With no stored hash it spends the same
/// time on a dummy hash and answers `false`, so timing does not reveal accounts.
pub(super) async fn verify_password_blocking(
    password: String,
    phc: Option<String>,
) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || match phc {
        Some(phc) => verify_password(&password, &phc),
        None => Ok(verify_password_dummy(&password)),
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

/// Signs a user JWT from database facts and wraps it in an [`AuthResponse`].
pub(super) fn issue_token(
    ctx: &ServerContext,
    user: UserId,
    email: &str,
    name: &str,
    is_admin: bool,
    team: TeamId,
    role: Role,
) -> ApiResult<Json<AuthResponse>> {
    let claims = UserClaims::new(user, team, role, email, name, is_admin);
    let token = ctx
        .auth
        .jwt()
        .sign_user(&claims)
        .map_err(ApiError::internal)?;
    Ok(Json(AuthResponse {
        token,
        user_id: user.to_string(),
        team_id: team.to_string(),
        email: email.to_owned(),
        name: name.to_owned(),
    }))
}

/// The binding of an activation token: the account must still be `inactive` with the
/// password chosen at (the latest) sign-up.
fn activation_binding(user: &User) -> String {
    format!(
        "{}:{}",
        user.status.as_str(),
        binding_digest(user.password_hash.as_deref().unwrap_or_default())
    )
}

/// The binding of a password-reset token: the password hash at issue time.
pub(super) fn reset_binding(user: &User) -> String {
    binding_digest(user.password_hash.as_deref().unwrap_or_default())
}

/// `"<name>'s Team"`, limited to the characters and length a team name allows.
fn default_team_name(user_name: &str) -> String {
    let cleaned: String = user_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '@' | '\''))
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() {
        return "My Team".to_owned();
    }
    let head: String = cleaned
        .chars()
        .take(validate::MAX_TEAM_NAME_LEN - "'s Team".len())
        .collect();
    format!("{}'s Team", head.trim_end())
}

/// The user's login team (default, else earliest joined, live teams only); creates
/// a default team `"<name>'s Team"` owned by the user when they have none.
pub(super) async fn ensure_default_team(
    ctx: &ServerContext,
    user: &User,
) -> ApiResult<(TeamId, Role)> {
    if let Some(t) = ctx.store.default_team_for_user(user.id).await? {
        return Ok((t.team.id, t.role));
    }
    let name = default_team_name(&user.name);
    let mut attempt = 0;
    loop {
        let team = NewTeam {
            id: TeamId::new(),
            name: name.clone(),
            slug: new_team_slug(),
            is_byoc: false,
        };
        match ctx.store.create_team(team, user.id, true).await {
            Ok(team) => {
                tracing::info!(user_id = %user.id, team_id = %team.id, "created default team");
                return Ok((team.id, Role::Owner));
            }
            // A slug collision (48 random bits): try another slug.
            Err(RepoError::Conflict(_)) if attempt < 3 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Activates `user` (`inactive → active`, and platform admin if they are the first
/// account to become active: one serialised write, see
/// [`UserRepo::activate_user`](wrenn_core::repo::UserRepo::activate_user)) and gives
/// them a default team. `None` when the account is no longer inactive with the
/// password `user` has (activated or signed up again meanwhile, by another request
/// or replica).
async fn activate_account(
    ctx: &ServerContext,
    user: &User,
) -> ApiResult<Option<(User, TeamId, Role)>> {
    let Some(user) = ctx
        .store
        .activate_user(user.id, user.password_hash.as_deref())
        .await?
    else {
        return Ok(None);
    };
    if user.is_admin {
        tracing::info!(user_id = %user.id, "first active user made platform admin");
    }
    let (team, role) = ensure_default_team(ctx, &user).await?;
    Ok(Some((user, team, role)))
}

/// Emails an activation token to an inactive user.
async fn send_activation(ctx: &ServerContext, user: &User) -> ApiResult<()> {
    let Some(mailer) = ctx.mailer.clone() else {
        return Ok(());
    };
    let token = ctx
        .auth
        .jwt()
        .sign_purpose(
            TokenPurpose::Activation,
            user.id,
            &activation_binding(user),
            TokenPurpose::Activation.lifetime(),
        )
        .map_err(ApiError::internal)?;
    let minutes = TokenPurpose::Activation.lifetime().as_secs() / 60;
    let body = format!(
        "Hello {name},\n\n\
         Welcome to Wrenn. Activate your account with this token (valid for {minutes} minutes):\n\n\
         Token: {token}\n\n\
         Send it as {{\"token\": \"…\"}} to POST {base}/v1/auth/activate, or paste it into the \
         dashboard's activation page.\n\n\
         If you did not sign up, ignore this email.\n",
        name = user.name,
        base = ctx.config.public_url.as_deref().unwrap_or(""),
    );
    mailer
        .send(Email {
            to: user.email.clone(),
            subject: "Activate your Wrenn account".to_owned(),
            body,
        })
        .await
        .map_err(|e| {
            tracing::warn!(user_id = %user.id, error = %e, "could not send activation email");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "email_unavailable",
                "could not send the activation email; sign up again later to retry",
            )
        })?;
    tracing::info!(user_id = %user.id, "activation email sent");
    Ok(())
}

fn email_taken() -> ApiError {
    ApiError::conflict("email_taken", "an account with this email already exists")
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
    let email = validate::email(&req.email)?;
    let name = check_name(&req.name)?;
    check_password_policy(&req.password).map_err(|e| password_error("password", e))?;
    let has_mailer = ctx.mailer.is_some();

    let existing = match ctx.store.get_user_by_email(&email).await {
        Ok(u) => Some(u),
        Err(RepoError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if existing
        .as_ref()
        .is_some_and(|u| u.status != UserStatus::Inactive)
    {
        return Err(email_taken());
    }
    let password_hash = hash_password_blocking("password", req.password).await?;

    let user = match existing {
        // Never activated: whoever proves the mailbox (by activating) gets the account
        // with the password of the latest sign-up; older tokens stop matching. The
        // password is replaced only if no other sign-up or activation changed the
        // account meanwhile (on this or another replica).
        Some(old) => {
            let replaced = match &old.password_hash {
                Some(expected) => {
                    ctx.store
                        .update_password_if(old.id, expected, &password_hash)
                        .await?
                }
                None => {
                    ctx.store.update_password(old.id, &password_hash).await?;
                    true
                }
            };
            if !replaced {
                return Err(email_taken());
            }
            ctx.store.update_user_name(old.id, &name).await?;
            tracing::info!(user_id = %old.id, "inactive user signed up again");
            ctx.store.get_user(old.id).await?
        }
        None => {
            // Inactive until activated: by its token, or below when no email is sent.
            let new = NewUser {
                id: UserId::new(),
                email: email.clone(),
                password_hash: Some(password_hash),
                name,
                status: UserStatus::Inactive,
                is_admin: false,
            };
            match ctx.store.create_user(new).await {
                Ok(u) => {
                    tracing::info!(user_id = %u.id, "user signed up");
                    u
                }
                Err(RepoError::Conflict(_)) => return Err(email_taken()),
                Err(e) => return Err(e.into()),
            }
        }
    };

    let message = if has_mailer {
        send_activation(&ctx, &user).await?;
        format!(
            "account created: check your email for an activation token (valid for {} minutes)",
            TokenPurpose::Activation.lifetime().as_secs() / 60
        )
    } else {
        // `None`: a concurrent sign-up of the same address activated it already.
        activate_account(&ctx, &user).await?;
        "account created and active: this server sends no email, so no activation is needed; \
         log in with your email and password"
            .to_owned()
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
    let (user_id, binding) = ctx
        .auth
        .jwt()
        .verify_purpose(req.token.trim(), TokenPurpose::Activation)
        .map_err(|_| invalid_token("activation"))?;
    let user = match ctx.store.get_user(user_id).await {
        Ok(u) => u,
        Err(RepoError::NotFound { .. }) => return Err(invalid_token("activation")),
        Err(e) => return Err(e.into()),
    };
    match user.status {
        UserStatus::Inactive => {}
        UserStatus::Active => {
            return Err(ApiError::conflict(
                "already_activated",
                "this account is already activated; log in instead",
            ));
        }
        UserStatus::Disabled | UserStatus::Deleted => return Err(invalid_token("activation")),
    }
    if !constant_time_eq(binding.as_bytes(), activation_binding(&user).as_bytes()) {
        return Err(invalid_token("activation"));
    }
    // The token is spent by the one activation that finds the account still inactive
    // with the password it was bound to; a concurrent one learns what happened.
    let Some((user, team, role)) = activate_account(&ctx, &user).await? else {
        return match ctx.store.get_user(user_id).await {
            Ok(u) if u.status == UserStatus::Active => Err(ApiError::conflict(
                "already_activated",
                "this account is already activated; log in instead",
            )),
            Ok(_) | Err(RepoError::NotFound { .. }) => Err(invalid_token("activation")),
            Err(e) => Err(e.into()),
        };
    };
    tracing::info!(user_id = %user.id, team_id = %team, "user activated");
    issue_token(
        &ctx,
        user.id,
        &user.email,
        &user.name,
        user.is_admin,
        team,
        role,
    )
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
    let email = validate::email(&req.email)?;
    if req.password.is_empty() {
        return Err(ApiError::bad_request("password must not be empty"));
    }
    let user = match ctx.store.get_user_by_email(&email).await {
        Ok(u) if u.status != UserStatus::Deleted => Some(u),
        Ok(_) | Err(RepoError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let phc = user.as_ref().and_then(|u| u.password_hash.clone());
    let verified = verify_password_blocking(req.password, phc).await?;
    let user = match user {
        Some(u) if verified => u,
        _ => return Err(ApiError::unauthorized("invalid email or password")),
    };
    match user.status {
        UserStatus::Active => {}
        UserStatus::Inactive => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "account_not_activated",
                "account is not activated: use the token from the sign-up email",
            ));
        }
        UserStatus::Disabled => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "account_disabled",
                "account is disabled",
            ));
        }
        UserStatus::Deleted => return Err(ApiError::unauthorized("invalid email or password")),
    }
    let (team, role) = ensure_default_team(&ctx, &user).await?;
    tracing::info!(user_id = %user.id, team_id = %team, "user logged in");
    issue_token(
        &ctx,
        user.id,
        &user.email,
        &user.name,
        user.is_admin,
        team,
        role,
    )
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
    let team_id: TeamId = req.team_id.trim().parse()?;
    let team = match ctx.store.get_team(team_id).await {
        Ok(t) if t.deleted_at.is_none() => t,
        Ok(_) | Err(RepoError::NotFound { .. }) => return Err(ApiError::not_found("team")),
        Err(e) => return Err(e.into()),
    };
    let membership = ctx
        .store
        .get_membership(team.id, auth.user.id)
        .await?
        .ok_or_else(|| ApiError::forbidden("you are not a member of this team"))?;
    tracing::info!(user_id = %auth.user.id, team_id = %team.id, "switched team");
    issue_token(
        &ctx,
        auth.user.id,
        &auth.user.email,
        &auth.user.name,
        auth.user.is_admin,
        team.id,
        membership.role,
    )
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(activate))
        .routes(routes!(login))
        .routes(routes!(switch_team))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_team_names_are_valid_team_names() {
        assert_eq!(default_team_name("Ada"), "Ada's Team");
        assert_eq!(default_team_name("José  Núñez"), "Jos Nez's Team");
        assert_eq!(default_team_name("…"), "My Team");
        let long = default_team_name(&"a".repeat(300));
        assert!(long.chars().count() <= validate::MAX_TEAM_NAME_LEN);
        for n in ["Ada", "José Núñez", "…", "x.y/z", &"a".repeat(300)] {
            assert!(validate::team_name(&default_team_name(n)).is_ok(), "{n}");
        }
    }

    #[test]
    fn names_are_limited_to_100_characters() {
        assert_eq!(check_name("  Ada ").unwrap(), "Ada");
        assert!(check_name(&"a".repeat(100)).is_ok());
        assert!(check_name(&"a".repeat(101)).is_err());
        assert!(check_name("   ").is_err());
        assert!(check_name("a\u{0}b").is_err());
    }
}
