//! The team metrics sampler's tick (`metrics_sampler::sample`: aggregate every
//! capsule row per team, store one snapshot per team, prune) at 10,000 capsules in
//! 1,000 teams, statuses mixed as a busy platform has them. The target is under 50 ms
//! per tick on PostgreSQL.
//!
//! SQLite always; PostgreSQL (a fresh schema) when `WRENN_TEST_POSTGRES_URL` is set:
//!
//! ```sh
//! WRENN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench sampler
//! ```

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::Criterion;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{NewSandbox, Resources, UserStatus};
use wrenn_core::repo::{NewTeam, NewUser, Store};
use wrenn_cpserver::workers::metrics_sampler;
use wrenn_db::testing::{TestStore, TestStores, postgres_url};

const TEAMS: usize = 1_000;
const CAPSULES: usize = 10_000;

/// 1,000 teams with 10 capsules each: running, paused, stopped and the rest.
async fn fill(store: &Arc<dyn Store>) {
    let statuses = [
        SandboxStatus::Running,
        SandboxStatus::Running,
        SandboxStatus::Running,
        SandboxStatus::Paused,
        SandboxStatus::Paused,
        SandboxStatus::Hibernated,
        SandboxStatus::Stopped,
        SandboxStatus::Stopped,
        SandboxStatus::Starting,
        SandboxStatus::Error,
    ];
    let host = HostId::new();
    for t in 0..TEAMS {
        let owner = store
            .create_user(NewUser {
                id: UserId::new(),
                email: format!("bench-{t}-{}@example.com", uuid::Uuid::new_v4().simple()),
                password_hash: None,
                name: "Bench".into(),
                status: UserStatus::Active,
                is_admin: false,
            })
            .await
            .expect("user");
        let team = store
            .create_team(
                NewTeam {
                    id: TeamId::new(),
                    name: format!("bench {t}"),
                    slug: wrenn_core::id::new_team_slug(),
                    is_byoc: false,
                },
                owner.id,
                false,
            )
            .await
            .expect("team");
        for status in statuses.iter().take(CAPSULES / TEAMS) {
            store
                .insert_sandbox(NewSandbox {
                    id: SandboxId::new(),
                    team_id: team.id,
                    host_id: host,
                    template: "minimal".into(),
                    template_id: BUILTIN_TEMPLATE_ID,
                    template_team_id: PLATFORM_TEAM_ID,
                    status: *status,
                    resources: Resources {
                        vcpus: 2,
                        memory_mb: 1024,
                        disk_size_mb: 20_480,
                    },
                    timeout_sec: 300,
                    metadata: Default::default(),
                })
                .await
                .expect("capsule");
        }
    }
}

fn sampler_tick(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut stores: Vec<TestStore> = vec![runtime.block_on(TestStores::sqlite())];
    if postgres_url().is_some() {
        stores.extend(runtime.block_on(TestStores::postgres()));
    } else {
        eprintln!("skipping postgres: WRENN_TEST_POSTGRES_URL not set");
    }
    let mut group = c.benchmark_group("metrics_sampler");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    for test_store in &stores {
        let store = test_store.store();
        runtime.block_on(fill(&store));
        let period = Duration::from_secs(10);
        // Each iteration samples a new period (as the worker does every 10 s), so every
        // tick writes its 1,000 snapshots.
        let mut at = Utc::now();
        group.bench_function(format!("{}/tick_10k_capsules", store.backend()), |b| {
            b.to_async(&runtime).iter(|| {
                at += chrono::Duration::seconds(10);
                let store = Arc::clone(&store);
                let now = at;
                async move {
                    let n = metrics_sampler::sample(store.as_ref(), now, period)
                        .await
                        .expect("tick");
                    assert!(n >= TEAMS as u64, "{n} snapshots");
                }
            })
        });
    }
    group.finish();
    runtime.block_on(async move { drop(stores) });
}

// What `criterion_group!`/`criterion_main!` expand to, minus an undocumented `pub fn`.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    sampler_tick(&mut criterion);
    criterion.final_summary();
}
