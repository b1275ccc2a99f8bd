//! Process-wide log setup for the reference binaries.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber: JSON lines when `WRENN_LOG_FORMAT=json`
/// (production), human-readable otherwise; level from `RUST_LOG` (default `info`).
/// Does nothing if a subscriber is already installed.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("WRENN_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
