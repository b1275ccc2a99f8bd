//! Process-wide log and trace setup for the reference binaries.

use wrenn_proto::telemetry::{Telemetry, TelemetryError};

/// Installs the process's `tracing` subscriber (see [`wrenn_proto::telemetry::init`]):
/// JSON lines when `WRENN_LOG_FORMAT=json` (production), human-readable otherwise;
/// level from `RUST_LOG` (default `info`); spans exported over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Keep the guard until the process exits.
pub fn init(service: &str) -> Result<Telemetry, TelemetryError> {
    let json = std::env::var("WRENN_LOG_FORMAT").is_ok_and(|v| v == "json");
    wrenn_proto::telemetry::init(service, json)
}
