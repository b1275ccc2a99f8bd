//! Teams: creation, renaming, switching the team a token acts in, BYOC, members
//! ([`members`]) and deletion ([`deletion`]) — the domain behind `api::teams`,
//! `api::auth`'s team switch and the team routes of `api::admin`.
//!
//! The caller's role is always the one re-read from the database (by the
//! [`UserAuth`] extractor), never a token's copy. The owner invariants (a team keeps
//! its owner: never removed, demoted or leaving) are the rules of
//! [`wrenn_core::auth`]; role changes and removals are conditional writes, so two
//! replicas racing each other cannot break them.

pub mod deletion;
pub mod members;

pub use deletion::*;
pub use members::*;

use serde_json::json;
use wrenn_core::audit::{Actor, AuditEntry, AuditScope, AuditStatus};
use wrenn_core::auth::{JwtError, Role, RoleError};
use wrenn_core::id::{PLATFORM_TEAM_ID, TeamId, new_team_slug};
use wrenn_core::model::{Team, TeamWithRole};
use wrenn_core::repo::{NewTeam, RepoError};
use wrenn_core::report::error_chain;
use wrenn_core::validate::{self, ValidationError};
use wrenn_extension::{ApiError, ServerContext, UserAuth};

use crate::accounts::{Session, issue_session};

/// Why a team operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TeamError {
    /// A field is malformed (team name, email).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The caller's role does not allow the action.
    #[error("your role ({role}) may not {action}")]
    NotAllowed {
        /// The caller's role.
        role: Role,
        /// What they tried, e.g. `"rename the team"`.
        action: &'static str,
    },
    /// A rule of the team's roles (owner invariants, who may change whom).
    #[error(transparent)]
    Role(#[from] RoleError),
    /// No such team, or it is deleted.
    #[error("team not found")]
    TeamNotFound,
    /// The caller does not belong to the team.
    #[error("you are not a member of this team")]
    NotMember,
    /// No (undeleted) account has the email.
    #[error("no account with that email")]
    NoSuchAccount,
    /// The user belongs to the team already.
    #[error("that user is already a member of the team")]
    AlreadyMember,
    /// The user is not a member of the team.
    #[error("member not found")]
    MemberNotFound,
    /// A concurrent change or removal of the member won.
    #[error("the member changed meanwhile; retry")]
    MemberChanged,
    /// BYOC was asked to be turned off.
    #[error("BYOC cannot be disabled once enabled")]
    ByocIrreversible,
    /// The platform team cannot be BYOC.
    #[error("the platform team runs on platform hosts and cannot be BYOC")]
    PlatformTeamByoc,
    /// A slug was given at creation: slugs are generated.
    #[error("a team's slug is generated and cannot be chosen")]
    SlugGenerated,
    /// A slug was given to a rename: slugs never change.
    #[error("a team's slug is immutable; only the name can change")]
    SlugImmutable,
    /// The team could not be deleted.
    #[error(transparent)]
    Deletion(#[from] DeleteTeamError),
    /// The session token could not be signed.
    #[error("could not sign the session token")]
    Token(#[source] JwtError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] RepoError),
}

impl From<TeamError> for ApiError {
    fn from(e: TeamError) -> Self {
        use axum::http::StatusCode;
        match e {
            TeamError::Invalid(e) => e.into(),
            TeamError::Role(e) => e.into(),
            TeamError::Store(e) => e.into(),
            TeamError::Deletion(e) => e.into(),
            TeamError::Token(_) => ApiError::internal(error_chain(&e)),
            TeamError::NotAllowed { .. } | TeamError::NotMember => {
                ApiError::forbidden(e.to_string())
            }
            TeamError::TeamNotFound => ApiError::not_found("team"),
            TeamError::MemberNotFound => ApiError::not_found("member"),
            TeamError::NoSuchAccount => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            TeamError::AlreadyMember
            | TeamError::ByocIrreversible
            | TeamError::PlatformTeamByoc
            | TeamError::SlugGenerated
            | TeamError::SlugImmutable => ApiError::bad_request(e.to_string()),
            TeamError::MemberChanged => ApiError::conflict("conflict", e.to_string()),
        }
    }
}

/// Refuses unless the caller's role satisfies `allowed`.
pub fn require(
    caller: &UserAuth,
    allowed: impl Fn(Role) -> bool,
    action: &'static str,
) -> Result<(), TeamError> {
    if allowed(caller.user.role) {
        Ok(())
    } else {
        Err(TeamError::NotAllowed {
            role: caller.user.role,
            action,
        })
    }
}

/// A live team, or [`TeamError::TeamNotFound`].
async fn live_team(ctx: &ServerContext, id: TeamId) -> Result<Team, TeamError> {
    match ctx.store.get_team(id).await {
        Ok(t) if t.deleted_at.is_none() => Ok(t),
        Ok(_) | Err(RepoError::NotFound { .. }) => Err(TeamError::TeamNotFound),
        Err(e) => Err(e.into()),
    }
}

/// Creates a team owned by the caller (not their default team). Slugs are random
/// (`slug_given` is refused); a collision with an existing (or deleted) team is
/// retried.
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id))]
pub async fn create(
    ctx: &ServerContext,
    caller: &UserAuth,
    name: &str,
    slug_given: bool,
) -> Result<TeamWithRole, TeamError> {
    if slug_given {
        return Err(TeamError::SlugGenerated);
    }
    let name = validate::team_name(name)?;
    let mut attempt = 0;
    let team = loop {
        let new = NewTeam {
            id: TeamId::new(),
            name: name.clone(),
            slug: new_team_slug(),
            is_byoc: false,
        };
        match ctx.store.create_team(new, caller.user.id, false).await {
            Err(RepoError::Conflict(_)) if attempt < 3 => attempt += 1,
            other => break other?,
        }
    };
    ctx.audit(
        AuditEntry::new(
            team.id,
            caller.actor(),
            "team",
            Some(team.id.to_string()),
            "create",
        )
        .metadata(json!({ "name": team.name })),
    )
    .await;
    tracing::info!(team_id = %team.id, "team created");
    Ok(TeamWithRole {
        team,
        role: Role::Owner,
        is_default: false,
    })
}

