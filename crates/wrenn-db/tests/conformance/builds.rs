//! BuildRepo: template builds.

use crate::fixtures::*;
use chrono::Duration;
use wrenn_core::id::{BuildId, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::model::{BuildStatus, TemplateBuild};

fn build(name: &str) -> TemplateBuild {
    TemplateBuild {
        id: BuildId::new(),
        team_id: PLATFORM_TEAM_ID,
        name: name.into(),
        base_template: "minimal".into(),
        recipe: vec![
            "RUN apt-get update".into(),
            "RUN apt-get install -y python3".into(),
        ],
        healthcheck: "python3 --version".into(),
        skip_pre_post: false,
        default_user: "wrenn-user".into(),
        default_env: [("LANG".to_owned(), "C.UTF-8".to_owned())].into(),
        vcpus: 2,
        memory_mb: 2048,
        status: BuildStatus::Pending,
        current_step: 0,
        total_steps: 2,
        logs: Vec::new(),
        error: String::new(),
        sandbox_id: None,
        host_id: None,
        template_id: None,
        created_at: now(),
        started_at: None,
        completed_at: None,
    }
}

async fn builds_round_trip_and_list_newest_first(db: Db) {
    let mut older = build("older");
    older.created_at = now() - Duration::minutes(1);
    older.sandbox_id = Some(SandboxId::new());
    older.host_id = Some(HostId::new());
    older.template_id = Some(TemplateId::new());
    let older = db.create_build(older.clone(), None).await.unwrap();
    let newer = db.create_build(build("newer"), None).await.unwrap();
    assert_eq!(db.get_build(older.id).await.unwrap(), older);
    assert_eq!(db.list_builds(10).await.unwrap(), [newer.clone(), older]);
    assert_eq!(db.list_builds(1).await.unwrap(), [newer]);
    assert_not_found(db.get_build(BuildId::new()).await);
}

async fn build_status_changes_stamp_start_and_completion(db: Db) {
    let b = db.create_build(build("py"), None).await.unwrap();
    assert!(
        db.build_status_if(b.id, BuildStatus::Running, BuildStatus::Success, "")
            .await
            .unwrap()
            .is_none()
    );
    let running = db
        .build_status_if(b.id, BuildStatus::Pending, BuildStatus::Running, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.status, BuildStatus::Running);
    let started = running.started_at.expect("started_at set on first running");
    assert!(running.completed_at.is_none());

    let failed = db
        .build_status_if(
            b.id,
            BuildStatus::Running,
            BuildStatus::Failed,
            "step 2 failed",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, BuildStatus::Failed);
    assert_eq!(failed.error, "step 2 failed");
    assert_eq!(failed.started_at, Some(started), "started_at is kept");
    assert!(failed.completed_at.is_some());
    assert_not_found(
        db.build_status_if(
            BuildId::new(),
            BuildStatus::Pending,
            BuildStatus::Running,
            "",
        )
        .await,
    );
}

async fn build_logs_append_in_order(db: Db) {
    let b = db.create_build(build("logs"), None).await.unwrap();
    db.append_build_logs(b.id, 1, &["one".into(), "two \"quoted\"".into()])
        .await
        .unwrap();
    db.append_build_logs(b.id, 2, &["three".into()])
        .await
        .unwrap();
    db.append_build_logs(b.id, 2, &[]).await.unwrap();
    let stored = db.get_build(b.id).await.unwrap();
    assert_eq!(stored.logs, ["one", "two \"quoted\"", "three"]);
    assert_eq!(stored.current_step, 2);
    assert_not_found(db.append_build_logs(BuildId::new(), 1, &[]).await);
}

async fn a_build_records_its_sandbox_and_template(db: Db) {
    let b = db.create_build(build("refs"), None).await.unwrap();
    let (sb, host, tpl) = (SandboxId::new(), HostId::new(), TemplateId::new());
    db.set_build_sandbox(b.id, sb, host).await.unwrap();
    db.set_build_template(b.id, tpl).await.unwrap();
    let stored = db.get_build(b.id).await.unwrap();
    assert_eq!(
        (stored.sandbox_id, stored.host_id, stored.template_id),
        (Some(sb), Some(host), Some(tpl))
    );
    assert_not_found(db.set_build_sandbox(BuildId::new(), sb, host).await);
    assert_not_found(db.set_build_template(BuildId::new(), tpl).await);
}

async fn the_active_build_of_a_name_is_the_teams_or_the_platforms(db: Db) {
    let team = owned_team(&db).await.1.id;
    let other = owned_team(&db).await.1.id;
    let platform = db.create_build(build("shared"), None).await.unwrap();
    let mut own = build("own");
    own.team_id = team;
    let own = db.create_build(own, None).await.unwrap();
    let found = |t: TeamId, n: &'static str| {
        let db = db.clone();
        async move { db.active_build_for(t, n).await.unwrap().map(|b| b.id) }
    };
    assert_eq!(found(team, "shared").await, Some(platform.id));
    assert_eq!(found(other, "shared").await, Some(platform.id));
    assert_eq!(found(team, "own").await, Some(own.id));
    assert_eq!(
        found(other, "own").await,
        None,
        "another team's build is not seen"
    );
    db.build_status_if(own.id, BuildStatus::Pending, BuildStatus::Running, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found(team, "own").await, Some(own.id), "running counts");
    db.build_status_if(own.id, BuildStatus::Running, BuildStatus::Success, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found(team, "own").await, None, "finished builds do not");
}

