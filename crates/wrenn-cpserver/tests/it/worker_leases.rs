//! Singleton workers across replicas: several control planes on one database (each
//! with its own connection pool and replica id), one lease per worker. Exactly one
//! replica runs a singleton at a time; another takes over at once when the holder
//! stops cleanly, after the lease expires when the holder dies, and when the holder
//! fails; a holder that loses its lease stops its worker. On SQLite (stores on one
//! file) and on Postgres.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wrenn_core::config::Config;
use wrenn_core::repo::Store;
use wrenn_core::testing::FakeAgents;
use wrenn_cpserver::Builder;
use wrenn_cpserver::extension::{ServerContext, Supervisor, Worker};
use wrenn_db::testing::{TestStore, TestStores};

use crate::common::TestServer;

/// The probe's lease time to live: it renews every 667 ms.
const TTL: Duration = Duration::from_secs(2);
/// The probe's lease.
const LEASE: &str = "worker:probe";
/// How long a supervisor may take to stop.
const GRACE: Duration = Duration::from_secs(5);

/// What the probe worker saw: how many instances run now and at most, and which
/// replica started each run.
#[derive(Default)]
struct Probe {
    active: AtomicUsize,
    most: AtomicUsize,
    runs: Mutex<Vec<Arc<str>>>,
}

impl Probe {
    fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
    fn runs(&self) -> Vec<Arc<str>> {
        self.runs.lock().unwrap().clone()
    }
}

/// One running instance of the probe (counted until dropped, aborted or not).
struct Running(Arc<Probe>);

