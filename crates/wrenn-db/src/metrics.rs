//! [`MetricsRepo`] on both backends: team snapshots, per-sandbox metric points and
//! the daily usage rollup.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use wrenn_core::id::{SandboxId, TeamId};
use wrenn_core::model::{DailyUsage, MetricPoint, MetricTier, MetricsSnapshot};
use wrenn_core::repo::{MetricsRepo, RepoError, RepoResult};

use crate::backend::{Dialect, begin_write, for_each_backend, push_in};
use crate::error::db;
use crate::rows::{DailyUsageRow, MetricPointRow, SnapshotRow};
use crate::sandboxes::TEAM_USAGE;
use crate::timestamp::Ts;

/// Rows per multi-row INSERT (at most 6 parameters each).
const INSERT_CHUNK: usize = 200;

/// `[start of day, start of next day)` in UTC.
fn day_bounds(day: NaiveDate) -> RepoResult<(Ts, Ts)> {
    let next = day
        .succ_opt()
        .ok_or_else(|| RepoError::Invalid(format!("day {day} has no successor")))?;
    Ok((
        Ts::from(day.and_time(NaiveTime::MIN).and_utc()),
        Ts::from(next.and_time(NaiveTime::MIN).and_utc()),
    ))
}

/// Sum of `reservation × seconds` → reservation-minutes.
fn to_minutes(reservation_seconds: i64) -> f64 {
    reservation_seconds as f64 / 60.0
}

/// A team's reservation-seconds (vCPUs, MiB) over `[$2, $3)`: each snapshot counts for
/// the period it was taken for, so the formula holds whatever the sampler's cadence.
const DAY_USAGE: &str = "SELECT CAST(COALESCE(SUM(CAST(vcpus_reserved AS BIGINT) * period_secs), 0) AS BIGINT), \
            CAST(COALESCE(SUM(CAST(memory_mb_reserved AS BIGINT) * period_secs), 0) AS BIGINT) \
     FROM sandbox_metrics_snapshots \
     WHERE team_id = $1 AND sampled_at >= $2 AND sampled_at < $3";

/// Every team's reservation (the sampler's figures) stored as snapshots at `$1`, each
/// for `$2` seconds, without a round trip through the caller. (`WHERE true`: SQLite
/// would otherwise read the upsert's `ON` as a join constraint.)
fn record_snapshots_sql() -> String {
    format!(
        "INSERT INTO sandbox_metrics_snapshots \
           (team_id, sampled_at, running_count, vcpus_reserved, memory_mb_reserved, period_secs) \
         SELECT team_id, $1, running_count, vcpus_reserved, memory_mb_reserved, $2 \
         FROM ({TEAM_USAGE}) usage WHERE true \
         ON CONFLICT (team_id, sampled_at) DO NOTHING"
    )
}

