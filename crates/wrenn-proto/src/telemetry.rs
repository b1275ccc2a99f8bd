//! Tracing across processes (feature `telemetry`): the process's `tracing` subscriber
//! with an OpenTelemetry layer, W3C trace-context propagation over HTTP headers and
//! gRPC metadata, and optional OTLP export.
//!
//! - [`init`] installs the subscriber once per process: log lines (JSON when asked)
//!   plus OpenTelemetry spans. Spans always get real trace and span ids, so a trace id
//!   in one process's logs is found in the others'. When the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//!   spans are also exported over OTLP/gRPC in batches (the usual `OTEL_BSP_*` and
//!   `OTEL_SERVICE_NAME` variables apply).
//! - [`continue_trace`] makes a server's request span the child of the caller's
//!   `traceparent` and records the trace id in the span's `trace_id` field, which every
//!   log line inside the request then carries.
//! - [`inject`] and the [`PropagateTrace`] interceptor send the current span's context
//!   with an outgoing HTTP request or gRPC call.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from its configuration.
    #[error("OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The exporter's runtime could not be started.
    #[error("OTLP exporter runtime")]
    Runtime(#[source] std::io::Error),
}

/// Keeps the tracer provider alive; dropping it flushes and shuts the export down.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// Whether the environment asks for OTLP export.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// Installs the process's subscriber: the level from `RUST_LOG` (default `info`), log
/// lines on stderr (JSON when `json`), and OpenTelemetry spans for `service` (exported
/// over OTLP when configured). Does nothing if a subscriber is already installed; the
/// returned guard must live as long as the process logs.
pub fn init(service: &str, json: bool) -> Result<Telemetry, TelemetryError> {
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let exporting = otlp_configured();
    if exporting {
        builder = builder.with_batch_exporter(OwnRuntimeExporter::new()?);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    Ok(Telemetry {
        provider,
        exporting,
    })
}

/// The OTLP/gRPC exporter with a runtime of its own: the SDK's batch processor exports
/// from a plain thread, where tonic finds no Tokio reactor.
#[derive(Debug)]
struct OwnRuntimeExporter {
    /// Always `Some` until dropped (then shut down without blocking, which is allowed
    /// anywhere, even on a Tokio thread).
    runtime: Option<tokio::runtime::Runtime>,
    inner: opentelemetry_otlp::SpanExporter,
}

impl Drop for OwnRuntimeExporter {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl OwnRuntimeExporter {
    fn new() -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(TelemetryError::Runtime)?;
        let inner = runtime
            .block_on(async {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()
            })
            .map_err(TelemetryError::Exporter)?;
        Ok(Self {
            runtime: Some(runtime),
            inner,
        })
    }
}

impl SpanExporter for OwnRuntimeExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let export = self.inner.export(batch);
        match (&self.runtime, tokio::runtime::Handle::try_current()) {
            // Called on the batch processor's plain thread: drive it on our runtime.
            (Some(runtime), Err(_)) => runtime.block_on(export),
            _ => export.await,
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into
/// `headers`; nothing when the current span has none.
pub fn inject(headers: &mut http::HeaderMap) {
    let cx = Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// [`inject`] into gRPC metadata.
pub fn inject_metadata(metadata: &mut MetadataMap) {
    let mut headers = http::HeaderMap::new();
    inject(&mut headers);
    for (name, value) in &headers {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(name.as_str().as_bytes()),
            value.to_str().map(MetadataValue::try_from),
        ) && let Ok(value) = value
        {
            metadata.insert(key, value);
        }
    }
}

/// Makes `span` continue the trace whose context `headers` carry (a new trace when
/// they carry none) and records the trace id in its `trace_id` field (declare it
/// `trace_id = tracing::field::Empty`).
pub fn continue_trace(span: &Span, headers: &http::HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace = span.context().span().span_context().trace_id();
    if trace != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace));
    }
}

/// The trace id of the current span (32 hex digits), when it has one.
pub fn current_trace_id() -> Option<String> {
    let trace = Span::current().context().span().span_context().trace_id();
    (trace != opentelemetry::trace::TraceId::INVALID).then(|| trace.to_string())
}

/// A tonic client interceptor that sends the current span's trace context with every
/// call.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTrace;

impl tonic::service::Interceptor for PropagateTrace {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_metadata(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::info_span;

    /// A subscriber with the OpenTelemetry layer for the current thread only.
    fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_trace_continues_through_headers_and_metadata() {
        with_otel(|| {
            let incoming: http::HeaderMap = [(
                http::header::HeaderName::from_static("traceparent"),
                http::HeaderValue::from_static(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            )]
            .into_iter()
            .collect();
            let server = info_span!("request", trace_id = tracing::field::Empty);
            continue_trace(&server, &incoming);
            let _entered = server.enter();
            assert_eq!(
                current_trace_id().as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            let child = info_span!("call");
            let _in_child = child.enter();
            let mut md = MetadataMap::new();
            inject_metadata(&mut md);
            let sent = md.get("traceparent").unwrap().to_str().unwrap();
            assert_eq!(
                crate::trace::trace_id(sent),
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{sent}"
            );
            assert!(
                !sent.contains("00f067aa0ba902b7"),
                "the call's parent is the local span, not the caller's: {sent}"
            );
        });
    }

    #[test]
    fn without_a_caller_a_new_trace_starts() {
        with_otel(|| {
            let span = info_span!("request", trace_id = tracing::field::Empty);
            continue_trace(&span, &http::HeaderMap::new());
            let _entered = span.enter();
            assert_eq!(current_trace_id().map(|t| t.len()), Some(32));
        });
    }
}
