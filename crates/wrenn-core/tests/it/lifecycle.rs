//! The lifecycle service against a real store (SQLite always, PostgreSQL when
//! `WRENN_TEST_POSTGRES_URL` is set) and a controllable host-agent double.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use support::{FakeAgents, Op, online_host, team};
use wrenn_core::agents::HostCallError;
use wrenn_core::audit::Actor;
use wrenn_core::events::{
    Event, EventBus, InProcessBus, PLATFORM_STREAM, SANDBOX_STREAM, SandboxEvent, SandboxEventKind,
};
use wrenn_core::id::{HostId, SandboxId, TeamId};
use wrenn_core::lifecycle::{
    Applied, CreateSandbox, Lifecycle, LifecycleError, ResourceRequest, SandboxStatus::*, Timeouts,
};
use wrenn_core::repo::Store;
use wrenn_core::scheduler::{LeastLoaded, SingleHost};

struct World {
    store: Arc<dyn Store>,
    agents: Arc<FakeAgents>,
    bus: Arc<InProcessBus>,
    lifecycle: Lifecycle,
    host: HostId,
    team: TeamId,
    actor: Actor,
}

async fn world(store: Arc<dyn Store>) -> World {
    let host = online_host(&store).await;
    let (user, team) = team(&store).await;
    let agents = FakeAgents::new();
    let bus = Arc::new(InProcessBus::new());
    let timeouts = Timeouts {
        create: Duration::from_secs(2),
        pause: Duration::from_secs(2),
        resume: Duration::from_secs(2),
        destroy: Duration::from_secs(2),
        snapshot: Duration::from_secs(2),
        ping: Duration::from_millis(500),
    };
    let lifecycle = Lifecycle::with_timeouts(
        store.clone(),
        agents.clone(),
        bus.clone(),
        Arc::new(SingleHost::new(store.clone(), host)),
        timeouts,
    );
    World {
        store,
        agents,
        bus,
        lifecycle,
        host,
        team,
        actor: Actor::user(user, "test@example.com"),
    }
}

impl World {
    async fn create(&self) -> SandboxId {
        let sb = self
            .lifecycle
            .create(self.team, &self.actor, CreateSandbox::default())
            .await
            .expect("create");
        self.lifecycle.wait_idle().await;
        sb.id
    }

    async fn status(&self, id: SandboxId) -> wrenn_core::lifecycle::SandboxStatus {
        self.store.get_sandbox(id).await.expect("get").status
    }

    async fn sandbox_events(&self) -> Vec<SandboxEventKind> {
        self.bus
            .read_after(
                SANDBOX_STREAM,
                Some(&wrenn_core::events::EventId("0-0".into())),
                1000,
                Duration::ZERO,
            )
            .await
            .expect("read")
            .into_iter()
            .filter_map(|d| match d.event {
                Event::Sandbox(e) => Some(e.event),
                Event::Platform(_) => None,
            })
            .collect()
    }

    async fn platform_events(&self) -> Vec<&'static str> {
        self.bus
            .read_after(
                PLATFORM_STREAM,
                Some(&wrenn_core::events::EventId("0-0".into())),
                1000,
                Duration::ZERO,
            )
            .await
            .expect("read")
            .into_iter()
            .filter_map(|d| match d.event {
                Event::Platform(e) => Some(e.event.as_str()),
                Event::Sandbox(_) => None,
            })
            .collect()
    }
}

async fn create_waiting_answers_with_the_outcome_or_with_starting_after_the_wait(
    store: Arc<dyn Store>,
) {
    let w = world(store).await;
    let wait = Duration::from_secs(5);
    // A start that finishes in time: the answer is the running row.
    let sb = w
        .lifecycle
        .create_waiting(w.team, &w.actor, CreateSandbox::default(), wait)
        .await
        .unwrap();
    assert_eq!(sb.status, Running);
    assert_eq!(sb.host_ip, "10.11.0.2");
    // One that fails: the failed row, with the reason.
    w.agents.fail_next(
        Op::Create,
        HostCallError::Internal("no room on the disk".into()),
    );
    let sb = w
        .lifecycle
        .create_waiting(w.team, &w.actor, CreateSandbox::default(), wait)
        .await
        .unwrap();
    assert_eq!(sb.status, Error);
    // One still going when the wait is over: `starting`, and it ends running anyway.
    w.agents.hold(Op::Create);
    let sb = w
        .lifecycle
        .create_waiting(
            w.team,
            &w.actor,
            CreateSandbox::default(),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    assert_eq!(sb.status, Starting);
    w.agents.release(Op::Create);
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(sb.id).await, Running);
}

