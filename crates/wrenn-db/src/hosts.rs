//! [`HostRepo`] on both backends: hosts, their load, tags, registration tokens and
//! refresh tokens.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wrenn_core::id::{HostId, HostRefreshTokenId, HostTokenId};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::{Host, HostLoad, HostRefreshToken, HostToken};
use wrenn_core::repo::{HostRepo, HostSpec, NewHost, RepoError, RepoResult};

use crate::backend::{Dialect, begin_write, for_each_backend, row_exists};
use crate::error::db;
use crate::rows::{HostLoadRow, HostRow, HostTokenRow, RefreshTokenRow, convert_all, parse_stored};
use crate::timestamp::Ts;

/// Per-host reservation for the scheduler. "Running" covers every status whose
/// sandbox holds (or is about to hold) its full memory: running, starting, pending and
/// the transient ones. Paused memory and vCPUs count paused only; paused disk also counts
/// hibernated.
const HOSTS_WITH_LOAD: &str = "\
    SELECT h.*, \
      COALESCE(SUM(CASE WHEN s.status IN ('running', 'starting', 'pending', 'pausing', \
                                          'resuming', 'snapshotting', 'stopping') \
                        THEN s.memory_mb ELSE 0 END), 0) AS running_memory_mb, \
      COALESCE(SUM(CASE WHEN s.status IN ('running', 'starting', 'pending', 'pausing', \
                                          'resuming', 'snapshotting', 'stopping') \
                        THEN s.vcpus ELSE 0 END), 0) AS running_vcpus, \
      COALESCE(SUM(CASE WHEN s.status IN ('running', 'starting', 'pending', 'pausing', \
                                          'resuming', 'snapshotting', 'stopping') \
                        THEN s.disk_size_mb ELSE 0 END), 0) AS running_disk_mb, \
      COALESCE(SUM(CASE WHEN s.status = 'paused' THEN s.memory_mb ELSE 0 END), 0) \
        AS paused_memory_mb, \
      COALESCE(SUM(CASE WHEN s.status = 'paused' THEN s.vcpus ELSE 0 END), 0) \
        AS paused_vcpus, \
      COALESCE(SUM(CASE WHEN s.status IN ('paused', 'hibernated') \
                        THEN s.disk_size_mb ELSE 0 END), 0) AS paused_disk_mb \
    FROM hosts h \
    LEFT JOIN sandboxes s ON s.host_id = h.id \
    WHERE h.status = 'online' AND h.address <> '' \
    GROUP BY h.id \
    ORDER BY h.created_at, h.id";

