//! `wrenn-agent`: the Wrenn host agent binary.
//!
//! Reads [`AgentConfig::from_env`] (`WRENN_DIR`, `WRENN_HOST_LISTEN_ADDR`,
//! `WRENN_CP_URL`, `WRENN_RUNTIME`, `WRENN_HIBERNATE_AFTER_SECS`, …), starts the
//! `process` runtime (or, with `WRENN_RUNTIME=qemu`, the QEMU runtime) and serves `hostagent.v1` plus the port proxy until SIGTERM or SIGINT (or the
//! Terminate RPC), then shuts down gracefully: every sandbox is hibernated, not
//! destroyed.
//!
//! **Registration.** With `WRENN_CP_URL` and `WRENN_REGISTRATION_TOKEN` (from `POST
//! /v1/hosts`), the agent registers at startup, reporting `WRENN_HOST_ADDRESS` (default:
//! the listen address) and its CPUs, memory and disk, and keeps the credentials in
//! `$WRENN_DIR/secrets/host-credentials.json`; a later start without the token uses
//! that file. A registered agent serves mutual TLS with the certificate the control
//! plane issued it, heartbeats (every 30 s by default) and posts sandbox events (see
//! `wrenn_agent::registration`, `wrenn_agent::heartbeat` and `wrenn_agent::tls`).
//! Without a control-plane URL it runs standalone, without TLS.
//!
//! **Image.** Sandboxes run on the default image (a Debian tree, see
//! `wrenn_agent::image`), found in `$WRENN_IMAGE_CACHE` or `$WRENN_DIR/images/base` and
//! built there on the first start (about two minutes; needs `debootstrap`, installed
//! with apt-get when missing unless `WRENN_IMAGE_NO_INSTALL=1`).
//!
//! `WRENN_AGENT_TOKEN` requires `authorization: Bearer <token>` on every RPC.
//! `WRENN_ENVD_BIN` names the envd binary (default: `wrenn-envd` next to this binary,
//! else on `PATH`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use wrenn_agent::image::{self, BuildOptions, BuiltImage, LogProgress};
use wrenn_agent::registration::{ControlPlane, Credentials, HostCredentials, machine_report};
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::firecracker::{FirecrackerRuntime, FirecrackerRuntimeOptions};
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::runtime::qemu::{QemuRuntime, QemuRuntimeOptions};
use wrenn_agent::{Agent, AgentOptions};
use wrenn_core::config::{AgentConfig, RuntimeKind, Secret};
use wrenn_core::report::error_chain;

