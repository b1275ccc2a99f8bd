//! The scrape: `GET /metrics` on the API listener and on the metrics listener, and
//! the gauges computed from the store at each scrape.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use prometheus::{Encoder, GaugeVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use wrenn_core::auth::constant_time_eq;
use wrenn_core::model::HostLoad;
use wrenn_core::repo::{RepoError, SandboxCount, Store};
use wrenn_extension::{ApiError, ServerContext};

use super::LifecycleMetrics;

/// Longest a scrape waits for the store. Past it (or on a store error) the
/// store-derived gauges are left out and `wrenn_scrape_store_up` is 0: a scrape
/// during a database outage still answers 200, quickly, with everything else.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// What the store says at scrape time.
struct StoreSnapshot {
    counts: Vec<SandboxCount>,
    hosts: Vec<HostLoad>,
}

async fn store_snapshot(store: &dyn Store) -> Result<StoreSnapshot, RepoError> {
    let (counts, hosts) = tokio::try_join!(
        store.count_sandboxes_by_host_status(),
        store.list_hosts_with_load()
    )?;
    Ok(StoreSnapshot { counts, hosts })
}

/// The text exposition of `ctx`'s registry plus the gauges computed from the store
/// now (bounded by [`STORE_TIMEOUT`]).
pub async fn render(ctx: &ServerContext, lifecycle: &LifecycleMetrics) -> String {
    let local = Registry::new();
    let up = IntGauge::new(
        "wrenn_scrape_store_up",
        "1 when the store answered this scrape in time, else 0 (store-derived series are then left out).",
    )
    .expect("static metric definition");
    let _ = local.register(Box::new(up.clone()));
    match tokio::time::timeout(STORE_TIMEOUT, store_snapshot(ctx.store.as_ref())).await {
        Ok(Ok(snapshot)) => {
            up.set(1);
            if let Err(e) = snapshot.register(&local, lifecycle) {
                tracing::warn!(error = %e, "could not build the store gauges");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics scrape: store unavailable"),
        Err(_) => tracing::warn!(
            timeout_ms = STORE_TIMEOUT.as_millis() as u64,
            "metrics scrape: store did not answer in time"
        ),
    }
    let mut families = ctx.metrics.gather();
    families.extend(local.gather());
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

impl StoreSnapshot {
    /// Registers the store-derived gauges, filled, in `r`.
    fn register(&self, r: &Registry, lifecycle: &LifecycleMetrics) -> prometheus::Result<()> {
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let capsules = IntGaugeVec::new(
            Opts::new("wrenn_capsules", "Capsules by status (stored rows)."),
            &["status"],
        )?;
        r.register(Box::new(capsules.clone()))?;
        let host_capsules = IntGaugeVec::new(
            Opts::new(
                "wrenn_host_capsules",
                "Capsules of each host in a non-terminal status.",
            ),
            &["host_id", "status"],
        )?;
        r.register(Box::new(host_capsules.clone()))?;
        for status in wrenn_core::lifecycle::SandboxStatus::ALL {
            capsules.with_label_values(&[status.as_str()]).set(0);
        }
        for c in &self.counts {
            capsules
                .with_label_values(&[c.status.as_str()])
                .add(c.count);
            if !c.status.is_terminal() {
                host_capsules
                    .with_label_values(&[&c.host_id.to_string(), c.status.as_str()])
                    .set(c.count);
            }
        }

        let info = gauge(
            "wrenn_host_info",
            "1 per host, with its status, architecture, kind and runtime as labels.",
            &["host_id", "status", "arch", "kind", "runtime"],
        )?;
        let cpu = gauge(
            "wrenn_host_cpu_cores",
            "Logical CPUs of a host.",
            &["host_id"],
        )?;
        let memory = gauge("wrenn_host_memory_bytes", "Memory of a host.", &["host_id"])?;
        let disk = gauge(
            "wrenn_host_disk_bytes",
            "Disk of a host's data file system.",
            &["host_id"],
        )?;
        let vcpus = gauge(
            "wrenn_host_reserved_vcpus",
            "vCPUs held by a host's running, starting and transient capsules.",
            &["host_id"],
        )?;
        let reserved = gauge(
            "wrenn_host_reserved_memory_bytes",
            "Memory held by a host's running, starting and transient capsules.",
            &["host_id"],
        )?;
        let paused = gauge(
            "wrenn_host_paused_memory_bytes",
            "Memory of a host's paused capsules.",
            &["host_id"],
        )?;
        let heartbeat = gauge(
            "wrenn_host_heartbeat_age_seconds",
            "Seconds since a host's last heartbeat.",
            &["host_id"],
        )?;
        let now = chrono::Utc::now();
        for load in &self.hosts {
            let h = &load.host;
            let id = h.id.to_string();
            let runtime = lifecycle.runtime_of(h.id);
            info.with_label_values(&[
                id.as_str(),
                h.status.as_str(),
                h.arch.as_str(),
                h.kind.as_str(),
                runtime.as_str(),
            ])
            .set(1.0);
            cpu.with_label_values(&[&id]).set(f64::from(h.cpu_cores));
            memory
                .with_label_values(&[&id])
                .set(f64::from(h.memory_mb) * MIB);
            disk.with_label_values(&[&id])
                .set(f64::from(h.disk_gb) * MIB * 1024.0);
            vcpus
                .with_label_values(&[&id])
                .set(load.running_vcpus as f64);
            reserved
                .with_label_values(&[&id])
                .set(load.running_memory_mb as f64 * MIB);
            paused
                .with_label_values(&[&id])
                .set(load.paused_memory_mb as f64 * MIB);
            if let Some(at) = h.last_heartbeat_at {
                let age = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
                heartbeat.with_label_values(&[&id]).set(age);
            }
        }
        Ok(())
    }
}

/// Checks the bearer token `expected` (when set) on `headers`: `None` when the request
/// may go on, else the 401 to answer.
fn token_denial(expected: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let expected = expected?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => None,
        _ => {
            let mut response = ApiError::unauthorized(
                "Authorization: Bearer <metrics token> required (WRENN_METRICS_TOKEN)",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(response)
        }
    }
}

async fn answer(
    ctx: &ServerContext,
    lifecycle: &LifecycleMetrics,
    headers: &HeaderMap,
) -> Response {
    let token = ctx
        .config
        .metrics
        .token
        .as_ref()
        .map(|t| t.expose_secret().to_owned());
    if let Some(denied) = token_denial(token.as_deref(), headers) {
        return denied;
    }
    let body = render(ctx, lifecycle).await;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        body,
    )
        .into_response()
}

/// `GET /metrics` on the API listener: 404 (like any unknown API route) unless a token
/// is configured (then required) or `WRENN_METRICS_OPEN` is set.
pub(crate) fn api_endpoint(ctx: ServerContext, lifecycle: LifecycleMetrics) -> MethodRouter {
    get(move |headers: HeaderMap| async move {
        if !ctx.config.metrics.served_on_api() {
            return ApiError::not_found("route").into_response();
        }
        answer(&ctx, &lifecycle, &headers).await
    })
}

/// The router of the metrics listener (`WRENN_METRICS_ADDR`): `GET /metrics` (token
/// required when one is configured), and a plain 404 for anything else.
pub(crate) fn listener_router(ctx: ServerContext, lifecycle: LifecycleMetrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| async move { answer(&ctx, &lifecycle, &headers).await }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_checked_only_when_configured() {
        let mut headers = HeaderMap::new();
        assert!(token_denial(None, &headers).is_none());
        let denied = token_denial(Some("secret-token-123"), &headers).unwrap();
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(denied.headers()[header::WWW_AUTHENTICATE], "Bearer");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer wrong-token-1234"),
        );
        assert!(token_denial(Some("secret-token-123"), &headers).is_some());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer secret-token-123"),
        );
        assert!(token_denial(Some("secret-token-123"), &headers).is_none());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic secret-token-123"),
        );
        assert!(token_denial(Some("secret-token-123"), &headers).is_some());
    }
}
