//! SandboxRepo: rows, listings, conditional status changes, proxy lookups, usage.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use futures::future::join_all;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId, TeamId};
use wrenn_core::lifecycle::SandboxStatus::{self, *};

use crate::fixtures::*;
use wrenn_core::repo::{FAILURE_METADATA_KEY, QUOTA_STATUSES, Quota};

fn ids(sandboxes: &[wrenn_core::model::Sandbox]) -> BTreeSet<SandboxId> {
    sandboxes.iter().map(|s| s.id).collect()
}

async fn inserted_sandboxes_read_back_exactly(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let mut new = new_sandbox(team.id, host.id, Starting);
    new.metadata = BTreeMap::from([("purpose".into(), "test".into())]);
    let stored = db.insert_sandbox(new.clone()).await.unwrap();
    assert_eq!(stored.id, new.id);
    assert_eq!((stored.team_id, stored.host_id), (team.id, host.id));
    assert_eq!(stored.template, "minimal");
    assert_eq!(stored.template_id, BUILTIN_TEMPLATE_ID);
    assert_eq!(stored.template_team_id, PLATFORM_TEAM_ID);
    assert_eq!(stored.status, Starting);
    assert_eq!(
        (stored.vcpus, stored.memory_mb, stored.timeout_sec),
        (2, 1024, 300)
    );
    assert_eq!(stored.disk_size_mb, 20_480);
    assert_eq!(
        (stored.guest_ip.as_str(), stored.host_ip.as_str()),
        ("", "")
    );
    assert_eq!(stored.created_at, stored.last_updated);
    assert!(stored.started_at.is_none() && stored.last_active_at.is_none());
    assert_eq!(stored.metadata, new.metadata);
    assert_eq!(db.get_sandbox(new.id).await.unwrap(), stored);
    assert_conflict(db.insert_sandbox(new).await);
    assert_invalid(
        db.insert_sandbox(new_sandbox(TeamId::new(), host.id, Starting))
            .await,
    );
}

async fn sandboxes_are_only_visible_to_their_team(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let host = host(&db, None).await;
    let sb = sandbox(&db, team.id, host.id, Running).await;
    assert_eq!(db.get_team_sandbox(team.id, sb.id).await.unwrap(), sb);
    assert_not_found(db.get_team_sandbox(other.id, sb.id).await);
    assert_not_found(db.get_sandbox(SandboxId::new()).await);
    assert!(db.list_sandboxes(other.id).await.unwrap().is_empty());
}

