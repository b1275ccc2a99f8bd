//! [`Targets`]: where a capsule's traffic goes, looked up in one query and remembered
//! for [`TARGET_TTL`] while the capsule runs.
//!
//! Only `running` targets are cached. An entry goes when it expires, when the agent
//! answers that the capsule is not there or not running (it was paused, destroyed or
//! failed, on this replica or another), and when the agent cannot be reached (the host
//! moved or went down): the next request looks the capsule up again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
