//! [`TemplateRepo`] on both backends: team and platform templates.

use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::types::Uuid;
use wrenn_core::id::{HostId, PLATFORM_TEAM_ID, TeamId, TemplateId};
use wrenn_core::model::{Template, TemplateKind};
use wrenn_core::repo::{NewTemplate, RepoError, RepoResult, TemplateRepo};

use crate::backend::{begin_write, for_each_backend};
use crate::error::db;
use crate::rows::{TemplateRow, convert_all};
use crate::timestamp::Ts;

/// Shared by create and upsert: the insert of a new, unprotected template.
const INSERT_TEMPLATE: &str = "\
    INSERT INTO templates (id, team_id, name, type, vcpus, memory_mb, size_bytes, \
                           default_user, default_env, metadata, protected, created_at, \
                           start_command, start_cwd) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, FALSE, $11, $12, $13)";

/// Records a host as holding a template's files (a repeat changes nothing).
const INSERT_TEMPLATE_HOST: &str = "\
    INSERT INTO template_hosts (template_id, host_id) VALUES ($1, $2) \
    ON CONFLICT (template_id, host_id) DO NOTHING";

macro_rules! impl_template_repo {
    ($store:ty) => {
        impl $store {
            /// Runs `INSERT_TEMPLATE` followed by `tail` (conflict clause, RETURNING).
            async fn insert_template(
                &self,
                template: &NewTemplate,
                tail: &str,
            ) -> RepoResult<Option<Template>> {
                let sql = format!("{INSERT_TEMPLATE} {tail}");
                let row: Option<TemplateRow> = sqlx::query_as(&sql)
                    .bind(template.id.uuid())
                    .bind(template.team_id.uuid())
                    .bind(&template.name)
                    .bind(template.kind.as_str())
                    .bind(template.vcpus)
                    .bind(template.memory_mb)
                    .bind(template.size_bytes)
                    .bind(&template.default_user)
                    .bind(Json(&template.default_env))
                    .bind(Json(&template.metadata))
                    .bind(Ts::now())
                    .bind(&template.start_command)
                    .bind(&template.start_cwd)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("template"))?;
                row.map(Template::try_from).transpose()
            }
        }

        #[async_trait]
        impl TemplateRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %template.team_id, name = %template.name))]
            async fn create_template(&self, template: NewTemplate) -> RepoResult<Template> {
                // The trigger rejects names reserved by platform templates (Conflict).
                self.insert_template(&template, "RETURNING *")
                    .await?
                    .ok_or(RepoError::not_found("template"))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %template.team_id, name = %template.name))]
            async fn upsert_template(&self, template: NewTemplate) -> RepoResult<Template> {
                // On a name clash the existing row (and its id) is updated in place,
                // unless it is protected.
                self.insert_template(
                    &template,
                    "ON CONFLICT (team_id, name) DO UPDATE SET \
                       type = excluded.type, vcpus = excluded.vcpus, \
                       memory_mb = excluded.memory_mb, size_bytes = excluded.size_bytes, \
                       default_user = excluded.default_user, \
                       default_env = excluded.default_env, metadata = excluded.metadata, \
                       start_command = excluded.start_command, \
                       start_cwd = excluded.start_cwd \
                     WHERE templates.protected = FALSE \
                     RETURNING *",
                )
                .await?
                .ok_or_else(|| {
                    RepoError::Conflict(format!(
                        "template {:?} is protected and cannot be replaced",
                        template.name
                    ))
                })
            }

            #[tracing::instrument(level = "debug", skip_all, fields(template_id = %id))]
            async fn get_template(&self, id: TemplateId) -> RepoResult<Template> {
                let row: TemplateRow = sqlx::query_as("SELECT * FROM templates WHERE id = $1")
                    .bind(id.uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("template"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, name))]
            async fn get_template_for_team(&self, team: TeamId, name: &str) -> RepoResult<Template> {
                let row: TemplateRow = sqlx::query_as(
                    "SELECT * FROM templates WHERE name = $2 AND team_id IN ($1, $3) \
                     ORDER BY CASE WHEN team_id = $1 THEN 0 ELSE 1 END LIMIT 1",
                )
                .bind(team.uuid())
                .bind(name)
                .bind(PLATFORM_TEAM_ID.uuid())
                .fetch_one(&self.pool)
                .await
                .map_err(db("template"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, ?kind))]
            async fn list_templates_for_team(
                &self,
                team: TeamId,
                kind: Option<TemplateKind>,
            ) -> RepoResult<Vec<Template>> {
                let rows: Vec<TemplateRow> = sqlx::query_as(
                    "SELECT * FROM templates \
                     WHERE team_id IN ($1, $2) AND ($3 IS NULL OR type = $3) \
                     ORDER BY created_at DESC, id DESC",
                )
                .bind(team.uuid())
                .bind(PLATFORM_TEAM_ID.uuid())
                .bind(kind.map(TemplateKind::as_str))
                .fetch_all(&self.pool)
                .await
                .map_err(db("template"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_all_templates(&self) -> RepoResult<Vec<Template>> {
                let rows: Vec<TemplateRow> =
                    sqlx::query_as("SELECT * FROM templates ORDER BY created_at DESC, id DESC")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db("template"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn list_team_owned_templates(&self, team: TeamId) -> RepoResult<Vec<Template>> {
                let rows: Vec<TemplateRow> = sqlx::query_as(
                    "SELECT * FROM templates WHERE team_id = $1 ORDER BY created_at DESC, id DESC",
                )
                .bind(team.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("template"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, template_id = %id))]
            async fn delete_template(&self, team: TeamId, id: TemplateId) -> RepoResult<bool> {
                let done = sqlx::query(
                    "DELETE FROM templates WHERE id = $1 AND team_id = $2 AND protected = FALSE",
                )
                .bind(id.uuid())
                .bind(team.uuid())
                .execute(&self.pool)
                .await
                .map_err(db("template"))?;
                Ok(done.rows_affected() > 0)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn delete_team_templates(&self, team: TeamId) -> RepoResult<u64> {
                let done =
                    sqlx::query("DELETE FROM templates WHERE team_id = $1 AND protected = FALSE")
                        .bind(team.uuid())
                        .execute(&self.pool)
                        .await
                        .map_err(db("template"))?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(template_id = %template, host_id = %host))]
            async fn set_template_origin(
                &self,
                template: TemplateId,
                host: HostId,
            ) -> RepoResult<()> {
                let mut tx = begin_write!(self, "template")?;
                sqlx::query("DELETE FROM template_hosts WHERE template_id = $1")
                    .bind(template.uuid())
                    .execute(&mut *tx)
                    .await
                    .map_err(db("template"))?;
                sqlx::query(INSERT_TEMPLATE_HOST)
                    .bind(template.uuid())
                    .bind(host.uuid())
                    .execute(&mut *tx)
                    .await
                    .map_err(db("template"))?;
                tx.commit().await.map_err(db("template"))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(template_id = %template, host_id = %host))]
            async fn add_template_host(&self, template: TemplateId, host: HostId) -> RepoResult<()> {
                sqlx::query(INSERT_TEMPLATE_HOST)
                    .bind(template.uuid())
                    .bind(host.uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(db("template"))?;
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(template_id = %template))]
            async fn template_hosts(&self, template: TemplateId) -> RepoResult<Vec<HostId>> {
                let rows: Vec<(Uuid,)> =
                    sqlx::query_as("SELECT host_id FROM template_hosts WHERE template_id = $1")
                        .bind(template.uuid())
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db("template"))?;
                Ok(rows.into_iter().map(|(h,)| HostId::from_uuid(h)).collect())
            }
        }
    };
}

for_each_backend!(impl_template_repo);
