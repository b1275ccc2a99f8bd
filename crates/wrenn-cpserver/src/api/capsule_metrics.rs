//! Resource metrics: `GET /v1/capsules/{id}/metrics` (one capsule's samples),
//! `GET /v1/capsules/stats` (the team's reservation now, its 30-day peaks and a
//! chart series) and `GET /v1/capsules/usage` (vCPU- and memory-minutes per day).
//!
//! A running capsule's samples come from its host agent, after the points kept at its
//! earlier pauses; any other capsule's from the points the control plane kept when its
//! agent stopped sampling it (pause, hibernation, destruction, failure), and the range
//! then ends at its last sample rather than now. Team figures come
//! from the 10-second team snapshots; past days of usage from the daily roll-up and
//! today's live from today's snapshots.

use axum::extract::State;
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{MetricTier, MetricsSnapshot};
use wrenn_extension::extract::{Json, Path, Query};
use wrenn_extension::{ApiError, ApiResult, AuthContext, ServerContext};

use super::data_plane;
use super::tags;

/// Longest usage window.
const MAX_USAGE_DAYS: i64 = 92;
/// Default usage window.
const DEFAULT_USAGE_DAYS: i64 = 30;
/// How far back the stats peaks look.
const PEAK_WINDOW: ChronoDuration = ChronoDuration::days(30);

/// Query of `GET /v1/capsules/{id}/metrics` and `GET /v1/capsules/stats`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct RangeQuery {
    /// Metrics: `5m`, `10m` (default), `1h`, `2h`, `6h`, `12h`, `24h`. Stats: `5m`,
    /// `1h` (default), `6h`, `24h`, `30d`.
    pub range: Option<String>,
}

/// One capsule sample (SDK `MetricPoint`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricPointBody {
    /// Sample time, Unix seconds.
    pub timestamp_unix: i64,
    /// CPU use in percent of the capsule's vCPUs.
    pub cpu_pct: f64,
    /// Resident memory, bytes.
    pub mem_bytes: i64,
    /// Disk used by the writable layer, bytes.
    pub disk_bytes: i64,
}

/// `GET /v1/capsules/{id}/metrics` answer (SDK `CapsuleMetrics`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CapsuleMetrics {
    /// The capsule.
    pub sandbox_id: String,
    /// The range asked for.
    pub range: String,
    /// Samples, oldest first.
    pub points: Vec<MetricPointBody>,
}

/// The team's reservation now (SDK `Current`).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Current {
    /// Capsules running or starting.
    pub running_count: i32,
    /// vCPUs they reserve.
    pub vcpus_reserved: i32,
    /// Memory they reserve (MiB; paused capsules at half).
    pub memory_mb_reserved: i32,
}

/// Maxima over the last 30 days (SDK `Peaks`).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Peaks {
    /// Most capsules running at once.
    pub running_count: i32,
    /// Most vCPUs reserved at once.
    pub vcpus: i32,
    /// Most memory reserved at once (MiB).
    pub memory_mb: i32,
}

/// Parallel arrays for a chart (SDK `Series`); each value is the bucket's maximum.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Series {
    /// Bucket start times.
    pub labels: Vec<DateTime<Utc>>,
    /// Capsules running.
    pub running: Vec<i32>,
    /// vCPUs reserved.
    pub vcpus: Vec<i32>,
    /// Memory reserved (MiB).
    pub memory_mb: Vec<i32>,
}

/// `GET /v1/capsules/stats` answer (SDK `CapsuleStats`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CapsuleStats {
    /// The range asked for.
    pub range: String,
    /// Now.
    pub current: Current,
    /// Maxima over the last 30 days.
    pub peaks: Peaks,
    /// The range, bucketed.
    pub series: Series,
}

/// `GET /v1/capsules/usage` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct UsageQuery {
    /// First day, `YYYY-MM-DD` (default 29 days before `to`).
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (default today, UTC).
    pub to: Option<String>,
}

