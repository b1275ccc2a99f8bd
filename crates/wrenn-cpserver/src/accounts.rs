//! Accounts: sign-up, activation, login, profile and password changes, password
//! reset, account deletion and an admin's activate/disable — the domain behind
//! `api::auth`, `api::me`, `api::account` and the user routes of `api::admin`.
//!
//! Activation and password reset use stateless purpose tokens ([`TokenPurpose`]):
//! short-lived JWTs that carry a `binding` — a fingerprint of the account state they
//! act on. Acting changes that state, so a token works once. Every identity write that
//! races another request (on this or another replica) is a conditional write in the
//! store; nothing here takes a process-wide lock.
//!
//! Everything that decides a role re-reads the database: the role and admin flag in
//! an issued JWT are copies for the UI, never trusted on the way back in.

use axum::http::StatusCode;
use serde_json::json;
use tokio::task::JoinError;
use wrenn_core::audit::{Actor, AuditEntry, AuditScope, AuditStatus};
use wrenn_core::auth::{
    JwtError, PasswordError, Role, TokenPurpose, UserClaims, binding_digest, check_password_policy,
    constant_time_eq, hash_password, verify_password, verify_password_dummy,
};
use wrenn_core::id::{PLATFORM_TEAM_ID, TeamId, UserId, new_team_slug};
use wrenn_core::model::{User, UserStatus};
use wrenn_core::repo::{NewTeam, NewUser, RepoError};
use wrenn_core::report::error_chain;
use wrenn_core::validate::{self, ValidationError};
use wrenn_extension::{ApiError, Email, MailError, ServerContext, UserAuth};

pub mod search;

use crate::teams::{DeleteTeamError, delete_team_core, destroy_team_sandboxes};
use crate::workers::account_cleanup::RETENTION_DAYS;

