//! `wrenn-cp`: the control plane on its configured backends (see `wrenn_core::config`).

use wrenn_core::report::error_chain;
use wrenn_cpserver::{Builder, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _telemetry = match wrenn_cpserver::logging::init("wrenn-cp") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wrenn-cp: {}", error_chain(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    match Builder::from_env() {
        Ok(builder) => match run(builder.with_version(
            env!("CARGO_PKG_VERSION"),
            option_env!("WRENN_COMMIT").unwrap_or("unknown"),
        ))
        .await
        {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                let e = error_chain(&e);
                tracing::error!(error = %e, "control plane failed");
                eprintln!("wrenn-cp: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("wrenn-cp: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
