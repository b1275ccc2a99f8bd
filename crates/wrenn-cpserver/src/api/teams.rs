//! Teams and their members (user JWT only).
//!
//! Routes under `/v1/teams/{id}` act on the team the caller's token is issued for:
//! any other `{id}` is refused with 403 ("use switch-team first"). The caller's role
//! is the one re-read from the database by [`UserAuth`], never the token's. The
//! owner invariants (never removed, demoted or leaving) are the rules of
//! [`wrenn_core::auth`]; role changes are conditional writes.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::{AuditEntry, AuditScope, AuditStatus};
use wrenn_core::auth::{Role, check_leave, check_remove_member, check_role_change};
use wrenn_core::id::{TeamId, UserId, new_team_slug};
use wrenn_core::model::{Member, Team, TeamWithRole, UserStatus};
use wrenn_core::repo::{NewTeam, RepoError};
use wrenn_core::validate;
use wrenn_extension::extract::{Json, Path};
use wrenn_extension::{ApiError, ApiResult, ServerContext, UserAuth};

use super::tags;

/// A team.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TeamBody {
    /// `team-…`.
    #[schema(value_type = String)]
    pub id: TeamId,
    /// Display name.
    pub name: String,
    /// Immutable slug.
    pub slug: String,
    /// Whether the team runs on its own hosts.
    pub is_byoc: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<Team> for TeamBody {
    fn from(t: Team) -> Self {
        Self {
            id: t.id,
            name: t.name,
            slug: t.slug,
            is_byoc: t.is_byoc,
            created_at: t.created_at,
        }
    }
}

/// A team with the caller's role in it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TeamWithRoleBody {
    /// The team.
    #[serde(flatten)]
    pub team: TeamBody,
    /// `owner`, `admin` or `member`.
    #[schema(value_type = String)]
    pub role: Role,
}

impl From<TeamWithRole> for TeamWithRoleBody {
    fn from(t: TeamWithRole) -> Self {
        Self {
            team: t.team.into(),
            role: t.role,
        }
    }
}

/// A member of a team.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MemberBody {
    /// `usr-…`.
    #[schema(value_type = String)]
    pub user_id: UserId,
    /// Display name.
    pub name: String,
    /// Email.
    pub email: String,
    /// `owner`, `admin` or `member`.
    #[schema(value_type = String)]
    pub role: Role,
    /// When the user joined.
    pub joined_at: DateTime<Utc>,
}

impl From<Member> for MemberBody {
    fn from(m: Member) -> Self {
        Self {
            user_id: m.user_id,
            name: m.name,
            email: m.email,
            role: m.role,
            joined_at: m.joined_at,
        }
    }
}

/// A team with its members.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TeamDetail {
    /// The team.
    pub team: TeamBody,
    /// Its members, owner first.
    pub members: Vec<MemberBody>,
}

/// `POST /v1/teams` and `PATCH /v1/teams/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeamName {
    /// 1–128 characters of letters, digits, space, `_`, `-`, `@`, `'`.
    pub name: String,
    /// Not accepted: a team's slug never changes.
    #[serde(default)]
    #[schema(ignore)]
    slug: Option<serde_json::Value>,
}

/// `POST /v1/teams/{id}/members` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddMember {
    /// Email of an existing account.
    pub email: String,
}

/// `PATCH /v1/teams/{id}/members/{uid}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RoleChange {
    /// `admin` or `member`.
    pub role: String,
}

/// 403 unless `id` is the team the caller's token acts in.
fn same_team(auth: &UserAuth, id: TeamId) -> Result<(), ApiError> {
    if id == auth.team_id {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "your token acts in team {}; use switch-team first",
            auth.team_id
        )))
    }
}

fn member_audit(auth: &UserAuth, user: UserId, action: &str, status: AuditStatus) -> AuditEntry {
    AuditEntry::new(
        auth.team_id,
        auth.actor(),
        "member",
        Some(user.to_string()),
        action,
    )
    .scope(AuditScope::Admin)
    .status(status)
}

/// The member `user` of `team`, or 404.
async fn find_member(ctx: &ServerContext, team: TeamId, user: UserId) -> Result<Member, ApiError> {
    ctx.store
        .list_members(team)
        .await?
        .into_iter()
        .find(|m| m.user_id == user)
        .ok_or_else(|| ApiError::not_found("member"))
}

