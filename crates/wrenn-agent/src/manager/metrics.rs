//! Sandbox metrics: sampling every running sandbox into its rings, reading and
//! flushing them, and the host's allocations.

use crate::runtime::error_chain;
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_proto::hostagent::v1::MetricPoint;

use super::{SandboxManager, now_ms};
use crate::error::AgentResult;
use crate::metrics::parse_range;

impl SandboxManager {
    /// Takes one resource sample of every running sandbox whose lock is free.
    pub async fn sample_all(&self) {
        let now_unix = now_ms() / 1000;
        let jobs = self.all().into_iter().map(|sb| async move {
            if sb.status() != SandboxStatus::Running {
                return;
            }
            let Ok(_op) = sb.op.try_lock() else {
                return;
            };
            let Some((instance, vcpus)) = sb.with(|s| {
                (s.status == SandboxStatus::Running)
                    .then(|| s.instance.clone().map(|i| (i, s.config.vcpus.max(1))))
                    .flatten()
            }) else {
                return;
            };
            match self.runtime.stats(&instance).await {
                Ok(st) => {
                    let point = MetricPoint {
                        timestamp_unix: now_unix,
                        cpu_pct: (st.cpu_pct / f64::from(vcpus)).clamp(0.0, 100.0),
                        mem_bytes: st.mem_bytes,
                        disk_bytes: st.disk_bytes,
                    };
                    if let Ok(mut m) = sb.metrics.lock() {
                        m.push(point);
                    }
                }
                Err(e) => tracing::debug!(sandbox_id = %sb.id, "stats: {}", error_chain(&e)),
            }
        });
        futures::future::join_all(jobs).await;
    }

    /// Samples of `id` for `range`, oldest first.
    pub fn metrics(&self, id: SandboxId, range: &str) -> AgentResult<Vec<MetricPoint>> {
        let (tier, age) = parse_range(range)?;
        let sb = self.get(id)?;
        let status = sb.status();
        if matches!(status, SandboxStatus::Hibernated | SandboxStatus::Stopped) {
            return Err(sb.wrong_state(status, "its samples have been flushed"));
        }
        let now = now_ms() / 1000;
        Ok(sb
            .metrics
            .lock()
            .map(|m| m.range(tier, age, now))
            .unwrap_or_default())
    }

    /// Returns and clears every tier of `id`.
    #[allow(clippy::type_complexity)]
    pub fn flush_metrics(
        &self,
        id: SandboxId,
    ) -> AgentResult<(Vec<MetricPoint>, Vec<MetricPoint>, Vec<MetricPoint>)> {
        let sb = self.get(id)?;
        Ok(sb.metrics.lock().map(|mut m| m.flush()).unwrap_or_default())
    }

    /// (known, running, vCPUs and MiB promised to running and paused sandboxes).
    pub fn allocations(&self) -> (u32, u32, u32, u64) {
        let all = self.all();
        let mut running = 0;
        let mut vcpus = 0;
        let mut mem = 0u64;
        for sb in &all {
            sb.with(|s| {
                if s.status == SandboxStatus::Running {
                    running += 1;
                }
                if matches!(s.status, SandboxStatus::Running | SandboxStatus::Paused) {
                    vcpus += s.config.vcpus;
                    mem += u64::from(s.config.memory_mb);
                }
            });
        }
        (all.len() as u32, running, vcpus, mem)
    }
}