macro_rules! impl_host_repo {
    ($store:ty) => {
        #[async_trait]
        impl HostRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host.id))]
            async fn create_host(&self, host: NewHost) -> RepoResult<Host> {
                let now = Ts::now();
                let row: HostRow = sqlx::query_as(
                    "INSERT INTO hosts (id, type, team_id, provider, availability_zone, status, \
                                        created_by, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7) RETURNING *",
                )
                .bind(host.id.uuid())
                .bind(host.kind.as_str())
                .bind(host.team_id.map(|t| t.uuid()))
                .bind(&host.provider)
                .bind(&host.availability_zone)
                .bind(host.created_by.map(|u| u.uuid()))
                .bind(now)
                .fetch_one(&self.pool)
                .await
                .map_err(db("host"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id))]
            async fn get_host(&self, id: HostId) -> RepoResult<Host> {
                let row: HostRow = sqlx::query_as("SELECT * FROM hosts WHERE id = $1")
                    .bind(id.uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("host"))?;
                row.try_into()
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_hosts(
                &self,
                team: Option<wrenn_core::id::TeamId>,
            ) -> RepoResult<Vec<Host>> {
                let query = match team {
                    None => sqlx::query_as("SELECT * FROM hosts ORDER BY created_at, id"),
                    Some(team) => sqlx::query_as(
                        "SELECT * FROM hosts WHERE type = 'byoc' AND team_id = $1 \
                         ORDER BY created_at, id",
                    )
                    .bind(team.uuid()),
                };
                let rows: Vec<HostRow> = query.fetch_all(&self.pool).await.map_err(db("host"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_active_hosts(&self) -> RepoResult<Vec<Host>> {
                let rows: Vec<HostRow> = sqlx::query_as(
                    "SELECT * FROM hosts WHERE status NOT IN ('pending', 'offline') \
                     ORDER BY created_at, id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db("host"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn list_hosts_with_load(&self) -> RepoResult<Vec<HostLoad>> {
                let rows: Vec<HostLoadRow> = sqlx::query_as(HOSTS_WITH_LOAD)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("host"))?;
                convert_all(rows)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id, address = %spec.address))]
            async fn register_host(&self, id: HostId, spec: &HostSpec) -> RepoResult<bool> {
                let now = Ts::now();
                let done = sqlx::query(
                    "UPDATE hosts SET status = 'online', address = $2, arch = $3, \
                       cpu_cores = $4, memory_mb = $5, disk_gb = $6, \
                       last_heartbeat_at = $7, updated_at = $7 \
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(id.uuid())
                .bind(&spec.address)
                .bind(&spec.arch)
                .bind(spec.cpu_cores)
                .bind(spec.memory_mb)
                .bind(spec.disk_gb)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db("host"))?;
                if done.rows_affected() > 0 {
                    return Ok(true);
                }
                if row_exists!(&self.pool, "hosts", id.uuid())? {
                    Ok(false)
                } else {
                    Err(RepoError::not_found("host"))
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id))]
            async fn heartbeat(&self, id: HostId, spec: &HostSpec) -> RepoResult<HostStatus> {
                let mut tx = begin_write!(self, "host")?;
                let sql = format!(
                    "SELECT status FROM hosts WHERE id = $1{}",
                    <$store as Dialect>::LOCK_ROWS
                );
                let before: Option<String> = sqlx::query_scalar(&sql)
                    .bind(id.uuid())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("host"))?;
                let before: HostStatus = match before {
                    Some(status) => parse_stored("hosts.status", &status)?,
                    None => return Err(RepoError::not_found("host")),
                };
                sqlx::query(
                    "UPDATE hosts SET \
                       status = CASE WHEN status = 'unreachable' THEN 'online' ELSE status END, \
                       address = $2, arch = $3, cpu_cores = $4, memory_mb = $5, disk_gb = $6, \
                       last_heartbeat_at = $7, updated_at = $7 \
                     WHERE id = $1",
                )
                .bind(id.uuid())
                .bind(&spec.address)
                .bind(&spec.arch)
                .bind(spec.cpu_cores)
                .bind(spec.memory_mb)
                .bind(spec.disk_gb)
                .bind(Ts::now())
                .execute(&mut *tx)
                .await
                .map_err(db("host"))?;
                tx.commit().await.map_err(db("host"))?;
                Ok(before)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id, %expected, %status))]
            async fn set_host_status_if(
                &self,
                id: HostId,
                expected: HostStatus,
                status: HostStatus,
            ) -> RepoResult<bool> {
                let done = sqlx::query(
                    "UPDATE hosts SET status = $3, updated_at = $4 WHERE id = $1 AND status = $2",
                )
                .bind(id.uuid())
                .bind(expected.as_str())
                .bind(status.as_str())
                .bind(Ts::now())
                .execute(&self.pool)
                .await
                .map_err(db("host"))?;
                if done.rows_affected() > 0 {
                    return Ok(true);
                }
                if row_exists!(&self.pool, "hosts", id.uuid())? {
                    Ok(false)
                } else {
                    Err(RepoError::not_found("host"))
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id))]
            async fn update_host_cert(
                &self,
                id: HostId,
                fingerprint: &str,
                expires_at: DateTime<Utc>,
            ) -> RepoResult<()> {
                let done = sqlx::query(
                    "UPDATE hosts SET cert_fingerprint = $2, cert_expires_at = $3, updated_at = $4 \
                     WHERE id = $1",
                )
                .bind(id.uuid())
                .bind(fingerprint)
                .bind(Ts::from(expires_at))
                .bind(Ts::now())
                .execute(&self.pool)
                .await
                .map_err(db("host"))?;
                if done.rows_affected() == 0 {
                    return Err(RepoError::not_found("host"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id))]
            async fn delete_host(&self, id: HostId) -> RepoResult<bool> {
                let done = sqlx::query("DELETE FROM hosts WHERE id = $1")
                    .bind(id.uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(db("host"))?;
                Ok(done.rows_affected() > 0)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id, tag))]
            async fn add_host_tag(&self, id: HostId, tag: &str) -> RepoResult<()> {
                let done = sqlx::query(
                    "INSERT INTO host_tags (host_id, tag) \
                     SELECT h.id, $2 FROM hosts h WHERE h.id = $1 \
                     ON CONFLICT (host_id, tag) DO NOTHING",
                )
                .bind(id.uuid())
                .bind(tag)
                .execute(&self.pool)
                .await
                .map_err(db("host tag"))?;
                if done.rows_affected() == 0 && !row_exists!(&self.pool, "hosts", id.uuid())? {
                    return Err(RepoError::not_found("host"));
                }
                Ok(())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id, tag))]
            async fn remove_host_tag(&self, id: HostId, tag: &str) -> RepoResult<bool> {
                let done = sqlx::query("DELETE FROM host_tags WHERE host_id = $1 AND tag = $2")
                    .bind(id.uuid())
                    .bind(tag)
                    .execute(&self.pool)
                    .await
                    .map_err(db("host tag"))?;
                Ok(done.rows_affected() > 0)
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %id))]
            async fn list_host_tags(&self, id: HostId) -> RepoResult<Vec<String>> {
                sqlx::query_scalar("SELECT tag FROM host_tags WHERE host_id = $1 ORDER BY tag")
                    .bind(id.uuid())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db("host tag"))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %token.host_id, host_token_id = %token.id))]
            async fn create_host_token(&self, token: HostToken) -> RepoResult<HostToken> {
                let row: HostTokenRow = sqlx::query_as(
                    "INSERT INTO host_tokens \
                       (id, host_id, token_hash, created_by, created_at, expires_at, used_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                )
                .bind(token.id.uuid())
                .bind(token.host_id.uuid())
                .bind(&token.token_hash)
                .bind(token.created_by.map(|u| u.uuid()))
                .bind(Ts::from(token.created_at))
                .bind(Ts::from(token.expires_at))
                .bind(token.used_at.map(Ts::from))
                .fetch_one(&self.pool)
                .await
                .map_err(db("host token"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all)]
            async fn consume_host_token(
                &self,
                token_hash: &str,
                now: DateTime<Utc>,
            ) -> RepoResult<Option<HostToken>> {
                // One conditional UPDATE: exactly one concurrent caller sees the row.
                let row: Option<HostTokenRow> = sqlx::query_as(
                    "UPDATE host_tokens SET used_at = $2 \
                     WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                     RETURNING *",
                )
                .bind(token_hash)
                .bind(Ts::from(now))
                .fetch_optional(&self.pool)
                .await
                .map_err(db("host token"))?;
                Ok(row.map(HostToken::from))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %token.host_id))]
            async fn create_refresh_token(
                &self,
                token: HostRefreshToken,
            ) -> RepoResult<HostRefreshToken> {
                let row: RefreshTokenRow = sqlx::query_as(
                    "INSERT INTO host_refresh_tokens \
                       (id, host_id, token_hash, expires_at, created_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                )
                .bind(token.id.uuid())
                .bind(token.host_id.uuid())
                .bind(&token.token_hash)
                .bind(Ts::from(token.expires_at))
                .bind(Ts::from(token.created_at))
                .bind(token.revoked_at.map(Ts::from))
                .fetch_one(&self.pool)
                .await
                .map_err(db("refresh token"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all)]
            async fn get_valid_refresh_token(
                &self,
                token_hash: &str,
                now: DateTime<Utc>,
            ) -> RepoResult<Option<HostRefreshToken>> {
                let row: Option<RefreshTokenRow> = sqlx::query_as(
                    "SELECT * FROM host_refresh_tokens \
                     WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2",
                )
                .bind(token_hash)
                .bind(Ts::from(now))
                .fetch_optional(&self.pool)
                .await
                .map_err(db("refresh token"))?;
                Ok(row.map(HostRefreshToken::from))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(refresh_token_id = %id))]
            async fn revoke_refresh_token(&self, id: HostRefreshTokenId) -> RepoResult<bool> {
                let done = sqlx::query(
                    "UPDATE host_refresh_tokens SET revoked_at = $2 \
                     WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id.uuid())
                .bind(Ts::now())
                .execute(&self.pool)
                .await
                .map_err(db("refresh token"))?;
                if done.rows_affected() > 0 {
                    return Ok(true);
                }
                if row_exists!(&self.pool, "host_refresh_tokens", id.uuid())? {
                    Ok(false)
                } else {
                    Err(RepoError::not_found("refresh token"))
                }
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host))]
            async fn revoke_host_refresh_tokens(&self, host: HostId) -> RepoResult<u64> {
                let done = sqlx::query(
                    "UPDATE host_refresh_tokens SET revoked_at = $2 \
                     WHERE host_id = $1 AND revoked_at IS NULL",
                )
                .bind(host.uuid())
                .bind(Ts::now())
                .execute(&self.pool)
                .await
                .map_err(db("refresh token"))?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn delete_expired_refresh_tokens(&self, now: DateTime<Utc>) -> RepoResult<u64> {
                let done = sqlx::query("DELETE FROM host_refresh_tokens WHERE expires_at < $1")
                    .bind(Ts::from(now))
                    .execute(&self.pool)
                    .await
                    .map_err(db("refresh token"))?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(host_token_id = %id))]
            async fn get_host_token(&self, id: HostTokenId) -> RepoResult<HostToken> {
                let row: HostTokenRow = sqlx::query_as("SELECT * FROM host_tokens WHERE id = $1")
                    .bind(id.uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("host token"))?;
                Ok(row.into())
            }
        }
    };
}

for_each_backend!(impl_host_repo);