async fn running_builds_fail_when_taken_over_and_pending_ones_wait(db: Db) {
    let pending = db.create_build(build("pending"), None).await.unwrap();
    let running = db.create_build(build("running"), None).await.unwrap();
    db.build_status_if(running.id, BuildStatus::Pending, BuildStatus::Running, "")
        .await
        .unwrap()
        .unwrap();
    let done = db.create_build(build("done"), None).await.unwrap();
    db.build_status_if(done.id, BuildStatus::Pending, BuildStatus::Cancelled, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        db.oldest_pending_build().await.unwrap().map(|b| b.id),
        Some(pending.id),
        "the next build to run is the oldest pending one"
    );
    assert_eq!(db.fail_running_builds("restarted").await.unwrap(), 1);
    let b = db.get_build(running.id).await.unwrap();
    assert_eq!(
        (b.status, b.error.as_str()),
        (BuildStatus::Failed, "restarted")
    );
    assert!(b.completed_at.is_some());
    assert_eq!(
        db.oldest_pending_build().await.unwrap().map(|b| b.id),
        Some(pending.id),
        "a pending build no control plane started is left to run"
    );
    assert_eq!(
        db.get_build(done.id).await.unwrap().status,
        BuildStatus::Cancelled
    );
    assert_eq!(db.fail_running_builds("restarted").await.unwrap(), 0);
}

async fn a_builds_archive_is_kept_until_it_finishes(db: Db) {
    // Bytes of every value, and larger than one page of either backend.
    let archive: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let with = db.create_build(build("ctx"), Some(&archive)).await.unwrap();
    let without = db.create_build(build("plain"), None).await.unwrap();
    assert_eq!(
        db.build_archive(with.id).await.unwrap(),
        Some(archive.clone())
    );
    assert_eq!(db.build_archive(without.id).await.unwrap(), None);
    assert_eq!(db.build_archive(BuildId::new()).await.unwrap(), None);

    db.build_status_if(with.id, BuildStatus::Pending, BuildStatus::Running, "")
        .await
        .unwrap()
        .unwrap();
    assert!(
        db.build_archive(with.id).await.unwrap().is_some(),
        "a running build still reads it"
    );
    db.build_status_if(with.id, BuildStatus::Running, BuildStatus::Failed, "boom")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        db.build_archive(with.id).await.unwrap(),
        None,
        "gone when it ends"
    );

    let left = db
        .create_build(build("left"), Some(&archive))
        .await
        .unwrap();
    db.build_status_if(left.id, BuildStatus::Pending, BuildStatus::Running, "")
        .await
        .unwrap()
        .unwrap();
    let waiting = db
        .create_build(build("waiting"), Some(&archive))
        .await
        .unwrap();
    db.fail_running_builds("restarted").await.unwrap();
    assert_eq!(
        db.build_archive(left.id).await.unwrap(),
        None,
        "a failed running build's archive goes with it"
    );
    assert_eq!(
        db.build_archive(waiting.id).await.unwrap(),
        Some(archive.clone()),
        "a pending build keeps its archive"
    );

    // A build that cannot be stored leaves no archive behind.
    let mut clash = build("clash");
    clash.id = with.id;
    assert!(db.create_build(clash, Some(b"x")).await.is_err());
    assert_eq!(db.build_archive(with.id).await.unwrap(), None);
}

conformance_tests!(
    a_builds_archive_is_kept_until_it_finishes,
    a_build_records_its_sandbox_and_template,
    the_active_build_of_a_name_is_the_teams_or_the_platforms,
    running_builds_fail_when_taken_over_and_pending_ones_wait,
    builds_round_trip_and_list_newest_first,
    build_status_changes_stamp_start_and_completion,
    build_logs_append_in_order,
);
