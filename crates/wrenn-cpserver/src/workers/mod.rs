//! The control plane's own background workers.

use std::sync::Arc;
use std::time::Duration;

use wrenn_extension::{Extension, ServerContext, Worker};

use crate::metrics::EventMetrics;

pub mod account_cleanup;
pub mod event_consumer;
pub mod host_monitor;
pub mod metrics_sampler;
pub mod usage_rollup;

/// How often batched API-key `last_used` times are written.
pub const API_KEY_USAGE_FLUSH: Duration = Duration::from_secs(15);

/// Every core worker. `extensions` receive sandbox events through the consumer.
/// The consumer's metrics are recorded nowhere (the server itself uses
/// [`core_workers_metered`]).
pub fn core_workers(ctx: &ServerContext, extensions: &[Arc<dyn Extension>]) -> Vec<Worker> {
    core_workers_metered(ctx, extensions, EventMetrics::new())
}

/// [`core_workers`], with the event consumer recording into `events`.
pub fn core_workers_metered(
    ctx: &ServerContext,
    extensions: &[Arc<dyn Extension>],
    events: EventMetrics,
) -> Vec<Worker> {
    vec![
        Worker::periodic("api-key-usage", API_KEY_USAGE_FLUSH, |ctx| async move {
            ctx.auth.flush_usage().await?;
            Ok(())
        }),
        event_consumer::worker(extensions.to_vec(), events),
        account_cleanup::worker(),
        host_monitor::worker(ctx.config.host_monitor_interval),
        metrics_sampler::worker(ctx.config.metrics_sample_interval),
        usage_rollup::worker(),
        crate::builds::worker::worker(),
        crate::channels::dispatcher::worker(),
    ]
}
