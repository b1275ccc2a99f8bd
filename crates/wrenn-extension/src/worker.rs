//! Background workers: named, cancellable, restarted with backoff when they fail;
//! singletons ([`Worker::singleton`]) run on one control plane replica at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use crate::context::ServerContext;

/// A worker's failure; the supervisor logs it and restarts the worker.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

type RunFn = dyn Fn(ServerContext, CancellationToken) -> BoxFuture<'static, Result<(), WorkerError>>
    + Send
    + Sync;

/// A long-running background job.
///
/// The job receives the server context and a token that is cancelled at shutdown;
/// it should return `Ok(())` promptly once the token is cancelled. Returning `Ok`
/// ends the worker for good; returning `Err` makes the supervisor restart it after
/// a backoff (1 s doubling to at most 60 s, reset after a minute of healthy running).
#[derive(Clone)]
pub struct Worker {
    name: String,
    run: Arc<RunFn>,
    /// The lease a singleton holds while it runs.
    lease: Option<Arc<str>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("lease", &self.lease)
            .finish()
    }
}

/// Shortest lease [`Worker::singleton`] holds (shorter ones are raised to it).
pub const MIN_SINGLETON_TTL: Duration = Duration::from_millis(30);

impl Worker {
    /// A worker named `name` running `f` (called again on every restart).
    pub fn new<F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(ServerContext, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            run: Arc::new(move |ctx, cancel| Box::pin(f(ctx, cancel))),
            lease: None,
        }
    }

    /// A worker that calls `tick` every `period` until cancelled. A failing tick is
    /// logged and the next tick runs as scheduled.
    pub fn periodic<F, Fut>(name: impl Into<String>, period: Duration, tick: F) -> Self
    where
        F: Fn(ServerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
    {
        let tick = Arc::new(tick);
        Self::new(name, move |ctx, cancel| {
            let tick = tick.clone();
            async move {
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = interval.tick() => {}
                    }
                    if let Err(e) = tick(ctx.clone()).await {
                        warn!(error = %e, "periodic worker tick failed");
                    }
                }
            }
        })
    }

    /// This worker, run by one control plane replica at a time: for jobs that must
    /// not run twice at once across replicas sharing a database (a monitor, a
    /// sampler, a queue with one consumer).
    ///
    /// Each replica asks for the lease `worker:<name>`
    /// ([`WorkerLeaseRepo`](wrenn_core::repo::WorkerLeaseRepo)) under its
    /// [`ServerContext::replica_id`]:
    /// - the holder runs the worker (with a child of the shutdown token) and renews
    ///   the lease every third of `ttl`; if a renewal is refused (another replica took
    ///   an expired lease), or renewals keep failing until the lease would expire, it
    ///   cancels the worker, waits for it to end, and goes back to asking;
    /// - the others ask again every third of `ttl`, so one takes over within `ttl`
    ///   when the holder dies;
    /// - when the worker ends (`Ok`, or `Err` before the supervisor's restart), and
    ///   at shutdown once it has stopped, the holder releases the lease, so another
    ///   replica takes over at once.
    ///
    /// `ttl` shorter than [`MIN_SINGLETON_TTL`] is raised to it. Leadership changes
    /// are logged at `info`. Calling it on a singleton changes nothing.
    #[must_use]
    pub fn singleton(self, ttl: Duration) -> Self {
        if self.lease.is_some() {
            return self;
        }
        let ttl = ttl.max(MIN_SINGLETON_TTL);
        let lease: Arc<str> = Arc::from(format!("worker:{}", self.name));
        let inner = self.run;
        let held = lease.clone();
        Self {
            name: self.name,
            run: Arc::new(move |ctx, cancel| {
                Box::pin(hold_and_run(held.clone(), ttl, inner.clone(), ctx, cancel))
            }),
            lease: Some(lease),
        }
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease a [singleton](Self::singleton) holds while it runs
    /// (`worker:<name>`); `None` for a worker every replica runs.
    pub fn lease(&self) -> Option<&str> {
        self.lease.as_deref()
    }
}

