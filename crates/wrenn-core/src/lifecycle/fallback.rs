//! The fallback writer: [`Lifecycle::apply_event`] records what a sandbox event says
//! when the background task that should have did not (an agent callback, a lost
//! answer). Every write is conditional, so an event already recorded changes nothing.

use tracing::warn;

use crate::audit::Actor;
use crate::events::{PlatformEventKind, SandboxEvent, SandboxEventKind};
use crate::lifecycle::SandboxStatus::{self, *};
use crate::model::Sandbox;
use crate::repo::RepoError;

use super::service::{Lifecycle, LifecycleError};

/// What happened when an event was applied by the fallback writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The event moved the sandbox to a new status.
    Changed(Box<Sandbox>),
    /// The row was already past the event (someone else wrote first), or the event
    /// carries no status change.
    Unchanged,
}

impl Lifecycle {
    /// Applies a sandbox event as the fallback writer (the event consumer calls this
    /// for every entry of the sandbox stream, agent callbacks included). Only events
    /// from the sandbox's own host are considered. Every write is conditional, so an
    /// event the background task already recorded changes nothing.
    pub async fn apply_event(&self, ev: &SandboxEvent) -> Result<Applied, LifecycleError> {
        let store = &self.inner.store;
        let sb = match store.get_sandbox(ev.sandbox_id).await {
            Ok(sb) => sb,
            Err(RepoError::NotFound { .. }) => return Ok(Applied::Unchanged),
            Err(e) => return Err(e.into()),
        };
        if sb.host_id != ev.host_id {
            warn!(sandbox_id = %sb.id, host_id = %ev.host_id, "ignoring event from a host that does not own the sandbox");
            return Ok(Applied::Unchanged);
        }
        use SandboxEventKind as K;
        let candidates: &[(SandboxStatus, SandboxStatus)] = match ev.event {
            K::Started => &[(Starting, Running)],
            K::Resumed => &[(Resuming, Running)],
            K::Paused => &[(Pausing, Paused)],
            K::AutoPaused => &[(Running, Paused), (Pausing, Paused)],
            K::Hibernated => &[
                (Paused, Hibernated),
                (Running, Hibernated),
                (Pausing, Hibernated),
            ],
            K::Stopped => &[
                (Stopping, Stopped),
                (Running, Stopped),
                (Paused, Stopped),
                (Hibernated, Stopped),
            ],
            K::Failed => &[
                (Running, Error),
                (Paused, Error),
                (Starting, Error),
                (Pausing, Error),
                (Resuming, Error),
                (Snapshotting, Error),
                (Missing, Error),
            ],
            K::Snapshotted | K::PauseFailed | K::ResumeFailed => &[],
        };
        let Some(&(from, to)) = candidates.iter().find(|(from, _)| *from == sb.status) else {
            return Ok(Applied::Unchanged);
        };
        let changed = if to == Running {
            let meta = ev.metadata.clone().unwrap_or_default();
            store
                .running_if(
                    sb.id,
                    from,
                    ev.host_ip.as_deref().unwrap_or(&sb.host_ip),
                    &meta,
                )
                .await?
        } else if let (Error, Some(reason)) = (to, ev.error.as_deref()) {
            store.fail_if(sb.id, from, reason).await?
        } else {
            store.status_if(sb.id, from, to).await?
        };
        let Some(row) = changed else {
            return Ok(Applied::Unchanged);
        };
        let kind =
            PlatformEventKind::of_capsule_status(to).unwrap_or(PlatformEventKind::CapsuleFailed);
        self.publish_platform(kind, &row, &Actor::system()).await;
        Ok(Applied::Changed(Box::new(row)))
    }
}