impl Running {
    fn enter(probe: &Arc<Probe>, replica: &Arc<str>) -> Self {
        let now = probe.active.fetch_add(1, Ordering::SeqCst) + 1;
        probe.most.fetch_max(now, Ordering::SeqCst);
        probe.runs.lock().unwrap().push(replica.clone());
        Self(probe.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A singleton that runs until cancelled; on the replicas in `fails_on` it fails
/// at once instead.
fn probe_worker(probe: &Arc<Probe>, fails_on: Vec<Arc<str>>) -> Worker {
    let probe = probe.clone();
    let fails_on = Arc::new(fails_on);
    Worker::new(
        "probe",
        move |ctx: ServerContext, cancel: CancellationToken| {
            let (probe, fails_on) = (probe.clone(), fails_on.clone());
            async move {
                let _running = Running::enter(&probe, &ctx.replica_id);
                if fails_on.contains(&ctx.replica_id) {
                    return Err("this replica cannot run the probe".into());
                }
                cancel.cancelled().await;
                Ok(())
            }
        },
    )
    .singleton(TTL)
}

/// A control plane's context (built, not serving) on `store`.
async fn replica(store: Arc<dyn Store>, dir: &std::path::Path) -> ServerContext {
    let wrenn_dir = dir.to_string_lossy().into_owned();
    let config = Config::from_lookup(|k| (k == "WRENN_DIR").then(|| wrenn_dir.clone())).unwrap();
    let server = Builder::new(config)
        .with_store(store)
        .with_host_agents(FakeAgents::new())
        .build()
        .await
        .expect("build server");
    server.context().clone()
}

fn run(ctx: &ServerContext, probe: &Arc<Probe>, fails_on: Vec<Arc<str>>) -> Supervisor {
    Supervisor::start(
        ctx,
        vec![probe_worker(probe, fails_on)],
        CancellationToken::new(),
    )
}

/// Waits up to `within` for `done`; panics with `what` otherwise.
async fn wait_for(within: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn one_replica_runs_a_singleton_and_others_take_it_over(db: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let a = replica(db.store(), dir.path()).await;
    let b = replica(db.replica().await, dir.path()).await;
    let c = replica(db.replica().await, dir.path()).await;
    assert_ne!(a.replica_id, b.replica_id);
    let probe = Arc::new(Probe::default());
    let on_a = run(&a, &probe, vec![]);
    let on_b = run(&b, &probe, vec![]);

    wait_for(TTL, "one replica runs the probe", || probe.active() == 1).await;
    // Renewals keep it there: nobody else starts it, well past the TTL.
    tokio::time::sleep(TTL + TTL / 2).await;
    let runs = probe.runs();
    assert_eq!(runs.len(), 1, "one run: {runs:?}");
    assert_eq!(probe.active(), 1);
    let first = runs[0].clone();
    assert_eq!(
        a.store.lease_holder(LEASE).await.unwrap().as_deref(),
        Some(&*first)
    );
    let (holder, waiting, next) = if first == a.replica_id {
        (on_a, on_b, b.replica_id.clone())
    } else {
        (on_b, on_a, a.replica_id.clone())
    };

    // The holder stops cleanly: it releases the lease, and the other replica takes
    // over at its next ask (a third of the TTL), before the lease would have expired.
    let stopped = Instant::now();
    assert!(holder.shutdown(GRACE).await);
    wait_for(TTL, "the other replica takes over", || {
        probe.runs().len() == 2
    })
    .await;
    assert!(
        stopped.elapsed() < TTL * 4 / 5,
        "took {:?}: the lease was not released",
        stopped.elapsed()
    );
    assert_eq!(probe.runs()[1], next);
    assert_eq!(probe.active(), 1);

    // A third replica waits while the lease is valid...
    let on_c = run(&c, &probe, vec![]);
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(
        probe.runs().len(),
        2,
        "a valid lease keeps the third one out"
    );
    // ...and takes over once the holder died without releasing it and the lease
    // expired (at least two thirds of the TTL after its last renewal).
    let died = Instant::now();
    drop(waiting);
    wait_for(TTL * 3, "the third replica takes over", || {
        probe.runs().len() == 3
    })
    .await;
    assert!(
        died.elapsed() >= TTL / 2,
        "took over after {:?}, before the lease expired",
        died.elapsed()
    );
    assert_eq!(probe.runs()[2], c.replica_id);
    assert_eq!(probe.active(), 1);
    assert_eq!(probe.most(), 1, "never two at once");

    assert!(on_c.shutdown(GRACE).await);
    assert_eq!(probe.active(), 0);
    assert_eq!(
        c.store.lease_holder(LEASE).await.unwrap(),
        None,
        "released at shutdown"
    );
}

async fn a_holder_that_loses_its_lease_stops_its_worker(db: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let a = replica(db.store(), dir.path()).await;
    let store = db.replica().await;
    let probe = Arc::new(Probe::default());
    let on_a = run(&a, &probe, vec![]);
    wait_for(TTL, "the replica runs the probe", || probe.active() == 1).await;

    // Another holder has the lease now (as if `a`'s had expired unseen): `a`'s next
    // renewal is refused and it stops the worker.
    assert!(store.release_lease(LEASE, &a.replica_id).await.unwrap());
    assert!(
        store
            .acquire_lease(LEASE, "intruder", TTL * 10)
            .await
            .unwrap()
    );
    wait_for(TTL, "the worker stops", || probe.active() == 0).await;
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(probe.runs().len(), 1, "it does not start again meanwhile");

    // Once the lease is free, `a` asks again and runs the worker again.
    assert!(store.release_lease(LEASE, "intruder").await.unwrap());
    wait_for(TTL * 2, "the replica runs the probe again", || {
        probe.runs().len() == 2 && probe.active() == 1
    })
    .await;
    assert_eq!(probe.most(), 1);
    assert!(on_a.shutdown(GRACE).await);
    assert_eq!(store.lease_holder(LEASE).await.unwrap(), None);
}

async fn a_singleton_failing_on_its_holder_runs_on_another_replica(db: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let a = replica(db.store(), dir.path()).await;
    let b = replica(db.replica().await, dir.path()).await;
    let probe = Arc::new(Probe::default());
    // `a` takes the lease first, then fails: it releases the lease, and `b` runs
    // the worker while `a`'s supervisor waits to restart it.
    let on_a = run(&a, &probe, vec![a.replica_id.clone()]);
    wait_for(TTL, "the first replica tries", || !probe.runs().is_empty()).await;
    let on_b = run(&b, &probe, vec![a.replica_id.clone()]);
    wait_for(TTL * 2, "the other replica runs it", || {
        probe.active() == 1 && probe.runs().last() == Some(&b.replica_id)
    })
    .await;
    assert_eq!(
        b.store.lease_holder(LEASE).await.unwrap().as_deref(),
        Some(&*b.replica_id)
    );
    assert!(on_a.shutdown(GRACE).await);
    assert!(on_b.shutdown(GRACE).await);
    assert_eq!(probe.most(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_runs_a_singleton_and_others_take_it_over_on_sqlite() {
    one_replica_runs_a_singleton_and_others_take_it_over(TestStores::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_runs_a_singleton_and_others_take_it_over_on_postgres() {
    let Some(db) = TestStores::postgres().await else {
        return;
    };
    one_replica_runs_a_singleton_and_others_take_it_over(db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_loses_its_lease_stops_its_worker_on_sqlite() {
    a_holder_that_loses_its_lease_stops_its_worker(TestStores::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_loses_its_lease_stops_its_worker_on_postgres() {
    let Some(db) = TestStores::postgres().await else {
        return;
    };
    a_holder_that_loses_its_lease_stops_its_worker(db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_singleton_failing_on_its_holder_runs_on_another_replica_on_sqlite() {
    a_singleton_failing_on_its_holder_runs_on_another_replica(TestStores::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_singleton_failing_on_its_holder_runs_on_another_replica_on_postgres() {
    let Some(db) = TestStores::postgres().await else {
        return;
    };
    a_singleton_failing_on_its_holder_runs_on_another_replica(db).await;
}

#[tokio::test]
async fn the_core_singletons_hold_leases_and_per_replica_workers_do_not() {
    let s = TestServer::start().await;
    let workers = wrenn_cpserver::workers::core_workers(&s.ctx, &[]);
    let leases: Vec<(&str, Option<&str>)> = workers.iter().map(|w| (w.name(), w.lease())).collect();
    for name in [
        "host-monitor",
        "metrics-sampler",
        "usage-rollup",
        "account-cleanup",
        "template-builds",
    ] {
        let lease = format!("worker:{name}");
        assert!(
            leases.contains(&(name, Some(lease.as_str()))),
            "{name} is a singleton: {leases:?}"
        );
    }
    let everywhere: Vec<&str> = leases
        .iter()
        .filter(|(_, lease)| lease.is_none())
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(
        everywhere,
        [
            "api-key-usage",
            "sandbox-event-consumer",
            "channel-dispatcher"
        ],
        "these run on every replica"
    );
    // The server itself holds them (its workers started with it).
    crate::common::wait_for_lease(
        &s.store(),
        "worker:host-monitor",
        &s.ctx.replica_id,
        Duration::from_secs(5),
    )
    .await;
    let store = s.store();
    let mut s = s;
    s.halt().await;
    assert_eq!(
        store.lease_holder("worker:host-monitor").await.unwrap(),
        None,
        "released when the server stops"
    );
}
