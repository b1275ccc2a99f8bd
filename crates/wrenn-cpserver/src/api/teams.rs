//! Teams and their members (user JWT only).
//!
//! Routes under `/v1/teams/{id}` act on the team the caller's token is issued for:
//! any other `{id}` is refused with 403 ("use switch-team first"). The rules (roles,
//! owner invariants, conditional writes) are [`crate::teams`]'s.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::auth::Role;
use wrenn_core::id::{TeamId, UserId};
use wrenn_core::model::{Member, Team, TeamWithRole};
use wrenn_extension::extract::{Json, Path};
use wrenn_extension::{ApiError, ApiResult, ServerContext, UserAuth};

use super::tags;
use crate::teams;

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
async fn create(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Json(body): Json<TeamName>,
) -> ApiResult<(StatusCode, Json<TeamWithRoleBody>)> {
    let team = teams::create(&ctx, &auth, &body.name, body.slug.is_some()).await?;
    Ok((StatusCode::CREATED, Json(team.into())))
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
async fn rename(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
    Json(body): Json<TeamName>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    teams::rename(&ctx, &auth, &body.name, body.slug.is_some()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the team (owner only): its capsules are destroyed, its keys, channels
/// and metrics deleted, its templates removed; the slug stays reserved.
#[utoipa::path(delete, path = "/v1/teams/{id}", tag = tags::TEAMS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team")),
    responses((status = 204), (status = 400), (status = 401), (status = 403)))]
async fn delete(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    teams::delete_own(&ctx, &auth).await?;
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
async fn add_member(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
    Json(body): Json<AddMember>,
) -> ApiResult<(StatusCode, Json<MemberBody>)> {
    same_team(&auth, id)?;
    let member = teams::add_member(&ctx, &auth, &body.email).await?;
    Ok((StatusCode::CREATED, Json(member.into())))
}

/// Changes a member's role to `admin` or `member` (owner or admin; only the owner
/// may change an admin's role; the owner's role never changes).
#[utoipa::path(patch, path = "/v1/teams/{id}/members/{uid}", tag = tags::TEAMS, security(("bearer" = [])), request_body = RoleChange,
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team"),
        ("uid" = String, Path, description = "User id (`usr-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
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
    teams::change_role(&ctx, &auth, uid, new_role).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a member (owner or admin; only the owner may remove an admin; the owner
/// is never removed).
#[utoipa::path(delete, path = "/v1/teams/{id}/members/{uid}", tag = tags::TEAMS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team"),
        ("uid" = String, Path, description = "User id (`usr-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn remove_member(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path((id, uid)): Path<(TeamId, UserId)>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    teams::remove_member(&ctx, &auth, uid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Leaves the team (everyone but the owner, who deletes the team instead).
#[utoipa::path(post, path = "/v1/teams/{id}/leave", tag = tags::TEAMS, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`); must be the token's team")),
    responses((status = 204), (status = 400), (status = 401), (status = 403)))]
async fn leave(
    State(ctx): State<ServerContext>,
    auth: UserAuth,
    Path(id): Path<TeamId>,
) -> ApiResult<StatusCode> {
    same_team(&auth, id)?;
    teams::leave(&ctx, &auth).await?;
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