/// The caller's teams, with their role in each.
#[utoipa::path(get, path = "/v1/teams", tag = tags::TEAMS, security(("bearer" = [])),
    responses((status = 200, body = [TeamWithRoleBody]), (status = 401)))]
async fn list(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
) -> ApiResult<Json<Vec<TeamWithRoleBody>>> {
    let teams = ctx.store.list_teams_for_user(auth.user.id).await?;
    Ok(Json(teams.into_iter().map(Into::into).collect()))
}

/// Creates a team owned by the caller (not their default team).
#[utoipa::path(post, path = "/v1/teams", tag = tags::TEAMS, security(("bearer" = [])), request_body = TeamName,
    responses((status = 201, body = TeamWithRoleBody), (status = 400), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id))]
async fn create(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(body): Json<TeamName>,
) -> ApiResult<(StatusCode, Json<TeamWithRoleBody>)> {
    if body.slug.is_some() {
        return Err(ApiError::bad_request(
            "a team's slug is generated and cannot be chosen",
        ));
    }
    let name = validate::team_name(&body.name)?;
    // Slugs are random; a collision with an existing (or deleted) team is retried.
    let mut attempt = 0;
    let team = loop {
        let new = NewTeam {
            id: TeamId::new(),
            name: name.clone(),
            slug: new_team_slug(),
            is_byoc: false,
        };
        match ctx.store.create_team(new, auth.user.id, false).await {
            Err(RepoError::Conflict(_)) if attempt < 3 => attempt += 1,
            other => break other?,
        }
    };
    ctx.audit(
        AuditEntry::new(
            team.id,
            auth.actor(),
            "team",
            Some(team.id.to_string()),
            "create",
        )
        .metadata(json!({ "name": team.name })),
    )
    .await;
    let body = TeamWithRoleBody {
        team: team.into(),
        role: Role::Owner,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// The caller's current team and its members.
#[utoipa::path(get, path = "/v1/teams/{id}", tag = tags::TEAMS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team")),
    responses((status = 200, body = TeamDetail), (status = 400), (status = 401), (status = 403)))]
async fn get_one(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
) -> ApiResult<Json<TeamDetail>> {
    same_team(&auth, id)?;
    let team = ctx.store.get_team(id).await?;
    let members = ctx.store.list_members(id).await?;
    Ok(Json(TeamDetail {
        team: team.into(),
        members: members.into_iter().map(Into::into).collect(),
    }))
}

