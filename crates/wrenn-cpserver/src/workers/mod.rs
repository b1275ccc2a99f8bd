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
///
/// With several replicas on one database, the host monitor, metrics sampler, usage
/// roll-up, account clean-up and template builds are [singletons](Worker::singleton):
/// one replica runs each at a time, holding a lease of `WRENN_WORKER_LEASE_SECS`,
/// and another takes it over when that replica stops or dies. The others run on
/// every replica: the API-key usage flush writes the replica's own batch, and the
/// event consumer and channel dispatcher share their streams' work through consumer
/// groups.
pub fn core_workers_metered(
    ctx: &ServerContext,
    extensions: &[Arc<dyn Extension>],
    events: EventMetrics,
) -> Vec<Worker> {
    let config = &ctx.config;
    let lease = config.worker_lease;
    vec![
        Worker::periodic("api-key-usage", API_KEY_USAGE_FLUSH, |ctx| async move {
            ctx.auth.flush_usage().await?;
            Ok(())
        }),
        event_consumer::worker(extensions.to_vec(), events),
        account_cleanup::worker().singleton(lease),
        host_monitor::worker(
            config.host_monitor_interval,
            host_monitor::MonitorSettings::from_config(config),
        )
        .singleton(lease),
        metrics_sampler::worker(config.metrics_sample_interval).singleton(lease),
        usage_rollup::worker().singleton(lease),
        crate::builds::worker::worker().singleton(lease),
        crate::channels::dispatcher::worker(),
    ]
}
