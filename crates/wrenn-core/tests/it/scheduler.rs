//! The scheduler conformance suite: the eligibility rules every strategy shares,
//! run against `LeastLoaded`, `RoundRobin` and `SingleHost` (only-online mode) over a
//! real store (SQLite always, PostgreSQL when configured) — plus each strategy's own
//! choice rule.

use crate::support;

use std::sync::Arc;

use wrenn_core::id::{HostId, TeamId};
use wrenn_core::lifecycle::{HostStatus, SandboxStatus};
use wrenn_core::model::{HostKind, NewSandbox, Resources};
use wrenn_core::repo::{HostSpec, NewHost, Store};
use wrenn_core::scheduler::{
    LeastLoaded, Placement, Reserve, RoundRobin, Scheduler, SchedulerError, SingleHost,
};

async fn host(
    store: &Arc<dyn Store>,
    kind: HostKind,
    team: Option<TeamId>,
    memory_mb: i32,
) -> HostId {
    let id = HostId::new();
    store
        .create_host(NewHost {
            id,
            kind,
            team_id: team,
            provider: "t".into(),
            availability_zone: "a".into(),
            created_by: None,
        })
        .await
        .unwrap();
    let spec = HostSpec {
        address: format!("127.0.0.1:{}", 20000 + (id.uuid().as_u128() % 1000) as u16),
        arch: "x86_64".into(),
        cpu_cores: 32,
        memory_mb,
        disk_gb: 1000,
    };
    assert!(store.register_host(id, &spec).await.unwrap());
    id
}

fn placement(team: TeamId, byoc: bool) -> Placement {
    Placement {
        team_id: team,
        team_is_byoc: byoc,
        resources: Resources {
            vcpus: 1,
            memory_mb: 512,
            disk_size_mb: 1024,
        },
        avoid: Vec::new(),
    }
}

type Make = fn(Arc<dyn Store>) -> Arc<dyn Scheduler>;

fn small_reserve() -> Reserve {
    Reserve {
        memory_mb: 0,
        cpus: 0.0,
        disk_mb: 0,
        ..Reserve::default()
    }
}

const STRATEGIES: [(&str, Make); 3] = [
    ("least_loaded", |s| {
        Arc::new(LeastLoaded::with_reserve(s, small_reserve()))
    }),
    ("round_robin", |s| Arc::new(RoundRobin::new(s))),
    ("single_host", |s| Arc::new(SingleHost::only_online(s))),
];

async fn no_hosts_is_a_clear_error(store: Arc<dyn Store>) {
    for (name, make) in STRATEGIES {
        let err = make(store.clone())
            .select_host(&placement(TeamId::new(), false))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::NoPlatformHosts),
            "{name}: {err}"
        );
        assert_eq!(err.to_string(), "no online platform hosts available");
    }
}

async fn byoc_teams_use_only_their_own_hosts(store: Arc<dyn Store>) {
    let (_, team) = support::team(&store).await;
    let regular = host(&store, HostKind::Regular, None, 65536).await;
    for (name, make) in STRATEGIES {
        let err = make(store.clone())
            .select_host(&placement(team, true))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::NoByocHosts(t) if t == team),
            "{name}: {err}"
        );
    }
    let own = host(&store, HostKind::Byoc, Some(team), 65536).await;
    for (name, make) in STRATEGIES {
        let s = make(store.clone());
        for _ in 0..3 {
            assert_eq!(
                s.select_host(&placement(team, true)).await.unwrap(),
                own,
                "{name}"
            );
            assert_eq!(
                s.select_host(&placement(TeamId::new(), false))
                    .await
                    .unwrap(),
                regular,
                "{name}: regular teams never get BYOC hosts"
            );
        }
    }
}

async fn unreachable_hosts_are_skipped(store: Arc<dyn Store>) {
    let down = host(&store, HostKind::Regular, None, 65536).await;
    assert!(
        store
            .set_host_status_if(down, HostStatus::Online, HostStatus::Unreachable)
            .await
            .unwrap()
    );
    for (name, make) in STRATEGIES {
        let err = make(store.clone())
            .select_host(&placement(TeamId::new(), false))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::NoPlatformHosts),
            "{name}: {err}"
        );
    }
    let up = host(&store, HostKind::Regular, None, 65536).await;
    for (name, make) in STRATEGIES {
        assert_eq!(
            make(store.clone())
                .select_host(&placement(TeamId::new(), false))
                .await
                .unwrap(),
            up,
            "{name}"
        );
    }
}

async fn hosts_a_create_could_not_reach_are_avoided(store: Arc<dyn Store>) {
    let tried = host(&store, HostKind::Regular, None, 65536).await;
    let avoiding = Placement {
        avoid: vec![tried],
        ..placement(TeamId::new(), false)
    };
    for (name, make) in STRATEGIES {
        let err = make(store.clone())
            .select_host(&avoiding)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SchedulerError::NoPlatformHosts),
            "{name}: {err}"
        );
    }
    let other = host(&store, HostKind::Regular, None, 65536).await;
    for (name, make) in STRATEGIES {
        let s = make(store.clone());
        for _ in 0..3 {
            assert_eq!(s.select_host(&avoiding).await.unwrap(), other, "{name}");
        }
    }
}

