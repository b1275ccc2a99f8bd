//! Pausing and resuming: exec refused while paused, the TTL auto-pause and what
//! postpones it, and pausing every capsule; a create that panics.

use crate::common;

use std::time::Duration;

use super::tagged;
use common::{FakeControlPlane, Setup, TestAgent, command, create_request, eventually};
use tonic::Code;
use wrenn_core::id::{HostId, SandboxId};
use wrenn_proto::hostagent::v1 as pb;

#[tokio::test]
async fn pause_refuses_exec_then_resume_and_destroy() {
    let cp = FakeControlPlane::start(0).await;
    let host = HostId::new();
    let agent = TestAgent::start_with(Setup {
        cp: Some((cp.url.clone(), host, "host-jwt".into())),
        ..Setup::default()
    })
    .await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();

    // A background process whose state must survive the pause.
    let envd = agent.envd(id);
    envd.spawn(tagged(command("sleep", &["60"]), "survivor"))
        .await
        .unwrap();

    c.pause_sandbox(pb::PauseSandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    assert_eq!(agent.status(id).await, Some(pb::SandboxStatus::Paused));
    let err = agent.sh(id, "echo no").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("paused"), "{}", err.message());
    let err = c
        .ping_sandbox(pb::PingSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A manual pause is not an auto-pause.
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.auto_paused_sandbox_ids.is_empty());

    let resumed = c
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            timeout_sec: 0,
            default_user: String::new(),
            default_env: [("AFTER".to_owned(), "resume".to_owned())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.status(), pb::SandboxStatus::Running);
    assert_eq!(agent.sh(id, "echo $AFTER").await.unwrap().0, "resume\n");
    let list = envd.list().await.unwrap();
    assert!(list.iter().any(|p| p.tag.as_deref() == Some("survivor")));
    let err = c
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.ping_sandbox(pb::PingSandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    eventually("the running sandbox to be sampled", || {
        let mut c = c.clone();
        async move {
            c.get_sandbox_metrics(pb::GetSandboxMetricsRequest {
                sandbox_id: id.to_string(),
                range: "5m".into(),
            })
            .await
            .is_ok_and(|r| !r.into_inner().points.is_empty())
        }
    })
    .await;

    c.destroy_sandbox(pb::DestroySandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    assert_eq!(agent.status(id).await, None);
    assert!(!agent.layout.sandbox_dir(id).exists());
    let err = agent.sh(id, "true").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The control plane heard about every step, with the host token.
    for kind in ["started", "paused", "resumed", "stopped"] {
        let r = cp.wait_for(kind, id).await;
        assert_eq!(r.host_token.as_deref(), Some("host-jwt"));
        assert_eq!(r.body["host_id"], host.to_string());
        assert!(r.body["timestamp"].as_i64().unwrap() > 0);
    }
    // A pause the control plane asked for leaves the samples to it (it takes them with
    // FlushSandboxMetrics); the destruction hands over what the agent still held.
    assert!(
        cp.wait_for("paused", id)
            .await
            .body
            .get("metrics")
            .is_none()
    );
    let stopped = cp.wait_for("stopped", id).await;
    let fine = stopped.body["metrics"]["ten_minutes"].as_array().cloned();
    assert!(
        fine.as_ref().is_some_and(|p| !p.is_empty()),
        "the stopped event carries the samples: {}",
        stopped.body
    );
    let times: Vec<i64> = fine
        .unwrap_or_default()
        .iter()
        .map(|p| p["ts"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "one point per second: {times:?}"
    );
}

#[tokio::test]
async fn ttl_auto_pause_is_reported_then_hibernated_then_resumed() {
    let cp = FakeControlPlane::start(2).await; // the first two POSTs fail: retried
    let host = HostId::new();
    let mut setup = Setup {
        cp: Some((cp.url.clone(), host, "jwt-1".into())),
        reaper_tick: Duration::from_millis(200),
        ..Setup::default()
    };
    setup.settings.min_timeout = Duration::from_secs(1);
    setup.settings.hibernate_after = Duration::from_secs(2);
    let agent = TestAgent::start_with(setup).await;
    let idle = agent.create(1).await;
    let busy = agent.create(0).await; // timeout 0 = never paused
    let file = agent.path("kept.txt");
    agent
        .sh(idle, &format!("echo kept > {file}"))
        .await
        .unwrap();

    let mut c = agent.client.clone();
    eventually("the idle sandbox to be auto-paused", || {
        let mut c = c.clone();
        async move {
            let list = c
                .list_sandboxes(pb::ListSandboxesRequest {})
                .await
                .unwrap()
                .into_inner();
            list.auto_paused_sandbox_ids.contains(&idle.to_string())
        }
    })
    .await;
    // Not drained on read.
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.auto_paused_sandbox_ids.contains(&idle.to_string()));
    assert!(!list.auto_paused_sandbox_ids.contains(&busy.to_string()));
    assert_eq!(agent.status(busy).await, Some(pb::SandboxStatus::Running));
    let ev = cp.wait_for("auto_paused", idle).await;
    assert_eq!(ev.host_token.as_deref(), Some("jwt-1"));
    assert_eq!(ev.body["host_id"], host.to_string());
    assert!(ev.body.get("team_id").is_some());

    assert!(
        ev.body["metrics"]["ten_minutes"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "a pause the agent decided on hands the samples over: {}",
        ev.body
    );

    // Paused longer than hibernate_after: hibernated and reported (nothing was sampled
    // since the pause, so nothing more is handed over).
    let hibernated = cp.wait_for("hibernated", idle).await;
    assert!(
        hibernated.body.get("metrics").is_none(),
        "{}",
        hibernated.body
    );
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.hibernated_sandbox_ids.contains(&idle.to_string()));
    assert!(!list.auto_paused_sandbox_ids.contains(&idle.to_string()));
    let info = list
        .sandboxes
        .iter()
        .find(|s| s.sandbox_id == idle.to_string())
        .unwrap();
    assert_eq!(info.status(), pb::SandboxStatus::Hibernated);
    assert_eq!(info.host_ip, "");
    let err = c
        .get_sandbox_metrics(pb::GetSandboxMetricsRequest {
            sandbox_id: idle.to_string(),
            range: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Resume from hibernated: files kept, defaults re-applied, timeout replaced.
    c.resume_sandbox(pb::ResumeSandboxRequest {
        sandbox_id: idle.to_string(),
        timeout_sec: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        agent.sh(idle, &format!("cat {file}")).await.unwrap().0,
        "kept\n"
    );
    cp.wait_for("resumed", idle).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        agent.status(idle).await,
        Some(pb::SandboxStatus::Running),
        "timeout 0 now"
    );
}

#[tokio::test]
async fn activity_postpones_the_auto_pause() {
    let mut setup = Setup {
        reaper_tick: Duration::from_millis(100),
        ..Setup::default()
    };
    setup.settings.min_timeout = Duration::from_secs(1);
    let agent = TestAgent::start_with(setup).await;
    let id = agent.create(1).await;
    let mut c = agent.client.clone();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.ping_sandbox(pb::PingSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    assert_eq!(agent.status(id).await, Some(pb::SandboxStatus::Running));
    // Output streamed through a forwarded Start counts too: a 3 s stream that prints
    // every 300 ms (a pause in between would stop envd, and the stream with it).
    let ran = agent
        .envd(id)
        .sh("for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.3; done")
        .await
        .unwrap();
    assert!(ran.stdout.ends_with("10\n"));
    assert_eq!(ran.exit_code, 0);
    assert_eq!(agent.status(id).await, Some(pb::SandboxStatus::Running));
    eventually("the auto-pause once idle", || {
        let a = &agent;
        async move { a.status(id).await == Some(pb::SandboxStatus::Paused) }
    })
    .await;
}

#[tokio::test]
async fn pause_all_reports_auto_paused_and_failures() {
    let cp = FakeControlPlane::start(0).await;
    let agent = TestAgent::start_with(Setup {
        cp: Some((cp.url.clone(), HostId::new(), "t".into())),
        ..Setup::default()
    })
    .await;
    let a = agent.create(0).await;
    let b = agent.create(0).await;
    let mut c = agent.client.clone();
    let out = c
        .pause_all(pb::PauseAllRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut paused = out.paused_sandbox_ids.clone();
    paused.sort();
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(paused, want);
    assert!(out.failed.is_empty());
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.auto_paused_sandbox_ids.len(), 2);
    cp.wait_for("auto_paused", a).await;
    cp.wait_for("auto_paused", b).await;

    // A pause that fails leaves the sandbox running and is reported.
    c.resume_sandbox(pb::ResumeSandboxRequest {
        sandbox_id: a.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    agent
        .runtime
        .fail_next_pause
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let out = c
        .pause_all(pb::PauseAllRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(out.paused_sandbox_ids.is_empty());
    assert!(out.failed[&a.to_string()].contains("injected"));
    assert_eq!(agent.status(a).await, Some(pb::SandboxStatus::Running));
    assert_eq!(agent.sh(a, "echo alive").await.unwrap().0, "alive\n");
    cp.wait_for("pause_failed", a).await;
}

#[tokio::test]
async fn a_create_that_panics_is_undone_reported_failed_and_harms_nothing_else() {
    let cp = FakeControlPlane::start(0).await;
    let agent = TestAgent::start_with(Setup {
        cp: Some((cp.url.clone(), HostId::new(), "host-jwt".into())),
        ..Setup::default()
    })
    .await;
    let mut c = agent.client.clone();
    let other = agent.create(0).await;

    // The runtime panics after it made the sandbox's directory and started its envd.
    agent
        .runtime
        .panic_next_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let id = SandboxId::new();
    let err = c.create_sandbox(create_request(id, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message().contains("injected create panic"),
        "{}",
        err.message()
    );

    // Nothing of it is left, and it is reported failed with the reason.
    assert!(!agent.layout.sandbox_dir(id).exists());
    assert_eq!(agent.status(id).await, None);
    let event = cp.wait_for("failed", id).await;
    let reason = event.body["error"].as_str().unwrap_or_default();
    assert!(reason.contains("injected create panic"), "{reason}");
    let err = c
        .destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The agent goes on: the other sandbox runs, and the id can be used again.
    assert_eq!(agent.sh(other, "echo alive").await.unwrap().0, "alive\n");
    c.create_sandbox(create_request(id, 0)).await.unwrap();
    assert_eq!(agent.sh(id, "echo again").await.unwrap().0, "again\n");
    for sb in [id, other] {
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: sb.to_string(),
        })
        .await
        .unwrap();
    }
}
