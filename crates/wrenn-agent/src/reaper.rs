//! Background workers of the manager: the inactivity (TTL) reaper and the metrics
//! sampler.
//!
//! **Reaper.** Every tick (2 s; shorter in tests) it looks at every sandbox:
//!
//! - a RUNNING sandbox with `timeout_sec > 0` whose last activity is older than its
//!   timeout (values below the minimum, 60 s, are raised to it) is paused. The pause is
//!   reported as an `auto_paused` event to the control plane and the sandbox appears in
//!   `ListSandboxesResponse.auto_paused_sandbox_ids` for as long as it stays paused
//!   (derived from state, not drained on read);
//! - a PAUSED sandbox paused longer than `hibernate_after` (AgentConfig, default
//!   10 min) is hibernated and reported (`hibernated` event), when the runtime can
//!   hibernate.
//!
//! Each action runs on its own task (one slow pause never delays other expiries,
//! Obs-L3) and re-checks its condition under the sandbox's lock, so activity that
//! arrives meanwhile wins. A sandbox already being handled is not picked again until
//! its action ends. A failed auto-pause never destroys the sandbox (Obs-S6).
//!
//! **Health.** Every `health_interval` (10 s) the envd of every running sandbox is
//! asked for its health ([`SandboxManager::check_health`]); a sandbox whose envd
//! stops answering is torn down and reported as failed. (A sandbox whose init dies is
//! noticed at once by its exit watcher, not by this loop.)
//!
//! **Sampler.** Every 500 ms it records [`Runtime::stats`](crate::runtime::Runtime::stats)
//! of each running sandbox into its metric rings.

use crate::runtime::error_chain;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wrenn_core::id::SandboxId;

use crate::manager::SandboxManager;

/// Reaper tick (2 s).
pub const DEFAULT_REAPER_TICK: Duration = Duration::from_secs(2);
/// Metrics sampling interval (500 ms).
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the reaper until `stop` is cancelled.
pub async fn run_reaper(manager: Arc<SandboxManager>, tick: Duration, stop: CancellationToken) {
    let busy: Arc<Mutex<HashSet<SandboxId>>> = Arc::default();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        reap_once(&manager, &busy);
    }
}

/// One pass of the reaper: spawns the pauses and hibernations that are due.
fn reap_once(manager: &Arc<SandboxManager>, busy: &Arc<Mutex<HashSet<SandboxId>>>) {
    for sb in manager.all() {
        let pause = manager.is_idle(&sb);
        let hibernate = !pause && manager.is_due_for_hibernation(&sb);
        if !pause && !hibernate {
            continue;
        }
        let id = sb.id();
        {
            let Ok(mut b) = busy.lock() else { return };
            if !b.insert(id) {
                continue;
            }
        }
        let mgr = Arc::clone(manager);
        let busy = Arc::clone(busy);
        tokio::spawn(async move {
            if pause {
                match mgr.auto_pause(id).await {
                    Ok(()) => tracing::info!(sandbox_id = %id, "paused after inactivity"),
                    Err(e) => {
                        tracing::debug!(sandbox_id = %id, "auto-pause skipped: {}", error_chain(&e))
                    }
                }
            } else {
                match mgr.auto_hibernate(id).await {
                    Ok(bytes) => {
                        tracing::info!(sandbox_id = %id, bytes, "hibernated after a long pause")
                    }
                    Err(e) => {
                        tracing::debug!(sandbox_id = %id, "auto-hibernate skipped: {}", error_chain(&e))
                    }
                }
            }
            if let Ok(mut b) = busy.lock() {
                b.remove(&id);
            }
        });
    }
}

/// Runs the envd health checks every `every` until `stop` is cancelled.
pub async fn run_health(manager: Arc<SandboxManager>, every: Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        manager.check_health().await;
    }
}

/// Runs the metrics sampler until `stop` is cancelled.
pub async fn run_sampler(manager: Arc<SandboxManager>, every: Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        manager.sample_all().await;
    }
}