async fn list_sandboxes_hides_stopped_and_errored_ones_newest_first(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let mut shown = Vec::new();
    for status in SandboxStatus::ALL {
        let sb = sandbox(&db, team.id, host.id, status).await;
        if !matches!(status, Stopped | Error) {
            shown.push(sb.id);
        }
    }
    let listed: Vec<SandboxId> = db
        .list_sandboxes(team.id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    shown.reverse();
    assert_eq!(listed, shown);
}

async fn active_sandboxes_include_paused_hibernated_and_missing(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let mut active = BTreeSet::new();
    for status in SandboxStatus::ALL {
        let sb = sandbox(&db, team.id, host.id, status).await;
        if !matches!(status, Stopped | Error | Stopping) {
            active.insert(sb.id);
        }
    }
    assert_eq!(
        ids(&db.list_active_sandboxes_by_team(team.id).await.unwrap()),
        active
    );
    assert_eq!(active.len(), 9);
    // By template: the same statuses, across teams.
    let (_, other) = owned_team(&db).await;
    active.insert(sandbox(&db, other.id, host.id, Paused).await.id);
    sandbox(&db, other.id, host.id, Stopped).await;
    assert_eq!(
        ids(&db
            .list_active_sandboxes_from_template(BUILTIN_TEMPLATE_ID)
            .await
            .unwrap()),
        active
    );
    assert!(
        db.list_active_sandboxes_from_template(wrenn_core::id::TemplateId::new())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn sandboxes_are_listed_by_host_and_status(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let other = self::host(&db, None).await;
    let running = sandbox(&db, team.id, host.id, Running).await;
    let missing = sandbox(&db, team.id, host.id, Missing).await;
    sandbox(&db, team.id, host.id, Paused).await;
    sandbox(&db, team.id, other.id, Running).await;
    let found = db
        .list_sandboxes_by_host(host.id, &[Running, Missing])
        .await
        .unwrap();
    assert_eq!(ids(&found), BTreeSet::from([running.id, missing.id]));
    assert!(
        db.list_sandboxes_by_host(host.id, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn stuck_sandboxes_are_those_not_updated_since_the_cutoff(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let pausing = sandbox(&db, team.id, host.id, Pausing).await;
    let starting = sandbox(&db, team.id, host.id, Starting).await;
    sandbox(&db, team.id, host.id, Running).await;
    let later = now() + Duration::seconds(1);
    let stuck = db
        .list_sandboxes_stuck(&[Pausing, Starting, Stopping], later)
        .await
        .unwrap();
    assert_eq!(ids(&stuck), BTreeSet::from([pausing.id, starting.id]));
    let earlier = pausing.last_updated - Duration::seconds(1);
    assert!(
        db.list_sandboxes_stuck(&[Pausing], earlier)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.list_sandboxes_stuck(&[], later)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn status_changes_only_from_the_expected_status(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let sb = sandbox(&db, team.id, host.id, Running).await;
    let pausing = db
        .status_if(sb.id, Running, Pausing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pausing.status, Pausing);
    assert!(pausing.last_updated >= sb.last_updated);
    assert!(
        db.status_if(sb.id, Running, Pausing)
            .await
            .unwrap()
            .is_none(),
        "lost race"
    );
    assert_eq!(db.get_sandbox(sb.id).await.unwrap().status, Pausing);
    assert_not_found(db.status_if(SandboxId::new(), Running, Pausing).await);
}

async fn a_sandbox_moves_host_only_while_starting_on_the_expected_one(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (a, b) = (host(&db, None).await, host(&db, None).await);
    let sb = sandbox(&db, team.id, a.id, Starting).await;
    let moved = db
        .rehost_if_starting(sb.id, a.id, b.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((moved.host_id, moved.status), (b.id, Starting));
    assert!(
        db.rehost_if_starting(sb.id, a.id, b.id)
            .await
            .unwrap()
            .is_none(),
        "no longer on the host it was moved from"
    );
    let running = sandbox(&db, team.id, a.id, Running).await;
    assert!(
        db.rehost_if_starting(running.id, a.id, b.id)
            .await
            .unwrap()
            .is_none(),
        "only a start is placed again"
    );
    assert_eq!(db.get_sandbox(running.id).await.unwrap().host_id, a.id);
    assert_not_found(db.rehost_if_starting(SandboxId::new(), a.id, b.id).await);
}

async fn concurrent_status_changes_have_exactly_one_winner(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let sb = sandbox(&db, team.id, host.id, Running).await;
    let attempts = (0..32).map(|_| {
        let db = db.clone();
        tokio::spawn(async move { db.status_if(sb.id, Running, Pausing).await })
    });
    let results = join_all(attempts).await;
    let winners = results
        .into_iter()
        .map(|r| r.expect("task").expect("status_if"))
        .filter(Option::is_some)
        .count();
    assert_eq!(winners, 1);
    assert_eq!(db.get_sandbox(sb.id).await.unwrap().status, Pausing);
}

async fn running_if_records_the_host_ip_and_merges_metadata(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let mut new = new_sandbox(team.id, host.id, Starting);
    new.metadata = BTreeMap::from([
        ("user".into(), "kept".into()),
        ("envd_version".into(), "0".into()),
    ]);
    let sb = db.insert_sandbox(new).await.unwrap();
    let reported = BTreeMap::from([
        ("envd_version".into(), "1.2".into()),
        ("kernel_version".into(), "6.1".into()),
    ]);

    assert!(
        db.running_if(sb.id, Resuming, "10.1.0.2", &reported)
            .await
            .unwrap()
            .is_none()
    );
    let running = db
        .running_if(sb.id, Starting, "10.1.0.2", &reported)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.status, Running);
    assert_eq!(running.host_ip, "10.1.0.2");
    assert!(running.started_at.is_some());
    assert_eq!(running.started_at, running.last_active_at);
    assert_eq!(
        running.metadata,
        BTreeMap::from([
            ("envd_version".into(), "1.2".into()),
            ("kernel_version".into(), "6.1".into()),
            ("user".into(), "kept".into()),
        ])
    );
    assert_eq!(db.get_sandbox(sb.id).await.unwrap(), running);
    assert_not_found(
        db.running_if(SandboxId::new(), Starting, "x", &reported)
            .await,
    );
}

async fn losing_a_host_marks_its_live_sandboxes_missing(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let other = self::host(&db, None).await;
    let mut expected_missing = BTreeSet::new();
    for status in SandboxStatus::ALL {
        let sb = sandbox(&db, team.id, host.id, status).await;
        if matches!(
            status,
            Pending | Starting | Running | Pausing | Resuming | Snapshotting
        ) {
            expected_missing.insert(sb.id);
        }
    }
    let elsewhere = sandbox(&db, team.id, other.id, Running).await;
    assert_eq!(db.mark_host_sandboxes_missing(host.id).await.unwrap(), 6);
    let missing = db
        .list_sandboxes_by_host(host.id, &[Missing])
        .await
        .unwrap();
    // Plus the row that was already missing.
    assert_eq!(missing.len(), 7);
    assert!(expected_missing.is_subset(&ids(&missing)));
    assert_eq!(db.get_sandbox(elsewhere.id).await.unwrap().status, Running);
}

async fn bulk_status_changes_move_only_rows_in_the_expected_status(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let a = sandbox(&db, team.id, host.id, Missing).await;
    let b = sandbox(&db, team.id, host.id, Missing).await;
    let c = sandbox(&db, team.id, host.id, Running).await;
    let moved = db
        .bulk_status_if(&[a.id, b.id, c.id, SandboxId::new()], Missing, Running)
        .await
        .unwrap();
    assert_eq!(
        moved.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([a.id, b.id])
    );
    for id in [a.id, b.id, c.id] {
        assert_eq!(db.get_sandbox(id).await.unwrap().status, Running);
    }
    assert!(
        db.bulk_status_if(&[], Missing, Running)
            .await
            .unwrap()
            .is_empty()
    );

    // More ids than one statement carries.
    let many: Vec<SandboxId> = (0..600).map(|_| SandboxId::new()).chain([a.id]).collect();
    assert_eq!(
        db.bulk_status_if(&many, Running, Stopped).await.unwrap(),
        [a.id]
    );
}

async fn metadata_merges_keep_existing_keys(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let mut new = new_sandbox(team.id, host.id, Running);
    new.metadata = BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
    let sb = db.insert_sandbox(new).await.unwrap();
    db.merge_sandbox_metadata(
        sb.id,
        &BTreeMap::from([("b".into(), "3".into()), ("c".into(), "4".into())]),
    )
    .await
    .unwrap();
    assert_eq!(
        db.get_sandbox(sb.id).await.unwrap().metadata,
        BTreeMap::from([
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
            ("c".into(), "4".into())
        ])
    );
    assert_not_found(
        db.merge_sandbox_metadata(SandboxId::new(), &BTreeMap::new())
            .await,
    );
}

async fn touching_a_sandbox_records_its_last_activity(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let sb = sandbox(&db, team.id, host.id, Running).await;
    let at = now() + Duration::seconds(3);
    db.touch_sandbox(sb.id, at).await.unwrap();
    assert_eq!(
        db.get_sandbox(sb.id).await.unwrap().last_active_at,
        Some(at)
    );
    assert_not_found(db.touch_sandbox(SandboxId::new(), at).await);
}

async fn the_proxy_target_carries_the_hosts_address(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = online_host(&db, "10.0.0.7:50051").await;
    let sb = sandbox(&db, team.id, host.id, Running).await;
    let target = db.proxy_target(sb.id).await.unwrap().unwrap();
    assert_eq!(target.sandbox_id, sb.id);
    assert_eq!(target.team_id, team.id);
    assert_eq!(target.status, Running);
    assert_eq!(target.host_id, host.id);
    assert_eq!(target.host_address, "10.0.0.7:50051");
    assert!(
        !target.host_tls,
        "a host without a certificate is called in cleartext"
    );
    db.update_host_cert(host.id, "ab12", chrono::Utc::now() + Duration::days(1))
        .await
        .unwrap();
    assert!(
        db.proxy_target(sb.id).await.unwrap().unwrap().host_tls,
        "a host with a certificate is called over mutual TLS"
    );
    assert!(db.proxy_target(SandboxId::new()).await.unwrap().is_none());

    // The access token for public URLs: set by the owning team only, then cleared.
    assert_eq!(target.access_token_hash, None);
    db.set_sandbox_access_token(team.id, sb.id, Some("abc123"))
        .await
        .unwrap();
    assert_eq!(
        db.proxy_target(sb.id)
            .await
            .unwrap()
            .unwrap()
            .access_token_hash
            .as_deref(),
        Some("abc123")
    );
    assert_not_found(
        db.set_sandbox_access_token(TeamId::new(), sb.id, None)
            .await,
    );
    assert_not_found(
        db.set_sandbox_access_token(team.id, SandboxId::new(), None)
            .await,
    );
    db.set_sandbox_access_token(team.id, sb.id, None)
        .await
        .unwrap();
    assert_eq!(
        db.proxy_target(sb.id)
            .await
            .unwrap()
            .unwrap()
            .access_token_hash,
        None
    );

    let unregistered = self::host(&db, None).await;
    let pending = sandbox(&db, team.id, unregistered.id, Starting).await;
    assert_eq!(
        db.proxy_target(pending.id)
            .await
            .unwrap()
            .unwrap()
            .host_address,
        ""
    );
    db.delete_host(unregistered.id).await.unwrap();
    assert_eq!(
        db.proxy_target(pending.id)
            .await
            .unwrap()
            .unwrap()
            .host_address,
        "",
        "host gone"
    );
}

async fn team_usage_counts_running_fully_and_paused_at_half_memory(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, idle) = owned_team(&db).await;
    let host = host(&db, None).await;
    sandbox(&db, team.id, host.id, Running).await; // 2 vCPU, 1024 MB
    sandbox(&db, team.id, host.id, Starting).await;
    let mut odd = new_sandbox(team.id, host.id, Paused);
    odd.resources.memory_mb = 513;
    db.insert_sandbox(odd).await.unwrap();
    sandbox(&db, team.id, host.id, Pausing).await;
    sandbox(&db, team.id, host.id, Stopped).await;
    sandbox(&db, idle.id, host.id, Stopped).await;

    let at = now();
    let samples = db.sample_team_usage(at).await.unwrap();
    let mine = samples.iter().find(|s| s.team_id == team.id).unwrap();
    assert_eq!(mine.sampled_at, at);
    assert_eq!(mine.running_count, 2);
    assert_eq!(mine.vcpus_reserved, 4);
    assert_eq!(
        mine.memory_mb_reserved,
        2 * 1024 + 257,
        "CEIL(513 / 2) = 257"
    );
    let zero = samples
        .iter()
        .find(|s| s.team_id == idle.id)
        .expect("teams with only stopped rows sample zero");
    assert_eq!(
        (
            zero.running_count,
            zero.vcpus_reserved,
            zero.memory_mb_reserved
        ),
        (0, 0, 0)
    );

    // Recorded in one statement: the same figures, each for its period, once per
    // instant (a second replica sampling the same period writes nothing).
    let tick = at - chrono::Duration::seconds(5);
    assert!(db.record_team_snapshots(tick, 10).await.unwrap() >= 2);
    assert_eq!(db.record_team_snapshots(tick, 10).await.unwrap(), 0);
    let stored = db.list_metrics_snapshots(team.id, tick, at).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (
            stored[0].running_count,
            stored[0].vcpus_reserved,
            stored[0].memory_mb_reserved,
            stored[0].period_secs
        ),
        (2, 4, 2 * 1024 + 257, 10)
    );
    assert_eq!(stored[0].sampled_at, tick);
}

async fn sandboxes_are_counted_by_host_and_status(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (a, b) = (host(&db, None).await, host(&db, None).await);
    for status in [Running, Running, Paused, Stopped] {
        sandbox(&db, team.id, a.id, status).await;
    }
    sandbox(&db, team.id, b.id, Running).await;
    let counts: BTreeMap<_, i64> = db
        .count_sandboxes_by_host_status()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.host_id == a.id || c.host_id == b.id)
        .map(|c| ((c.host_id == a.id, c.status.as_str()), c.count))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ((true, "paused"), 1),
            ((true, "running"), 2),
            ((true, "stopped"), 1),
            ((false, "running"), 1),
        ])
    );
}

async fn fail_if_records_the_reason_only_from_the_expected_status(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let mut new = new_sandbox(team.id, host.id, Running);
    new.metadata = BTreeMap::from([("purpose".into(), "test".into())]);
    let sb = db.insert_sandbox(new).await.unwrap();
    assert_eq!(
        db.fail_if(sb.id, Paused, "init died").await.unwrap(),
        None,
        "a conditional failure from the wrong status changes nothing"
    );
    let failed = db
        .fail_if(
            sb.id,
            Running,
            "the capsule's init (envd) killed by signal 9 (SIGKILL)",
        )
        .await
        .unwrap()
        .expect("running → error");
    assert_eq!(failed.status, Error);
    assert_eq!(
        failed
            .metadata
            .get(FAILURE_METADATA_KEY)
            .map(String::as_str),
        Some("the capsule's init (envd) killed by signal 9 (SIGKILL)")
    );
    assert_eq!(
        failed.metadata.get("purpose").map(String::as_str),
        Some("test")
    );
    assert_eq!(db.get_sandbox(sb.id).await.unwrap(), failed);
    assert_eq!(db.fail_if(sb.id, Running, "again").await.unwrap(), None);
    assert_not_found(db.fail_if(SandboxId::new(), Running, "x").await);
}

async fn the_team_quota_admits_exactly_its_limit_under_concurrency(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let host = host(&db, None).await;
    // Rows that do not count: hibernated, stopped, errored, stopping, missing; and
    // another team's live ones.
    for status in [Hibernated, Stopped, Error, Stopping, Missing] {
        sandbox(&db, team.id, host.id, status).await;
    }
    for _ in 0..3 {
        sandbox(&db, other.id, host.id, Running).await;
    }
    let inserts = (0..20).map(|_| {
        let db = db.clone();
        let new = new_sandbox(team.id, host.id, Starting);
        async move { db.insert_sandbox_within_quota(new, 5).await.unwrap() }
    });
    let outcomes = join_all(inserts).await;
    let done = outcomes
        .iter()
        .filter(|o| matches!(o, Quota::Done(_)))
        .count();
    assert_eq!(done, 5, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Quota::Done(_) | Quota::Exceeded { live: 5 }))
    );
    let live = db
        .list_active_sandboxes_by_team(team.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| QUOTA_STATUSES.contains(&s.status))
        .count();
    assert_eq!(live, 5);
    // The other team is not affected by this team's quota.
    assert!(matches!(
        db.insert_sandbox_within_quota(new_sandbox(other.id, host.id, Starting), 5)
            .await
            .unwrap(),
        Quota::Done(_)
    ));
    // A team that does not exist is NotFound, not a quota answer.
    assert_not_found(
        db.insert_sandbox_within_quota(new_sandbox(TeamId::new(), host.id, Starting), 5)
            .await,
    );
}