/// Renames the caller's team (owner or admin). The slug never changes
/// (`slug_given` is refused).
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id))]
pub async fn rename(
    ctx: &ServerContext,
    caller: &UserAuth,
    name: &str,
    slug_given: bool,
) -> Result<(), TeamError> {
    require(caller, Role::can_rename_team, "rename the team")?;
    if slug_given {
        return Err(TeamError::SlugImmutable);
    }
    let name = validate::team_name(name)?;
    let id = caller.team_id;
    let old = ctx.store.get_team(id).await?;
    ctx.store.rename_team(id, &name).await?;
    ctx.audit(
        AuditEntry::new(id, caller.actor(), "team", Some(id.to_string()), "rename")
            .status(AuditStatus::Info)
            .metadata(json!({ "old_name": old.name, "new_name": name })),
    )
    .await;
    Ok(())
}

/// Deletes the caller's team (owner only), through [`delete_team_core`].
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id))]
pub async fn delete_own(ctx: &ServerContext, caller: &UserAuth) -> Result<TeamDeletion, TeamError> {
    require(
        caller,
        Role::can_delete_team,
        "delete the team (only its owner can)",
    )?;
    Ok(delete_team_core(ctx, caller.team_id, &caller.actor()).await?)
}

/// A session for the caller in another team: the team must be live and the caller
/// a member (membership and role re-read from the database).
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %team))]
pub async fn switch(
    ctx: &ServerContext,
    caller: &UserAuth,
    team: TeamId,
) -> Result<Session, TeamError> {
    let team = live_team(ctx, team).await?;
    let membership = ctx
        .store
        .get_membership(team.id, caller.user.id)
        .await?
        .ok_or(TeamError::NotMember)?;
    tracing::info!("switched team");
    let user = &caller.user;
    issue_session(
        ctx,
        user.id,
        &user.email,
        &user.name,
        user.is_admin,
        team.id,
        membership.role,
    )
    .map_err(TeamError::Token)
}

/// A platform admin turns BYOC on for a team (one-way: `enabled: false` is refused,
/// and so is the platform team).
#[tracing::instrument(skip_all, fields(team_id = %team))]
pub async fn set_byoc(
    ctx: &ServerContext,
    admin: &Actor,
    team: TeamId,
    enabled: bool,
) -> Result<(), TeamError> {
    if !enabled {
        return Err(TeamError::ByocIrreversible);
    }
    if team == PLATFORM_TEAM_ID {
        return Err(TeamError::PlatformTeamByoc);
    }
    ctx.store.set_team_byoc(team, true).await?;
    ctx.audit(
        AuditEntry::new(
            PLATFORM_TEAM_ID,
            admin.clone(),
            "team",
            Some(team.to_string()),
            "set_byoc",
        )
        .scope(AuditScope::Admin)
        .status(AuditStatus::Info)
        .metadata(json!({ "enabled": true })),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests;