/// One day of usage (SDK `Point`).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsagePoint {
    /// The UTC day.
    pub date: NaiveDate,
    /// vCPU-minutes reserved.
    pub cpu_minutes: f64,
    /// MiB-minutes of memory reserved.
    pub ram_mb_minutes: f64,
}

/// `GET /v1/capsules/usage` answer (SDK `UsageResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    /// First day.
    pub from: NaiveDate,
    /// Last day.
    pub to: NaiveDate,
    /// One point per day up to today, oldest first.
    pub points: Vec<UsagePoint>,
}

/// Capsule metric ranges: length and the stored tier that covers them.
fn metrics_range(range: &str) -> Option<(ChronoDuration, MetricTier)> {
    Some(match range {
        "5m" => (ChronoDuration::minutes(5), MetricTier::TenMinutes),
        "10m" => (ChronoDuration::minutes(10), MetricTier::TenMinutes),
        "1h" => (ChronoDuration::hours(1), MetricTier::TwoHours),
        "2h" => (ChronoDuration::hours(2), MetricTier::TwoHours),
        "6h" => (ChronoDuration::hours(6), MetricTier::Day),
        "12h" => (ChronoDuration::hours(12), MetricTier::Day),
        "24h" => (ChronoDuration::hours(24), MetricTier::Day),
        _ => return None,
    })
}

/// Stats ranges: length and chart bucket width.
fn stats_range(range: &str) -> Option<(ChronoDuration, ChronoDuration)> {
    Some(match range {
        "5m" => (ChronoDuration::minutes(5), ChronoDuration::seconds(10)),
        "1h" => (ChronoDuration::hours(1), ChronoDuration::minutes(1)),
        "6h" => (ChronoDuration::hours(6), ChronoDuration::minutes(5)),
        "24h" => (ChronoDuration::hours(24), ChronoDuration::minutes(15)),
        "30d" => (ChronoDuration::days(30), ChronoDuration::hours(6)),
        _ => return None,
    })
}

/// A capsule's resource samples over a range.
#[utoipa::path(get, path = "/v1/capsules/{id}/metrics", tag = tags::CAPSULES, params(("id" = String, Path, description = "Capsule id (`cl-…`)"), RangeQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = CapsuleMetrics), (status = 400), (status = 401), (status = 404), (status = 503)))]
async fn metrics(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Path(id): Path<SandboxId>,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<CapsuleMetrics>> {
    let sandbox = data_plane::team_capsule(&ctx, auth.team_id, id).await?;
    let range = q
        .range
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "10m".into());
    let (length, tier) = metrics_range(&range).ok_or_else(|| {
        ApiError::bad_request("range must be one of 5m, 10m, 1h, 2h, 6h, 12h, 24h")
    })?;
    let stored = ctx.store.list_metric_points(id, tier).await?;
    let stored = stored.into_iter().map(|p| MetricPointBody {
        timestamp_unix: p.ts,
        cpu_pct: p.cpu_pct,
        mem_bytes: p.mem_bytes,
        disk_bytes: p.disk_bytes,
    });
    let points: Vec<MetricPointBody> = if sandbox.status == SandboxStatus::Running {
        // What the agent samples now, after what was kept at earlier pauses.
        let live: Vec<MetricPointBody> = ctx
            .data_plane
            .metrics(&sandbox, &range)
            .await?
            .into_iter()
            .map(|p| MetricPointBody {
                timestamp_unix: p.timestamp_unix,
                cpu_pct: p.cpu_pct,
                mem_bytes: i64::try_from(p.mem_bytes).unwrap_or(i64::MAX),
                disk_bytes: i64::try_from(p.disk_bytes).unwrap_or(i64::MAX),
            })
            .collect();
        let since = (Utc::now() - length).timestamp();
        let first_live = live.first().map_or(i64::MAX, |p| p.timestamp_unix);
        stored
            .filter(|p| p.timestamp_unix >= since && p.timestamp_unix < first_live)
            .chain(live)
            .collect()
    } else {
        // A capsule that is not sampled any more shows the range up to its last
        // sample, not up to now.
        let stored: Vec<MetricPointBody> = stored.collect();
        let end = stored
            .last()
            .map_or_else(|| Utc::now().timestamp(), |p| p.timestamp_unix);
        let since = end - length.num_seconds();
        stored
            .into_iter()
            .filter(|p| p.timestamp_unix >= since)
            .collect()
    };
    Ok(Json(CapsuleMetrics {
        sandbox_id: id.to_string(),
        range,
        points,
    }))
}