macro_rules! impl_metrics_repo {
    ($store:ty) => {
        #[async_trait]
        impl MetricsRepo for $store {
            #[tracing::instrument(level = "debug", skip_all, fields(count = snapshots.len()))]
            async fn insert_metrics_snapshots(&self, snapshots: &[MetricsSnapshot]) -> RepoResult<()> {
                if snapshots.is_empty() {
                    return Ok(());
                }
                let mut tx = begin_write!(self, "metrics snapshot")?;
                for chunk in snapshots.chunks(INSERT_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<<$store as Dialect>::Db>::new(
                        "INSERT INTO sandbox_metrics_snapshots \
                           (team_id, sampled_at, running_count, vcpus_reserved, \
                            memory_mb_reserved, period_secs) ",
                    );
                    qb.push_values(chunk, |mut row, s| {
                        row.push_bind(s.team_id.uuid())
                            .push_bind(Ts::from(s.sampled_at))
                            .push_bind(s.running_count)
                            .push_bind(s.vcpus_reserved)
                            .push_bind(s.memory_mb_reserved)
                            .push_bind(s.period_secs);
                    });
                    // Replicas sampling the same tick write the same (team, time).
                    qb.push(" ON CONFLICT (team_id, sampled_at) DO NOTHING");
                    qb.build()
                        .execute(&mut *tx)
                        .await
                        .map_err(db("metrics snapshot"))?;
                }
                tx.commit().await.map_err(db("metrics snapshot"))
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn record_team_snapshots(
                &self,
                at: DateTime<Utc>,
                period_secs: i32,
            ) -> RepoResult<u64> {
                let done = sqlx::query(&record_snapshots_sql())
                    .bind(Ts::from(at))
                    .bind(period_secs)
                    .execute(&self.pool)
                    .await
                    .map_err(db("metrics snapshot"))?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn list_metrics_snapshots(
                &self,
                team: TeamId,
                from: DateTime<Utc>,
                to: DateTime<Utc>,
            ) -> RepoResult<Vec<MetricsSnapshot>> {
                let rows: Vec<SnapshotRow> = sqlx::query_as(
                    "SELECT * FROM sandbox_metrics_snapshots \
                     WHERE team_id = $1 AND sampled_at >= $2 AND sampled_at < $3 \
                     ORDER BY sampled_at, id",
                )
                .bind(team.uuid())
                .bind(Ts::from(from))
                .bind(Ts::from(to))
                .fetch_all(&self.pool)
                .await
                .map_err(db("metrics snapshot"))?;
                Ok(rows.into_iter().map(MetricsSnapshot::from).collect())
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn prune_metrics_snapshots(&self, cutoff: DateTime<Utc>) -> RepoResult<u64> {
                let done = sqlx::query("DELETE FROM sandbox_metrics_snapshots WHERE sampled_at < $1")
                    .bind(Ts::from(cutoff))
                    .execute(&self.pool)
                    .await
                    .map_err(db("metrics snapshot"))?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %sandbox, %tier, count = points.len()))]
            async fn insert_metric_points(
                &self,
                sandbox: SandboxId,
                tier: MetricTier,
                points: &[MetricPoint],
            ) -> RepoResult<()> {
                if points.is_empty() {
                    return Ok(());
                }
                let mut tx = begin_write!(self, "metric point")?;
                for chunk in points.chunks(INSERT_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<<$store as Dialect>::Db>::new(
                        "INSERT INTO sandbox_metric_points \
                           (sandbox_id, tier, ts, cpu_pct, mem_bytes, disk_bytes) ",
                    );
                    qb.push_values(chunk, |mut row, p| {
                        row.push_bind(sandbox.uuid())
                            .push_bind(tier.as_str())
                            .push_bind(p.ts)
                            .push_bind(p.cpu_pct)
                            .push_bind(p.mem_bytes)
                            .push_bind(p.disk_bytes);
                    });
                    qb.push(" ON CONFLICT (sandbox_id, tier, ts) DO NOTHING");
                    qb.build()
                        .execute(&mut *tx)
                        .await
                        .map_err(db("metric point"))?;
                }
                tx.commit().await.map_err(db("metric point"))
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %sandbox, %tier))]
            async fn list_metric_points(
                &self,
                sandbox: SandboxId,
                tier: MetricTier,
            ) -> RepoResult<Vec<MetricPoint>> {
                let rows: Vec<MetricPointRow> = sqlx::query_as(
                    "SELECT ts, cpu_pct, mem_bytes, disk_bytes FROM sandbox_metric_points \
                     WHERE sandbox_id = $1 AND tier = $2 ORDER BY ts",
                )
                .bind(sandbox.uuid())
                .bind(tier.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(db("metric point"))?;
                Ok(rows.into_iter().map(MetricPoint::from).collect())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(sandbox_id = %sandbox, ?tiers))]
            async fn delete_metric_points(
                &self,
                sandbox: SandboxId,
                tiers: &[MetricTier],
            ) -> RepoResult<u64> {
                if tiers.is_empty() {
                    return Ok(0);
                }
                let mut qb = sqlx::QueryBuilder::<<$store as Dialect>::Db>::new(
                    "DELETE FROM sandbox_metric_points WHERE sandbox_id = ",
                );
                qb.push_bind(sandbox.uuid()).push(" AND tier IN ");
                push_in!(qb, tiers.iter().map(|t| t.as_str()));
                let done = qb
                    .build()
                    .execute(&self.pool)
                    .await
                    .map_err(db("metric point"))?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, %day))]
            async fn rollup_daily_usage(&self, team: TeamId, day: NaiveDate) -> RepoResult<DailyUsage> {
                let (start, end) = day_bounds(day)?;
                let mut tx = begin_write!(self, "daily usage")?;
                let (vcpus, memory): (i64, i64) = sqlx::query_as(DAY_USAGE)
                    .bind(team.uuid())
                    .bind(start)
                    .bind(end)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db("metrics snapshot"))?;
                let row: DailyUsageRow = sqlx::query_as(
                    "INSERT INTO daily_usage (team_id, day, cpu_minutes, ram_mb_minutes) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (team_id, day) DO UPDATE SET \
                       cpu_minutes = excluded.cpu_minutes, \
                       ram_mb_minutes = excluded.ram_mb_minutes \
                     RETURNING *",
                )
                .bind(team.uuid())
                .bind(day)
                .bind(to_minutes(vcpus))
                .bind(to_minutes(memory))
                .fetch_one(&mut *tx)
                .await
                .map_err(db("daily usage"))?;
                tx.commit().await.map_err(db("daily usage"))?;
                Ok(row.into())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team))]
            async fn usage_between(
                &self,
                team: TeamId,
                from: DateTime<Utc>,
                to: DateTime<Utc>,
            ) -> RepoResult<(f64, f64)> {
                let (vcpus, memory): (i64, i64) = sqlx::query_as(DAY_USAGE)
                    .bind(team.uuid())
                    .bind(Ts::from(from))
                    .bind(Ts::from(to))
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("metrics snapshot"))?;
                Ok((to_minutes(vcpus), to_minutes(memory)))
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn teams_with_snapshots(
                &self,
                from: DateTime<Utc>,
                to: DateTime<Utc>,
            ) -> RepoResult<Vec<TeamId>> {
                let rows: Vec<(uuid::Uuid,)> = sqlx::query_as(
                    "SELECT DISTINCT team_id FROM sandbox_metrics_snapshots \
                     WHERE sampled_at >= $1 AND sampled_at < $2",
                )
                .bind(Ts::from(from))
                .bind(Ts::from(to))
                .fetch_all(&self.pool)
                .await
                .map_err(db("metrics snapshot"))?;
                Ok(rows.into_iter().map(|(id,)| TeamId::from_uuid(id)).collect())
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn prune_metric_points(&self, cutoff: DateTime<Utc>) -> RepoResult<u64> {
                let done = sqlx::query("DELETE FROM sandbox_metric_points WHERE ts < $1")
                    .bind(cutoff.timestamp())
                    .execute(&self.pool)
                    .await
                    .map_err(db("metric point"))?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(level = "debug", skip_all, fields(team_id = %team, %from, %to))]
            async fn list_daily_usage(
                &self,
                team: TeamId,
                from: NaiveDate,
                to: NaiveDate,
            ) -> RepoResult<Vec<DailyUsage>> {
                let rows: Vec<DailyUsageRow> = sqlx::query_as(
                    "SELECT * FROM daily_usage WHERE team_id = $1 AND day >= $2 AND day <= $3 \
                     ORDER BY day",
                )
                .bind(team.uuid())
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await
                .map_err(db("daily usage"))?;
                Ok(rows.into_iter().map(DailyUsage::from).collect())
            }
        }
    };
}

for_each_backend!(impl_metrics_repo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_spans_midnight_to_midnight() {
        let day = NaiveDate::from_ymd_opt(2026, 2, 28).unwrap();
        let (start, end) = day_bounds(day).unwrap();
        assert_eq!(start.get().to_rfc3339(), "2026-02-28T00:00:00+00:00");
        assert_eq!(end.get().to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert!(day_bounds(NaiveDate::MAX).is_err());
    }

    #[test]
    fn one_vcpu_for_a_minute_is_one_vcpu_minute() {
        assert_eq!(to_minutes(60), 1.0);
    }
}
