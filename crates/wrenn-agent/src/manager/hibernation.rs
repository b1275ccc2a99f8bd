//! Hibernation: a running or paused sandbox's state goes to disk and its processes
//! (and memory) are released; the reaper hibernates long-paused sandboxes.

use crate::runtime::error_chain;
use std::sync::Arc;

use wrenn_core::events::SandboxEventKind;
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;

use super::disk::dir_allocated_bytes;
use super::liveness::stop_watch;
use super::{HibernateCause, Sandbox, SandboxManager};
use crate::error::{AgentError, AgentResult};

impl SandboxManager {
    /// Paused (not hibernated) longer than `hibernate_after`.
    pub fn is_due_for_hibernation(&self, sb: &Sandbox) -> bool {
        self.runtime.capabilities().hibernate
            && sb.with(|s| {
                s.status == SandboxStatus::Paused
                    && s.paused_at
                        .is_some_and(|t| t.elapsed() >= self.settings.hibernate_after)
            })
    }

    /// Hibernates a running or paused sandbox; returns the bytes its persisted state
    /// occupies.
    pub async fn hibernate(&self, id: SandboxId, cause: HibernateCause) -> AgentResult<u64> {
        let sb = self.get(id)?;
        let _op = sb.op.lock().await;
        sb.check_alive()?;
        if !self.runtime.capabilities().hibernate {
            return Err(AgentError::FailedPrecondition(format!(
                "the {} runtime cannot hibernate sandboxes",
                self.runtime.name()
            )));
        }
        let prev = sb.status();
        if !matches!(prev, SandboxStatus::Running | SandboxStatus::Paused) {
            return Err(sb.wrong_state(prev, "hibernate needs a running or paused sandbox"));
        }
        if cause == HibernateCause::LongPause && !self.is_due_for_hibernation(&sb) {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is not due for hibernation"
            )));
        }
        self.hibernate_locked(&sb, prev).await
    }

    async fn hibernate_locked(&self, sb: &Arc<Sandbox>, prev: SandboxStatus) -> AgentResult<u64> {
        let id = sb.id;
        let team = sb.team_id();
        let instance = sb.instance()?;
        sb.with(|s| s.status = SandboxStatus::Pausing);
        if prev == SandboxStatus::Running {
            sb.conns.drain(self.settings.drain_grace).await;
            self.prepare_snapshot(sb).await;
        }
        match self.runtime.hibernate(&instance).await {
            Ok(()) => {
                sb.with(|s| {
                    s.status = SandboxStatus::Hibernated;
                    s.envd = None;
                    s.auto_paused = false;
                    s.paused_at = None;
                    stop_watch(s);
                });
                self.persist_in(sb, &self.layout.snapshot_dir(id));
                let metrics = sb.take_metric_history();
                let size = dir_allocated_bytes(self.layout.snapshot_dir(id)).await;
                self.events
                    .emit_with(SandboxEventKind::Hibernated, id, |ev| {
                        ev.team_id = Some(team);
                        ev.metrics = metrics;
                    });
                Ok(size)
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %id, "hibernate failed: {}", error_chain(&e));
                sb.with(|s| s.status = prev);
                if prev == SandboxStatus::Running {
                    sb.conns.reset();
                }
                Err(e.into())
            }
        }
    }
}
