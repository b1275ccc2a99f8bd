//! BuildRepo: template builds.

use crate::fixtures::*;
use chrono::Duration;
use wrenn_core::id::{BuildId, HostId, PLATFORM_TEAM_ID, SandboxId, TemplateId};
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
    let older = db.create_build(older.clone()).await.unwrap();
    let newer = db.create_build(build("newer")).await.unwrap();
    assert_eq!(db.get_build(older.id).await.unwrap(), older);
    assert_eq!(db.list_builds(10).await.unwrap(), [newer.clone(), older]);
    assert_eq!(db.list_builds(1).await.unwrap(), [newer]);
    assert_not_found(db.get_build(BuildId::new()).await);
}

async fn build_status_changes_stamp_start_and_completion(db: Db) {
    let b = db.create_build(build("py")).await.unwrap();
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
    let b = db.create_build(build("logs")).await.unwrap();
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

conformance_tests!(
    builds_round_trip_and_list_newest_first,
    build_status_changes_stamp_start_and_completion,
    build_logs_append_in_order,
);