/// Buckets `snapshots` (oldest first) into `[end - length, end)` by `step`, keeping
/// each bucket's maxima.
fn series(
    snapshots: &[MetricsSnapshot],
    end: DateTime<Utc>,
    length: ChronoDuration,
    step: ChronoDuration,
) -> Series {
    let step_s = step.num_seconds().max(1);
    let end_s = end.timestamp().div_euclid(step_s) * step_s + step_s;
    let n = (length.num_seconds() / step_s).max(1);
    let start_s = end_s - n * step_s;
    let len = usize::try_from(n).unwrap_or(0);
    let mut out = Series {
        labels: (0..n)
            .filter_map(|i| Utc.timestamp_opt(start_s + i * step_s, 0).single())
            .collect(),
        running: vec![0; len],
        vcpus: vec![0; len],
        memory_mb: vec![0; len],
    };
    for s in snapshots {
        let t = s.sampled_at.timestamp();
        if t < start_s || t >= end_s {
            continue;
        }
        let Ok(i) = usize::try_from((t - start_s) / step_s) else {
            continue;
        };
        if i < len {
            out.running[i] = out.running[i].max(s.running_count);
            out.vcpus[i] = out.vcpus[i].max(s.vcpus_reserved);
            out.memory_mb[i] = out.memory_mb[i].max(s.memory_mb_reserved);
        }
    }
    out
}

/// The team's reservation now, its 30-day peaks and a chart series.
#[utoipa::path(get, path = "/v1/capsules/stats", tag = tags::CAPSULES, params(RangeQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = CapsuleStats), (status = 400), (status = 401)))]
async fn stats(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<CapsuleStats>> {
    let range = q
        .range
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "1h".into());
    let (length, step) = stats_range(&range)
        .ok_or_else(|| ApiError::bad_request("range must be one of 5m, 1h, 6h, 24h, 30d"))?;
    let now = Utc::now();
    let current = ctx
        .store
        .sample_team_usage(now)
        .await?
        .into_iter()
        .find(|s| s.team_id == auth.team_id)
        .map(|s| Current {
            running_count: s.running_count,
            vcpus_reserved: s.vcpus_reserved,
            memory_mb_reserved: s.memory_mb_reserved,
        })
        .unwrap_or_default();
    let window = if length > PEAK_WINDOW {
        length
    } else {
        PEAK_WINDOW
    };
    let snapshots = ctx
        .store
        .list_metrics_snapshots(auth.team_id, now - window, now + ChronoDuration::seconds(1))
        .await?;
    let mut peaks = Peaks {
        running_count: current.running_count,
        vcpus: current.vcpus_reserved,
        memory_mb: current.memory_mb_reserved,
    };
    let peak_from = now - PEAK_WINDOW;
    for s in snapshots.iter().filter(|s| s.sampled_at >= peak_from) {
        peaks.running_count = peaks.running_count.max(s.running_count);
        peaks.vcpus = peaks.vcpus.max(s.vcpus_reserved);
        peaks.memory_mb = peaks.memory_mb.max(s.memory_mb_reserved);
    }
    let series = series(&snapshots, now, length, step);
    Ok(Json(CapsuleStats {
        range,
        current,
        peaks,
        series,
    }))
}

