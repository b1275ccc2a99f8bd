//! The `metrics-sampler` worker: every `WRENN_METRICS_SAMPLE_INTERVAL_SECS` (10 s by
//! default) it snapshots each team's reservation (capsules running, vCPUs and memory
//! reserved; paused capsules at half memory) for the stats charts and usage, and prunes
//! what is past retention.
//!
//! Snapshots are stamped with the start of the sampling period they were taken in and
//! record its length (`period_secs`), so usage is `Σ reservation × period_secs` whatever
//! the cadence. Ticks are aligned to the middle of each period on the wall clock, and
//! (team, time) is unique in the store: replicas sampling the same period write one
//! snapshot, and a tick that is late by less than half a period still lands in its own.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use wrenn_core::repo::{RepoResult, Store};
use wrenn_extension::Worker;

/// How long team snapshots are kept (the stats' longest range is 30 days; usage of
/// older days is in the daily roll-up).
pub const SNAPSHOT_RETENTION: chrono::Duration = chrono::Duration::days(60);
/// How long per-capsule metric points are kept.
pub const POINT_RETENTION: chrono::Duration = chrono::Duration::days(30);

/// The worker: samples once per `period`, in the middle of each period.
pub fn worker(period: Duration) -> Worker {
    Worker::new(
        "metrics-sampler",
        move |ctx, cancel: CancellationToken| async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(until_mid_period(Utc::now(), period)) => {}
                }
                if let Err(e) = sample(ctx.store.as_ref(), Utc::now(), period).await {
                    warn!(error = %e, "could not sample team metrics");
                }
            }
        },
    )
}

/// The start of the sampling period `now` falls in.
pub fn period_start(now: DateTime<Utc>, period: Duration) -> DateTime<Utc> {
    let secs = period_secs(period);
    let start = now.timestamp().div_euclid(secs) * secs;
    Utc.timestamp_opt(start, 0).single().unwrap_or(now)
}

fn period_secs(period: Duration) -> i64 {
    i64::try_from(period.as_secs()).unwrap_or(i64::MAX).max(1)
}

/// Time from `now` to the next middle of a period.
fn until_mid_period(now: DateTime<Utc>, period: Duration) -> Duration {
    let period_ms = period_secs(period).saturating_mul(1000);
    let into = now.timestamp_millis().rem_euclid(period_ms);
    let wait = (period_ms / 2 - into).rem_euclid(period_ms);
    Duration::from_millis(u64::try_from(wait).unwrap_or(0))
}

/// One tick: takes one snapshot per team for the period `now` falls in and prunes old
/// snapshots and points. Returns how many snapshots were written (a period another
/// replica already sampled writes none).
#[tracing::instrument(skip(store))]
pub async fn sample(store: &dyn Store, now: DateTime<Utc>, period: Duration) -> RepoResult<u64> {
    let secs = i32::try_from(period_secs(period)).unwrap_or(i32::MAX);
    let written = store
        .record_team_snapshots(period_start(now, period), secs)
        .await?;
    store
        .prune_metrics_snapshots(now - SNAPSHOT_RETENTION)
        .await?;
    store.prune_metric_points(now - POINT_RETENTION).await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_land_in_the_middle_of_their_period() {
        let p = Duration::from_secs(10);
        let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap();
        assert_eq!(until_mid_period(at(1_000_000), p), Duration::from_secs(5));
        assert_eq!(until_mid_period(at(1_004_000), p), Duration::from_secs(1));
        assert_eq!(until_mid_period(at(1_006_000), p), Duration::from_secs(9));
        assert_eq!(period_start(at(1_009_999), p), at(1_000_000));
        assert_eq!(period_start(at(1_010_000), p), at(1_010_000));
    }
}
