//! Platform administration (`/v1/admin/*`): users, teams, templates and the
//! platform audit trail. Every route needs a platform admin; the flag is re-read
//! from the database on each request ([`AdminAuth`]). Changes are recorded in the
//! platform team's trail with scope `admin`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::audit::AuditScope;
use wrenn_core::auth::Role;
use wrenn_core::id::{PLATFORM_TEAM_ID, TeamId, UserId};
use wrenn_core::model::{Team, Template, User, UserStatus};
use wrenn_extension::extract::{Json, Path, Query};
use wrenn_extension::{AdminAuth, ApiError, ApiResult, ServerContext};

use super::audit::{self, AuditPage, AuditParams};
use super::tags;
use crate::{accounts, teams};

/// Page size of the admin lists.
pub const ADMIN_PAGE_SIZE: u32 = 100;

/// `?page=` (1-based, default 1).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1.
    page: Option<u32>,
}

/// Where a page starts, with the 1-based page number.
fn page_bounds(q: &PageQuery) -> Result<(u32, usize), ApiError> {
    let page = q.page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError::bad_request("page starts at 1"));
    }
    let start = (page as usize - 1).saturating_mul(ADMIN_PAGE_SIZE as usize);
    Ok((page, start))
}

fn total_pages(total: usize) -> u64 {
    total.div_ceil(ADMIN_PAGE_SIZE as usize) as u64
}

/// A user as admins see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdminUser {
    /// `usr-…`.
    #[schema(value_type = String)]
    pub id: UserId,
    /// Email.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Platform admin.
    pub is_admin: bool,
    /// `active`, `inactive`, `disabled` or `deleted`.
    #[schema(value_type = String)]
    pub status: UserStatus,
    /// Sign-up time.
    pub created_at: DateTime<Utc>,
    /// Live teams the user belongs to.
    pub teams_joined: usize,
    /// Live teams the user owns.
    pub teams_owned: usize,
}

/// A page of users.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdminUserPage {
    /// Users, newest first.
    pub users: Vec<AdminUser>,
    /// Users in all pages.
    pub total: u64,
    /// This page (from 1).
    pub page: u32,
    /// Page size.
    pub per_page: u32,
    /// Number of pages.
    pub total_pages: u64,
}

/// A team as admins see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdminTeam {
    /// `team-…`.
    #[schema(value_type = String)]
    pub id: TeamId,
    /// Name.
    pub name: String,
    /// Slug.
    pub slug: String,
    /// Runs on its own hosts.
    pub is_byoc: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Deletion time (deleted teams are listed too).
    pub deleted_at: Option<DateTime<Utc>>,
    /// Members.
    pub member_count: usize,
    /// The owner's name (empty for the platform team).
    pub owner_name: String,
    /// The owner's email (empty for the platform team).
    pub owner_email: String,
    /// Capsules holding resources (running, paused, hibernated, …).
    pub active_sandbox_count: usize,
    /// Notification channels.
    pub channel_count: usize,
}

/// A page of teams.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdminTeamPage {
    /// Teams, newest first.
    pub teams: Vec<AdminTeam>,
    /// Teams in all pages.
    pub total: u64,
    /// This page (from 1).
    pub page: u32,
    /// Page size.
    pub per_page: u32,
    /// Number of pages.
    pub total_pages: u64,
}

/// A template of any team.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdminTemplate {
    /// Name.
    pub name: String,
    /// `base` or `snapshot`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// vCPUs.
    pub vcpus: i32,
    /// Memory (MiB).
    pub memory_mb: i32,
    /// Size on disk.
    pub size_bytes: i64,
    /// Owning team (the platform team for built-in templates).
    #[schema(value_type = String)]
    pub team_id: TeamId,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<Template> for AdminTemplate {
    fn from(t: Template) -> Self {
        Self {
            name: t.name,
            kind: t.kind.as_str(),
            vcpus: t.vcpus,
            memory_mb: t.memory_mb,
            size_bytes: t.size_bytes,
            team_id: t.team_id,
            created_at: t.created_at,
        }
    }
}

