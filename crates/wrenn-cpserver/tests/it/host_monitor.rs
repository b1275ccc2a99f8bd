//! The host monitor reconciles rows with what hosts report.

use crate::common;

use std::time::Duration;

use common::TestServer;
use wrenn_core::audit::Actor;
use wrenn_core::events::{Event, EventId, PLATFORM_STREAM};
use wrenn_core::id::{HostId, SandboxId};
use wrenn_core::lifecycle::{CreateSandbox, HostStatus, SandboxStatus::*};
use wrenn_core::model::{HostKind, NewSandbox, Resources};
use wrenn_core::repo::{HostSpec, NewHost};
use wrenn_cpserver::workers::host_monitor::{MonitorSettings, pass};

/// A platform host that has not registered (nothing reports it online).
async fn new_host(s: &TestServer) -> HostId {
    let id = HostId::new();
    s.store()
        .create_host(NewHost {
            id,
            kind: HostKind::Regular,
            team_id: None,
            provider: "t".into(),
            availability_zone: "a".into(),
            created_by: None,
        })
        .await
        .unwrap();
    id
}

async fn online_host(s: &TestServer) -> HostId {
    let store = s.store();
    let id = new_host(s).await;
    let spec = HostSpec {
        address: "127.0.0.1:9".into(),
        arch: "x86_64".into(),
        cpu_cores: 64,
        memory_mb: 262_144,
        disk_gb: 4000,
    };
    assert!(store.register_host(id, &spec).await.unwrap());
    id
}

async fn running(s: &TestServer, team: wrenn_core::id::TeamId) -> wrenn_core::id::SandboxId {
    let sb = s
        .ctx
        .lifecycle
        .create(team, &Actor::system(), CreateSandbox::default())
        .await
        .unwrap();
    s.ctx.lifecycle.wait_idle().await;
    assert_eq!(s.store().get_sandbox(sb.id).await.unwrap().status, Running);
    sb.id
}

/// The platform events published about capsule `id`, oldest first.
async fn capsule_events(s: &TestServer, id: SandboxId) -> Vec<&'static str> {
    let all = s
        .ctx
        .events
        .read_after(
            PLATFORM_STREAM,
            Some(&EventId("0-0".into())),
            10_000,
            Duration::ZERO,
        )
        .await
        .unwrap();
    all.iter()
        .filter_map(|d| match &d.event {
            Event::Platform(p) if p.resource.id == id.to_string() => Some(p.event.as_str()),
            _ => None,
        })
        .collect()
}

fn settings() -> MonitorSettings {
    MonitorSettings::default()
}

#[tokio::test]
async fn a_silent_host_goes_unreachable_and_its_sandboxes_missing_then_come_back() {
    let s = TestServer::start().await;
    let host = online_host(&s).await;
    let u = s.user("mon@example.com").await;
    let id = running(&s, u.team).await;
    let stale = MonitorSettings {
        unreachable_after: Duration::ZERO,
        ..settings()
    };
    let report = pass(&s.ctx, &stale).await.unwrap();
    assert_eq!(report.hosts_down, 1);
    assert_eq!(
        s.store().get_host(host).await.unwrap().status,
        HostStatus::Unreachable
    );
    assert_eq!(s.store().get_sandbox(id).await.unwrap().status, Missing);
    // The host heartbeats again; the sandbox is still alive on it.
    let spec = HostSpec {
        address: "127.0.0.1:9".into(),
        arch: "x86_64".into(),
        cpu_cores: 64,
        memory_mb: 262_144,
        disk_gb: 4000,
    };
    assert_eq!(
        s.store().heartbeat(host, &spec).await.unwrap(),
        HostStatus::Unreachable
    );
    pass(&s.ctx, &settings()).await.unwrap();
    assert_eq!(s.store().get_sandbox(id).await.unwrap().status, Running);
    s.stop().await;
}

#[tokio::test]
async fn sandboxes_gone_from_their_host_are_stopped_or_paused() {
    let s = TestServer::start().await;
    online_host(&s).await;
    let u = s.user("mon2@example.com").await;
    let gone = running(&s, u.team).await;
    let paused_on_host = running(&s, u.team).await;
    s.agents.lose(gone);
    s.agents
        .sandboxes
        .lock()
        .unwrap()
        .insert(paused_on_host, Paused);
    let report = pass(&s.ctx, &settings()).await.unwrap();
    assert_eq!(report.sandboxes_changed, 2);
    assert_eq!(s.store().get_sandbox(gone).await.unwrap().status, Stopped);
    assert_eq!(
        s.store().get_sandbox(paused_on_host).await.unwrap().status,
        Paused
    );
    // Subscribers hear of what the monitor changed.
    assert_eq!(
        capsule_events(&s, gone).await,
        ["capsule.created", "capsule.running", "capsule.destroyed"]
    );
    assert_eq!(
        capsule_events(&s, paused_on_host).await,
        ["capsule.created", "capsule.running", "capsule.paused"]
    );
    // A second pass changes nothing.
    assert_eq!(
        pass(&s.ctx, &settings()).await.unwrap().sandboxes_changed,
        0
    );
    s.stop().await;
}