async fn pause_resume_and_destroy_waiting_answer_with_the_outcome_or_the_transient_status(
    store: Arc<dyn Store>,
) {
    let w = world(store).await;
    let wait = Duration::from_secs(5);
    let id = w.create().await;
    // Operations that finish in time: the answer is the settled row.
    let sb = w
        .lifecycle
        .pause_waiting(w.team, id, &w.actor, wait)
        .await
        .unwrap();
    assert_eq!(sb.status, Paused);
    let sb = w
        .lifecycle
        .resume_waiting(w.team, id, &w.actor, wait)
        .await
        .unwrap();
    assert_eq!(sb.status, Running);
    // A pause the agent refuses while the capsule still answers: back to running.
    w.agents
        .fail_next(Op::Pause, HostCallError::Internal("snapshot failed".into()));
    let sb = w
        .lifecycle
        .pause_waiting(w.team, id, &w.actor, wait)
        .await
        .unwrap();
    assert_eq!(sb.status, Running);
    // One still going when the wait is over: the transient status, and it ends
    // settled anyway.
    w.agents.hold(Op::Pause);
    let sb = w
        .lifecycle
        .pause_waiting(w.team, id, &w.actor, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(sb.status, Pausing);
    w.agents.release(Op::Pause);
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Paused);
    w.agents.hold(Op::Resume);
    let sb = w
        .lifecycle
        .resume_waiting(w.team, id, &w.actor, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(sb.status, Resuming);
    w.agents.release(Op::Resume);
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Running);
    // Destroy: settled when the host answers in time, `stopping` when it does not.
    let sb = w
        .lifecycle
        .destroy_waiting(w.team, id, &w.actor, wait)
        .await
        .unwrap();
    assert_eq!(sb.status, Stopped);
    let other = w.create().await;
    w.agents.hold(Op::Destroy);
    let sb = w
        .lifecycle
        .destroy_waiting(w.team, other, &w.actor, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(sb.status, Stopping);
    w.agents.release(Op::Destroy);
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(other).await, Stopped);
    // Refused operations still fail at once, waiting or not.
    assert!(matches!(
        w.lifecycle
            .pause_waiting(w.team, other, &w.actor, wait)
            .await,
        Err(LifecycleError::InvalidState { .. })
    ));
}

async fn create_returns_starting_and_ends_running(store: Arc<dyn Store>) {
    let w = world(store).await;
    let sb = w
        .lifecycle
        .create(w.team, &w.actor, CreateSandbox::default())
        .await
        .unwrap();
    assert_eq!(sb.status, Starting);
    assert_eq!(sb.host_id, w.host);
    assert_eq!(sb.template, "minimal");
    assert_eq!(sb.disk_size_mb, 20480);
    w.lifecycle.wait_idle().await;
    let row = w.store.get_sandbox(sb.id).await.unwrap();
    assert_eq!(row.status, Running);
    assert_eq!(row.host_ip, "10.11.0.2");
    assert_eq!(
        row.metadata.get("agent_version").map(String::as_str),
        Some("test")
    );
    assert!(row.started_at.is_some());
    assert_eq!(w.agents.status_on_host(sb.id), Some(Running));
    assert_eq!(w.sandbox_events().await, vec![SandboxEventKind::Started]);
    assert_eq!(
        w.platform_events().await,
        vec!["capsule.created", "capsule.running"]
    );
}

async fn a_failed_create_ends_in_error(store: Arc<dyn Store>) {
    let w = world(store).await;
    w.agents
        .fail_next(Op::Create, HostCallError::Internal("no space left".into()));
    let id = w.create().await;
    assert_eq!(w.status(id).await, Error);
    assert_eq!(w.agents.status_on_host(id), None);
    assert_eq!(w.sandbox_events().await, vec![SandboxEventKind::Failed]);
}