/// Maximum length of a user's display name, in characters.
pub const MAX_NAME_LEN: usize = 100;

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A field is malformed (email, name).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The display name is longer than [`MAX_NAME_LEN`].
    #[error("name must be at most {MAX_NAME_LEN} characters long")]
    NameTooLong,
    /// The password in `field` breaks the policy (or could not be hashed).
    #[error("{field} was refused")]
    Password {
        /// The request field.
        field: &'static str,
        /// The policy violation.
        #[source]
        source: PasswordError,
    },
    /// The login password is empty.
    #[error("password must not be empty")]
    EmptyPassword,
    /// `confirm_password` differs from `new_password`.
    #[error("confirm_password does not match new_password")]
    PasswordMismatch,
    /// The account has a password, and the change did not give the current one.
    #[error("current_password is required")]
    CurrentPasswordRequired,
    /// The current password given is wrong.
    #[error("the current password is incorrect")]
    WrongPassword,
    /// The email belongs to an account that is (or became) active.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// The activation email could not be sent.
    #[error("could not send the activation email; sign up again later to retry")]
    EmailUnavailable(#[source] MailError),
    /// A purpose token (`activation`, `reset`) is bad, expired or spent.
    #[error("{0} token is invalid, expired or already used")]
    InvalidToken(&'static str),
    /// The account to activate is active already.
    #[error("this account is already activated; log in instead")]
    AlreadyActivated,
    /// Unknown email or wrong password.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// The account has not been activated yet.
    #[error("account is not activated: use the token from the sign-up email")]
    NotActivated,
    /// The account is disabled.
    #[error("account is disabled")]
    Disabled,
    /// The deletion confirmation is not the account's email.
    #[error("confirmation must be your account's email address")]
    ConfirmationMismatch,
    /// The user owns a team that has other members.
    #[error("you own a team with other members: remove them or delete the team first")]
    OwnsTeamWithMembers,
    /// An admin tried to disable their own account.
    #[error("you cannot deactivate your own account")]
    CannotDeactivateSelf,
    /// A user JWT or purpose token could not be signed.
    #[error("could not sign a token")]
    Token(#[source] JwtError),
    /// A stored password hash could not be checked.
    #[error("could not verify the password")]
    Verify(#[source] PasswordError),
    /// The blocking password task failed.
    #[error("the password task failed")]
    Worker(#[source] JoinError),
    /// A team of the account could not be deleted or emptied.
    #[error("could not delete or empty a team of the account")]
    Team(#[from] DeleteTeamError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] RepoError),
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        use AccountError as E;
        match e {
            E::Invalid(e) => e.into(),
            E::Store(e) => e.into(),
            E::Team(e) => e.into(),
            E::Password { field, source } => match source {
                PasswordError::TooShort { .. } | PasswordError::TooLong { .. } => {
                    ApiError::bad_request(format!("{field}: {source}"))
                }
                other => ApiError::internal(other),
            },
            E::NameTooLong
            | E::EmptyPassword
            | E::PasswordMismatch
            | E::CurrentPasswordRequired
            | E::ConfirmationMismatch
            | E::CannotDeactivateSelf => ApiError::bad_request(e.to_string()),
            E::WrongPassword => {
                ApiError::new(StatusCode::UNAUTHORIZED, "wrong_password", e.to_string())
            }
            E::EmailTaken => ApiError::conflict("email_taken", e.to_string()),
            E::EmailUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "email_unavailable",
                e.to_string(),
            ),
            E::InvalidToken(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_token", e.to_string())
            }
            E::AlreadyActivated => ApiError::conflict("already_activated", e.to_string()),
            E::InvalidCredentials => ApiError::unauthorized(e.to_string()),
            E::NotActivated => ApiError::new(
                StatusCode::FORBIDDEN,
                "account_not_activated",
                e.to_string(),
            ),
            E::Disabled => ApiError::new(StatusCode::FORBIDDEN, "account_disabled", e.to_string()),
            E::OwnsTeamWithMembers => ApiError::conflict("owns_team_with_members", e.to_string()),
            E::Token(_) | E::Verify(_) | E::Worker(_) => ApiError::internal(error_chain(&e)),
        }
    }
}

/// A signed user JWT and who it is for.
#[derive(Debug, Clone)]
pub struct Session {
    /// User JWT (HS256) for `Authorization: Bearer`.
    pub token: String,
    /// The user.
    pub user_id: UserId,
    /// The team the token acts in.
    pub team_id: TeamId,
    /// The user's email.
    pub email: String,
    /// The user's display name.
    pub name: String,
}

/// How a sign-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signup {
    /// An activation token was emailed; the account stays inactive until it is used.
    ActivationSent,
    /// No mailer: the account is active at once.
    Active,
}

// ---------------------------------------------------------------------------
// Checks and password helpers
// ---------------------------------------------------------------------------

/// Checks a display name: trimmed, 1–100 characters, no control characters.
pub fn check_name(name: &str) -> Result<String, AccountError> {
    let name = validate::user_name(name)?;
    if name.chars().count() > MAX_NAME_LEN {
        return Err(AccountError::NameTooLong);
    }
    Ok(name)
}

/// Checks `password` (the request field `field`) against the password policy.
pub fn check_password(field: &'static str, password: &str) -> Result<(), AccountError> {
    check_password_policy(password).map_err(|source| AccountError::Password { field, source })
}

/// Hashes a password on the blocking pool (argon2id is deliberately slow).
async fn hash_password_blocking(
    field: &'static str,
    password: String,
) -> Result<String, AccountError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(AccountError::Worker)?
        .map_err(|source| AccountError::Password { field, source })
}

/// Verifies a password on the blocking pool. With no stored hash it spends the same
/// time on a dummy hash and answers `false`, so timing does not reveal accounts.
async fn verify_password_blocking(
    password: String,
    phc: Option<String>,
) -> Result<bool, AccountError> {
    tokio::task::spawn_blocking(move || match phc {
        Some(phc) => verify_password(&password, &phc),
        None => Ok(verify_password_dummy(&password)),
    })
    .await
    .map_err(AccountError::Worker)?
    .map_err(AccountError::Verify)
}

/// Signs a user JWT from database facts.
pub fn issue_session(
    ctx: &ServerContext,
    user: UserId,
    email: &str,
    name: &str,
    is_admin: bool,
    team: TeamId,
    role: Role,
) -> Result<Session, JwtError> {
    let claims = UserClaims::new(user, team, role, email, name, is_admin);
    let token = ctx.auth.jwt().sign_user(&claims)?;
    Ok(Session {
        token,
        user_id: user,
        team_id: team,
        email: email.to_owned(),
        name: name.to_owned(),
    })
}

/// [`issue_session`] for a user record.
fn session_for(
    ctx: &ServerContext,
    user: &User,
    team: TeamId,
    role: Role,
) -> Result<Session, AccountError> {
    issue_session(
        ctx,
        user.id,
        &user.email,
        &user.name,
        user.is_admin,
        team,
        role,
    )
    .map_err(AccountError::Token)
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
fn reset_binding(user: &User) -> String {
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
pub async fn ensure_default_team(
    ctx: &ServerContext,
    user: &User,
) -> Result<(TeamId, Role), AccountError> {
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

// ---------------------------------------------------------------------------
// Sign-up, activation, login
// ---------------------------------------------------------------------------

/// Activates `user` (`inactive → active`, and platform admin if they are the first
/// account to become active: one serialised write, see
/// [`UserRepo::activate_user`](wrenn_core::repo::UserRepo::activate_user)) and gives
/// them a default team. `None` when the account is no longer inactive with the
/// password `user` has (activated or signed up again meanwhile, by another request
/// or replica).
async fn activate_account(
    ctx: &ServerContext,
    user: &User,
) -> Result<Option<(User, TeamId, Role)>, AccountError> {
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

/// Emails an activation token to an inactive user (nothing without a mailer).
async fn send_activation(ctx: &ServerContext, user: &User) -> Result<(), AccountError> {
    let Some(mailer) = ctx.mailer.clone() else {
        return Ok(());
    };
    let purpose = TokenPurpose::Activation;
    let token = ctx
        .auth
        .jwt()
        .sign_purpose(
            purpose,
            user.id,
            &activation_binding(user),
            purpose.lifetime(),
        )
        .map_err(AccountError::Token)?;
    let minutes = purpose.lifetime().as_secs() / 60;
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
    let email = Email {
        to: user.email.clone(),
        subject: "Activate your Wrenn account".to_owned(),
        body,
    };
    if let Err(e) = mailer.send(email).await {
        tracing::warn!(user_id = %user.id, error = %e, "could not send activation email");
        return Err(AccountError::EmailUnavailable(e));
    }
    tracing::info!(user_id = %user.id, "activation email sent");
    Ok(())
}

/// Creates an account. With a mailer the account starts `inactive` and an activation
/// token is emailed (signing up again before activating replaces the password and
/// sends a fresh token); without one it is active at once.
#[tracing::instrument(skip_all)]
pub async fn signup(
    ctx: &ServerContext,
    email: &str,
    password: String,
    name: &str,
) -> Result<Signup, AccountError> {
    let email = validate::email(email)?;
    let name = check_name(name)?;
    check_password("password", &password)?;

    let existing = match ctx.store.get_user_by_email(&email).await {
        Ok(u) => Some(u),
        Err(RepoError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if existing
        .as_ref()
        .is_some_and(|u| u.status != UserStatus::Inactive)
    {
        return Err(AccountError::EmailTaken);
    }
    let password_hash = hash_password_blocking("password", password).await?;

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
                return Err(AccountError::EmailTaken);
            }
            ctx.store.update_user_name(old.id, &name).await?;
            tracing::info!(user_id = %old.id, "inactive user signed up again");
            ctx.store.get_user(old.id).await?
        }
        None => {
            // Inactive until activated: by its token, or below when no email is sent.
            let new = NewUser {
                id: UserId::new(),
                email,
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
                Err(RepoError::Conflict(_)) => return Err(AccountError::EmailTaken),
                Err(e) => return Err(e.into()),
            }
        }
    };

    if ctx.mailer.is_some() {
        send_activation(ctx, &user).await?;
        Ok(Signup::ActivationSent)
    } else {
        // `None`: a concurrent sign-up of the same address activated it already.
        activate_account(ctx, &user).await?;
        Ok(Signup::Active)
    }
}

/// Activates an account with the token from the sign-up email and logs in, in the
/// user's default team (created if they have none).
#[tracing::instrument(skip_all)]
pub async fn activate(ctx: &ServerContext, token: &str) -> Result<Session, AccountError> {
    const WHAT: &str = "activation";
    let (user_id, binding) = ctx
        .auth
        .jwt()
        .verify_purpose(token.trim(), TokenPurpose::Activation)
        .map_err(|_| AccountError::InvalidToken(WHAT))?;
    let user = match ctx.store.get_user(user_id).await {
        Ok(u) => u,
        Err(RepoError::NotFound { .. }) => return Err(AccountError::InvalidToken(WHAT)),
        Err(e) => return Err(e.into()),
    };
    match user.status {
        UserStatus::Inactive => {}
        UserStatus::Active => return Err(AccountError::AlreadyActivated),
        UserStatus::Disabled | UserStatus::Deleted => {
            return Err(AccountError::InvalidToken(WHAT));
        }
    }
    if !constant_time_eq(binding.as_bytes(), activation_binding(&user).as_bytes()) {
        return Err(AccountError::InvalidToken(WHAT));
    }
    // The token is spent by the one activation that finds the account still inactive
    // with the password it was bound to; a concurrent one learns what happened.
    let Some((user, team, role)) = activate_account(ctx, &user).await? else {
        return match ctx.store.get_user(user_id).await {
            Ok(u) if u.status == UserStatus::Active => Err(AccountError::AlreadyActivated),
            Ok(_) | Err(RepoError::NotFound { .. }) => Err(AccountError::InvalidToken(WHAT)),
            Err(e) => Err(e.into()),
        };
    };
    tracing::info!(user_id = %user.id, team_id = %team, "user activated");
    session_for(ctx, &user, team, role)
}

/// Checks email and password and logs in, in the user's default team. Unknown
/// accounts cost the same time as wrong passwords.
#[tracing::instrument(skip_all)]
pub async fn login(
    ctx: &ServerContext,
    email: &str,
    password: String,
) -> Result<Session, AccountError> {
    let email = validate::email(email)?;
    if password.is_empty() {
        return Err(AccountError::EmptyPassword);
    }
    let user = match ctx.store.get_user_by_email(&email).await {
        Ok(u) if u.status != UserStatus::Deleted => Some(u),
        Ok(_) | Err(RepoError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let phc = user.as_ref().and_then(|u| u.password_hash.clone());
    let verified = verify_password_blocking(password, phc).await?;
    let user = match user {
        Some(u) if verified => u,
        _ => return Err(AccountError::InvalidCredentials),
    };
    match user.status {
        UserStatus::Active => {}
        UserStatus::Inactive => return Err(AccountError::NotActivated),
        UserStatus::Disabled => return Err(AccountError::Disabled),
        UserStatus::Deleted => return Err(AccountError::InvalidCredentials),
    }
    let (team, role) = ensure_default_team(ctx, &user).await?;
    tracing::info!(user_id = %user.id, team_id = %team, "user logged in");
    session_for(ctx, &user, team, role)
}

// ---------------------------------------------------------------------------
// Profile and password
// ---------------------------------------------------------------------------

fn password_change_entry(team: TeamId, user: &User, method: &str) -> AuditEntry {
    AuditEntry::new(
        team,
        Actor::user(user.id, user.email.clone()),
        "user",
        Some(user.id.to_string()),
        "password_change",
    )
    .status(AuditStatus::Info)
    .metadata(json!({ "method": method }))
}

/// Renames the caller; returns a new session carrying the name.
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id))]
pub async fn rename(
    ctx: &ServerContext,
    caller: &UserAuth,
    name: &str,
) -> Result<Session, AccountError> {
    let name = check_name(name)?;
    let user = ctx.store.update_user_name(caller.user.id, &name).await?;
    ctx.audit(
        AuditEntry::new(
            caller.team_id,
            caller.actor(),
            "user",
            Some(user.id.to_string()),
            "update",
        )
        .status(AuditStatus::Info)
        .metadata(json!({ "fields": ["name"] })),
    )
    .await;
    tracing::info!("user renamed");
    session_for(ctx, &user, caller.team_id, caller.user.role)
}

/// A password change by the logged-in user.
#[derive(Debug)]
pub struct PasswordChange {
    /// The current password; required when the account has one.
    pub current: Option<String>,
    /// The new password.
    pub new: String,
    /// Must equal `new` when given.
    pub confirm: Option<String>,
}

/// Changes the caller's password. An account without a password (OAuth only) may
/// set one without the current one.
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id))]
pub async fn change_password(
    ctx: &ServerContext,
    caller: &UserAuth,
    change: PasswordChange,
) -> Result<(), AccountError> {
    if change.confirm.as_ref().is_some_and(|c| *c != change.new) {
        return Err(AccountError::PasswordMismatch);
    }
    check_password("new_password", &change.new)?;
    let user = ctx.store.get_user(caller.user.id).await?;
    if let Some(phc) = user.password_hash.clone() {
        let current = change
            .current
            .filter(|p| !p.is_empty())
            .ok_or(AccountError::CurrentPasswordRequired)?;
        if !verify_password_blocking(current, Some(phc)).await? {
            return Err(AccountError::WrongPassword);
        }
    }
    let hash = hash_password_blocking("new_password", change.new).await?;
    ctx.store.update_password(user.id, &hash).await?;
    ctx.audit(password_change_entry(caller.team_id, &user, "change"))
        .await;
    tracing::info!("password changed");
    Ok(())
}

