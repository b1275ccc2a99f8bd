//! A team's members: adding, changing roles, removing and leaving, in the caller's
//! current team. Who may do what is [`wrenn_core::auth`]'s rules (the owner is never
//! removed, demoted or leaving); the writes are conditional, so a concurrent change
//! on any replica makes the later one lose cleanly instead of breaking the rules.

use serde_json::json;
use wrenn_core::audit::{AuditEntry, AuditScope, AuditStatus};
use wrenn_core::auth::{Role, check_leave, check_remove_member, check_role_change};
use wrenn_core::id::{TeamId, UserId};
use wrenn_core::model::{Member, UserStatus};
use wrenn_core::repo::RepoError;
use wrenn_core::validate;
use wrenn_extension::{ServerContext, UserAuth};

use super::{TeamError, require};

fn member_audit(caller: &UserAuth, user: UserId, action: &str, status: AuditStatus) -> AuditEntry {
    AuditEntry::new(
        caller.team_id,
        caller.actor(),
        "member",
        Some(user.to_string()),
        action,
    )
    .scope(AuditScope::Admin)
    .status(status)
}

/// The member `user` of `team`.
async fn find_member(ctx: &ServerContext, team: TeamId, user: UserId) -> Result<Member, TeamError> {
    ctx.store
        .list_members(team)
        .await?
        .into_iter()
        .find(|m| m.user_id == user)
        .ok_or(TeamError::MemberNotFound)
}

/// Adds the (undeleted) account with `email` to the caller's team as a `member`
/// (owner or admin).
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id))]
pub async fn add_member(
    ctx: &ServerContext,
    caller: &UserAuth,
    email: &str,
) -> Result<Member, TeamError> {
    require(caller, Role::can_manage_members, "add members")?;
    let email = validate::email(email)?;
    let user = match ctx.store.get_user_by_email(&email).await {
        Ok(u) if u.status != UserStatus::Deleted => u,
        Ok(_) | Err(RepoError::NotFound { .. }) => return Err(TeamError::NoSuchAccount),
        Err(e) => return Err(e.into()),
    };
    let team = caller.team_id;
    let membership = match ctx.store.add_member(team, user.id, Role::Member).await {
        Ok(m) => m,
        Err(RepoError::Conflict(_)) => return Err(TeamError::AlreadyMember),
        Err(e) => return Err(e.into()),
    };
    ctx.audit(
        member_audit(caller, user.id, "add", AuditStatus::Success).metadata(json!({
            "email": user.email,
            "role": membership.role,
        })),
    )
    .await;
    tracing::info!(member_id = %user.id, "member added");
    Ok(Member {
        user_id: user.id,
        email: user.email,
        name: user.name,
        role: membership.role,
        joined_at: membership.created_at,
    })
}

/// Changes a member's role (owner or admin; only the owner may change an admin's
/// role; the owner's role never changes, and nobody is made owner). The write is
/// conditional on the role read: a concurrent change or removal wins.
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id, member_id = %member))]
pub async fn change_role(
    ctx: &ServerContext,
    caller: &UserAuth,
    member: UserId,
    new_role: Role,
) -> Result<(), TeamError> {
    require(caller, Role::can_manage_members, "change members' roles")?;
    let team = caller.team_id;
    let target = find_member(ctx, team, member).await?;
    check_role_change(caller.user.role, target.role, new_role)?;
    if target.role != new_role {
        ctx.store
            .update_member_role_if(team, member, target.role, new_role)
            .await?
            .ok_or(TeamError::MemberChanged)?;
    }
    ctx.audit(
        member_audit(caller, member, "role_update", AuditStatus::Info).metadata(json!({
            "email": target.email,
            "new_role": new_role,
        })),
    )
    .await;
    Ok(())
}

/// Removes a member (owner or admin; only the owner may remove an admin; the owner
/// is never removed).
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id, member_id = %member))]
pub async fn remove_member(
    ctx: &ServerContext,
    caller: &UserAuth,
    member: UserId,
) -> Result<(), TeamError> {
    require(caller, Role::can_manage_members, "remove members")?;
    let team = caller.team_id;
    let target = find_member(ctx, team, member).await?;
    check_remove_member(caller.user.role, target.role)?;
    if !ctx.store.remove_member(team, member).await? {
        return Err(TeamError::MemberNotFound);
    }
    ctx.audit(
        member_audit(caller, member, "remove", AuditStatus::Warning)
            .metadata(json!({ "email": target.email })),
    )
    .await;
    Ok(())
}

/// The caller leaves their current team (everyone but the owner, who deletes the
/// team instead).
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, team_id = %caller.team_id))]
pub async fn leave(ctx: &ServerContext, caller: &UserAuth) -> Result<(), TeamError> {
    check_leave(caller.user.role)?;
    if !ctx
        .store
        .remove_member(caller.team_id, caller.user.id)
        .await?
    {
        return Err(TeamError::MemberNotFound);
    }
    ctx.audit(
        member_audit(caller, caller.user.id, "leave", AuditStatus::Info)
            .metadata(json!({ "email": caller.user.email })),
    )
    .await;
    Ok(())
}
