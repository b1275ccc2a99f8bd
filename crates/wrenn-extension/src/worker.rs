//! Background workers: named, cancellable, restarted with backoff when they fail.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

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
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("name", &self.name).finish()
    }
}

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

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
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
