//! Liveness: a watcher per live instance, the envd health checks, and the teardown of
//! a sandbox found dead (kept as `error` with the reason, reported `failed`).

use crate::runtime::error_chain;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::Instrument;
use wrenn_core::events::SandboxEventKind;
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_proto::envd::v1::HealthRequest;

use super::sandbox::State;
use super::{Sandbox, SandboxManager};
use crate::events::EventSender;
use crate::runtime::{Instance, Runtime, RuntimeError};

impl SandboxManager {
    /// Watches the live `instance` of `sb`: when the runtime reports that its init
    /// exited, the sandbox is torn down, marked `error` with the reason and a
    /// `failed` event is sent ([`SandboxManager::fail_dead`]).
    pub(super) fn watch(&self, sb: &Arc<Sandbox>, instance: Instance) {
        let stop = tokio_util::sync::CancellationToken::new();
        let generation = sb.with(|s| {
            stop_watch(s);
            s.generation += 1;
            s.watch = Some(stop.clone());
            s.generation
        });
        sb.health_failures.store(0, Ordering::Relaxed);
        let (runtime, events, sb) = (
            Arc::clone(&self.runtime),
            Arc::clone(&self.events),
            Arc::clone(sb),
        );
        let span = tracing::info_span!("sandbox.watch", sandbox_id = %sb.id);
        tokio::spawn(
            async move {
                let reason = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = runtime.wait_exit(&instance) => match r {
                        Ok(reason) => reason,
                        Err(RuntimeError::NotFound(_)) => return,
                        Err(e) => {
                            tracing::warn!("cannot watch the sandbox: {}", error_chain(&e));
                            return;
                        }
                    },
                };
                let _op = sb.op.lock().await;
                fail_dead(&*runtime, &events, &sb, Some(generation), reason).await;
            }
            .instrument(span),
        );
    }

    /// Asks the envd of every running sandbox whose lock is free for its health,
    /// concurrently, each bounded by `health_timeout`. A sandbox that fails
    /// `health_failures` checks in a row (a hung or stopped envd) is torn down and
    /// reported like a dead one. Paused sandboxes are never checked.
    pub async fn check_health(&self) {
        let checks = self.all().into_iter().map(|sb| async move {
            if sb.status() != SandboxStatus::Running {
                return;
            }
            let Ok(_op) = sb.op.try_lock() else {
                return;
            };
            if sb.status() != SandboxStatus::Running {
                return;
            }
            let budget = self.settings.health_timeout;
            tracing::trace!(sandbox_id = %sb.id, "health check");
            let outcome = match sb.envd_client() {
                Ok(envd) => {
                    let mut system = envd.system;
                    match tokio::time::timeout(budget, system.health(HealthRequest {})).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("it answered {}", e.message())),
                        Err(_) => Err(format!("it did not answer within {budget:?}")),
                    }
                }
                Err(e) => Err(error_chain(&e)),
            };
            match outcome {
                Ok(()) => sb.health_failures.store(0, Ordering::Relaxed),
                Err(why) => {
                    let n = sb.health_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(sandbox_id = %sb.id, failures = n, "envd health check failed: {why}");
                    if n >= self.settings.health_failures.max(1) {
                        let reason = format!(
                            "the capsule's envd failed {n} health checks in a row (last: {why})"
                        );
                        fail_dead(&*self.runtime, &self.events, &sb, None, reason).await;
                    }
                }
            }
        });
        futures::future::join_all(checks).await;
    }

    /// Why the sandbox is in `error` (it died, or could not be adopted), if it is.
    pub fn failure(&self, id: SandboxId) -> Option<String> {
        self.lookup(id)
            .and_then(|sb| sb.with(|s| s.failure.clone()))
    }
}

/// Cancels the watcher of the live instance, if any.
pub(super) fn stop_watch(s: &mut State) {
    if let Some(w) = s.watch.take() {
        w.cancel();
    }
}

/// A sandbox whose init died (or whose envd stopped answering): with its op lock
/// held, unless a lifecycle operation moved it on meanwhile (or `generation` names an
/// older instance), it is torn down, kept as `error` with `reason`, and a `failed`
/// event is sent.
async fn fail_dead(
    runtime: &dyn Runtime,
    events: &EventSender,
    sb: &Sandbox,
    generation: Option<u64>,
    reason: String,
) {
    let current = sb.with(|s| {
        matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused)
            && generation.is_none_or(|g| g == s.generation)
    });
    if !current {
        return;
    }
    let id = sb.id;
    tracing::warn!(sandbox_id = %id, "sandbox died: {reason}");
    sb.conns.drain(Duration::ZERO).await;
    let team = sb.with(|s| {
        s.envd = None;
        stop_watch(s);
        s.config.team_id
    });
    if let Err(e) = runtime.destroy(id).await {
        tracing::error!(sandbox_id = %id, "tearing down a dead sandbox: {}", error_chain(&e));
    }
    sb.with(|s| {
        s.status = SandboxStatus::Error;
        s.instance = None;
        s.failure = Some(reason.clone());
    });
    let metrics = sb.take_metric_history();
    events.emit_with(SandboxEventKind::Failed, id, |ev| {
        ev.team_id = Some(team);
        ev.error = Some(reason);
        ev.metrics = metrics;
    });
}
