//! [`ApiKeyRepo`] on both backends: team API keys (hashes only).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wrenn_core::id::{ApiKeyId, TeamId, UserId};
use wrenn_core::model::{ApiKey, ApiKeyWithCreator};
use wrenn_core::repo::{ApiKeyAuth, ApiKeyRepo, RepoResult};

use crate::backend::{begin_write, for_each_backend};
use crate::error::db;
use crate::rows::{ApiKeyAuthRow, ApiKeyRow, ApiKeyWithCreatorRow};
use crate::timestamp::Ts;

macro_rules! impl_api_key_repo {
    ($store:ty) => {
        #[async_trait]
        impl ApiKeyRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %key.team_id, api_key_id = %key.id))]
            async fn create_api_key(&self, key: ApiKey) -> RepoResult<ApiKey> {
                let row: ApiKeyRow = sqlx::query_as(
                    "INSERT INTO team_api_keys \
                       (id, team_id, name, key_hash, key_prefix, created_by, created_at, last_used) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
                )
                .bind(key.id.uuid())
                .bind(key.team_id.uuid())
                .bind(&key.name)
                .bind(&key.key_hash)
                .bind(&key.key_prefix)
                .bind(key.created_by.map(|u| u.uuid()))
                .bind(Ts::from(key.created_at))
                .bind(key.last_used.map(Ts::from))
                .fetch_one(&self.pool)
                .await
                .map_err(db("api key"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all)]
            async fn get_api_key_by_hash(&self, key_hash: &str) -> RepoResult<Option<ApiKeyAuth>> {
                let row: Option<ApiKeyAuthRow> = sqlx::query_as(
                    "SELECT k.*, t.is_byoc AS team_is_byoc \
                     FROM team_api_keys k JOIN teams t ON t.id = k.team_id \
                     WHERE k.key_hash = $1 AND t.deleted_at IS NULL",
                )
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("api key"))?;
                Ok(row.map(ApiKeyAuth::from))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn list_api_keys(&self, team: TeamId) -> RepoResult<Vec<ApiKeyWithCreator>> {
                // The creator may have been deleted (created_by is NULL then). A
                // correlated primary-key lookup rather than a join: its plan does not
                // depend on table statistics (a join may hash the whole users table).
                let rows: Vec<ApiKeyWithCreatorRow> = sqlx::query_as(
                    "SELECT k.*, (SELECT u.email FROM users u WHERE u.id = k.created_by) \
                     AS creator_email \
                     FROM team_api_keys k \
                     WHERE k.team_id = $1 ORDER BY k.created_at DESC, k.id DESC",
                )
                .bind(team.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("api key"))?;
                Ok(rows.into_iter().map(ApiKeyWithCreator::from).collect())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, api_key_id = %id))]
            async fn delete_api_key(&self, team: TeamId, id: ApiKeyId) -> RepoResult<bool> {
                let done = sqlx::query("DELETE FROM team_api_keys WHERE id = $1 AND team_id = $2")
                    .bind(id.uuid())
                    .bind(team.uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(db("api key"))?;
                Ok(done.rows_affected() > 0)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(keys = used.len()))]
            async fn touch_api_keys(&self, used: &[(ApiKeyId, DateTime<Utc>)]) -> RepoResult<()> {
                if used.is_empty() {
                    return Ok(());
                }
                let mut tx = begin_write!(self, "api key")?;
                for (id, at) in used {
                    // Never move last_used backwards (batches may arrive out of order).
                    sqlx::query(
                        "UPDATE team_api_keys SET last_used = $2 \
                         WHERE id = $1 AND (last_used IS NULL OR last_used < $2)",
                    )
                    .bind(id.uuid())
                    .bind(Ts::from(*at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db("api key"))?;
                }
                tx.commit().await.map_err(db("api key"))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user))]
            async fn delete_api_keys_by_creator(&self, user: UserId) -> RepoResult<u64> {
                let done = sqlx::query("DELETE FROM team_api_keys WHERE created_by = $1")
                    .bind(user.uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(db("api key"))?;
                Ok(done.rows_affected())
            }
        }
    };
}

for_each_backend!(impl_api_key_repo);