async fn a_create_whose_host_cannot_be_reached_starts_on_another(store: Arc<dyn Store>) {
    let w = world(store).await;
    let other = online_host(&w.store).await;
    let lifecycle = Lifecycle::new(
        w.store.clone(),
        w.agents.clone(),
        w.bus.clone(),
        Arc::new(LeastLoaded::new(w.store.clone())),
    );
    w.agents.fail_next(
        Op::Create,
        HostCallError::Unavailable("connection refused".into()),
    );
    let first = lifecycle
        .create(w.team, &w.actor, CreateSandbox::default())
        .await
        .expect("create");
    lifecycle.wait_idle().await;
    let row = w.store.get_sandbox(first.id).await.unwrap();
    assert_eq!(row.status, Running);
    let hosts = [w.host, other];
    assert!(hosts.contains(&first.host_id) && hosts.contains(&row.host_id));
    assert_ne!(row.host_id, first.host_id, "placed on the other host");
    assert_eq!(w.agents.count(Op::Create), 2);
    assert_eq!(w.sandbox_events().await, vec![SandboxEventKind::Started]);
}

async fn a_create_whose_only_host_cannot_be_reached_ends_in_error(store: Arc<dyn Store>) {
    let w = world(store).await;
    w.agents.fail_next(
        Op::Create,
        HostCallError::Unavailable("connection refused".into()),
    );
    let id = w.create().await;
    assert_eq!(w.status(id).await, Error);
    assert_eq!(w.store.get_sandbox(id).await.unwrap().host_id, w.host);
    assert_eq!(w.agents.count(Op::Create), 1, "no other host to try");
}

async fn a_create_that_times_out_ends_in_error_and_is_cleaned_up(store: Arc<dyn Store>) {
    let w = world(store).await;
    w.agents.delay(Op::Create, Duration::from_secs(3));
    let id = w.create().await;
    assert_eq!(w.status(id).await, Error);
    // The destroy issued after the timeout reached the host.
    assert!(w.agents.count(Op::Destroy) >= 1);
}

async fn bad_input_is_refused_and_changes_nothing(store: Arc<dyn Store>) {
    let w = world(store).await;
    let bad = [
        CreateSandbox {
            template: Some("../etc".into()),
            ..Default::default()
        },
        CreateSandbox {
            resources: ResourceRequest {
                vcpus: Some(1000),
                ..Default::default()
            },
            ..Default::default()
        },
        CreateSandbox {
            resources: ResourceRequest {
                memory_mb: Some(1),
                ..Default::default()
            },
            ..Default::default()
        },
        CreateSandbox {
            resources: ResourceRequest {
                disk_size_mb: Some(-5),
                ..Default::default()
            },
            ..Default::default()
        },
        CreateSandbox {
            timeout_sec: Some(-1),
            ..Default::default()
        },
        CreateSandbox {
            metadata: [("kernel_version".into(), "x".into())].into(),
            ..Default::default()
        },
    ];
    for req in bad {
        let err = w
            .lifecycle
            .create(w.team, &w.actor, req.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err, LifecycleError::Invalid(_)),
            "{req:?} gave {err:?}"
        );
    }
    let err = w
        .lifecycle
        .create(
            w.team,
            &w.actor,
            CreateSandbox {
                template: Some("nope".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::NotFound("template")),
        "{err:?}"
    );
    assert!(w.store.list_sandboxes(w.team).await.unwrap().is_empty());
    assert_eq!(w.agents.count(Op::Create), 0);
}

async fn no_host_means_no_row(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let other = Lifecycle::new(
        store.clone(),
        w.agents.clone(),
        w.bus.clone(),
        Arc::new(SingleHost::new(store.clone(), HostId::new())),
    );
    let err = other
        .create(w.team, &w.actor, CreateSandbox::default())
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::NoHosts(_)), "{err:?}");
    assert!(w.store.list_sandboxes(w.team).await.unwrap().is_empty());
}

async fn pause_then_resume(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    let sb = w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    assert_eq!(sb.status, Pausing);
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Paused);
    assert_eq!(w.agents.status_on_host(id), Some(Paused));
    let sb = w.lifecycle.resume(w.team, id, &w.actor).await.unwrap();
    assert_eq!(sb.status, Resuming);
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Running);
    assert_eq!(
        w.sandbox_events().await,
        vec![
            SandboxEventKind::Started,
            SandboxEventKind::Paused,
            SandboxEventKind::Resumed
        ]
    );
}

