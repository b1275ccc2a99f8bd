//! The `usage-rollup` worker: once at start and every hour it stores the usage of each
//! team for the last [`LOOKBACK_DAYS`] completed UTC days (`daily_usage`), summed from
//! the team's snapshots. Recomputing a few days (an idempotent upsert) covers a control
//! plane that was down across midnight. The usage API computes today and yesterday
//! live, so it never waits for this.

use std::time::Duration;

use chrono::{Days, NaiveDate, NaiveTime, Utc};
use tracing::warn;
use wrenn_core::repo::{RepoResult, Store};
use wrenn_extension::Worker;

/// How often the roll-up runs.
pub const EVERY: Duration = Duration::from_secs(60 * 60);
/// Completed days recomputed on each run.
pub const LOOKBACK_DAYS: u64 = 3;

/// The worker (runs once at start, then every [`EVERY`]).
pub fn worker() -> Worker {
    Worker::periodic("usage-rollup", EVERY, |ctx| async move {
        rollup(ctx.store.as_ref(), Utc::now().date_naive()).await?;
        Ok(())
    })
}

/// Stores the usage of every team with snapshots on each of the [`LOOKBACK_DAYS`]
/// days before `today`. Returns how many (team, day) rows were written.
#[tracing::instrument(skip(store))]
pub async fn rollup(store: &dyn Store, today: NaiveDate) -> RepoResult<usize> {
    let mut written = 0;
    for back in 1..=LOOKBACK_DAYS {
        let Some(day) = today.checked_sub_days(Days::new(back)) else {
            continue;
        };
        let Some(next) = day.succ_opt() else { continue };
        let (start, end) = (
            day.and_time(NaiveTime::MIN).and_utc(),
            next.and_time(NaiveTime::MIN).and_utc(),
        );
        for team in store.teams_with_snapshots(start, end).await? {
            match store.rollup_daily_usage(team, day).await {
                Ok(_) => written += 1,
                Err(e) => warn!(team_id = %team, %day, error = %e, "could not roll up usage"),
            }
        }
    }
    Ok(written)
}
