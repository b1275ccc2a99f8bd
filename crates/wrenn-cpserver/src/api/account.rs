//! Account deletion: `DELETE /v1/me`.
//!
//! Refused while the user owns a team that has other members (they must remove
//! them or delete the team first). Otherwise every team the user owns alone is
//! deleted through [`crate::teams::delete_team_core`], then the account is
//! soft-deleted (its API keys go with it). The `account-cleanup` worker removes the
//! account for good after [`crate::workers::account_cleanup::RETENTION_DAYS`] days.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{AuditEntry, AuditScope, AuditStatus};
use wrenn_core::id::PLATFORM_TEAM_ID;
use wrenn_core::repo::RepoError;
use wrenn_extension::extract::Json;
use wrenn_extension::{ApiError, ApiResult, Email, ServerContext, UserAuth};

use super::tags;
use crate::teams::{DeleteTeamError, delete_team_core};
use crate::workers::account_cleanup::RETENTION_DAYS;

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
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn delete_me(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(body): Json<DeleteAccount>,
) -> ApiResult<StatusCode> {
    let user = auth.user.id;
    if body.confirmation.trim().to_lowercase() != auth.user.email.to_lowercase() {
        return Err(ApiError::bad_request(
            "confirmation must be your account's email address",
        ));
    }
    if ctx.store.count_owned_teams_with_other_members(user).await? > 0 {
        return Err(owns_team_with_members());
    }
    let actor = auth.actor();
    for team in ctx.store.list_sole_owned_teams(user).await? {
        match delete_team_core(&ctx, team.id, &actor).await {
            // Deleted concurrently: nothing left to do for it.
            Ok(_) | Err(DeleteTeamError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The user's keys in teams they stay a member of are deleted with the account;
    // forget them in the cache too so they stop working now.
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
    // Conditional in the store: a member added meanwhile (on any replica) keeps the
    // account, as the check above would have.
    match ctx.store.soft_delete_user(user).await {
        Ok(()) => {}
        Err(RepoError::Conflict(_)) => return Err(owns_team_with_members()),
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
            to: auth.user.email.clone(),
            subject: "Your Wrenn account was deleted".into(),
            body: format!(
                "Hello {},\n\nyour Wrenn account has been deleted as you asked. It will be permanently \
                 removed in {RETENTION_DAYS} days.\n",
                auth.user.name
            ),
        };
        if let Err(e) = mailer.send(email).await {
            tracing::warn!(error = %e, "could not send the account deletion email");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(delete_me))
}

fn owns_team_with_members() -> ApiError {
    ApiError::conflict(
        "owns_team_with_members",
        "you own a team with other members: remove them or delete the team first",
    )
}
