//! [`MeteredAgents`]: times every lifecycle call on a host agent.

use std::sync::Arc;
use std::time::Instant;

use wrenn_core::agents::{AgentInventory, HostAgents, HostCallError, SandboxSpec, StartedSandbox};
use wrenn_core::id::{HostId, SandboxId, TeamId, TemplateId};
use wrenn_core::model::MetricHistory;

use super::LifecycleMetrics;

/// Metadata key under which agents name their runtime.
const RUNTIME_KEY: &str = "runtime";

/// Wraps any [`HostAgents`] and records each call in
/// `wrenn_lifecycle_operation_duration_seconds{operation, runtime, outcome}`; the
/// runtime of a host is learned from the `runtime` metadata of its create and resume
/// answers (see [the module](super)).
pub struct MeteredAgents {
    inner: Arc<dyn HostAgents>,
    metrics: LifecycleMetrics,
}

impl std::fmt::Debug for MeteredAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredAgents").finish_non_exhaustive()
    }
}

impl MeteredAgents {
    /// Times the calls of `inner` into `metrics`.
    pub fn new(inner: Arc<dyn HostAgents>, metrics: LifecycleMetrics) -> Self {
        Self { inner, metrics }
    }

    /// The wrapped agents.
    pub fn inner(&self) -> &Arc<dyn HostAgents> {
        &self.inner
    }

    fn record<T>(
        &self,
        operation: &str,
        host: HostId,
        started: Instant,
        result: &Result<T, HostCallError>,
    ) {
        let runtime = self.metrics.runtime_of(host);
        self.metrics
            .operations
            .with_label_values(&[operation, runtime.as_str(), outcome(result)])
            .observe(started.elapsed().as_secs_f64());
    }

    fn learn(&self, host: HostId, result: &Result<StartedSandbox, HostCallError>) {
        if let Ok(started) = result {
            if let Some(runtime) = started.metadata.get(RUNTIME_KEY) {
                self.metrics.learn_runtime(host, runtime);
            }
        }
    }
}

/// The `outcome` label of a call's result.
pub(crate) fn outcome<T>(result: &Result<T, HostCallError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(HostCallError::NotFound(_)) => "not_found",
        Err(HostCallError::FailedPrecondition(_)) => "failed_precondition",
        Err(HostCallError::InvalidArgument(_)) => "invalid_argument",
        Err(HostCallError::Unavailable(_)) => "unavailable",
        Err(HostCallError::ResourceExhausted(_)) => "resource_exhausted",
        Err(HostCallError::Timeout(_)) => "timeout",
        Err(HostCallError::Internal(_)) => "internal",
    }
}

#[async_trait::async_trait]
impl HostAgents for MeteredAgents {
    async fn create_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError> {
        let t = Instant::now();
        let r = self.inner.create_sandbox(host, spec).await;
        self.learn(host, &r);
        self.record("create", host, t, &r);
        r
    }

    async fn pause_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        let t = Instant::now();
        let r = self.inner.pause_sandbox(host, id).await;
        self.record("pause", host, t, &r);
        r
    }

    async fn resume_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError> {
        let t = Instant::now();
        let r = self.inner.resume_sandbox(host, spec).await;
        self.learn(host, &r);
        self.record("resume", host, t, &r);
        r
    }

    async fn destroy_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        let t = Instant::now();
        let r = self.inner.destroy_sandbox(host, id).await;
        self.record("destroy", host, t, &r);
        r
    }

    async fn ping_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        let t = Instant::now();
        let r = self.inner.ping_sandbox(host, id).await;
        self.record("ping", host, t, &r);
        r
    }

    async fn create_snapshot(
        &self,
        host: HostId,
        id: SandboxId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, HostCallError> {
        let t = Instant::now();
        let r = self.inner.create_snapshot(host, id, team, template).await;
        self.record("snapshot", host, t, &r);
        r
    }

    async fn delete_snapshot(
        &self,
        host: HostId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<(), HostCallError> {
        let t = Instant::now();
        let r = self.inner.delete_snapshot(host, team, template).await;
        self.record("delete_snapshot", host, t, &r);
        r
    }

    async fn copy_template(
        &self,
        from: HostId,
        to: HostId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, HostCallError> {
        let t = Instant::now();
        let r = self.inner.copy_template(from, to, team, template).await;
        self.record("copy_template", to, t, &r);
        r
    }

    async fn list_sandboxes(&self, host: HostId) -> Result<AgentInventory, HostCallError> {
        let t = Instant::now();
        let r = self.inner.list_sandboxes(host).await;
        self.record("list", host, t, &r);
        r
    }

    async fn take_metric_history(
        &self,
        host: HostId,
        id: SandboxId,
    ) -> Result<MetricHistory, HostCallError> {
        let t = Instant::now();
        let r = self.inner.take_metric_history(host, id).await;
        self.record("take_metric_history", host, t, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_own_outcome() {
        let errors = [
            HostCallError::NotFound(String::new()),
            HostCallError::FailedPrecondition(String::new()),
            HostCallError::InvalidArgument(String::new()),
            HostCallError::Unavailable(String::new()),
            HostCallError::ResourceExhausted(String::new()),
            HostCallError::Timeout(String::new()),
            HostCallError::Internal(String::new()),
        ];
        let mut seen: Vec<&str> = errors.into_iter().map(|e| outcome::<()>(&Err(e))).collect();
        seen.push(outcome(&Ok(())));
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n, "{seen:?}");
    }
}