/// `PUT /v1/admin/users/{id}/active` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetActive {
    /// `true` activates the account, `false` disables it.
    pub active: bool,
}

/// `PUT /v1/admin/teams/{id}/byoc` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetByoc {
    /// Must be `true`: BYOC cannot be turned off once on.
    pub enabled: bool,
}

async fn admin_user(ctx: &ServerContext, u: User) -> Result<AdminUser, ApiError> {
    let teams = ctx.store.list_teams_for_user(u.id).await?;
    Ok(AdminUser {
        id: u.id,
        email: u.email,
        name: u.name,
        is_admin: u.is_admin,
        status: u.status,
        created_at: u.created_at,
        teams_joined: teams.len(),
        teams_owned: teams.iter().filter(|t| t.role == Role::Owner).count(),
    })
}

async fn admin_team(ctx: &ServerContext, t: Team) -> Result<AdminTeam, ApiError> {
    let members = ctx.store.list_members(t.id).await?;
    let owner = members.iter().find(|m| m.role == Role::Owner);
    let active = ctx.store.list_active_sandboxes_by_team(t.id).await?.len();
    let channels = ctx.store.list_channels(t.id).await?.len();
    Ok(AdminTeam {
        owner_name: owner.map(|o| o.name.clone()).unwrap_or_default(),
        owner_email: owner.map(|o| o.email.clone()).unwrap_or_default(),
        member_count: members.len(),
        active_sandbox_count: active,
        channel_count: channels,
        id: t.id,
        name: t.name,
        slug: t.slug,
        is_byoc: t.is_byoc,
        created_at: t.created_at,
        deleted_at: t.deleted_at,
    })
}

