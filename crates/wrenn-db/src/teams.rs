//! [`TeamRepo`] on both backends: teams, memberships and the team-deletion purge.

use async_trait::async_trait;
use wrenn_core::auth::Role;
use wrenn_core::id::{TeamId, UserId};
use wrenn_core::model::{Member, Membership, Team, TeamWithRole};
use wrenn_core::repo::{NewTeam, RepoError, RepoResult, TeamRepo};

use crate::backend::{begin_write, for_each_backend, lock_identity, row_exists};
use crate::error::db;
use crate::rows::{MemberRow, MembershipRow, TeamRow, TeamWithRoleRow, convert_all};
use crate::timestamp::Ts;

macro_rules! impl_team_repo {
    ($store:ty) => {
        #[async_trait]
        impl TeamRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team.id, user_id = %owner))]
            async fn create_team(
                &self,
                team: NewTeam,
                owner: UserId,
                is_default: bool,
            ) -> RepoResult<Team> {
                let now = Ts::now();
                let mut tx = begin_write!(self, "team")?;
                if is_default {
                    sqlx::query(
                        "UPDATE users_teams SET is_default = FALSE \
                         WHERE user_id = $1 AND is_default",
                    )
                    .bind(owner.uuid())
                    .execute(&mut *tx)
                    .await
                    .map_err(db("membership"))?;
                }
                let row: TeamRow = sqlx::query_as(
                    "INSERT INTO teams (id, name, slug, is_byoc, created_at) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING *",
                )
                .bind(team.id.uuid())
                .bind(&team.name)
                .bind(&team.slug)
                .bind(team.is_byoc)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("team"))?;
                sqlx::query(
                    "INSERT INTO users_teams (user_id, team_id, role, is_default, created_at) \
                     VALUES ($1, $2, 'owner', $3, $4)",
                )
                .bind(owner.uuid())
                .bind(team.id.uuid())
                .bind(is_default)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db("team owner"))?;
                tx.commit().await.map_err(db("team"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %id))]
            async fn get_team(&self, id: TeamId) -> RepoResult<Team> {
                let row: TeamRow = sqlx::query_as("SELECT * FROM teams WHERE id = $1")
                    .bind(id.uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("team"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn get_team_by_slug(&self, slug: &str) -> RepoResult<Team> {
                let row: TeamRow = sqlx::query_as("SELECT * FROM teams WHERE slug = $1")
                    .bind(slug)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("team"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %id))]
            async fn rename_team(&self, id: TeamId, name: &str) -> RepoResult<Team> {
                let row: TeamRow = sqlx::query_as(
                    "UPDATE teams SET name = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING *",
                )
                .bind(id.uuid())
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .map_err(db("team"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %id, is_byoc))]
            async fn set_team_byoc(&self, id: TeamId, is_byoc: bool) -> RepoResult<Team> {
                let row: TeamRow = sqlx::query_as(
                    "UPDATE teams SET is_byoc = $2 WHERE id = $1 AND deleted_at IS NULL \
                     RETURNING *",
                )
                .bind(id.uuid())
                .bind(is_byoc)
                .fetch_one(&self.pool)
                .await
                .map_err(db("team"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %id))]
            async fn soft_delete_team(&self, id: TeamId) -> RepoResult<bool> {
                let done = sqlx::query(
                    "UPDATE teams SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(id.uuid())
                .bind(Ts::now())
                .execute(&self.pool)
                .await
                .map_err(db("team"))?;
                if done.rows_affected() > 0 {
                    return Ok(true);
                }
                if row_exists!(&self.pool, "teams", id.uuid())? {
                    Ok(false)
                } else {
                    Err(RepoError::not_found("team"))
                }
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_teams(
                &self,
                include_deleted: bool,
                limit: u32,
                offset: u32,
            ) -> RepoResult<Vec<Team>> {
                let rows: Vec<TeamRow> = sqlx::query_as(
                    "SELECT * FROM teams WHERE ($1 OR deleted_at IS NULL) \
                     ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
                )
                .bind(include_deleted)
                .bind(i64::from(limit))
                .bind(i64::from(offset))
                .fetch_all(&self.pool)
                .await
                .map_err(db("team"))?;
                Ok(rows.into_iter().map(Team::from).collect())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user))]
            async fn list_teams_for_user(&self, user: UserId) -> RepoResult<Vec<TeamWithRole>> {
                let rows: Vec<TeamWithRoleRow> = sqlx::query_as(
                    "SELECT t.*, ut.role, ut.is_default FROM users_teams ut \
                     JOIN teams t ON t.id = ut.team_id \
                     WHERE ut.user_id = $1 AND t.deleted_at IS NULL \
                     ORDER BY ut.created_at, t.id",
                )
                .bind(user.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("team"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user))]
            async fn default_team_for_user(
                &self,
                user: UserId,
            ) -> RepoResult<Option<TeamWithRole>> {
                let row: Option<TeamWithRoleRow> = sqlx::query_as(
                    "SELECT t.*, ut.role, ut.is_default FROM users_teams ut \
                     JOIN teams t ON t.id = ut.team_id \
                     WHERE ut.user_id = $1 AND t.deleted_at IS NULL \
                     ORDER BY ut.is_default DESC, ut.created_at, t.id LIMIT 1",
                )
                .bind(user.uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("team"))?;
                row.map(TeamWithRole::try_from).transpose()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, user_id = %user))]
            async fn get_membership(
                &self,
                team: TeamId,
                user: UserId,
            ) -> RepoResult<Option<Membership>> {
                let row: Option<MembershipRow> = sqlx::query_as(
                    "SELECT ut.* FROM users_teams ut JOIN teams t ON t.id = ut.team_id \
                     WHERE ut.team_id = $1 AND ut.user_id = $2 AND t.deleted_at IS NULL",
                )
                .bind(team.uuid())
                .bind(user.uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("membership"))?;
                row.map(Membership::try_from).transpose()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, user_id = %user, %role))]
            async fn add_member(
                &self,
                team: TeamId,
                user: UserId,
                role: Role,
            ) -> RepoResult<Membership> {
                if role == Role::Owner {
                    return Err(RepoError::Invalid(
                        "a team's owner is set when the team is created; add members as \
                         admin or member"
                            .into(),
                    ));
                }
                let mut tx = begin_write!(self, "membership")?;
                // Serialised with account deletions: no member joins a team whose
                // owner is being deleted.
                lock_identity!(tx, "membership")?;
                // Inserting through a SELECT on live teams with a live owner: a deleted
                // or unknown team (or one whose owner deleted their account) inserts
                // nothing.
                let row: Option<MembershipRow> = sqlx::query_as(
                    "INSERT INTO users_teams (user_id, team_id, role, is_default, created_at) \
                     SELECT $1, t.id, $3, FALSE, $4 FROM teams t \
                     WHERE t.id = $2 AND t.deleted_at IS NULL \
                       AND NOT EXISTS (SELECT 1 FROM users_teams ow JOIN users u \
                                       ON u.id = ow.user_id WHERE ow.team_id = t.id \
                                       AND ow.role = 'owner' AND u.deleted_at IS NOT NULL) \
                     RETURNING *",
                )
                .bind(user.uuid())
                .bind(team.uuid())
                .bind(role.as_str())
                .bind(Ts::now())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("membership"))?;
                tx.commit().await.map_err(db("membership"))?;
                row.ok_or(RepoError::not_found("team"))?.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, user_id = %user))]
            async fn remove_member(&self, team: TeamId, user: UserId) -> RepoResult<bool> {
                let done = sqlx::query("DELETE FROM users_teams WHERE team_id = $1 AND user_id = $2")
                    .bind(team.uuid())
                    .bind(user.uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(db("membership"))?;
                Ok(done.rows_affected() > 0)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, user_id = %user, %expected, %role))]
            async fn update_member_role_if(
                &self,
                team: TeamId,
                user: UserId,
                expected: Role,
                role: Role,
            ) -> RepoResult<Option<Membership>> {
                if role == Role::Owner {
                    return Err(RepoError::Invalid(
                        "a member's role can only be set to admin or member".into(),
                    ));
                }
                let row: Option<MembershipRow> = sqlx::query_as(
                    "UPDATE users_teams SET role = $4 \
                     WHERE team_id = $1 AND user_id = $2 AND role = $3 AND role <> 'owner' \
                       AND team_id IN (SELECT id FROM teams WHERE deleted_at IS NULL) \
                     RETURNING *",
                )
                .bind(team.uuid())
                .bind(user.uuid())
                .bind(expected.as_str())
                .bind(role.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("membership"))?;
                match row {
                    Some(row) => Ok(Some(row.try_into()?)),
                    None if self.get_membership(team, user).await?.is_some() => Ok(None),
                    None => Err(RepoError::not_found("membership")),
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn list_members(&self, team: TeamId) -> RepoResult<Vec<Member>> {
                let rows: Vec<MemberRow> = sqlx::query_as(
                    "SELECT u.id AS user_id, u.email, u.name, ut.role, ut.created_at AS joined_at \
                     FROM users_teams ut JOIN users u ON u.id = ut.user_id \
                     WHERE ut.team_id = $1 \
                     ORDER BY CASE WHEN ut.role = 'owner' THEN 0 ELSE 1 END, ut.created_at, u.id",
                )
                .bind(team.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("member"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user))]
            async fn list_sole_owned_teams(&self, user: UserId) -> RepoResult<Vec<Team>> {
                let rows: Vec<TeamRow> = sqlx::query_as(
                    "SELECT t.* FROM teams t JOIN users_teams ut ON ut.team_id = t.id \
                     WHERE ut.user_id = $1 AND ut.role = 'owner' AND t.deleted_at IS NULL \
                       AND NOT EXISTS (SELECT 1 FROM users_teams o \
                                       WHERE o.team_id = t.id AND o.user_id <> $1) \
                     ORDER BY t.created_at, t.id",
                )
                .bind(user.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("team"))?;
                Ok(rows.into_iter().map(Team::from).collect())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user))]
            async fn count_owned_teams_with_other_members(&self, user: UserId) -> RepoResult<i64> {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM teams t JOIN users_teams ut ON ut.team_id = t.id \
                     WHERE ut.user_id = $1 AND ut.role = 'owner' AND t.deleted_at IS NULL \
                       AND EXISTS (SELECT 1 FROM users_teams o \
                                   WHERE o.team_id = t.id AND o.user_id <> $1)",
                )
                .bind(user.uuid())
                .fetch_one(&self.pool)
                .await
                .map_err(db("team"))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn purge_team_data(&self, team: TeamId) -> RepoResult<u64> {
                const PURGES: [(&str, &str); 4] = [
                    (
                        "metric point",
                        "DELETE FROM sandbox_metric_points WHERE sandbox_id IN \
                         (SELECT id FROM sandboxes WHERE team_id = $1)",
                    ),
                    (
                        "metrics snapshot",
                        "DELETE FROM sandbox_metrics_snapshots WHERE team_id = $1",
                    ),
                    ("api key", "DELETE FROM team_api_keys WHERE team_id = $1"),
                    ("channel", "DELETE FROM channels WHERE team_id = $1"),
                ];
                let mut tx = begin_write!(self, "team")?;
                let mut removed = 0;
                for (entity, sql) in PURGES {
                    let done = sqlx::query(sql)
                        .bind(team.uuid())
                        .execute(&mut *tx)
                        .await
                        .map_err(db(entity))?;
                    removed += done.rows_affected();
                }
                tx.commit().await.map_err(db("team"))?;
                Ok(removed)
            }
        }
    };
}

for_each_backend!(impl_team_repo);
