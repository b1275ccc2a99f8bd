//! [`SandboxRepo`] on both backends. Every status change is a single conditional
//! `UPDATE … WHERE id = … AND status = … RETURNING`, so of several concurrent writers
//! exactly one wins and the others see `None`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;
use wrenn_core::id::{HostId, SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{Metadata, MetricsSnapshot, NewSandbox, ProxyTarget, Sandbox};
use wrenn_core::repo::{
    FAILURE_METADATA_KEY, Quota, RepoError, RepoResult, SandboxCount, SandboxRepo,
};

use crate::backend::{Dialect, begin_write, for_each_backend, push_in, row_exists};
use crate::error::db;
use crate::rows::{ProxyTargetRow, SandboxCountRow, SandboxRow, UsageSampleRow, convert_all};
use crate::timestamp::Ts;

/// Ids per statement in bulk updates (well under both backends' parameter limits).
const BULK_CHUNK: usize = 500;

/// Statuses `mark_host_sandboxes_missing` moves to `missing`: those whose sandbox is
/// (or is about to be) live on the host and may legally become `missing`.
const GOES_MISSING: &str =
    "('pending', 'starting', 'running', 'pausing', 'resuming', 'snapshotting')";

/// [`QUOTA_STATUSES`] as an SQL list (a unit test keeps them equal).
const QUOTA_LIVE: &str =
    "('pending', 'starting', 'running', 'pausing', 'paused', 'resuming', 'snapshotting')";

/// The insert of a sandbox row (`insert_sandbox` and its quota-checked variant).
const INSERT_SANDBOX: &str = "INSERT INTO sandboxes (id, team_id, host_id, template, template_id, \
       template_team_id, status, vcpus, memory_mb, timeout_sec, disk_size_mb, \
       created_at, last_updated, metadata) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13) \
     RETURNING *";

/// [`INSERT_SANDBOX`] with the fields of `$sandbox` (a [`NewSandbox`]) bound, ready
/// to fetch its row: the one place a new sandbox's fields meet the insert's columns.
macro_rules! insert_sandbox_query {
    ($sandbox:expr) => {{
        let sandbox: &NewSandbox = &$sandbox;
        sqlx::query_as(INSERT_SANDBOX)
            .bind(sandbox.id.uuid())
            .bind(sandbox.team_id.uuid())
            .bind(sandbox.host_id.uuid())
            .bind(&sandbox.template)
            .bind(sandbox.template_id.uuid())
            .bind(sandbox.template_team_id.uuid())
            .bind(sandbox.status.as_str())
            .bind(sandbox.resources.vcpus)
            .bind(sandbox.resources.memory_mb)
            .bind(sandbox.timeout_sec)
            .bind(sandbox.resources.disk_size_mb)
            .bind(Ts::now())
            .bind(Json(&sandbox.metadata))
    }};
}

/// Per-team reservation: running/starting count fully, paused at half memory
/// (rounded up, as `CEIL(memory_mb / 2)`).
pub(crate) const TEAM_USAGE: &str = "\
    SELECT team_id, \
      COALESCE(SUM(CASE WHEN status IN ('running', 'starting') THEN 1 ELSE 0 END), 0) \
        AS running_count, \
      COALESCE(SUM(CASE WHEN status IN ('running', 'starting') THEN vcpus ELSE 0 END), 0) \
        AS vcpus_reserved, \
      COALESCE(SUM(CASE WHEN status IN ('running', 'starting') THEN memory_mb \
                        WHEN status = 'paused' THEN (memory_mb + 1) / 2 \
                        ELSE 0 END), 0) AS memory_mb_reserved \
    FROM sandboxes GROUP BY team_id ORDER BY team_id";

/// Inside the write transaction `$tx` of store `$store`: locks the row of team
/// `$team` (a `Uuid`; Postgres `FOR UPDATE`, SQLite's write transaction is already
/// exclusive), so quota checks of one team are serialised across replicas, and
/// evaluates to `RepoResult<i64>`: its sandboxes in a quota status.
macro_rules! lock_and_count_live {
    ($store:ty, $tx:expr, $team:expr) => {
        async {
            let sql = format!(
                "SELECT 1 FROM teams WHERE id = $1{}",
                <$store as Dialect>::LOCK_ROWS
            );
            let found: Option<i32> = sqlx::query_scalar(&sql)
                .bind($team)
                .fetch_optional(&mut *$tx)
                .await
                .map_err(db("team"))?;
            if found.is_none() {
                return Err(RepoError::not_found("team"));
            }
            let sql = format!(
                "SELECT COUNT(*) FROM sandboxes WHERE team_id = $1 AND status IN {QUOTA_LIVE}"
            );
            sqlx::query_scalar::<_, i64>(&sql)
                .bind($team)
                .fetch_one(&mut *$tx)
                .await
                .map_err(db("sandbox"))
        }
    };
}

macro_rules! impl_sandbox_repo {
    ($store:ty) => {
        impl $store {
            /// NotFound when the sandbox does not exist, `Ok(None)` when it does (the
            /// caller's conditional update lost the race).
            async fn lost_race(&self, id: SandboxId) -> RepoResult<Option<Sandbox>> {
                if row_exists!(&self.pool, "sandboxes", id.uuid())? {
                    Ok(None)
                } else {
                    Err(RepoError::not_found("sandbox"))
                }
            }
        }

        #[async_trait]
        impl SandboxRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %sandbox.id, team_id = %sandbox.team_id, host_id = %sandbox.host_id))]
            async fn insert_sandbox(&self, sandbox: NewSandbox) -> RepoResult<Sandbox> {
                let row: SandboxRow = insert_sandbox_query!(sandbox)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id))]
            async fn get_sandbox(&self, id: SandboxId) -> RepoResult<Sandbox> {
                let row: SandboxRow = sqlx::query_as("SELECT * FROM sandboxes WHERE id = $1")
                    .bind(id.uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, sandbox_id = %id))]
            async fn get_team_sandbox(&self, team: TeamId, id: SandboxId) -> RepoResult<Sandbox> {
                let row: SandboxRow =
                    sqlx::query_as("SELECT * FROM sandboxes WHERE id = $1 AND team_id = $2")
                        .bind(id.uuid())
                        .bind(team.uuid())
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db("sandbox"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn list_sandboxes(&self, team: TeamId) -> RepoResult<Vec<Sandbox>> {
                let rows: Vec<SandboxRow> = sqlx::query_as(
                    "SELECT * FROM sandboxes \
                     WHERE team_id = $1 AND status NOT IN ('stopped', 'error') \
                     ORDER BY created_at DESC, id DESC",
                )
                .bind(team.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("sandbox"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn list_active_sandboxes_by_team(&self, team: TeamId) -> RepoResult<Vec<Sandbox>> {
                let rows: Vec<SandboxRow> = sqlx::query_as(
                    "SELECT * FROM sandboxes \
                     WHERE team_id = $1 AND status IN ('pending', 'starting', 'running', \
                       'pausing', 'paused', 'resuming', 'snapshotting', 'hibernated', 'missing') \
                     ORDER BY created_at, id",
                )
                .bind(team.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("sandbox"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(template_id = %template))]
            async fn list_active_sandboxes_from_template(
                &self,
                template: TemplateId,
            ) -> RepoResult<Vec<Sandbox>> {
                let rows: Vec<SandboxRow> = sqlx::query_as(
                    "SELECT * FROM sandboxes \
                     WHERE template_id = $1 AND status IN ('pending', 'starting', 'running', \
                       'pausing', 'paused', 'resuming', 'snapshotting', 'hibernated', 'missing') \
                     ORDER BY created_at, id",
                )
                .bind(template.uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(db("sandbox"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, ?statuses))]
            async fn list_sandboxes_by_host(
                &self,
                host: HostId,
                statuses: &[SandboxStatus],
            ) -> RepoResult<Vec<Sandbox>> {
                if statuses.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb = sqlx::QueryBuilder::<<$store as Dialect>::Db>::new(
                    "SELECT * FROM sandboxes WHERE host_id = ",
                );
                qb.push_bind(host.uuid()).push(" AND status IN ");
                push_in!(qb, statuses.iter().map(|s| s.as_str()));
                qb.push(" ORDER BY created_at, id");
                let rows: Vec<SandboxRow> = qb
                    .build_query_as()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_sandboxes_stuck(
                &self,
                statuses: &[SandboxStatus],
                before: DateTime<Utc>,
            ) -> RepoResult<Vec<Sandbox>> {
                if statuses.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb = sqlx::QueryBuilder::<<$store as Dialect>::Db>::new(
                    "SELECT * FROM sandboxes WHERE status IN ",
                );
                push_in!(qb, statuses.iter().map(|s| s.as_str()));
                qb.push(" AND last_updated < ")
                    .push_bind(Ts::from(before))
                    .push(" ORDER BY last_updated, id");
                let rows: Vec<SandboxRow> = qb
                    .build_query_as()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id, %expected, %to))]
            async fn status_if(
                &self,
                id: SandboxId,
                expected: SandboxStatus,
                to: SandboxStatus,
            ) -> RepoResult<Option<Sandbox>> {
                let row: Option<SandboxRow> = sqlx::query_as(
                    "UPDATE sandboxes SET status = $3, last_updated = $4 \
                     WHERE id = $1 AND status = $2 RETURNING *",
                )
                .bind(id.uuid())
                .bind(expected.as_str())
                .bind(to.as_str())
                .bind(Ts::now())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("sandbox"))?;
                match row {
                    Some(row) => Ok(Some(row.try_into()?)),
                    None => self.lost_race(id).await,
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id, %from, %to))]
            async fn rehost_if_starting(
                &self,
                id: SandboxId,
                from: HostId,
                to: HostId,
            ) -> RepoResult<Option<Sandbox>> {
                let row: Option<SandboxRow> = sqlx::query_as(
                    "UPDATE sandboxes SET host_id = $3, last_updated = $4 \
                     WHERE id = $1 AND host_id = $2 AND status = 'starting' RETURNING *",
                )
                .bind(id.uuid())
                .bind(from.uuid())
                .bind(to.uuid())
                .bind(Ts::now())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("sandbox"))?;
                match row {
                    Some(row) => Ok(Some(row.try_into()?)),
                    None => self.lost_race(id).await,
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id, %expected, host_ip))]
            async fn running_if(
                &self,
                id: SandboxId,
                expected: SandboxStatus,
                host_ip: &str,
                metadata: &Metadata,
            ) -> RepoResult<Option<Sandbox>> {
                let sql = format!(
                    "UPDATE sandboxes SET status = 'running', host_ip = $3, started_at = $4, \
                       last_active_at = $4, last_updated = $4, metadata = {} \
                     WHERE id = $1 AND status = $2 RETURNING *",
                    <$store as Dialect>::json_merge("metadata", "$5")
                );
                let row: Option<SandboxRow> = sqlx::query_as(&sql)
                    .bind(id.uuid())
                    .bind(expected.as_str())
                    .bind(host_ip)
                    .bind(Ts::now())
                    .bind(Json(metadata))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                match row {
                    Some(row) => Ok(Some(row.try_into()?)),
                    None => self.lost_race(id).await,
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id, %expected))]
            async fn fail_if(
                &self,
                id: SandboxId,
                expected: SandboxStatus,
                reason: &str,
            ) -> RepoResult<Option<Sandbox>> {
                let sql = format!(
                    "UPDATE sandboxes SET status = 'error', last_updated = $3, metadata = {} \
                     WHERE id = $1 AND status = $2 RETURNING *",
                    <$store as Dialect>::json_merge("metadata", "$4")
                );
                let mut failure = Metadata::new();
                failure.insert(FAILURE_METADATA_KEY.to_owned(), reason.to_owned());
                let row: Option<SandboxRow> = sqlx::query_as(&sql)
                    .bind(id.uuid())
                    .bind(expected.as_str())
                    .bind(Ts::now())
                    .bind(Json(&failure))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                match row {
                    Some(row) => Ok(Some(row.try_into()?)),
                    None => self.lost_race(id).await,
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %sandbox.id, team_id = %sandbox.team_id, max_live))]
            async fn insert_sandbox_within_quota(
                &self,
                sandbox: NewSandbox,
                max_live: u32,
            ) -> RepoResult<Quota<Sandbox>> {
                let mut tx = begin_write!(self, "sandbox")?;
                let live = lock_and_count_live!($store, tx, sandbox.team_id.uuid()).await?;
                if live >= i64::from(max_live) {
                    // Dropping the transaction rolls it back.
                    return Ok(Quota::Exceeded { live });
                }
                let row: SandboxRow = insert_sandbox_query!(sandbox)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db("sandbox"))?;
                tx.commit().await.map_err(db("sandbox"))?;
                Ok(Quota::Done(row.try_into()?))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id, %expected, %to, max_live))]
            async fn status_if_within_quota(
                &self,
                id: SandboxId,
                expected: SandboxStatus,
                to: SandboxStatus,
                max_live: u32,
            ) -> RepoResult<Quota<Option<Sandbox>>> {
                let mut tx = begin_write!(self, "sandbox")?;
                let team: Option<Uuid> =
                    sqlx::query_scalar("SELECT team_id FROM sandboxes WHERE id = $1")
                        .bind(id.uuid())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db("sandbox"))?;
                let team = team.ok_or_else(|| RepoError::not_found("sandbox"))?;
                let live = lock_and_count_live!($store, tx, team).await?;
                if live >= i64::from(max_live) {
                    return Ok(Quota::Exceeded { live });
                }
                let row: Option<SandboxRow> = sqlx::query_as(
                    "UPDATE sandboxes SET status = $3, last_updated = $4 \
                     WHERE id = $1 AND status = $2 RETURNING *",
                )
                .bind(id.uuid())
                .bind(expected.as_str())
                .bind(to.as_str())
                .bind(Ts::now())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("sandbox"))?;
                tx.commit().await.map_err(db("sandbox"))?;
                Ok(Quota::Done(row.map(TryInto::try_into).transpose()?))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host))]
            async fn mark_host_sandboxes_missing(&self, host: HostId) -> RepoResult<u64> {
                let sql = format!(
                    "UPDATE sandboxes SET status = 'missing', last_updated = $2 \
                     WHERE host_id = $1 AND status IN {GOES_MISSING}"
                );
                let done = sqlx::query(&sql)
                    .bind(host.uuid())
                    .bind(Ts::now())
                    .execute(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(count = ids.len(), %expected, %to))]
            async fn bulk_status_if(
                &self,
                ids: &[SandboxId],
                expected: SandboxStatus,
                to: SandboxStatus,
            ) -> RepoResult<Vec<SandboxId>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let now = Ts::now();
                let mut moved = Vec::with_capacity(ids.len());
                let mut tx = begin_write!(self, "sandbox")?;
                for chunk in ids.chunks(BULK_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<<$store as Dialect>::Db>::new(
                        "UPDATE sandboxes SET status = ",
                    );
                    qb.push_bind(to.as_str())
                        .push(", last_updated = ")
                        .push_bind(now)
                        .push(" WHERE status = ")
                        .push_bind(expected.as_str())
                        .push(" AND id IN ");
                    push_in!(qb, chunk.iter().map(|id| id.uuid()));
                    qb.push(" RETURNING id");
                    let done: Vec<Uuid> = qb
                        .build_query_scalar()
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db("sandbox"))?;
                    moved.extend(done.into_iter().map(SandboxId::from_uuid));
                }
                tx.commit().await.map_err(db("sandbox"))?;
                Ok(moved)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id))]
            async fn merge_sandbox_metadata(&self, id: SandboxId, metadata: &Metadata) -> RepoResult<()> {
                let sql = format!(
                    "UPDATE sandboxes SET metadata = {}, last_updated = $3 WHERE id = $1",
                    <$store as Dialect>::json_merge("metadata", "$2")
                );
                let done = sqlx::query(&sql)
                    .bind(id.uuid())
                    .bind(Json(metadata))
                    .bind(Ts::now())
                    .execute(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("sandbox"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id))]
            async fn touch_sandbox(&self, id: SandboxId, at: DateTime<Utc>) -> RepoResult<()> {
                let done = sqlx::query("UPDATE sandboxes SET last_active_at = $2 WHERE id = $1")
                    .bind(id.uuid())
                    .bind(Ts::from(at))
                    .execute(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("sandbox"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %id))]
            async fn proxy_target(&self, id: SandboxId) -> RepoResult<Option<ProxyTarget>> {
                // One query: the proxy runs this on every uncached request.
                let row: Option<ProxyTargetRow> = sqlx::query_as(
                    "SELECT s.id AS sandbox_id, s.team_id, s.status, s.host_id, \
                       COALESCE(h.address, '') AS host_address, \
                       (COALESCE(h.cert_fingerprint, '') <> '') AS host_tls, \
                       s.access_token_hash \
                     FROM sandboxes s LEFT JOIN hosts h ON h.id = s.host_id \
                     WHERE s.id = $1",
                )
                .bind(id.uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("sandbox"))?;
                row.map(ProxyTarget::try_from).transpose()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, sandbox_id = %id))]
            async fn set_sandbox_access_token(
                &self,
                team: TeamId,
                id: SandboxId,
                token_hash: Option<&str>,
            ) -> RepoResult<()> {
                let done = sqlx::query(
                    "UPDATE sandboxes SET access_token_hash = $3 WHERE id = $1 AND team_id = $2",
                )
                .bind(id.uuid())
                .bind(team.uuid())
                .bind(token_hash.unwrap_or(""))
                .execute(&self.pool)
                .await
                .map_err(db("sandbox"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("sandbox"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn sample_team_usage(&self, at: DateTime<Utc>) -> RepoResult<Vec<MetricsSnapshot>> {
                let at = Ts::from(at);
                let rows: Vec<UsageSampleRow> = sqlx::query_as(TEAM_USAGE)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("sandbox"))?;
                rows.into_iter().map(|r| r.into_snapshot(at)).collect()
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn count_sandboxes_by_host_status(&self) -> RepoResult<Vec<SandboxCount>> {
                let rows: Vec<SandboxCountRow> = sqlx::query_as(
                    "SELECT host_id, status, COUNT(*) AS count FROM sandboxes \
                     GROUP BY host_id, status ORDER BY host_id, status",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db("sandbox"))?;
                rows.into_iter().map(SandboxCount::try_from).collect()
            }
        }
    };
}

for_each_backend!(impl_sandbox_repo);

#[cfg(test)]
mod tests {
    use super::*;
    use wrenn_core::repo::QUOTA_STATUSES;

    #[test]
    fn the_quota_sql_list_is_the_quota_statuses() {
        let listed: Vec<String> = QUOTA_STATUSES
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(QUOTA_LIVE, format!("({})", listed.join(", ")));
    }
}
