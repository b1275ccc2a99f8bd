//! MetricsRepo: team snapshots, per-sandbox points, daily usage.

use crate::fixtures::*;
use chrono::{Duration, NaiveDate, TimeZone, Utc};
use wrenn_core::id::{SandboxId, TeamId};
use wrenn_core::model::{MetricHistory, MetricPoint, MetricTier, MetricsSnapshot};

fn snapshot(team: TeamId, at: chrono::DateTime<Utc>, vcpus: i32, memory: i32) -> MetricsSnapshot {
    MetricsSnapshot {
        team_id: team,
        sampled_at: at,
        running_count: vcpus / 2,
        vcpus_reserved: vcpus,
        memory_mb_reserved: memory,
        period_secs: 10,
    }
}

fn point(ts: i64) -> MetricPoint {
    MetricPoint {
        ts,
        cpu_pct: ts as f64 / 100.0,
        mem_bytes: ts * 2,
        disk_bytes: ts * 3,
    }
}

async fn metrics_snapshots_are_listed_in_a_half_open_window_and_pruned(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let t0 = now() - Duration::minutes(10);
    let taken: Vec<MetricsSnapshot> = (0..5)
        .map(|i| snapshot(team.id, t0 + Duration::seconds(10 * i), 2, 512))
        .collect();
    // Inserted out of order; listed oldest first.
    let mut shuffled = taken.clone();
    shuffled.reverse();
    shuffled.push(snapshot(other.id, t0, 8, 8));
    db.insert_metrics_snapshots(&shuffled).await.unwrap();
    db.insert_metrics_snapshots(&[]).await.unwrap();

    let window = db
        .list_metrics_snapshots(team.id, t0, t0 + Duration::seconds(40))
        .await
        .unwrap();
    assert_eq!(
        window,
        taken[..4],
        "[from, to): the sample at `to` is excluded"
    );
    assert_eq!(
        db.prune_metrics_snapshots(t0 + Duration::seconds(20))
            .await
            .unwrap(),
        3
    );
    let left = db
        .list_metrics_snapshots(team.id, t0, t0 + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(left, taken[2..]);
}

async fn many_snapshots_insert_in_one_call(db: Db) {
    let (_, team) = owned_team(&db).await;
    let t0 = now() - Duration::hours(2);
    let many: Vec<MetricsSnapshot> = (0..450)
        .map(|i| snapshot(team.id, t0 + Duration::seconds(i), 1, 1))
        .collect();
    db.insert_metrics_snapshots(&many).await.unwrap();
    assert_eq!(
        db.list_metrics_snapshots(team.id, t0, now())
            .await
            .unwrap()
            .len(),
        450
    );
}

async fn metric_points_ignore_duplicates_and_are_deleted_by_tier(db: Db) {
    let sandbox = SandboxId::new();
    let other = SandboxId::new();
    db.insert_metric_points(
        sandbox,
        MetricTier::TenMinutes,
        &[point(30), point(10), point(20)],
    )
    .await
    .unwrap();
    db.insert_metric_points(sandbox, MetricTier::TenMinutes, &[point(20), point(40)])
        .await
        .unwrap();
    db.insert_metric_points(sandbox, MetricTier::TwoHours, &[point(10)])
        .await
        .unwrap();
    db.insert_metric_points(sandbox, MetricTier::Day, &[point(10)])
        .await
        .unwrap();
    db.insert_metric_points(other, MetricTier::TenMinutes, &[point(10)])
        .await
        .unwrap();
    db.insert_metric_points(sandbox, MetricTier::Day, &[])
        .await
        .unwrap();

    let ten = db
        .list_metric_points(sandbox, MetricTier::TenMinutes)
        .await
        .unwrap();
    assert_eq!(ten, [point(10), point(20), point(30), point(40)]);
    let removed = db
        .delete_metric_points(sandbox, &[MetricTier::TenMinutes, MetricTier::TwoHours])
        .await
        .unwrap();
    assert_eq!(removed, 5);
    assert!(
        db.list_metric_points(sandbox, MetricTier::TenMinutes)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        db.list_metric_points(sandbox, MetricTier::Day)
            .await
            .unwrap(),
        [point(10)]
    );
    assert_eq!(
        db.list_metric_points(other, MetricTier::TenMinutes)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(db.delete_metric_points(sandbox, &[]).await.unwrap(), 0);
}

async fn daily_usage_rolls_up_one_utc_days_snapshots(db: Db) {
    let (_, team) = owned_team(&db).await;
    let day = NaiveDate::from_ymd_opt(2026, 3, 14).unwrap();
    let midnight = Utc.with_ymd_and_hms(2026, 3, 14, 0, 0, 0).unwrap();
    db.insert_metrics_snapshots(&[
        snapshot(team.id, midnight, 2, 1024), // counted
        snapshot(team.id, midnight + Duration::hours(23), 4, 2048), // counted
        snapshot(team.id, midnight - Duration::microseconds(1), 100, 100), // day before
        snapshot(team.id, midnight + Duration::days(1), 100, 100), // day after
    ])
    .await
    .unwrap();

    let usage = db.rollup_daily_usage(team.id, day).await.unwrap();
    assert_eq!(usage.team_id, team.id);
    assert_eq!(usage.day, day);
    // Each 10 s sample is 1/6 of a minute.
    assert!(
        (usage.cpu_minutes - 1.0).abs() < 1e-9,
        "{}",
        usage.cpu_minutes
    );
    assert!(
        (usage.ram_mb_minutes - 512.0).abs() < 1e-9,
        "{}",
        usage.ram_mb_minutes
    );

    // Re-running replaces the row.
    db.insert_metrics_snapshots(&[snapshot(team.id, midnight + Duration::hours(1), 6, 0)])
        .await
        .unwrap();
    let again = db.rollup_daily_usage(team.id, day).await.unwrap();
    assert!((again.cpu_minutes - 2.0).abs() < 1e-9);
    let empty_day = day.succ_opt().unwrap().succ_opt().unwrap();
    db.rollup_daily_usage(team.id, empty_day).await.unwrap();

    let listed = db.list_daily_usage(team.id, day, empty_day).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], again);
    assert_eq!((listed[1].day, listed[1].cpu_minutes), (empty_day, 0.0));
    assert!(
        db.list_daily_usage(
            team.id,
            empty_day.succ_opt().unwrap(),
            empty_day.succ_opt().unwrap()
        )
        .await
        .unwrap()
        .is_empty()
    );
}

