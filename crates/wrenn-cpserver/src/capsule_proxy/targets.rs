//! [`Targets`]: where a capsule's traffic goes, looked up in one query and remembered
//! for [`TARGET_TTL`] while the capsule runs.
//!
//! Only `running` targets are cached. An entry goes when it expires, when the platform
//! says the capsule was paused, hibernated, destroyed or failed ([`evict_on_events`],
//! a tail of the event bus, so a change on another replica counts too), when the agent
//! answers that the capsule is not there or not running, and when the agent cannot be
//! reached (the host moved or went down): the next request looks the capsule up again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wrenn_core::events::{Event, EventBus, PLATFORM_STREAM, PlatformEventKind};
use wrenn_core::id::SandboxId;
use wrenn_core::model::ProxyTarget;

/// How long a looked-up target is trusted.
pub const TARGET_TTL: Duration = Duration::from_secs(120);
/// Entries kept at most; past it, expired ones go, then all.
const MAX_ENTRIES: usize = 100_000;

/// The cache of running capsules' targets.
#[derive(Debug, Default)]
pub(crate) struct Targets {
    entries: Mutex<HashMap<SandboxId, (ProxyTarget, Instant)>>,
}

impl Targets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, (ProxyTarget, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached target of `id`, if it is fresh.
    pub(crate) fn get(&self, id: SandboxId) -> Option<ProxyTarget> {
        let entries = self.lock();
        let (target, at) = entries.get(&id)?;
        (at.elapsed() < TARGET_TTL).then(|| target.clone())
    }

    /// Remembers a running capsule's target.
    pub(crate) fn insert(&self, target: ProxyTarget) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < TARGET_TTL);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(target.sandbox_id, (target, Instant::now()));
    }

    /// Forgets `id`'s target.
    pub(crate) fn evict(&self, id: SandboxId) {
        self.lock().remove(&id);
    }
}

/// How long one read of the event bus waits for new entries.
const EVENTS_BLOCK: Duration = Duration::from_secs(10);

/// Evicts the targets of capsules that stop running, as the platform's events say,
/// until `stop`.
pub(crate) async fn evict_on_events(
    targets: Arc<Targets>,
    bus: Arc<dyn EventBus>,
    stop: CancellationToken,
) {
    let mut cursor = None;
    let mut started = false;
    while !stop.is_cancelled() {
        if !started {
            match bus.last_id(PLATFORM_STREAM).await {
                Ok(id) => {
                    cursor = id;
                    started = true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "capsule proxy: event bus unavailable");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            }
        }
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = bus.read_after(PLATFORM_STREAM, cursor.as_ref(), 100, EVENTS_BLOCK) => read,
        };
        match read {
            Ok(deliveries) => {
                for d in deliveries {
                    if let Event::Platform(ev) = &d.event
                        && matches!(
                            ev.event,
                            PlatformEventKind::CapsulePaused
                                | PlatformEventKind::CapsuleHibernated
                                | PlatformEventKind::CapsuleDestroyed
                                | PlatformEventKind::CapsuleFailed
                        )
                        && let Ok(id) = ev.resource.id.parse::<SandboxId>()
                    {
                        targets.evict(id);
                    }
                    cursor = Some(d.id);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "capsule proxy: reading events failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use wrenn_core::id::{HostId, TeamId};
    use wrenn_core::lifecycle::SandboxStatus;

    use super::*;

    fn target() -> ProxyTarget {
        ProxyTarget {
            sandbox_id: SandboxId::new(),
            team_id: TeamId::new(),
            status: SandboxStatus::Running,
            host_id: HostId::new(),
            host_address: "127.0.0.1:1".into(),
            host_tls: false,
            access_token_hash: None,
        }
    }

    #[test]
    fn a_target_is_remembered_until_evicted() {
        let targets = Targets::default();
        let t = target();
        assert_eq!(targets.get(t.sandbox_id), None);
        targets.insert(t.clone());
        assert_eq!(targets.get(t.sandbox_id), Some(t.clone()));
        targets.evict(t.sandbox_id);
        assert_eq!(targets.get(t.sandbox_id), None);
    }
}
