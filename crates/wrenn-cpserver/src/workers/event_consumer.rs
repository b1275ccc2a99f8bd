//! The sandbox-event consumer: the fallback writer of lifecycle outcomes.
//!
//! Background lifecycle tasks write their own outcomes; agents push theirs
//! (`auto_paused`, hibernation, …) to `POST /v1/hosts/sandbox-events`, which
//! republishes them on the sandbox stream. This consumer reads that stream in a
//! consumer group, applies each event with the lifecycle's conditional updates (so
//! an outcome already written changes nothing), calls every extension's
//! `on_sandbox_event` hook, and acknowledges the entry only when all of that
//! succeeded. Entries left pending by a crashed replica are claimed after
//! [`CLAIM_AFTER`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};
use wrenn_core::events::{Delivery, Event, SANDBOX_STREAM};
use wrenn_extension::{Extension, ServerContext, Worker, WorkerError};

use crate::metrics::EventMetrics;

/// Consumer group of the sandbox stream.
pub const GROUP: &str = "wrenn-sandbox-events-v1";
/// How long an entry may stay pending on a consumer before another claims it.
pub const CLAIM_AFTER: Duration = Duration::from_secs(60);
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_secs(5);
const BATCH: usize = 32;

/// The consumer worker; each handled entry is recorded in `metrics` (its age: the
/// bus's lag; acknowledged or left for a retry; redelivered).
pub fn worker(extensions: Vec<Arc<dyn Extension>>, metrics: EventMetrics) -> Worker {
    let consumer = format!("cp-{}", uuid::Uuid::new_v4().simple());
    Worker::new("sandbox-event-consumer", move |ctx, cancel| {
        let (extensions, consumer, metrics) =
            (extensions.clone(), consumer.clone(), metrics.clone());
        async move { run(ctx, cancel, &extensions, &consumer, &metrics).await }
    })
}

async fn run(
    ctx: ServerContext,
    cancel: CancellationToken,
    extensions: &[Arc<dyn Extension>],
    consumer: &str,
    metrics: &EventMetrics,
) -> Result<(), WorkerError> {
    ctx.events.create_group(SANDBOX_STREAM, GROUP).await?;
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let stale = ctx
            .events
            .claim_stale(SANDBOX_STREAM, GROUP, consumer, CLAIM_AFTER, BATCH)
            .await?;
        let fresh = tokio::select! {
            r = ctx.events.read_group(SANDBOX_STREAM, GROUP, consumer, BATCH, BLOCK) => r?,
            _ = cancel.cancelled() => return Ok(()),
        };
        for delivery in stale.into_iter().chain(fresh) {
            let acked = handle(&ctx, extensions, &delivery).await;
            metrics.observe(&delivery, acked);
            if acked {
                ctx.events
                    .ack(SANDBOX_STREAM, GROUP, std::slice::from_ref(&delivery.id))
                    .await?;
            }
        }
    }
}

/// Applies one entry; `true` when it may be acknowledged.
async fn handle(
    ctx: &ServerContext,
    extensions: &[Arc<dyn Extension>],
    delivery: &Delivery,
) -> bool {
    let Event::Sandbox(event) = &delivery.event else {
        return true;
    };
    // Entered only while the handling is polled (`instrument`), never by a guard held
    // across an `.await`: such a guard leaves the span on the worker thread's span
    // stack while the task is suspended or after it moved to another thread, where
    // unrelated tasks (the in-process agent's) then take it as their parent, and
    // clone it by id while it closes (a registry assertion in debug builds).
    let span = tracing::info_span!("sandbox_event", sandbox_id = %event.sandbox_id, host_id = %event.host_id, event = event.event.as_str());
    async {
        match ctx.lifecycle.apply_event(event).await {
            Ok(applied) => debug!(?applied, "applied"),
            Err(e) => {
                warn!(error = %e, "could not apply sandbox event; will retry");
                return false;
            }
        }
        let mut ok = true;
        for ext in extensions {
            if let Err(e) = ext.on_sandbox_event(ctx, event).await {
                warn!(extension = ext.name(), error = %e, "extension hook failed; event will be redelivered");
                ok = false;
            }
        }
        ok
    }
    .instrument(span)
    .await
}