fn main() -> ExitCode {
    // First thing: when started as a process-runtime sandbox's init step, this sets the
    // sandbox up and execs envd (it never returns then).
    wrenn_agent::init::main_if_init();

    // Logs (JSON with WRENN_LOG_FORMAT=json) and spans, exported over OTLP when
    // OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let json = std::env::var("WRENN_LOG_FORMAT").is_ok_and(|v| v == "json");
    let _telemetry = match wrenn_proto::telemetry::init("wrenn-agent", json) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wrenn-agent: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };

    let config = match AgentConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wrenn-agent: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "wrenn-agent: cannot start the async runtime: {}",
                error_chain(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wrenn-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An optional setting read here (see the module docs); empty = unset.
fn interim_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The envd binary: `WRENN_ENVD_BIN`, else next to this binary, else on `PATH`.
fn envd_binary() -> Result<PathBuf, String> {
    if let Some(p) = interim_var("WRENN_ENVD_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("wrenn-envd"))
        .filter(|p| p.is_file())
    {
        return Ok(sibling);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("wrenn-envd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "cannot find the wrenn-envd binary: set WRENN_ENVD_BIN or put it next to wrenn-agent"
                .to_owned()
        })
}

/// Loads the stored credentials, or registers with the registration token when there
/// are none; `None` when the agent runs without a control plane or was never
/// registered.
async fn credentials(config: &AgentConfig) -> Result<Option<Credentials>, String> {
    let file = config.layout().host_credentials_file();
    let Some(cp_url) = &config.cp_url else {
        if config.registration_token.is_some() {
            return Err("WRENN_REGISTRATION_TOKEN needs WRENN_CP_URL".into());
        }
        return Ok(None);
    };
    let stored = HostCredentials::load(&file).map_err(|e| error_chain(&e))?;
    if let Some(token) = &config.registration_token {
        // A registration token is single-use: once registered, the agent restarts
        // from its credentials even when its environment still carries the token (as
        // a service unit's would), and only registers again once they are gone (a
        // deleted host removes them).
        if let Some(creds) = stored {
            tracing::info!(
                host_id = %creds.host_id,
                file = %file.display(),
                "already registered: using the stored credentials, not WRENN_REGISTRATION_TOKEN"
            );
            return Ok(Some(Credentials::stored(creds, file)));
        }
        let address = config.reported_address().ok_or_else(|| {
            format!(
                "the agent listens on {}: set WRENN_HOST_ADDRESS to the host:port the control plane reaches it at",
                config.listen_addr
            )
        })?;
        let machine = machine_report(&config.wrenn_dir);
        let cp = ControlPlane::new(cp_url).map_err(|e| error_chain(&e))?;
        let creds = cp
            .register(token.expose_secret(), &address, machine)
            .await
            .map_err(|e| format!("registration failed: {}", error_chain(&e)))?;
        creds.save(&file).map_err(|e| error_chain(&e))?;
        return Ok(Some(Credentials::stored(creds, file)));
    }
    match stored {
        Some(creds) => Ok(Some(Credentials::stored(creds, file))),
        None => {
            tracing::warn!(
                file = %file.display(),
                "not registered: set WRENN_REGISTRATION_TOKEN (from POST /v1/hosts) to register; \
                 until then no heartbeat is sent and sandbox events are only logged"
            );
            Ok(None)
        }
    }
}

/// The default image (`$WRENN_IMAGE_CACHE` or `$WRENN_DIR/images/base`), built on the
/// first start.
async fn default_image(config: &AgentConfig) -> Result<BuiltImage, String> {
    let store = image::store_dir(&config.layout());
    tokio::task::spawn_blocking(move || {
        if let Some(found) = image::find_default(&store).map_err(|e| error_chain(&e))? {
            return Ok(found);
        }
        tracing::info!(store = %store.display(), "building the default image (once)");
        let started = std::time::Instant::now();
        let built = image::ensure_default(&store, &BuildOptions::from_env(), &LogProgress)
            .map_err(|e| {
                format!(
                    "cannot build the default image in {}: {}",
                    store.display(),
                    error_chain(&e)
                )
            })?;
        tracing::info!(
            seconds = started.elapsed().as_secs(),
            build = %built.dir.display(),
            "built the default image"
        );
        Ok(built)
    })
    .await
    .map_err(|e| format!("image build task: {}", error_chain(&e)))?
}

async fn run(config: AgentConfig) -> Result<(), String> {
    let envd = envd_binary()?;
    let image = default_image(&config).await?;
    let runtime: Arc<dyn Runtime> = match config.runtime {
        RuntimeKind::Process => {
            let options = ProcessRuntimeOptions::from_config(&config, &image);
            Arc::new(
                ProcessRuntime::new(config.layout(), envd, options)
                    .await
                    .map_err(|e| error_chain(&e))?,
            )
        }
        RuntimeKind::Qemu => Arc::new(
            QemuRuntime::new(
                config.layout(),
                envd,
                QemuRuntimeOptions::from_config(&config, image),
            )
            .await
            .map_err(|e| error_chain(&e))?,
        ),
        RuntimeKind::Firecracker => Arc::new(
            FirecrackerRuntime::new(
                config.layout(),
                envd,
                FirecrackerRuntimeOptions::from_config(&config, image)
                    .map_err(|e| error_chain(&e))?,
            )
            .await
            .map_err(|e| error_chain(&e))?,
        ),
    };
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {}",
                config.listen_addr,
                error_chain(&e)
            )
        })?;
    let mut options = AgentOptions::from_config(runtime, &config, listener);
    if let Some(addr) = config.metrics_addr {
        let metrics = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!(
                "cannot listen on {addr} (WRENN_AGENT_METRICS_ADDR): {}",
                error_chain(&e)
            )
        })?;
        options = options.with_metrics_listener(metrics);
    }
    if let Some(credentials) = credentials(&config).await? {
        tracing::info!(host_id = %credentials.host_id(), "registered with the control plane");
        let tls = credentials.has_certificate();
        options = options.with_credentials(credentials);
        if tls {
            options = options.with_tls();
        } else {
            tracing::warn!("the stored credentials hold no TLS certificate: serving without TLS");
        }
    }
    if let Some(token) = interim_var("WRENN_AGENT_TOKEN") {
        options = options.with_auth_token(Secret::new(token));
    }
    let agent = Agent::start(options).await.map_err(|e| error_chain(&e))?;

    let mut term = signal(SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {}", error_chain(&e)))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| format!("SIGINT handler: {}", error_chain(&e)))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = agent.wait() => {}
    }
    agent.shutdown().await;
    Ok(())
}
