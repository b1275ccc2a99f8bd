//! The agent's Prometheus metrics, served as text at `GET /metrics` on a listener of
//! their own (`WRENN_AGENT_METRICS_ADDR`, [`AgentOptions::metrics_listener`]).
//!
//! The agent's gRPC port is mutual TLS with certificates of the control plane's CA,
//! which a Prometheus server does not hold; the metrics therefore get a plain HTTP
//! listener, without authentication: bind it to a private interface (or loopback
//! behind a scraping sidecar). Unset, no metrics are served (they are still recorded
//! in [`AgentOptions::metrics`], which an embedder may expose itself: `wrenn dev`
//! serves them with the control plane's).
//!
//! Every agent owns its [`Registry`]; nothing goes to the process-wide default one.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `wrenn_agent_runtime_operation_duration_seconds` | histogram | `runtime` (`process`, `qemu`, `firecracker`), `operation` (`create`, `pause`, `resume`, `hibernate`, `restore`, `destroy`, `snapshot`), `outcome` (`ok`, `not_found`, `template_not_found`, `failed_precondition`, `resource_exhausted`, `unsupported`, `io`, `other`) |
//! | `wrenn_agent_grpc_request_duration_seconds` | histogram | `method` (`hostagent.v1.HostAgentService/CreateSandbox`, …; `unknown` for methods no service has), `code` (gRPC status name: `Ok`, `NotFound`, …). Streaming calls are timed until their response headers |
//! | `wrenn_agent_sandboxes` | gauge | `status` (every status) |
//! | `wrenn_agent_allocated_vcpus`, `wrenn_agent_allocated_memory_bytes` | gauge | — (promised to running and paused sandboxes) |
//! | `wrenn_agent_host_cpu_cores`, `wrenn_agent_host_cpu_used_ratio` | gauge | — |
//! | `wrenn_agent_host_memory_total_bytes`, `wrenn_agent_host_memory_available_bytes` | gauge | — |
//! | `wrenn_agent_host_disk_total_bytes`, `wrenn_agent_host_disk_available_bytes` | gauge | — (the file system of `WRENN_DIR`) |
//! | `wrenn_agent_info` | gauge (1) | `runtime` |
//! | `process_*` | | this process (Linux; one collector per registry) |
//!
//! [`AgentOptions::metrics_listener`]: crate::server::AgentOptions::metrics_listener
//! [`AgentOptions::metrics`]: crate::server::AgentOptions::metrics

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use wrenn_core::id::{SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::SandboxStatus;

use crate::manager::SandboxManager;
use crate::metrics::HostSampler;
use crate::runtime::{
    Adoption, Capabilities, Instance, Runtime, RuntimeError, SandboxConfig, Stats,
};

/// Latency buckets (seconds): 1 ms to 2 minutes (VM snapshots take seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The gRPC services whose methods are labelled by name.
const SERVICES: &[&str] = &[
    "hostagent.v1.HostAgentService",
    "envd.v1.Process",
    "envd.v1.Filesystem",
];

/// The agent's event-driven collectors. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    /// `wrenn_agent_runtime_operation_duration_seconds{runtime, operation, outcome}`.
    pub runtime_operations: HistogramVec,
    /// `wrenn_agent_grpc_request_duration_seconds{method, code}`.
    pub grpc_requests: HistogramVec,
}