#[tokio::test]
async fn a_create_whose_agent_died_ends_in_error_not_starting() {
    let s = TestServer::start().await;
    online_host(&s).await;
    let u = s.user("mon3@example.com").await;
    // The agent never answers this create (it died mid-way).
    s.agents.hold(wrenn_core::testing::Op::Create);
    let sb = s
        .ctx
        .lifecycle
        .create(u.team, &Actor::system(), CreateSandbox::default())
        .await
        .unwrap();
    // Within the grace period nothing happens…
    pass(&s.ctx, &settings()).await.unwrap();
    assert_eq!(s.store().get_sandbox(sb.id).await.unwrap().status, Starting);
    // …after it, a starting row the host does not have is an error.
    let no_grace = MonitorSettings {
        transient_grace: Duration::ZERO,
        ..settings()
    };
    pass(&s.ctx, &no_grace).await.unwrap();
    assert_eq!(s.store().get_sandbox(sb.id).await.unwrap().status, Error);
    s.agents.release(wrenn_core::testing::Op::Create);
    s.stop().await;
}

#[tokio::test]
async fn orphans_on_a_host_are_destroyed() {
    let s = TestServer::start().await;
    online_host(&s).await;
    let u = s.user("mon4@example.com").await;
    let id = running(&s, u.team).await;
    let orphan = wrenn_core::id::SandboxId::new();
    s.agents.sandboxes.lock().unwrap().insert(orphan, Running);
    let report = pass(&s.ctx, &settings()).await.unwrap();
    assert_eq!(report.orphans_destroyed, 1);
    assert_eq!(s.agents.status_on_host(orphan), None);
    assert_eq!(
        s.agents.status_on_host(id),
        Some(Running),
        "wanted sandboxes are left alone"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_copy_left_on_a_host_the_create_moved_away_from_is_destroyed() {
    let s = TestServer::start().await;
    let store = s.store();
    let this_host = online_host(&s).await;
    let u = s.user("mon5@example.com").await;
    // The create could not reach this host and was placed on another (not yet
    // reporting here); this host started it all the same.
    let elsewhere = new_host(&s).await;
    let template = store
        .get_template_for_team(u.team, wrenn_core::id::BUILTIN_TEMPLATE_NAME)
        .await
        .unwrap();
    let moved = store
        .insert_sandbox(NewSandbox {
            id: SandboxId::new(),
            team_id: u.team,
            host_id: elsewhere,
            template: template.name.clone(),
            template_id: template.id,
            template_team_id: template.team_id,
            status: Starting,
            resources: Resources {
                vcpus: 1,
                memory_mb: 512,
                disk_size_mb: 1024,
            },
            timeout_sec: 0,
            metadata: Default::default(),
        })
        .await
        .unwrap();
    s.agents.sandboxes.lock().unwrap().insert(moved.id, Running);
    let report = pass(&s.ctx, &settings()).await.unwrap();
    assert_eq!(report.orphans_destroyed, 1);
    assert_eq!(s.agents.status_on_host(moved.id), None);
    assert_eq!(
        store.get_sandbox(moved.id).await.unwrap().host_id,
        elsewhere,
        "the row stays with the host it was placed on"
    );
    assert_ne!(this_host, elsewhere);
    s.stop().await;
}

#[test]
fn the_monitor_settings_come_from_the_configuration() {
    let config = |vars: &[(&str, &str)]| {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wrenn_core::config::Config::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap()
    };
    assert_eq!(
        MonitorSettings::from_config(&config(&[])),
        MonitorSettings::default()
    );
    assert_eq!(
        MonitorSettings::default(),
        MonitorSettings {
            unreachable_after: Duration::from_secs(90),
            transient_grace: Duration::from_secs(120),
            snapshot_grace: Duration::from_secs(900),
        }
    );
    let soak = config(&[
        ("WRENN_HOST_UNREACHABLE_AFTER_SECS", "40"),
        ("WRENN_TRANSIENT_GRACE_SECS", "20"),
        ("WRENN_SNAPSHOT_GRACE_SECS", "60"),
    ]);
    assert_eq!(
        MonitorSettings::from_config(&soak),
        MonitorSettings {
            unreachable_after: Duration::from_secs(40),
            transient_grace: Duration::from_secs(20),
            snapshot_grace: Duration::from_secs(60),
        }
    );
}

#[tokio::test]
async fn a_paused_row_whose_host_runs_the_sandbox_is_running_again() {
    // A resume that reached the host but whose answer was lost (the host went away
    // while answering) left the row paused while the host runs the sandbox.
    let s = TestServer::start().await;
    online_host(&s).await;
    let u = s.user("mon-resume@example.com").await;
    let id = running(&s, u.team).await;
    assert!(
        s.store()
            .status_if(id, Running, Paused)
            .await
            .unwrap()
            .is_some()
    );
    let report = pass(&s.ctx, &settings()).await.unwrap();
    assert_eq!(report.sandboxes_changed, 1);
    assert_eq!(s.store().get_sandbox(id).await.unwrap().status, Running);
    s.stop().await;
}