async fn a_failed_pause_returns_to_running_when_the_sandbox_answers(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    w.agents
        .fail_next(Op::Pause, HostCallError::Internal("snapshot failed".into()));
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Running);
    assert!(
        w.sandbox_events()
            .await
            .contains(&SandboxEventKind::PauseFailed)
    );
}

async fn a_failed_pause_ends_in_error_when_the_sandbox_is_gone(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    w.agents
        .fail_next(Op::Pause, HostCallError::Internal("vmm crashed".into()));
    w.agents.lose(id);
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Error);
}

async fn a_pause_or_snapshot_whose_host_is_unreachable_loses_nothing(store: Arc<dyn Store>) {
    // The host goes away (an agent restarting) during the call: the call and the ping
    // that follows it both fail to connect. Nothing is known of the sandbox, so it is
    // not written off as `error`: it runs again, and the host monitor follows the host.
    let w = world(store).await;
    let id = w.create().await;
    let refused = || HostCallError::Unavailable("connection refused".into());
    w.agents.fail_next(Op::Pause, refused());
    w.agents.fail_next(Op::Ping, refused());
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Running);

    w.agents.fail_next(Op::Snapshot, refused());
    w.agents.fail_next(Op::Ping, refused());
    let err = w
        .lifecycle
        .snapshot(w.team, id, Some("lost-host".into()), false, &w.actor)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::Agent(HostCallError::Unavailable(_))),
        "{err:?}"
    );
    assert_eq!(w.status(id).await, Running);
    assert_eq!(w.agents.status_on_host(id), Some(Running));
}

async fn wrong_state_is_refused_with_the_current_status(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    let err = w.lifecycle.resume(w.team, id, &w.actor).await.unwrap_err();
    assert!(
        matches!(
            err,
            LifecycleError::InvalidState {
                status: Running,
                action: "resume",
                ..
            }
        ),
        "{err:?}"
    );
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    let err = w.lifecycle.pause(w.team, id, &w.actor).await.unwrap_err();
    assert!(
        matches!(
            err,
            LifecycleError::InvalidState {
                action: "pause",
                ..
            }
        ),
        "{err:?}"
    );
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Paused);
}

async fn other_teams_cannot_touch_a_sandbox(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    let (_, stranger) = team(&w.store).await;
    for res in [
        w.lifecycle.pause(stranger, id, &w.actor).await,
        w.lifecycle.destroy(stranger, id, &w.actor).await,
    ] {
        assert!(matches!(res, Err(LifecycleError::NotFound(_))), "{res:?}");
    }
    assert_eq!(w.status(id).await, Running);
}

async fn a_failed_resume_returns_to_paused(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    w.agents
        .fail_next(Op::Resume, HostCallError::Internal("restore failed".into()));
    w.lifecycle.resume(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Paused);
}

async fn a_hibernated_sandbox_resumes(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    // The agent hibernates a long-paused sandbox and says so.
    w.agents.sandboxes.lock().unwrap().insert(id, Hibernated);
    let ev = SandboxEvent::new(SandboxEventKind::Hibernated, id, w.host);
    assert!(matches!(
        w.lifecycle.apply_event(&ev).await.unwrap(),
        Applied::Changed(_)
    ));
    assert_eq!(w.status(id).await, Hibernated);
    w.lifecycle.resume(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Running);
    // A failed resume of a hibernated sandbox goes back to hibernated.
    w.agents.sandboxes.lock().unwrap().insert(id, Hibernated);
    w.store
        .status_if(id, Running, Hibernated)
        .await
        .unwrap()
        .expect("hibernate row");
    w.agents
        .fail_next(Op::Resume, HostCallError::Internal("disk busy".into()));
    w.lifecycle.resume(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Hibernated);
}