impl AgentMetrics {
    /// New collectors, not registered anywhere.
    pub fn new() -> Self {
        Self {
            runtime_operations: HistogramVec::new(
                HistogramOpts::new(
                    "wrenn_agent_runtime_operation_duration_seconds",
                    "Time of a runtime operation on a sandbox, by runtime, operation and outcome.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["runtime", "operation", "outcome"],
            )
            .expect("static metric definition"),
            grpc_requests: HistogramVec::new(
                HistogramOpts::new(
                    "wrenn_agent_grpc_request_duration_seconds",
                    "Time to answer a gRPC call (until its response headers), by method and status.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "code"],
            )
            .expect("static metric definition"),
        }
    }

    /// New collectors registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::new();
        registry.register(Box::new(m.runtime_operations.clone()))?;
        registry.register(Box::new(m.grpc_requests.clone()))?;
        Ok(m)
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers the `process_*` collector of this process in `registry`; a registry that
/// has one already (the control plane's, in `wrenn dev`) keeps it.
pub fn register_process_collector(registry: &Registry) {
    #[cfg(target_os = "linux")]
    match registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
        Err(e) => tracing::debug!(error = %e, "process metrics unavailable"),
    }
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
}

/// The `outcome` label of a runtime result.
fn outcome<T>(result: &Result<T, RuntimeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(RuntimeError::Unsupported(_)) => "unsupported",
        Err(RuntimeError::NotFound(_)) => "not_found",
        Err(RuntimeError::TemplateNotFound(_)) => "template_not_found",
        Err(RuntimeError::FailedPrecondition(_)) => "failed_precondition",
        Err(RuntimeError::ResourceExhausted(_)) => "resource_exhausted",
        Err(RuntimeError::Io { .. }) => "io",
        Err(RuntimeError::Other(_)) => "other",
    }
}

/// A [`Runtime`] that times the sandbox operations of another (`create`, `pause`,
/// `resume`, `hibernate`, `restore`, `destroy`, `snapshot`) and forwards everything.
pub struct MeteredRuntime {
    inner: Arc<dyn Runtime>,
    histogram: HistogramVec,
}

impl std::fmt::Debug for MeteredRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredRuntime")
            .field("runtime", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl MeteredRuntime {
    /// Times `inner` into `metrics`.
    pub fn new(inner: Arc<dyn Runtime>, metrics: &AgentMetrics) -> Self {
        Self {
            inner,
            histogram: metrics.runtime_operations.clone(),
        }
    }

    fn record<T>(&self, operation: &str, started: Instant, result: &Result<T, RuntimeError>) {
        self.histogram
            .with_label_values(&[self.inner.name(), operation, outcome(result)])
            .observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait::async_trait]
impl Runtime for MeteredRuntime {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn create(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let t = Instant::now();
        let r = self.inner.create(config).await;
        self.record("create", t, &r);
        r
    }

    fn start_background(self: Arc<Self>) {
        Arc::clone(&self.inner).start_background();
    }

    async fn stop_background(&self) {
        self.inner.stop_background().await;
    }

    async fn settle(&self) {
        self.inner.settle().await;
    }

    async fn pause(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let t = Instant::now();
        let r = self.inner.pause(instance).await;
        self.record("pause", t, &r);
        r
    }

    async fn resume(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let t = Instant::now();
        let r = self.inner.resume(instance).await;
        self.record("resume", t, &r);
        r
    }

    async fn hibernate(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let t = Instant::now();
        let r = self.inner.hibernate(instance).await;
        self.record("hibernate", t, &r);
        r
    }

    async fn restore(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let t = Instant::now();
        let r = self.inner.restore(config).await;
        self.record("restore", t, &r);
        r
    }

    async fn destroy(&self, id: SandboxId) -> Result<(), RuntimeError> {
        let t = Instant::now();
        let r = self.inner.destroy(id).await;
        self.record("destroy", t, &r);
        r
    }

    async fn snapshot(
        &self,
        instance: &Instance,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, RuntimeError> {
        let t = Instant::now();
        let r = self.inner.snapshot(instance, team, template).await;
        self.record("snapshot", t, &r);
        r
    }

    async fn stats(&self, instance: &Instance) -> Result<Stats, RuntimeError> {
        self.inner.stats(instance).await
    }

    async fn hibernated(&self) -> Result<Vec<SandboxConfig>, RuntimeError> {
        self.inner.hibernated().await
    }

    async fn wait_exit(&self, instance: &Instance) -> Result<String, RuntimeError> {
        self.inner.wait_exit(instance).await
    }

    async fn adopt(&self) -> Result<Adoption, RuntimeError> {
        self.inner.adopt().await
    }

    async fn sweep(&self, keep: &[SandboxId]) -> Result<Vec<SandboxId>, RuntimeError> {
        self.inner.sweep(keep).await
    }
}

/// Gauges read from the sandbox manager and the host at each scrape.
pub struct StateCollector {
    manager: Arc<SandboxManager>,
    host: Arc<HostSampler>,
    data_dir: PathBuf,
    sandboxes: IntGaugeVec,
    vcpus: IntGauge,
    memory: IntGauge,
    cpu_cores: IntGauge,
    cpu_used: Gauge,
    memory_total: IntGauge,
    memory_available: IntGauge,
    disk_total: IntGauge,
    disk_available: IntGauge,
    info: GaugeVec,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("static metric definition")
}

impl StateCollector {
    /// Reads `manager`'s sandboxes and `host`'s usage (disk: the file system of
    /// `data_dir`) at each collection.
    pub fn new(manager: Arc<SandboxManager>, host: Arc<HostSampler>, data_dir: PathBuf) -> Self {
        Self {
            manager,
            host,
            data_dir,
            sandboxes: IntGaugeVec::new(
                Opts::new("wrenn_agent_sandboxes", "Sandboxes on this host by status."),
                &["status"],
            )
            .expect("static metric definition"),
            vcpus: int_gauge(
                "wrenn_agent_allocated_vcpus",
                "vCPUs promised to running and paused sandboxes.",
            ),
            memory: int_gauge(
                "wrenn_agent_allocated_memory_bytes",
                "Memory promised to running and paused sandboxes.",
            ),
            cpu_cores: int_gauge("wrenn_agent_host_cpu_cores", "Logical CPUs of the host."),
            cpu_used: Gauge::new(
                "wrenn_agent_host_cpu_used_ratio",
                "Share of all CPUs in use over the last second (0 to 1).",
            )
            .expect("static metric definition"),
            memory_total: int_gauge("wrenn_agent_host_memory_total_bytes", "Host MemTotal."),
            memory_available: int_gauge(
                "wrenn_agent_host_memory_available_bytes",
                "Host MemAvailable.",
            ),
            disk_total: int_gauge(
                "wrenn_agent_host_disk_total_bytes",
                "Size of the file system holding the agent's data.",
            ),
            disk_available: int_gauge(
                "wrenn_agent_host_disk_available_bytes",
                "Free space of the file system holding the agent's data.",
            ),
            info: GaugeVec::new(
                Opts::new(
                    "wrenn_agent_info",
                    "1, with the agent's runtime as a label.",
                ),
                &["runtime"],
            )
            .expect("static metric definition"),
        }
    }

    fn parts(&self) -> [&dyn Collector; 10] {
        [
            &self.sandboxes,
            &self.vcpus,
            &self.memory,
            &self.cpu_cores,
            &self.cpu_used,
            &self.memory_total,
            &self.memory_available,
            &self.disk_total,
            &self.disk_available,
            &self.info,
        ]
    }

    fn refresh(&self) {
        for status in SandboxStatus::ALL {
            self.sandboxes.with_label_values(&[status.as_str()]).set(0);
        }
        for sb in self.manager.all() {
            self.sandboxes
                .with_label_values(&[sb.status().as_str()])
                .inc();
        }
        let (_, _, vcpus, memory_mb) = self.manager.allocations();
        self.vcpus.set(i64::from(vcpus));
        self.memory
            .set(i64::try_from(memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX));
        let usage = self.host.usage(&self.data_dir);
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        self.cpu_cores.set(i64::from(usage.cpu_count));
        self.cpu_used.set(usage.cpu_used_pct / 100.0);
        self.memory_total.set(bytes(usage.memory_total_bytes));
        self.memory_available
            .set(bytes(usage.memory_available_bytes));
        self.disk_total.set(bytes(usage.disk_total_bytes));
        self.disk_available.set(bytes(usage.disk_available_bytes));
        self.info
            .with_label_values(&[self.manager.runtime().name()])
            .set(1.0);
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}

/// The `method` label of a gRPC path: `package.Service/Method` for the agent's
/// services, `unknown` otherwise (and for methods the service answered
/// UNIMPLEMENTED, so that made-up paths add no series).
fn grpc_method(path: &str, code: tonic::Code) -> String {
    let known = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .is_some_and(|(service, method)| {
            SERVICES.contains(&service)
                && !method.is_empty()
                && method.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if known && code != tonic::Code::Unimplemented {
        path[1..].to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// Middleware timing gRPC calls (requests with an `application/grpc` content type;
/// the port proxy's requests are not timed). The status is the `grpc-status` of the
/// response headers (tonic puts errors there), `Ok` when absent.
pub(crate) async fn track_grpc(
    State(histogram): State<HistogramVec>,
    request: Request,
    next: Next,
) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return next.run(request).await;
    }
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let code = response
        .headers()
        .get("grpc-status")
        .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()));
    histogram
        .with_label_values(&[grpc_method(&path, code).as_str(), &format!("{code:?}")])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The metrics listener's router: `GET /metrics`.
pub fn router(registry: Registry) -> Router {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    render(&registry),
                )
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_methods_are_labelled_only_for_known_services() {
        let ok = tonic::Code::Ok;
        assert_eq!(
            grpc_method("/hostagent.v1.HostAgentService/CreateSandbox", ok),
            "hostagent.v1.HostAgentService/CreateSandbox"
        );
        assert_eq!(
            grpc_method("/envd.v1.Process/Start", ok),
            "envd.v1.Process/Start"
        );
        assert_eq!(grpc_method("/evil.Service/Anything", ok), "unknown");
        assert_eq!(
            grpc_method("/hostagent.v1.HostAgentService/", ok),
            "unknown"
        );
        assert_eq!(
            grpc_method("/hostagent.v1.HostAgentService/a/b", ok),
            "unknown"
        );
        assert_eq!(
            grpc_method(
                "/hostagent.v1.HostAgentService/MadeUp",
                tonic::Code::Unimplemented
            ),
            "unknown"
        );
    }

    #[test]
    fn every_runtime_error_has_its_own_outcome() {
        let errors = [
            RuntimeError::Unsupported(String::new()),
            RuntimeError::NotFound(SandboxId::new()),
            RuntimeError::TemplateNotFound(TemplateId::new()),
            RuntimeError::FailedPrecondition(String::new()),
            RuntimeError::ResourceExhausted(String::new()),
            RuntimeError::Io {
                context: String::new(),
                source: std::io::Error::other("x"),
            },
            RuntimeError::Other(String::new()),
        ];
        let mut seen: Vec<&str> = errors.into_iter().map(|e| outcome::<()>(&Err(e))).collect();
        seen.push(outcome(&Ok(())));
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n, "{seen:?}");
    }
}