fn parse_day(field: &str, value: Option<&str>) -> ApiResult<Option<NaiveDate>> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| {
                ApiError::bad_request(format!("{field} must be a date in YYYY-MM-DD form"))
            }),
    }
}

/// vCPU- and memory-minutes per day: past days from the roll-up, today live.
#[utoipa::path(get, path = "/v1/capsules/usage", tag = tags::CAPSULES, params(UsageQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = UsageResponse), (status = 400), (status = 401)))]
async fn usage(
    State(ctx): State<ServerContext>,
    auth: AuthContext,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<UsageResponse>> {
    let now = Utc::now();
    let today = now.date_naive();
    let to = parse_day("to", q.to.as_deref())?.unwrap_or(today);
    let from = parse_day("from", q.from.as_deref())?
        .unwrap_or(to - ChronoDuration::days(DEFAULT_USAGE_DAYS - 1));
    if from > to {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    if (to - from).num_days() + 1 > MAX_USAGE_DAYS {
        return Err(ApiError::bad_request(format!(
            "the range may cover at most {MAX_USAGE_DAYS} days"
        )));
    }
    let stored = ctx.store.list_daily_usage(auth.team_id, from, to).await?;
    // Today and yesterday are summed from the snapshots now (the hourly roll-up may
    // not have seen yesterday's end yet); older days come from the roll-up.
    let mut live = Vec::new();
    for day in [today.pred_opt(), Some(today)].into_iter().flatten() {
        if from <= day && day <= to {
            let start = day.and_time(NaiveTime::MIN).and_utc();
            let end = day
                .succ_opt()
                .map_or(now, |d| d.and_time(NaiveTime::MIN).and_utc());
            live.push((
                day,
                ctx.store.usage_between(auth.team_id, start, end).await?,
            ));
        }
    }
    let last = to.min(today);
    let mut points = Vec::new();
    let mut day = from;
    while day <= last {
        let (cpu, ram) = live
            .iter()
            .find(|(d, _)| *d == day)
            .map(|(_, usage)| *usage)
            .or_else(|| {
                stored
                    .iter()
                    .find(|u| u.day == day)
                    .map(|u| (u.cpu_minutes, u.ram_mb_minutes))
            })
            .unwrap_or((0.0, 0.0));
        points.push(UsagePoint {
            date: day,
            cpu_minutes: cpu,
            ram_mb_minutes: ram,
        });
        let Some(next) = day.succ_opt() else { break };
        day = next;
    }
    Ok(Json(UsageResponse { from, to, points }))
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(stats))
        .routes(routes!(usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wrenn_core::id::TeamId;

    #[test]
    fn series_keeps_bucket_maxima() {
        let end = Utc.timestamp_opt(1_000_000, 0).single().unwrap();
        let snap = |secs_ago: i64, running: i32| MetricsSnapshot {
            team_id: TeamId::new(),
            sampled_at: end - ChronoDuration::seconds(secs_ago),
            running_count: running,
            vcpus_reserved: running,
            memory_mb_reserved: running * 512,
            period_secs: 10,
        };
        let s = series(
            &[snap(30, 1), snap(25, 3), snap(5, 2)],
            end,
            ChronoDuration::minutes(5),
            ChronoDuration::seconds(10),
        );
        assert_eq!(s.labels.len(), 30);
        assert_eq!(s.running.iter().copied().max(), Some(3));
        // 30 s and 25 s ago share a bucket.
        assert_eq!(s.running.iter().filter(|v| **v > 0).count(), 2);
        assert!(
            s.labels
                .windows(2)
                .all(|w| w[1] - w[0] == ChronoDuration::seconds(10))
        );
    }

    #[test]
    fn ranges() {
        assert!(metrics_range("10m").is_some() && metrics_range("30d").is_none());
        assert!(stats_range("30d").is_some() && stats_range("10m").is_none());
    }
}