async fn round_robin_takes_hosts_in_turn(store: Arc<dyn Store>) {
    let a = host(&store, HostKind::Regular, None, 65536).await;
    let b = host(&store, HostKind::Regular, None, 65536).await;
    let rr = RoundRobin::new(store.clone());
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(
            rr.select_host(&placement(TeamId::new(), false))
                .await
                .unwrap(),
        );
    }
    assert_eq!(got.iter().filter(|h| **h == a).count(), 2);
    assert_eq!(got.iter().filter(|h| **h == b).count(), 2);
    assert_ne!(got[0], got[1]);
}

async fn least_loaded_prefers_the_emptier_host_and_admits_on_memory(store: Arc<dyn Store>) {
    let (_, team) = support::team(&store).await;
    let busy = host(&store, HostKind::Regular, None, 8192).await;
    let idle = host(&store, HostKind::Regular, None, 8192).await;
    // Reserve 6 GiB of `busy` with a running sandbox.
    let sb = store
        .insert_sandbox(NewSandbox {
            id: wrenn_core::id::SandboxId::new(),
            team_id: team,
            host_id: busy,
            template: "minimal".into(),
            template_id: wrenn_core::id::BUILTIN_TEMPLATE_ID,
            template_team_id: wrenn_core::id::PLATFORM_TEAM_ID,
            status: SandboxStatus::Running,
            resources: Resources {
                vcpus: 1,
                memory_mb: 6144,
                disk_size_mb: 1024,
            },
            timeout_sec: 0,
            metadata: Default::default(),
        })
        .await
        .unwrap();
    // No memory reserve either in the "could any host ever hold it" check: this test is
    // about what is left on the hosts.
    let ll = LeastLoaded::with_reserve(store.clone(), small_reserve()).with_overcommit(
        wrenn_core::config::Overcommit {
            memory_reserve_mb: 0,
            ..Default::default()
        },
    );
    assert_eq!(ll.select_host(&placement(team, false)).await.unwrap(), idle);
    // A sandbox bigger than what either host has left under its overcommit (what its
    // agent would admit) is refused now, with the sizes.
    let p = placement(team, false);
    let big = Placement {
        resources: Resources {
            memory_mb: 8000,
            ..p.resources
        },
        ..p
    };
    store
        .insert_sandbox(NewSandbox {
            id: wrenn_core::id::SandboxId::new(),
            host_id: idle,
            resources: Resources {
                memory_mb: 4096,
                ..sb.resources()
            },
            ..new_from(&sb)
        })
        .await
        .unwrap();
    let err = ll.select_host(&big).await.unwrap_err();
    assert!(
        matches!(
            err,
            SchedulerError::HostsFull {
                memory_mb: 8000,
                ..
            }
        ),
        "{err}"
    );
}

fn new_from(sb: &wrenn_core::model::Sandbox) -> NewSandbox {
    NewSandbox {
        id: sb.id,
        team_id: sb.team_id,
        host_id: sb.host_id,
        template: sb.template.clone(),
        template_id: sb.template_id,
        template_team_id: sb.template_team_id,
        status: sb.status,
        resources: sb.resources(),
        timeout_sec: sb.timeout_sec,
        metadata: sb.metadata.clone(),
    }
}

async fn single_host_pins_its_host(store: Arc<dyn Store>) {
    let a = host(&store, HostKind::Regular, None, 65536).await;
    let b = host(&store, HostKind::Regular, None, 65536).await;
    let s = SingleHost::new(store.clone(), b);
    for _ in 0..3 {
        assert_eq!(
            s.select_host(&placement(TeamId::new(), false))
                .await
                .unwrap(),
            b
        );
    }
    assert!(
        store
            .set_host_status_if(b, HostStatus::Online, HostStatus::Unreachable)
            .await
            .unwrap()
    );
    assert!(
        s.select_host(&placement(TeamId::new(), false))
            .await
            .is_err(),
        "never falls back to {a}"
    );
}

macro_rules! on_every_store {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = wrenn_db::testing::TestStores::sqlite().await;
                    super::$name(db.store()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = wrenn_db::testing::TestStores::postgres().await else { return };
                    super::$name(db.store()).await;
                }
            )+
        }
    };
}

on_every_store!(
    no_hosts_is_a_clear_error,
    byoc_teams_use_only_their_own_hosts,
    unreachable_hosts_are_skipped,
    hosts_a_create_could_not_reach_are_avoided,
    round_robin_takes_hosts_in_turn,
    least_loaded_prefers_the_emptier_host_and_admits_on_memory,
    single_host_pins_its_host,
);