/// Emails a password-reset token to the account with `email`, if it exists, is
/// active and a mailer is configured. Failures are logged, never returned: the
/// caller must not learn whether the account exists.
pub async fn send_reset(ctx: ServerContext, email: String) {
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
#[tracing::instrument(skip_all)]
pub async fn confirm_reset(
    ctx: &ServerContext,
    token: &str,
    new_password: String,
) -> Result<(), AccountError> {
    const WHAT: &str = "reset";
    check_password("new_password", &new_password)?;
    let (user_id, binding) = ctx
        .auth
        .jwt()
        .verify_purpose(token.trim(), TokenPurpose::PasswordReset)
        .map_err(|_| AccountError::InvalidToken(WHAT))?;
    let hash = hash_password_blocking("new_password", new_password).await?;
    let user = match ctx.store.get_user(user_id).await {
        Ok(u) if u.status == UserStatus::Active => u,
        Ok(_) | Err(RepoError::NotFound { .. }) => return Err(AccountError::InvalidToken(WHAT)),
        Err(e) => return Err(e.into()),
    };
    if !constant_time_eq(binding.as_bytes(), reset_binding(&user).as_bytes()) {
        return Err(AccountError::InvalidToken(WHAT));
    }
    // The token is bound to the password it was issued for: it is spent by the one
    // request (on any replica) that replaces that password.
    let expected = user.password_hash.as_deref().unwrap_or_default();
    if !ctx
        .store
        .update_password_if(user.id, expected, &hash)
        .await?
    {
        return Err(AccountError::InvalidToken(WHAT));
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
    Ok(())
}

// ---------------------------------------------------------------------------
// Deletion and admin status changes
// ---------------------------------------------------------------------------

/// Ids of the API keys `user` created in the teams they belong to.
async fn keys_created_by(
    ctx: &ServerContext,
    user: UserId,
) -> Result<Vec<wrenn_core::id::ApiKeyId>, AccountError> {
    let mut keys = Vec::new();
    for t in ctx.store.list_teams_for_user(user).await? {
        let team_keys = ctx.store.list_api_keys(t.team.id).await?;
        keys.extend(
            team_keys
                .into_iter()
                .filter(|k| k.key.created_by == Some(user))
                .map(|k| k.key.id),
        );
    }
    Ok(keys)
}

/// Deletes the caller's account (after `confirmation`, their email typed again) and
/// every team they own alone. Refused while they own a team with other members; the
/// soft delete is conditional in the store, so a member added meanwhile (on any
/// replica) keeps the account. The `account-cleanup` worker removes it for good
/// after [`RETENTION_DAYS`] days.
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id))]
pub async fn delete_account(
    ctx: &ServerContext,
    caller: &UserAuth,
    confirmation: &str,
) -> Result<(), AccountError> {
    let user = caller.user.id;
    if confirmation.trim().to_lowercase() != caller.user.email.to_lowercase() {
        return Err(AccountError::ConfirmationMismatch);
    }
    if ctx.store.count_owned_teams_with_other_members(user).await? > 0 {
        return Err(AccountError::OwnsTeamWithMembers);
    }
    let actor = caller.actor();
    for team in ctx.store.list_sole_owned_teams(user).await? {
        match delete_team_core(ctx, team.id, &actor).await {
            // Deleted concurrently: nothing left to do for it.
            Ok(_) | Err(DeleteTeamError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The user's keys in teams they stay a member of are deleted with the account;
    // forget them in the cache too so they stop working now.
    let keys = keys_created_by(ctx, user).await?;
    match ctx.store.soft_delete_user(user).await {
        Ok(()) => {}
        Err(RepoError::Conflict(_)) => return Err(AccountError::OwnsTeamWithMembers),
        Err(e) => return Err(e.into()),
    }
    for key in keys {
        ctx.auth.evict_api_key(key);
    }
    // No email in the entry: the actor fields are anonymised at the hard delete.
    ctx.audit(
        AuditEntry::new(
            PLATFORM_TEAM_ID,
            actor,
            "user",
            Some(user.to_string()),
            "delete",
        )
        .scope(AuditScope::Admin)
        .status(AuditStatus::Warning),
    )
    .await;
    if let Some(mailer) = &ctx.mailer {
        let email = Email {
            to: caller.user.email.clone(),
            subject: "Your Wrenn account was deleted".into(),
            body: format!(
                "Hello {},\n\nyour Wrenn account has been deleted as you asked. It will be permanently \
                 removed in {RETENTION_DAYS} days.\n",
                caller.user.name
            ),
        };
        if let Err(e) = mailer.send(email).await {
            tracing::warn!(error = %e, "could not send the account deletion email");
        }
    }
    Ok(())
}

/// A platform admin activates (`active`) or disables an account. Activation gives an
/// account that never activated itself its default team. Disabling deletes the API
/// keys the user created and destroys the capsules of every team they own; their
/// next request is refused. Admins cannot disable themselves.
#[tracing::instrument(skip_all, fields(admin_id = %admin.user.id, user_id = %id))]
pub async fn set_active(
    ctx: &ServerContext,
    admin: &UserAuth,
    id: UserId,
    active: bool,
) -> Result<(), AccountError> {
    if id == admin.user.id && !active {
        return Err(AccountError::CannotDeactivateSelf);
    }
    let user = ctx.store.get_user(id).await?;
    let entry = |action: &str, status: AuditStatus| {
        AuditEntry::new(
            PLATFORM_TEAM_ID,
            admin.actor(),
            "user",
            Some(id.to_string()),
            action,
        )
        .scope(AuditScope::Admin)
        .status(status)
        .metadata(json!({ "email": user.email }))
    };
    if active {
        ctx.store.set_user_status(id, UserStatus::Active).await?;
        ensure_default_team(ctx, &user).await?;
        ctx.audit(entry("activate", AuditStatus::Success)).await;
        return Ok(());
    }
    // Status first: from here on the user's token is refused.
    ctx.store.set_user_status(id, UserStatus::Disabled).await?;
    let teams = ctx.store.list_teams_for_user(id).await?;
    let keys = keys_created_by(ctx, id).await?;
    ctx.store.delete_api_keys_by_creator(id).await?;
    for key in keys {
        ctx.auth.evict_api_key(key);
    }
    let actor = admin.actor();
    for t in teams.iter().filter(|t| t.role == Role::Owner) {
        destroy_team_sandboxes(ctx, t.team.id, &actor).await?;
    }
    ctx.audit(entry("deactivate", AuditStatus::Warning)).await;
    Ok(())
}

#[cfg(test)]
mod tests;