async fn usage_counts_each_snapshot_for_its_own_period_and_one_per_instant(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, idle) = owned_team(&db).await;
    let midnight = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    let day = midnight.date_naive();
    let at = |t, vcpus, period| MetricsSnapshot {
        period_secs: period,
        ..snapshot(team.id, t, vcpus, vcpus * 1000)
    };
    // The morning sampled every 10 s, the afternoon every 60 s (the cadence changed):
    // 2 vCPUs for 60 min in the morning and 4 vCPUs for 30 min in the afternoon.
    let mut snaps: Vec<MetricsSnapshot> = (0..360)
        .map(|i| {
            at(
                midnight + Duration::hours(8) + Duration::seconds(10 * i),
                2,
                10,
            )
        })
        .collect();
    snaps.extend((0..30).map(|i| at(midnight + Duration::hours(14) + Duration::minutes(i), 4, 60)));
    db.insert_metrics_snapshots(&snaps).await.unwrap();
    // A second replica writing the same instants changes nothing.
    db.insert_metrics_snapshots(&snaps[..100]).await.unwrap();

    let usage = db.rollup_daily_usage(team.id, day).await.unwrap();
    assert!(
        (usage.cpu_minutes - 240.0).abs() < 1e-9,
        "{}",
        usage.cpu_minutes
    );
    assert!(
        (usage.ram_mb_minutes - 240_000.0).abs() < 1e-6,
        "{}",
        usage.ram_mb_minutes
    );

    let (cpu, ram) = db
        .usage_between(team.id, midnight, midnight + Duration::hours(12))
        .await
        .unwrap();
    assert!(
        (cpu - 120.0).abs() < 1e-9 && (ram - 120_000.0).abs() < 1e-6,
        "{cpu} {ram}"
    );
    assert_eq!(
        db.usage_between(idle.id, midnight, midnight + Duration::days(1))
            .await
            .unwrap(),
        (0.0, 0.0)
    );
    let teams = db
        .teams_with_snapshots(midnight, midnight + Duration::days(1))
        .await
        .unwrap();
    assert!(teams.contains(&team.id) && !teams.contains(&idle.id));
    assert!(
        !db.teams_with_snapshots(midnight + Duration::days(1), midnight + Duration::days(2))
            .await
            .unwrap()
            .contains(&team.id)
    );
}

async fn a_metric_history_is_stored_by_tier_and_old_points_are_pruned(db: Db) {
    let sandbox = SandboxId::new();
    let history = MetricHistory {
        ten_minutes: vec![point(100), point(101)],
        two_hours: vec![point(90)],
        day: vec![],
    };
    db.insert_metric_history(sandbox, &history).await.unwrap();
    // Handed over twice (a retried event): stored once.
    db.insert_metric_history(sandbox, &history).await.unwrap();
    db.insert_metric_history(sandbox, &MetricHistory::default())
        .await
        .unwrap();
    assert_eq!(
        db.list_metric_points(sandbox, MetricTier::TenMinutes)
            .await
            .unwrap(),
        history.ten_minutes
    );
    assert_eq!(
        db.list_metric_points(sandbox, MetricTier::TwoHours)
            .await
            .unwrap(),
        history.two_hours
    );
    let cutoff = Utc.timestamp_opt(100, 0).unwrap();
    assert!(db.prune_metric_points(cutoff).await.unwrap() >= 1);
    assert_eq!(
        db.list_metric_points(sandbox, MetricTier::TenMinutes)
            .await
            .unwrap(),
        history.ten_minutes,
        "points at or after the cutoff stay"
    );
    assert!(
        db.list_metric_points(sandbox, MetricTier::TwoHours)
            .await
            .unwrap()
            .is_empty()
    );
}

conformance_tests!(
    usage_counts_each_snapshot_for_its_own_period_and_one_per_instant,
    a_metric_history_is_stored_by_tier_and_old_points_are_pruned,
    metrics_snapshots_are_listed_in_a_half_open_window_and_pruned,
    many_snapshots_insert_in_one_call,
    metric_points_ignore_duplicates_and_are_deleted_by_tier,
    daily_usage_rolls_up_one_utc_days_snapshots,
);