async fn destroy_keeps_the_row_as_stopped(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    let sb = w.lifecycle.destroy(w.team, id, &w.actor).await.unwrap();
    assert_eq!(sb.status, Stopping);
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Stopped);
    assert_eq!(w.agents.status_on_host(id), None);
    // Destroying again changes nothing and is not an error.
    assert_eq!(
        w.lifecycle
            .destroy(w.team, id, &w.actor)
            .await
            .unwrap()
            .status,
        Stopped
    );
    w.lifecycle.wait_idle().await;
    assert_eq!(w.agents.count(Op::Destroy), 1);
    assert!(
        w.store.list_sandboxes(w.team).await.unwrap().is_empty(),
        "stopped rows are hidden from the list"
    );
}

async fn destroy_while_starting_wins_and_leaves_no_orphan(store: Arc<dyn Store>) {
    let w = world(store).await;
    w.agents.hold(Op::Create);
    let sb = w
        .lifecycle
        .create(w.team, &w.actor, CreateSandbox::default())
        .await
        .unwrap();
    w.lifecycle.destroy(w.team, sb.id, &w.actor).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.agents.release(Op::Create);
    w.lifecycle.wait_idle().await;
    // The late create lost its conditional write and did not overwrite `stopped`…
    assert_eq!(w.status(sb.id).await, Stopped);
    // …and removed what it had made on the host.
    assert_eq!(w.agents.status_on_host(sb.id), None);
}

async fn a_late_pause_outcome_never_overwrites_a_destroy(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    w.agents.hold(Op::Pause);
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.destroy(w.team, id, &w.actor).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.agents.release(Op::Pause);
    w.lifecycle.wait_idle().await;
    assert_eq!(w.status(id).await, Stopped);
    assert_eq!(w.agents.status_on_host(id), None);
}

async fn concurrent_pause_destroy_resume_agree_with_the_host(store: Arc<dyn Store>) {
    let w = world(store).await;
    for round in 0..6 {
        let id = w.create().await;
        if round % 2 == 1 {
            w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
            w.lifecycle.wait_idle().await;
        }
        w.agents
            .delay(Op::Pause, Duration::from_millis(20 * (round % 3)));
        let (a, b, c) = tokio::join!(
            w.lifecycle.pause(w.team, id, &w.actor),
            w.lifecycle.destroy(w.team, id, &w.actor),
            w.lifecycle.resume(w.team, id, &w.actor),
        );
        for r in [a, b, c] {
            if let Err(e) = r {
                assert!(matches!(e, LifecycleError::InvalidState { .. }), "{e:?}");
            }
        }
        w.lifecycle.wait_idle().await;
        // Destroy always wins in the end, and the host agrees.
        assert_eq!(w.status(id).await, Stopped, "round {round}");
        assert_eq!(w.agents.status_on_host(id), None, "round {round}");
    }
}

async fn snapshots_become_templates(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    let t = w
        .lifecycle
        .snapshot(w.team, id, Some("my-env".into()), false, &w.actor)
        .await
        .unwrap();
    assert_eq!(t.name, "my-env");
    assert_eq!(t.team_id, w.team);
    assert_eq!(t.size_bytes, 4096);
    assert_eq!(w.status(id).await, Running, "back to where it was");
    let err = w
        .lifecycle
        .snapshot(w.team, id, Some("my-env".into()), false, &w.actor)
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::NameTaken(_)), "{err:?}");
    let again = w
        .lifecycle
        .snapshot(w.team, id, Some("my-env".into()), true, &w.actor)
        .await
        .unwrap();
    assert_eq!(again.id, t.id, "overwrite keeps the template id");
    let err = w
        .lifecycle
        .snapshot(w.team, id, Some("minimal".into()), true, &w.actor)
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::NameReserved(_)), "{err:?}");
    let err = w
        .lifecycle
        .snapshot(w.team, id, Some("bad name!".into()), false, &w.actor)
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Invalid(_)), "{err:?}");
    // A new sandbox from the snapshot gets its size.
    let sb = w
        .lifecycle
        .create(
            w.team,
            &w.actor,
            CreateSandbox {
                template: Some("my-env".into()),
                resources: ResourceRequest {
                    vcpus: Some(4),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((sb.template_id, sb.vcpus), (t.id, 1));
    w.lifecycle.wait_idle().await;
    // A paused sandbox can be snapshotted too and stays paused.
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    w.lifecycle
        .snapshot(w.team, id, None, false, &w.actor)
        .await
        .unwrap();
    assert_eq!(w.status(id).await, Paused);
}

async fn a_failed_snapshot_puts_the_sandbox_back(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    w.agents
        .fail_next(Op::Snapshot, HostCallError::Internal("disk full".into()));
    let err = w
        .lifecycle
        .snapshot(w.team, id, Some("x".into()), false, &w.actor)
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Agent(_)), "{err:?}");
    assert_eq!(w.status(id).await, Running);
    assert!(
        w.store.get_template_for_team(w.team, "x").await.is_err(),
        "no template row"
    );
}

