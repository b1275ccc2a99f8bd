//! [`BuildRepo`] on both backends: template builds and their logs.

use async_trait::async_trait;
use sqlx::types::Json;
use wrenn_core::id::{BuildId, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::model::{BuildStatus, TemplateBuild};
use wrenn_core::repo::{BuildRepo, RepoError, RepoResult};

use crate::backend::{Dialect, begin_write, for_each_backend, row_exists};
use crate::error::db;
use crate::rows::{BuildRow, convert_all};
use crate::timestamp::Ts;

/// Whether a build in `status` is finished.
fn is_final(status: BuildStatus) -> bool {
    matches!(
        status,
        BuildStatus::Success | BuildStatus::Failed | BuildStatus::Cancelled
    )
}

macro_rules! impl_build_repo {
    ($store:ty) => {
        #[async_trait]
        impl BuildRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(build_id = %build.id, team_id = %build.team_id))]
            async fn create_build(
                &self,
                build: TemplateBuild,
                archive: Option<&[u8]>,
            ) -> RepoResult<TemplateBuild> {
                let mut tx = begin_write!(self, "build")?;
                let row: BuildRow = sqlx::query_as(
                    "INSERT INTO template_builds (id, team_id, name, base_template, recipe, \
                       healthcheck, vcpus, memory_mb, status, current_step, total_steps, logs, \
                       error, sandbox_id, host_id, template_id, created_at, started_at, \
                       completed_at, skip_pre_post, default_user, default_env) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                             $16, $17, $18, $19, $20, $21, $22) \
                     RETURNING *",
                )
                .bind(build.id.uuid())
                .bind(build.team_id.uuid())
                .bind(&build.name)
                .bind(&build.base_template)
                .bind(Json(&build.recipe))
                .bind(&build.healthcheck)
                .bind(build.vcpus)
                .bind(build.memory_mb)
                .bind(build.status.as_str())
                .bind(build.current_step)
                .bind(build.total_steps)
                .bind(Json(&build.logs))
                .bind(&build.error)
                .bind(build.sandbox_id.map(|s| s.uuid()))
                .bind(build.host_id.map(|h| h.uuid()))
                .bind(build.template_id.map(|t| t.uuid()))
                .bind(Ts::from(build.created_at))
                .bind(build.started_at.map(Ts::from))
                .bind(build.completed_at.map(Ts::from))
                .bind(build.skip_pre_post)
                .bind(&build.default_user)
                .bind(Json(&build.default_env))
                .fetch_one(&mut *tx)
                .await
                .map_err(db("build"))?;
                if let Some(data) = archive {
                    sqlx::query(
                        "INSERT INTO build_archives (build_id, data, size_bytes) \
                         VALUES ($1, $2, $3)",
                    )
                    .bind(build.id.uuid())
                    .bind(data)
                    .bind(i64::try_from(data.len()).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await
                    .map_err(db("build archive"))?;
                }
                tx.commit().await.map_err(db("build"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(build_id = %id))]
            async fn build_archive(&self, id: BuildId) -> RepoResult<Option<Vec<u8>>> {
                let data: Option<(Vec<u8>,)> =
                    sqlx::query_as("SELECT data FROM build_archives WHERE build_id = $1")
                        .bind(id.uuid())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db("build archive"))?;
                Ok(data.map(|(d,)| d))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(build_id = %id))]
            async fn get_build(&self, id: BuildId) -> RepoResult<TemplateBuild> {
                let row: BuildRow = sqlx::query_as("SELECT * FROM template_builds WHERE id = $1")
                    .bind(id.uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("build"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_builds(&self, limit: u32) -> RepoResult<Vec<TemplateBuild>> {
                let rows: Vec<BuildRow> = sqlx::query_as(
                    "SELECT * FROM template_builds ORDER BY created_at DESC, id DESC LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db("build"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(build_id = %id, %expected, %status))]
            async fn build_status_if(
                &self,
                id: BuildId,
                expected: BuildStatus,
                status: BuildStatus,
                error: &str,
            ) -> RepoResult<Option<TemplateBuild>> {
                let row: Option<BuildRow> = sqlx::query_as(
                    "UPDATE template_builds SET status = $3, error = $4, \
                       started_at = CASE WHEN $5 AND started_at IS NULL THEN $7 \
                                         ELSE started_at END, \
                       completed_at = CASE WHEN $6 THEN $7 ELSE completed_at END \
                     WHERE id = $1 AND status = $2 RETURNING *",
                )
                .bind(id.uuid())
                .bind(expected.as_str())
                .bind(status.as_str())
                .bind(error)
                .bind(status == BuildStatus::Running)
                .bind(is_final(status))
                .bind(Ts::now())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("build"))?;
                if row.is_some() && is_final(status) {
                    sqlx::query("DELETE FROM build_archives WHERE build_id = $1")
                        .bind(id.uuid())
                        .execute(&self.pool)
                        .await
                        .map_err(db("build archive"))?;
                }
                match row {
                    Some(row) => Ok(Some(row.try_into()?)),
                    None if row_exists!(&self.pool, "template_builds", id.uuid())? => Ok(None),
                    None => Err(RepoError::not_found("build")),
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(build_id = %id, current_step, lines = lines.len()))]
            async fn append_build_logs(
                &self,
                id: BuildId,
                current_step: i32,
                lines: &[String],
            ) -> RepoResult<()> {
                let sql = format!(
                    "UPDATE template_builds SET logs = {}, current_step = $2 WHERE id = $1",
                    <$store as Dialect>::json_array_concat("logs", "$3")
                );
                let done = sqlx::query(&sql)
                    .bind(id.uuid())
                    .bind(current_step)
                    .bind(Json(lines))
                    .execute(&self.pool)
                    .await
                    .map_err(db("build"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("build"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(build_id = %id, sandbox_id = %sandbox, host_id = %host))]
            async fn set_build_sandbox(
                &self,
                id: BuildId,
                sandbox: SandboxId,
                host: HostId,
            ) -> RepoResult<()> {
                let done = sqlx::query(
                    "UPDATE template_builds SET sandbox_id = $2, host_id = $3 WHERE id = $1",
                )
                .bind(id.uuid())
                .bind(sandbox.uuid())
                .bind(host.uuid())
                .execute(&self.pool)
                .await
                .map_err(db("build"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("build"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(build_id = %id, template_id = %template))]
            async fn set_build_template(&self, id: BuildId, template: TemplateId) -> RepoResult<()> {
                let done = sqlx::query("UPDATE template_builds SET template_id = $2 WHERE id = $1")
                    .bind(id.uuid())
                    .bind(template.uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(db("build"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("build"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, name))]
            async fn active_build_for(
                &self,
                team: TeamId,
                name: &str,
            ) -> RepoResult<Option<TemplateBuild>> {
                let row: Option<BuildRow> = sqlx::query_as(
                    "SELECT * FROM template_builds \
                     WHERE name = $2 AND team_id IN ($1, $3) \
                       AND status IN ('pending', 'running') \
                     ORDER BY created_at DESC, id DESC LIMIT 1",
                )
                .bind(team.uuid())
                .bind(name)
                .bind(PLATFORM_TEAM_ID.uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("build"))?;
                row.map(TemplateBuild::try_from).transpose()
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn oldest_pending_build(&self) -> RepoResult<Option<TemplateBuild>> {
                let row: Option<BuildRow> = sqlx::query_as(
                    "SELECT * FROM template_builds WHERE status = 'pending' \
                     ORDER BY created_at, id LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await
                .map_err(db("build"))?;
                row.map(TemplateBuild::try_from).transpose()
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn fail_running_builds(&self, error: &str) -> RepoResult<u64> {
                let mut tx = begin_write!(self, "build")?;
                sqlx::query(
                    "DELETE FROM build_archives WHERE build_id IN \
                       (SELECT id FROM template_builds WHERE status = 'running')",
                )
                .execute(&mut *tx)
                .await
                .map_err(db("build archive"))?;
                let done = sqlx::query(
                    "UPDATE template_builds SET status = 'failed', error = $1, \
                       completed_at = $2 \
                     WHERE status = 'running'",
                )
                .bind(error)
                .bind(Ts::now())
                .execute(&mut *tx)
                .await
                .map_err(db("build"))?;
                tx.commit().await.map_err(db("build"))?;
                Ok(done.rows_affected())
            }
        }
    };
}

for_each_backend!(impl_build_repo);
