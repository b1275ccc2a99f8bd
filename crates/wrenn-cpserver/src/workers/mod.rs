//! The control plane's own background workers.

use std::time::Duration;

use wrenn_extension::{ServerContext, Worker};

/// How often batched API-key `last_used` times are written.
pub const API_KEY_USAGE_FLUSH: Duration = Duration::from_secs(15);

/// Every core worker.
pub fn core_workers(_ctx: &ServerContext) -> Vec<Worker> {
    vec![Worker::periodic("api-key-usage", API_KEY_USAGE_FLUSH, |ctx| async move {
        ctx.auth.flush_usage().await?;
        Ok(())
    })]
}