/// How a holding of a singleton's lease ended.
enum Holding {
    /// The worker returned (or panicked).
    Ended(Result<Result<(), WorkerError>, tokio::task::JoinError>),
    /// The server is shutting down.
    Shutdown,
    /// The lease was lost, for this reason.
    Lost(&'static str),
}

/// The body of a [`Worker::singleton`]: waits for the lease, runs `inner` while
/// holding it, and gives it up.
async fn hold_and_run(
    lease: Arc<str>,
    ttl: Duration,
    inner: Arc<RunFn>,
    ctx: ServerContext,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    let holder = ctx.replica_id.clone();
    let every = ttl / 3;
    loop {
        // Ask until this replica holds the lease. The local expiry counts from before
        // the request left, so it never outlasts the database's.
        let mut expires = loop {
            let asked = Instant::now();
            let answer = tokio::select! {
                answer = ctx.store.acquire_lease(&lease, &holder, ttl) => answer,
                _ = cancel.cancelled() => {
                    // The request may have taken it: give it back.
                    release(&ctx, &lease, &holder, every).await;
                    return Ok(());
                }
            };
            match answer {
                Ok(true) => break asked + ttl,
                Ok(false) => debug!(%lease, "another replica holds the lease"),
                Err(e) => warn!(%lease, error = %e, "could not ask for the lease"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(every) => {}
            }
        };
        if cancel.is_cancelled() {
            release(&ctx, &lease, &holder, every).await;
            return Ok(());
        }
        info!(%lease, %holder, "took the lease: this replica runs the worker");
        let stop = cancel.child_token();
        let mut task = AbortOnDropHandle::new(tokio::spawn(
            (inner)(ctx.clone(), stop.clone()).instrument(Span::current()),
        ));
        let mut renew_at = Instant::now() + every;
        let holding = loop {
            tokio::select! {
                joined = &mut task => break Holding::Ended(joined),
                _ = cancel.cancelled() => break Holding::Shutdown,
                _ = tokio::time::sleep_until(expires) => {
                    break Holding::Lost("it could not be renewed before it expired");
                }
                _ = tokio::time::sleep_until(renew_at) => {}
            }
            let asked = Instant::now();
            let renewal = tokio::select! {
                _ = cancel.cancelled() => break Holding::Shutdown,
                r = tokio::time::timeout_at(expires, ctx.store.acquire_lease(&lease, &holder, ttl)) => r,
            };
            match renewal {
                Ok(Ok(true)) => {
                    expires = asked + ttl;
                    renew_at = asked + every;
                }
                Ok(Ok(false)) => break Holding::Lost("another replica took it over"),
                Ok(Err(e)) => {
                    warn!(%lease, error = %e, "could not renew the lease; retrying");
                    renew_at = Instant::now() + every / 3;
                }
                Err(_) => break Holding::Lost("it could not be renewed before it expired"),
            }
        };
        match holding {
            Holding::Ended(joined) => {
                release(&ctx, &lease, &holder, every).await;
                let result =
                    joined.unwrap_or_else(|e| Err(format!("worker task failed: {e}").into()));
                match &result {
                    Ok(()) => info!(%lease, "worker ended; released the lease"),
                    Err(e) => {
                        info!(%lease, error = %e, "worker failed; released the lease for another replica");
                    }
                }
                return result;
            }
            Holding::Shutdown => {
                stop.cancel();
                let _ = (&mut task).await;
                release(&ctx, &lease, &holder, every).await;
                info!(%lease, "worker stopped; released the lease");
                return Ok(());
            }
            Holding::Lost(why) => {
                info!(%lease, why, "lost the lease: stopping the worker on this replica");
                stop.cancel();
                if let Ok(Err(e)) = (&mut task).await {
                    warn!(%lease, error = %e, "worker failed while stopping");
                }
                // Frees an expired lease nobody took yet (a no-op when another
                // replica holds it), then lets the others ask first.
                release(&ctx, &lease, &holder, every).await;
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }
    }
}

/// Gives the lease up (best effort, for at most `within`).
async fn release(ctx: &ServerContext, lease: &str, holder: &str, within: Duration) {
    match tokio::time::timeout(within, ctx.store.release_lease(lease, holder)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            warn!(%lease, error = %e, "could not release the lease; it expires on its own")
        }
        Err(_) => warn!(%lease, "releasing the lease timed out; it expires on its own"),
    }
}

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Runs workers until the token is cancelled, restarting failed ones.
#[derive(Debug)]
pub struct Supervisor {
    set: JoinSet<()>,
    cancel: CancellationToken,
}

impl Supervisor {
    /// Starts every worker; they stop when `cancel` is cancelled.
    pub fn start(ctx: &ServerContext, workers: Vec<Worker>, cancel: CancellationToken) -> Self {
        let mut set = JoinSet::new();
        for worker in workers {
            let (ctx, cancel) = (ctx.clone(), cancel.clone());
            let span = info_span!("worker", name = %worker.name);
            set.spawn(supervise(worker, ctx, cancel).instrument(span));
        }
        Self { set, cancel }
    }

    /// Number of workers still running.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether every worker has ended.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Cancels the workers and waits up to `grace` for them; stragglers are aborted.
    /// Returns `true` if every worker stopped on its own.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.cancel.cancel();
        let drained = tokio::time::timeout(grace, async {
            while self.set.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            warn!(
                remaining = self.set.len(),
                "workers did not stop in time; aborting them"
            );
            self.set.abort_all();
            while self.set.join_next().await.is_some() {}
        }
        drained
    }
}

async fn supervise(worker: Worker, ctx: ServerContext, cancel: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        info!("worker starting");
        let started = tokio::time::Instant::now();
        // The worker watches the token itself so it can finish cleanly; the
        // supervisor's shutdown grace bounds how long that may take.
        let result = (worker.run)(ctx.clone(), cancel.clone()).await;
        if cancel.is_cancelled() {
            info!("worker stopped");
            return;
        }
        match result {
            Ok(()) => {
                info!("worker finished");
                return;
            }
            Err(e) => {
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff = MIN_BACKOFF;
                }
                error!(error = %e, retry_in = ?backoff, "worker failed; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(name: &str) -> Worker {
        Worker::new(name, |_ctx, cancel: CancellationToken| async move {
            cancel.cancelled().await;
            Ok(())
        })
    }

    #[test]
    fn a_singleton_holds_the_lease_named_after_it() {
        let plain = idle("host-monitor");
        assert_eq!(plain.lease(), None);
        let single = plain.singleton(Duration::from_secs(30));
        assert_eq!(single.name(), "host-monitor");
        assert_eq!(single.lease(), Some("worker:host-monitor"));
        let again = single.clone().singleton(Duration::from_secs(5));
        assert_eq!(again.lease(), Some("worker:host-monitor"));
        assert!(
            Arc::ptr_eq(&again.run, &single.run),
            "a singleton is not wrapped twice"
        );
        assert!(format!("{single:?}").contains("worker:host-monitor"));
    }
}