/// Every account (deleted ones included until they are purged), newest first,
/// 100 per page.
#[utoipa::path(get, path = "/v1/admin/users", tag = tags::ADMIN, security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = AdminUserPage), (status = 400), (status = 401), (status = 403)))]
async fn list_users(
    State(ctx): State<ServerContext>,
    _auth: AdminAuth,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<AdminUserPage>> {
    let (page, start) = page_bounds(&q)?;
    // The store has no count of all users (deleted ones included), so the admin
    // view reads the user list once and pages it here.
    let all = ctx.store.list_users(u32::MAX, 0).await?;
    let total = all.len();
    let mut users = Vec::new();
    for u in all.into_iter().skip(start).take(ADMIN_PAGE_SIZE as usize) {
        users.push(admin_user(&ctx, u).await?);
    }
    Ok(Json(AdminUserPage {
        users,
        total: total as u64,
        page,
        per_page: ADMIN_PAGE_SIZE,
        total_pages: total_pages(total),
    }))
}

/// Activates or disables an account. Disabling also deletes the API keys the user
/// created and destroys the capsules of every team they own; it takes effect on
/// their next request. Admins cannot disable themselves.
#[utoipa::path(put, path = "/v1/admin/users/{id}/active", tag = tags::ADMIN, security(("bearer" = [])), request_body = SetActive,
    params(("id" = String, Path, description = "User id (`usr-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn set_user_active(
    State(ctx): State<ServerContext>,
    auth: AdminAuth,
    Path(id): Path<UserId>,
    Json(body): Json<SetActive>,
) -> ApiResult<StatusCode> {
    accounts::set_active(&ctx, &auth.0, id, body.active).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every team (deleted ones included), newest first, 100 per page.
#[utoipa::path(get, path = "/v1/admin/teams", tag = tags::ADMIN, security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = AdminTeamPage), (status = 400), (status = 401), (status = 403)))]
async fn list_teams(
    State(ctx): State<ServerContext>,
    _auth: AdminAuth,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<AdminTeamPage>> {
    let (page, start) = page_bounds(&q)?;
    // As for users: no count in the store, so the list is read once and paged here.
    let all = ctx.store.list_teams(true, u32::MAX, 0).await?;
    let total = all.len();
    let mut teams = Vec::new();
    for t in all.into_iter().skip(start).take(ADMIN_PAGE_SIZE as usize) {
        teams.push(admin_team(&ctx, t).await?);
    }
    Ok(Json(AdminTeamPage {
        teams,
        total: total as u64,
        page,
        per_page: ADMIN_PAGE_SIZE,
        total_pages: total_pages(total),
    }))
}

/// Turns BYOC on for a team (one-way: it cannot be turned off).
#[utoipa::path(put, path = "/v1/admin/teams/{id}/byoc", tag = tags::ADMIN, security(("bearer" = [])), request_body = SetByoc,
    params(("id" = String, Path, description = "Team id (`team-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn set_byoc(
    State(ctx): State<ServerContext>,
    auth: AdminAuth,
    Path(id): Path<TeamId>,
    Json(body): Json<SetByoc>,
) -> ApiResult<StatusCode> {
    teams::set_byoc(&ctx, &auth.0.actor(), id, body.enabled).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes any team (not the platform team), exactly as its owner would.
#[utoipa::path(delete, path = "/v1/admin/teams/{id}", tag = tags::ADMIN, security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id (`team-…`)")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
async fn delete_team(
    State(ctx): State<ServerContext>,
    auth: AdminAuth,
    Path(id): Path<TeamId>,
) -> ApiResult<StatusCode> {
    teams::delete_team_core(&ctx, id, &auth.0.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every team's templates.
#[utoipa::path(get, path = "/v1/admin/templates", tag = tags::ADMIN, security(("bearer" = [])),
    responses((status = 200, body = [AdminTemplate]), (status = 401), (status = 403)))]
async fn list_templates(
    State(ctx): State<ServerContext>,
    _auth: AdminAuth,
) -> ApiResult<Json<Vec<AdminTemplate>>> {
    let templates = ctx.store.list_all_templates().await?;
    Ok(Json(templates.into_iter().map(Into::into).collect()))
}

/// Deletes a platform template: its row, then its files on every online host.
/// Refused (409) while capsules made from it still exist; the built-in template
/// cannot be deleted (403).
#[utoipa::path(delete, path = "/v1/admin/templates/{name}", tag = tags::ADMIN, security(("bearer" = [])),
    params(("name" = String, Path, description = "Platform template name")),
    responses((status = 204), (status = 401), (status = 403), (status = 404), (status = 409)))]
async fn delete_template(
    State(ctx): State<ServerContext>,
    auth: AdminAuth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    crate::templates::delete_platform_template(&ctx, &name, &auth.0.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The platform's audit trail (admin actions, team deletions), same shape and
/// paging as `GET /v1/audit-logs`.
#[utoipa::path(get, path = "/v1/admin/audit-logs", tag = tags::ADMIN, security(("bearer" = [])), params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400), (status = 401), (status = 403)))]
async fn audit_logs(
    State(ctx): State<ServerContext>,
    _auth: AdminAuth,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<AuditPage>> {
    let scopes = vec![AuditScope::Team, AuditScope::Admin];
    Ok(Json(
        audit::page(&ctx, PLATFORM_TEAM_ID, scopes, &pairs).await?,
    ))
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(set_user_active))
        .routes(routes!(list_teams))
        .routes(routes!(set_byoc))
        .routes(routes!(delete_team))
        .routes(routes!(list_templates))
        .routes(routes!(delete_template))
        .routes(routes!(audit_logs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_at_one() {
        assert!(page_bounds(&PageQuery { page: Some(0) }).is_err());
        assert_eq!(page_bounds(&PageQuery { page: None }).unwrap(), (1, 0));
        assert_eq!(page_bounds(&PageQuery { page: Some(3) }).unwrap(), (3, 200));
        assert_eq!(total_pages(0), 0);
        assert_eq!(total_pages(100), 1);
        assert_eq!(total_pages(101), 2);
    }
}
