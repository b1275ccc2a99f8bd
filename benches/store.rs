//! Conditional-update throughput of the stores: `status_if` flip-flops
//! (running → pausing → running) on one row, and on distinct rows concurrently.
//!
//! SQLite (a fresh WAL file) always; Postgres (a fresh schema) when
//! `WRENN_TEST_POSTGRES_URL` is set. Each benchmark measures for 3 s, so the whole
//! run takes well under a minute:
//!
//! ```sh
//! WRENN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench store
//! ```
//!
//! Needs `wrenn-db` with the `testing` feature among the root dev-dependencies.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use futures::future::join_all;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, HostId, PLATFORM_TEAM_ID, SandboxId};
use wrenn_core::lifecycle::SandboxStatus::{Pausing, Running};
use wrenn_core::model::{NewSandbox, Resources};
use wrenn_core::repo::Store;
use wrenn_db::testing::{TestStore, TestStores, postgres_url};

/// Rows flipped concurrently in the distinct-rows benchmark.
const PARALLEL_ROWS: usize = 8;

/// Inserts `n` running sandboxes (platform team, one made-up host).
async fn running_rows(store: &Arc<dyn Store>, n: usize) -> Vec<SandboxId> {
    let host = HostId::new();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let sandbox = store
            .insert_sandbox(NewSandbox {
                id: SandboxId::new(),
                team_id: PLATFORM_TEAM_ID,
                host_id: host,
                template: "minimal".into(),
                template_id: BUILTIN_TEMPLATE_ID,
                template_team_id: PLATFORM_TEAM_ID,
                status: Running,
                resources: Resources {
                    vcpus: 1,
                    memory_mb: 512,
                    disk_size_mb: 20_480,
                },
                timeout_sec: 300,
                metadata: Default::default(),
            })
            .await
            .expect("insert a benchmark sandbox");
        ids.push(sandbox.id);
    }
    ids
}

/// Two conditional updates that must both win: running → pausing → running.
async fn flip_flop(store: &dyn Store, id: SandboxId) {
    for (from, to) in [(Running, Pausing), (Pausing, Running)] {
        let moved = store.status_if(id, from, to).await.expect("status_if");
        assert!(
            moved.is_some(),
            "uncontended status_if lost ({from} -> {to})"
        );
    }
}

fn status_if(c: &mut Criterion) {
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

    let mut group = c.benchmark_group("status_if");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for test_store in &stores {
        let store = test_store.store();
        let backend = store.backend();
        let ids = runtime.block_on(running_rows(&store, PARALLEL_ROWS));

        group.throughput(Throughput::Elements(2));
        group.bench_function(format!("{backend}/one_row"), |b| {
            b.to_async(&runtime)
                .iter(|| flip_flop(store.as_ref(), ids[0]))
        });

        group.throughput(Throughput::Elements(2 * PARALLEL_ROWS as u64));
        group.bench_function(format!("{backend}/{PARALLEL_ROWS}_distinct_rows"), |b| {
            b.to_async(&runtime)
                .iter(|| join_all(ids.iter().map(|&id| flip_flop(store.as_ref(), id))))
        });
    }
    group.finish();
    // Close pools (and drop the Postgres schema) while the runtime is still alive.
    runtime.block_on(async move { drop(stores) });
}

// What `criterion_group!`/`criterion_main!` expand to, minus an undocumented `pub fn`.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    status_if(&mut criterion);
    criterion.final_summary();
}
