//! Prometheus metrics of the control plane, served as text at `GET /metrics`.
//!
//! Every server owns one [`prometheus::Registry`] ([`ServerContext::metrics`](wrenn_extension::ServerContext::metrics)); nothing
//! is registered in the process-wide default registry, so several servers run in one
//! process (tests) without sharing a series. Extensions register their own
//! collectors in the same registry.
//!
//! # Series
//!
//! Recorded as things happen:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `wrenn_http_request_duration_seconds` | histogram | `method`, `route` (the matched route template such as `/v1/capsules/{id}`; `unmatched` for requests no route took — the dashboard and 404s), `status` (the response code) |
//! | `wrenn_lifecycle_operation_duration_seconds` | histogram | `operation` (`create`, `pause`, `resume`, `destroy`, `ping`, `snapshot`, `delete_snapshot`, `copy_template`, `list`), `runtime`, `outcome` (`ok` or the failure: `not_found`, `failed_precondition`, `invalid_argument`, `unavailable`, `resource_exhausted`, `timeout`, `internal`) |
//! | `wrenn_sandbox_event_age_seconds` | histogram | — (age of a sandbox event when the consumer takes it: the event bus's lag) |
//! | `wrenn_sandbox_events_total` | counter | `outcome` (`acked`, `retried`) |
//! | `wrenn_sandbox_events_redelivered_total` | counter | — (entries handed out again after a failure or a dead consumer) |
//! | `process_*` | | CPU, memory, open files of this process (Linux) |
//!
//! Computed at each scrape from the store (omitted when the store does not answer
//! within [`STORE_TIMEOUT`]):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `wrenn_scrape_store_up` | gauge | — (1 when the store answered, else 0; always present) |
//! | `wrenn_capsules` | gauge | `status` (every status, stopped rows included) |
//! | `wrenn_host_capsules` | gauge | `host_id`, `status` (non-terminal statuses) |
//! | `wrenn_host_info` | gauge (1) | `host_id`, `status`, `arch`, `kind`, `runtime` |
//! | `wrenn_host_cpu_cores`, `wrenn_host_memory_bytes`, `wrenn_host_disk_bytes` | gauge | `host_id` (capacity from registration and heartbeats) |
//! | `wrenn_host_reserved_vcpus`, `wrenn_host_reserved_memory_bytes` | gauge | `host_id` (held by running, starting and transient capsules) |
//! | `wrenn_host_paused_memory_bytes` | gauge | `host_id` |
//! | `wrenn_host_heartbeat_age_seconds` | gauge | `host_id` |
//!
//! # Runtime label
//!
//! Hosts do not report their runtime when they register or heartbeat; every agent
//! names it in the metadata of the sandboxes it starts (`runtime`). The lifecycle
//! decorator ([`MeteredAgents`]) learns it per host from the create and resume
//! answers and labels every later call to that host with it; a host not heard from
//! since this control plane started is labelled `unknown`.
//!
//! # Exposure
//!
//! See [`wrenn_core::config::MetricsConfig`]: closed (404) unless a token, a separate
//! listener or `WRENN_METRICS_OPEN` says otherwise.

mod agents;
mod http;
mod scrape;

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

pub use agents::MeteredAgents;
pub(crate) use http::track;
pub use scrape::{STORE_TIMEOUT, render};
pub(crate) use scrape::{api_endpoint, listener_router};

/// Latency buckets (seconds) of HTTP requests and agent calls: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Event-age buckets (seconds): 10 ms to 10 minutes.
const EVENT_AGE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The control plane's own collectors. Cheap to clone (handles to shared series).
#[derive(Clone, Debug)]
pub struct ControlPlaneMetrics {
    /// `wrenn_http_request_duration_seconds`.
    pub http_requests: HistogramVec,
    /// `wrenn_lifecycle_operation_duration_seconds` and the learned host runtimes.
    pub lifecycle: LifecycleMetrics,
    /// The sandbox-event consumer's series.
    pub events: EventMetrics,
}