/// Renames the team (owner or admin). The slug never changes.
#[utoipa::path(patch, path = "/v1/teams/{id}", tag = tags::TEAMS, security(("bearer" = [])), request_body = TeamName,
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team")),
    responses((status = 204), (status = 400), (status = 401), (status = 403)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn rename(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
    Json(body): Json<TeamName>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    auth.require(Role::can_rename_team, "rename the team")?;
    if body.slug.is_some() {
        return Err(ApiError::bad_request(
            "a team's slug is immutable; only the name can change",
        ));
    }
    let name = validate::team_name(&body.name)?;
    let old = ctx.store.get_team(id).await?;
    ctx.store.rename_team(id, &name).await?;
    ctx.audit(
        AuditEntry::new(id, auth.actor(), "team", Some(id.to_string()), "rename")
            .status(AuditStatus::Info)
            .metadata(json!({ "old_name": old.name, "new_name": name })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the team (owner only): its capsules are destroyed, its keys, channels
/// and metrics deleted, its templates removed; the slug stays reserved.
#[utoipa::path(delete, path = "/v1/teams/{id}", tag = tags::TEAMS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team")),
    responses((status = 204), (status = 400), (status = 401), (status = 403)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn delete(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    auth.require(
        Role::can_delete_team,
        "delete the team (only its owner can)",
    )?;
    crate::teams::delete_team_core(&ctx, id, &auth.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The team's members, owner first.
#[utoipa::path(get, path = "/v1/teams/{id}/members", tag = tags::TEAMS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team")),
    responses((status = 200, body = [MemberBody]), (status = 400), (status = 401), (status = 403)))]
async fn list_members(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
) -> ApiResult<Json<Vec<MemberBody>>> {
    same_team(&auth, id)?;
    let members = ctx.store.list_members(id).await?;
    Ok(Json(members.into_iter().map(Into::into).collect()))
}

/// Adds an existing account to the team as a `member` (owner or admin).
#[utoipa::path(post, path = "/v1/teams/{id}/members", tag = tags::TEAMS, security(("bearer" = [])), request_body = AddMember,
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team")),
    responses((status = 201, body = MemberBody), (status = 400, description = "Malformed email, or already a member"),
        (status = 401), (status = 403), (status = 404, description = "No account with that email")))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn add_member(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
    Json(body): Json<AddMember>,
) -> ApiResult<(StatusCode, Json<MemberBody>)> {
    same_team(&auth, id)?;
    auth.require(Role::can_manage_members, "add members")?;
    let email = validate::email(&body.email)?;
    let user = match ctx.store.get_user_by_email(&email).await {
        Ok(u) if u.status != UserStatus::Deleted => u,
        Ok(_) | Err(RepoError::NotFound { .. }) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no account with that email",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let membership = match ctx.store.add_member(id, user.id, Role::Member).await {
        Ok(m) => m,
        Err(RepoError::Conflict(_)) => {
            return Err(ApiError::bad_request(
                "that user is already a member of the team",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    ctx.audit(
        member_audit(&auth, user.id, "add", AuditStatus::Success).metadata(json!({
            "email": user.email,
            "role": membership.role,
        })),
    )
    .await;
    let member = MemberBody {
        user_id: user.id,
        name: user.name,
        email: user.email,
        role: membership.role,
        joined_at: membership.created_at,
    };
    Ok((StatusCode::CREATED, Json(member)))
}

/// Changes a member's role to `admin` or `member` (owner or admin; only the owner
/// may change an admin's role; the owner's role never changes).
#[utoipa::path(patch, path = "/v1/teams/{id}/members/{uid}", tag = tags::TEAMS, security(("bearer" = [])), request_body = RoleChange,
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team"),
        ("uid" = String, Path, description = "User id (`usr-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn update_member(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path((id, uid)): Path<(TeamId, UserId)>,
    Json(body): Json<RoleChange>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    let new_role = match body.role.parse::<Role>() {
        Ok(Role::Owner) | Err(_) => {
            return Err(ApiError::bad_request(
                "role must be \"admin\" or \"member\"",
            ));
        }
        Ok(role) => role,
    };
    auth.require(Role::can_manage_members, "change members' roles")?;
    let target = find_member(&ctx, id, uid).await?;
    check_role_change(auth.user.role, target.role, new_role)?;
    if target.role != new_role {
        // Conditional: a concurrent change (or removal) makes this one lose cleanly.
        ctx.store
            .update_member_role_if(id, uid, target.role, new_role)
            .await?
            .ok_or_else(|| ApiError::conflict("conflict", "the member changed meanwhile; retry"))?;
    }
    ctx.audit(
        member_audit(&auth, uid, "role_update", AuditStatus::Info).metadata(json!({
            "email": target.email,
            "new_role": new_role,
        })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a member (owner or admin; only the owner may remove an admin; the owner
/// is never removed).
#[utoipa::path(delete, path = "/v1/teams/{id}/members/{uid}", tag = tags::TEAMS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team"),
        ("uid" = String, Path, description = "User id (`usr-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn remove_member(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path((id, uid)): Path<(TeamId, UserId)>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    auth.require(Role::can_manage_members, "remove members")?;
    let target = find_member(&ctx, id, uid).await?;
    check_remove_member(auth.user.role, target.role)?;
    if !ctx.store.remove_member(id, uid).await? {
        return Err(ApiError::not_found("member"));
    }
    ctx.audit(
        member_audit(&auth, uid, "remove", AuditStatus::Warning)
            .metadata(json!({ "email": target.email })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Leaves the team (everyone but the owner, who deletes the team instead).
#[utoipa::path(post, path = "/v1/teams/{id}/leave", tag = tags::TEAMS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team")),
    responses((status = 204), (status = 400), (status = 401), (status = 403)))]
#[tracing::instrument(skip_all, fields(user_id = %auth.user.id, team_id = %auth.team_id))]
async fn leave(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    check_leave(auth.user.role)?;
    if !ctx.store.remove_member(id, auth.user.id).await? {
        return Err(ApiError::not_found("member"));
    }
    ctx.audit(
        member_audit(&auth, auth.user.id, "leave", AuditStatus::Info)
            .metadata(json!({ "email": auth.user.email })),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, rename, delete))
        .routes(routes!(list_members, add_member))
        .routes(routes!(update_member, remove_member))
        .routes(routes!(leave))
}
