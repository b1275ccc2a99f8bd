//! An enterprise build of the control plane: the stock server plus one extension.
//!
//! `UsageMeter` adds
//! - an authenticated route, `GET /v1/ext/usage`, that reads the store through the
//!   `ServerContext` (the caller's live capsules by status) and reports what the
//!   extension has observed;
//! - a background worker that samples the number of live capsules every second
//!   and stops cleanly at shutdown;
//! - an event hook counting sandbox lifecycle events.
//!
//! Run it like `wrenn-cp` (same environment variables):
//! `WRENN_DIR=/tmp/wrenn-ent cargo run --example enterprise_extension`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use wrenn_core::events::SandboxEvent;
use wrenn_cpserver::Builder;
use wrenn_extension::extract::Json;
use wrenn_extension::{ApiResult, AuthContext, Extension, ServerContext, Worker, WorkerError};

/// What the meter has seen.
#[derive(Default)]
pub struct Observed {
    /// Sandbox events by kind.
    pub events: Mutex<BTreeMap<String, u64>>,
    /// Worker samples taken.
    pub samples: AtomicU64,
    /// Set when the worker saw the shutdown and returned.
    pub worker_stopped: AtomicBool,
}

/// The extension.
#[derive(Default, Clone)]
pub struct UsageMeter {
    /// Shared with the route, the worker and the hook.
    pub observed: Arc<Observed>,
}

/// `GET /v1/ext/usage` answer.
#[derive(Serialize)]
pub struct Usage {
    /// The caller's team.
    pub team_id: String,
    /// The team's live capsules by status, read from the store.
    pub capsules_by_status: BTreeMap<String, u64>,
    /// Lifecycle events the hook has counted (all teams).
    pub events_seen: BTreeMap<String, u64>,
    /// Samples the worker has taken.
    pub samples: u64,
}

/// Route state: the server context plus the extension's own state.
#[derive(Clone)]
pub struct MeterState {
    ctx: ServerContext,
    meter: UsageMeter,
}

async fn usage(
    State(MeterState { ctx, meter }): State<MeterState>,
    auth: AuthContext,
) -> ApiResult<Json<Usage>> {
    let mut by_status = BTreeMap::new();
    for sb in ctx.store.list_sandboxes(auth.team_id).await? {
        *by_status.entry(sb.status.to_string()).or_default() += 1;
    }
    let events_seen = meter
        .observed
        .events
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    Ok(Json(Usage {
        team_id: auth.team_id.to_string(),
        capsules_by_status: by_status,
        events_seen,
        samples: meter.observed.samples.load(Ordering::Relaxed),
    }))
}

// Lets `AuthContext` (which needs the `ServerContext`) run under this state.
impl axum::extract::FromRef<MeterState> for ServerContext {
    fn from_ref(state: &MeterState) -> Self {
        state.ctx.clone()
    }
}

#[async_trait::async_trait]
impl Extension for UsageMeter {
    fn name(&self) -> &str {
        "usage-meter"
    }

    fn routes(&self, ctx: &ServerContext) -> axum::Router {
        axum::Router::new()
            .route("/v1/ext/usage", get(usage))
            .with_state(MeterState {
                ctx: ctx.clone(),
                meter: self.clone(),
            })
    }

    fn workers(&self, _ctx: &ServerContext) -> Vec<Worker> {
        let observed = self.observed.clone();
        vec![Worker::new("usage-sampler", move |_ctx, cancel| {
            let observed = observed.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            observed.worker_stopped.store(true, Ordering::SeqCst);
                            return Ok::<(), WorkerError>(());
                        }
                        _ = tick.tick() => {
                            observed.samples.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })]
    }

    async fn on_sandbox_event(
        &self,
        _ctx: &ServerContext,
        event: &SandboxEvent,
    ) -> Result<(), WorkerError> {
        let mut events = self
            .observed
            .events
            .lock()
            .map_err(|_| "event counter poisoned")?;
        *events.entry(event.event.as_str().to_owned()).or_default() += 1;
        Ok(())
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _telemetry = match wrenn_cpserver::logging::init("enterprise-cp") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("enterprise_extension: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let builder = match Builder::from_env() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("enterprise_extension: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match wrenn_cpserver::run(
        builder.with_extensions([Arc::new(UsageMeter::default()) as Arc<dyn Extension>]),
    )
    .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enterprise_extension: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