impl ControlPlaneMetrics {
    /// New collectors, not registered anywhere.
    pub fn new() -> Self {
        Self {
            http_requests: HistogramVec::new(
                HistogramOpts::new(
                    "wrenn_http_request_duration_seconds",
                    "Time to answer an API request (until the response headers), by route template.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "route", "status"],
            )
            .expect("static metric definition"),
            lifecycle: LifecycleMetrics::new(),
            events: EventMetrics::new(),
        }
    }

    /// New collectors registered in `registry` (with the process collector on Linux,
    /// unless the registry already has one).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::new();
        registry.register(Box::new(m.http_requests.clone()))?;
        registry.register(Box::new(m.lifecycle.operations.clone()))?;
        registry.register(Box::new(m.events.age.clone()))?;
        registry.register(Box::new(m.events.handled.clone()))?;
        registry.register(Box::new(m.events.redelivered.clone()))?;
        register_process_collector(registry);
        Ok(m)
    }
}

impl Default for ControlPlaneMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers the `process_*` collector of this process in `registry`; a registry that
/// has one already (an embedder's) keeps it.
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

/// Lifecycle calls on host agents: latency and outcome by operation and runtime.
#[derive(Clone, Debug)]
pub struct LifecycleMetrics {
    /// `wrenn_lifecycle_operation_duration_seconds{operation, runtime, outcome}`.
    pub operations: HistogramVec,
    /// Runtime of each host, learned from the agents' answers.
    runtimes: Arc<std::sync::Mutex<std::collections::HashMap<wrenn_core::id::HostId, String>>>,
}

impl LifecycleMetrics {
    fn new() -> Self {
        Self {
            operations: HistogramVec::new(
                HistogramOpts::new(
                    "wrenn_lifecycle_operation_duration_seconds",
                    "Time of a lifecycle call on a host agent, by operation, runtime and outcome.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["operation", "runtime", "outcome"],
            )
            .expect("static metric definition"),
            runtimes: Arc::default(),
        }
    }

    /// The runtime `host` last reported (`unknown` until it reported one).
    pub fn runtime_of(&self, host: wrenn_core::id::HostId) -> String {
        self.runtimes
            .lock()
            .ok()
            .and_then(|m| m.get(&host).cloned())
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// Records that `host` runs `runtime` (a value outside `[a-z0-9_-]{1,32}` counts as
    /// `other`, keeping the label's values few and printable).
    pub fn learn_runtime(&self, host: wrenn_core::id::HostId, runtime: &str) {
        let ok = !runtime.is_empty()
            && runtime.len() <= 32
            && runtime
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        let runtime = if ok { runtime } else { "other" };
        if let Ok(mut m) = self.runtimes.lock() {
            if m.get(&host).map(String::as_str) != Some(runtime) {
                m.insert(host, runtime.to_owned());
            }
        }
    }
}

/// The sandbox-event consumer's series.
#[derive(Clone, Debug)]
pub struct EventMetrics {
    /// `wrenn_sandbox_event_age_seconds`.
    pub age: prometheus::Histogram,
    /// `wrenn_sandbox_events_total{outcome}`.
    pub handled: IntCounterVec,
    /// `wrenn_sandbox_events_redelivered_total`.
    pub redelivered: IntCounter,
}

impl EventMetrics {
    /// New collectors, not registered anywhere.
    pub fn new() -> Self {
        Self {
            age: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "wrenn_sandbox_event_age_seconds",
                    "Age of a sandbox event when the event consumer takes it (event-bus lag).",
                )
                .buckets(EVENT_AGE_BUCKETS.to_vec()),
            )
            .expect("static metric definition"),
            handled: IntCounterVec::new(
                Opts::new(
                    "wrenn_sandbox_events_total",
                    "Sandbox events the consumer handled, by outcome (acked or left for a retry).",
                ),
                &["outcome"],
            )
            .expect("static metric definition"),
            redelivered: IntCounter::new(
                "wrenn_sandbox_events_redelivered_total",
                "Sandbox events delivered more than once (a failed handling or a dead consumer).",
            )
            .expect("static metric definition"),
        }
    }