async fn events_are_applied_once_and_only_from_the_owning_host(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    let stranger = SandboxEvent::new(SandboxEventKind::AutoPaused, id, HostId::new());
    assert_eq!(
        w.lifecycle.apply_event(&stranger).await.unwrap(),
        Applied::Unchanged
    );
    assert_eq!(w.status(id).await, Running);
    let ev = SandboxEvent::new(SandboxEventKind::AutoPaused, id, w.host);
    assert!(matches!(
        w.lifecycle.apply_event(&ev).await.unwrap(),
        Applied::Changed(_)
    ));
    assert_eq!(w.status(id).await, Paused);
    assert_eq!(
        w.lifecycle.apply_event(&ev).await.unwrap(),
        Applied::Unchanged
    );
    // The background task's own event, replayed by the consumer, changes nothing.
    let started = SandboxEvent::new(SandboxEventKind::Started, id, w.host);
    assert_eq!(
        w.lifecycle.apply_event(&started).await.unwrap(),
        Applied::Unchanged
    );
    let unknown = SandboxEvent::new(SandboxEventKind::Stopped, SandboxId::new(), w.host);
    assert_eq!(
        w.lifecycle.apply_event(&unknown).await.unwrap(),
        Applied::Unchanged
    );
}

async fn ping_needs_a_running_sandbox(store: Arc<dyn Store>) {
    let w = world(store).await;
    let id = w.create().await;
    w.lifecycle.ping(w.team, id).await.unwrap();
    assert!(
        w.store
            .get_sandbox(id)
            .await
            .unwrap()
            .last_active_at
            .is_some()
    );
    w.lifecycle.pause(w.team, id, &w.actor).await.unwrap();
    w.lifecycle.wait_idle().await;
    assert!(matches!(
        w.lifecycle.ping(w.team, id).await,
        Err(LifecycleError::InvalidState { .. })
    ));
}

macro_rules! on_every_store {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = wrenn_db::testing::TestStores::sqlite().await;
                    super::$name(db.store()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = wrenn_db::testing::TestStores::postgres().await else { return };
                    super::$name(db.store()).await;
                }
            )+
        }
    };
}

on_every_store!(
    create_returns_starting_and_ends_running,
    create_waiting_answers_with_the_outcome_or_with_starting_after_the_wait,
    pause_resume_and_destroy_waiting_answer_with_the_outcome_or_the_transient_status,
    a_failed_create_ends_in_error,
    a_create_whose_host_cannot_be_reached_starts_on_another,
    a_create_whose_only_host_cannot_be_reached_ends_in_error,
    a_create_that_times_out_ends_in_error_and_is_cleaned_up,
    bad_input_is_refused_and_changes_nothing,
    no_host_means_no_row,
    pause_then_resume,
    a_failed_pause_returns_to_running_when_the_sandbox_answers,
    a_failed_pause_ends_in_error_when_the_sandbox_is_gone,
    a_pause_or_snapshot_whose_host_is_unreachable_loses_nothing,
    wrong_state_is_refused_with_the_current_status,
    other_teams_cannot_touch_a_sandbox,
    a_failed_resume_returns_to_paused,
    a_hibernated_sandbox_resumes,
    destroy_keeps_the_row_as_stopped,
    destroy_while_starting_wins_and_leaves_no_orphan,
    a_late_pause_outcome_never_overwrites_a_destroy,
    concurrent_pause_destroy_resume_agree_with_the_host,
    snapshots_become_templates,
    a_failed_snapshot_puts_the_sandbox_back,
    events_are_applied_once_and_only_from_the_owning_host,
    ping_needs_a_running_sandbox,
);