async fn resuming_a_hibernated_sandbox_counts_against_the_quota(db: Db) {
    let (_, team) = owned_team(&db).await;
    let host = host(&db, None).await;
    let sleeping: Vec<_> =
        join_all((0..6).map(|_| sandbox(&db, team.id, host.id, Hibernated))).await;
    sandbox(&db, team.id, host.id, Paused).await;
    // Quota 4 with one paused: exactly 3 of 6 concurrent resumes get through.
    let resumes = sleeping.iter().map(|sb| {
        let db = db.clone();
        let id = sb.id;
        async move {
            db.status_if_within_quota(id, Hibernated, Resuming, 4)
                .await
                .unwrap()
        }
    });
    let outcomes = join_all(resumes).await;
    let resumed = outcomes
        .iter()
        .filter(|o| matches!(o, Quota::Done(Some(_))))
        .count();
    assert_eq!(resumed, 3, "{outcomes:?}");
    // A row not in the expected status is `Done(None)` while there is room.
    let stopped = sandbox(&db, team.id, host.id, Stopped).await;
    assert_eq!(
        db.status_if_within_quota(stopped.id, Hibernated, Resuming, 100)
            .await
            .unwrap(),
        Quota::Done(None)
    );
    assert_not_found(
        db.status_if_within_quota(SandboxId::new(), Hibernated, Resuming, 100)
            .await,
    );
}

conformance_tests!(
    fail_if_records_the_reason_only_from_the_expected_status,
    the_team_quota_admits_exactly_its_limit_under_concurrency,
    resuming_a_hibernated_sandbox_counts_against_the_quota,
    inserted_sandboxes_read_back_exactly,
    sandboxes_are_only_visible_to_their_team,
    list_sandboxes_hides_stopped_and_errored_ones_newest_first,
    active_sandboxes_include_paused_hibernated_and_missing,
    sandboxes_are_listed_by_host_and_status,
    stuck_sandboxes_are_those_not_updated_since_the_cutoff,
    status_changes_only_from_the_expected_status,
    a_sandbox_moves_host_only_while_starting_on_the_expected_one,
    concurrent_status_changes_have_exactly_one_winner,
    running_if_records_the_host_ip_and_merges_metadata,
    losing_a_host_marks_its_live_sandboxes_missing,
    bulk_status_changes_move_only_rows_in_the_expected_status,
    metadata_merges_keep_existing_keys,
    touching_a_sandbox_records_its_last_activity,
    the_proxy_target_carries_the_hosts_address,
    team_usage_counts_running_fully_and_paused_at_half_memory,
    sandboxes_are_counted_by_host_and_status,
);