    /// Records the handling of `delivery`: its age, whether it was acknowledged.
    pub fn observe(&self, delivery: &wrenn_core::events::Delivery, acked: bool) {
        if delivery.delivery_count > 1 {
            self.redelivered.inc();
        }
        if let wrenn_core::events::Event::Sandbox(event) = &delivery.event {
            if let Some(age) = event_age(&delivery.id, event.timestamp, chrono::Utc::now()) {
                self.age.observe(age);
            }
        }
        self.handled
            .with_label_values(&[if acked { "acked" } else { "retried" }])
            .inc();
    }
}

impl Default for EventMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since an event was published: from its stream id (`ms-seq`, Redis) when
/// that carries a time, else from its own `timestamp` (whole seconds; the in-process
/// bus numbers entries `0-seq`). `None` for a time in the future beyond a second of
/// clock skew.
fn event_age(
    id: &wrenn_core::events::EventId,
    timestamp: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<f64> {
    let published_ms =
        id.0.split_once('-')
            .and_then(|(ms, _)| ms.parse::<i64>().ok())
            .filter(|ms| *ms > 0)
            .unwrap_or(timestamp.saturating_mul(1000));
    let age_ms = now.timestamp_millis().saturating_sub(published_ms);
    (age_ms >= -1000).then(|| age_ms.max(0) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wrenn_core::events::EventId;
    use wrenn_core::id::HostId;

    #[test]
    fn event_age_prefers_the_stream_id_and_falls_back_to_the_timestamp() {
        let now = chrono::DateTime::from_timestamp_millis(1_700_000_010_500).unwrap();
        let redis = EventId("1700000010000-3".into());
        assert_eq!(event_age(&redis, 1, now), Some(0.5));
        let in_process = EventId("0-42".into());
        assert_eq!(event_age(&in_process, 1_700_000_008, now), Some(2.5));
        let garbage = EventId("x".into());
        assert_eq!(event_age(&garbage, 1_700_000_010, now), Some(0.5));
        let future = EventId("1700000020000-0".into());
        assert_eq!(event_age(&future, 0, now), None);
        let skewed = EventId("1700000011000-0".into());
        assert_eq!(event_age(&skewed, 0, now), Some(0.0));
    }

    #[test]
    fn runtimes_are_learned_per_host_and_sanitised() {
        let m = LifecycleMetrics::new();
        let (a, b) = (HostId::new(), HostId::new());
        assert_eq!(m.runtime_of(a), "unknown");
        m.learn_runtime(a, "firecracker");
        m.learn_runtime(b, "Evil\"label\n");
        assert_eq!(m.runtime_of(a), "firecracker");
        assert_eq!(m.runtime_of(b), "other");
        m.learn_runtime(a, "qemu");
        assert_eq!(m.runtime_of(a), "qemu");
    }

    #[test]
    fn two_registries_hold_separate_series_and_a_second_registration_fails() {
        let (r1, r2) = (Registry::new(), Registry::new());
        let m1 = ControlPlaneMetrics::register(&r1).unwrap();
        let _m2 = ControlPlaneMetrics::register(&r2).unwrap();
        m1.events.redelivered.inc();
        let count = |r: &Registry| {
            r.gather()
                .iter()
                .find(|f| f.name() == "wrenn_sandbox_events_redelivered_total")
                .map(|f| f.get_metric()[0].get_counter().get_value())
        };
        assert_eq!(count(&r1), Some(1.0));
        assert_eq!(count(&r2), Some(0.0));
        assert!(ControlPlaneMetrics::register(&r1).is_err());
    }
}
