//! [`Agent::start`]: assembles the host agent — runtime, [`SandboxManager`], reaper,
//! metrics sampler, event client — and serves `hostagent.v1` and the forwarded
//! `envd.v1` services over gRPC plus the port proxy on one TCP listener.
//!
//! ```no_run
//! # async fn demo(runtime: std::sync::Arc<dyn wrenn_agent::runtime::Runtime>) -> Result<(), Box<dyn std::error::Error>> {
//! use wrenn_agent::server::{Agent, AgentOptions};
//! use wrenn_core::layout::Layout;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let agent = Agent::start(AgentOptions::new(runtime, Layout::new("/var/lib/wrenn"), listener)).await?;
//! println!("agent on {}", agent.local_addr());
//! agent.shutdown().await; // hibernates every sandbox, then stops serving
//! # Ok(()) }
//! ```
//!
//! # Serving
//!
//! One server (HTTP/1.1 and HTTP/2 on the same port, with the HTTP/2 settings of
//! [`wrenn_proto::transport`]) carries the tonic `HostAgentService` routes, the
//! forwarded `envd.v1.Process` and `envd.v1.Filesystem` routes ([`Forwarder`]) and the
//! `/proxy/{id}/{port}/…` routes. A registered agent ([`AgentOptions::tls`]) serves them
//! over mutual TLS with the certificate the control plane issued it ([`crate::tls`]);
//! otherwise (embedded in `wrenn dev`, tests) over cleartext, for loopback or a trusted
//! network.
//!
//! **Authentication.** With [`AgentOptions::auth_token`] set, every gRPC call must carry
//! `authorization: Bearer <token>` metadata (else UNAUTHENTICATED) and every proxy
//! request `X-Wrenn-Agent-Token: <token>` (else 401). Without it nothing is checked
//! (embedded mode over loopback, tests).
//!
//! # Shutdown
//!
//! [`AgentHandle::shutdown`], the Terminate RPC and (in the binary) SIGTERM all run the
//! same sequence once: stop the reaper and sampler, stop accepting connections, hibernate
//! every running or paused sandbox (bounded; a runtime that cannot hibernate destroys
//! them and reports `stopped`), flush the event queue, then stop serving.
//!
//! # Startup
//!
//! `layout.ensure_dirs()`, then [`SandboxManager::recover`]: live sandboxes a previous
//! agent left running are adopted (those that cannot be are reported as failed),
//! hibernated sandboxes found by the runtime are loaded into the map, and the runtime
//! sweeps every other leftover. Then the reaper, the envd health checks and the
//! metrics sampler start.

use crate::runtime::error_chain;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use wrenn_core::config::{AgentConfig, Secret};
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1::filesystem_server::FilesystemServer;
use wrenn_proto::envd::v1::process_server::ProcessServer;
use wrenn_proto::hostagent::v1::host_agent_service_server::HostAgentServiceServer;

use crate::error::{AgentError, AgentResult};
use crate::events::{EventSender, EventsConfig};
use crate::exporter::{
    self, AgentMetrics, MeteredRuntime, StateCollector, register_process_collector,
};
use crate::heartbeat::{Heartbeat, HeartbeatEnd};
use crate::manager::{ManagerSettings, SandboxManager};
use crate::metrics::HostSampler;
use crate::proxy::{self, token_eq};
use crate::reaper::{self, DEFAULT_REAPER_TICK, DEFAULT_SAMPLE_INTERVAL};
use crate::registration::{ControlPlane, Credentials};
use crate::runtime::Runtime;
use crate::service::{AgentService, Forwarder};
use crate::tls::{self, TlsListener};

/// Largest gRPC message the agent accepts or sends, on `HostAgentService` and on the
/// forwarded `envd.v1` services alike (the control plane's client must allow at least
/// this much).
pub const MAX_GRPC_MESSAGE: usize = 40 * 1024 * 1024;

/// Everything [`Agent::start`] needs.
pub struct AgentOptions {
    /// The sandbox runtime (the process runtime, Firecracker, or a test double).
    pub runtime: Arc<dyn Runtime>,
    /// Host paths (`$WRENN_DIR`).
    pub layout: Layout,
    /// Where to serve gRPC and the proxy.
    pub listener: TcpListener,
    /// Bearer token required on every RPC and proxy request (`None` = no check).
    pub auth_token: Option<Secret>,
    /// Control-plane callback settings (URL, credentials, retry tuning).
    pub events: EventsConfig,
    /// Serve mutual TLS with the certificate of the credentials in `events` (see
    /// [`crate::tls`]); the binary sets it for a registered agent.
    pub tls: bool,
    /// Heartbeat interval: with a control-plane URL and credentials in `events`, the
    /// agent heartbeats (see [`crate::heartbeat`]). `None` = no heartbeat (embedded
    /// mode, tests); [`AgentOptions::from_config`] sets 30 s.
    pub heartbeat_interval: Option<Duration>,
    /// State-machine timings.
    pub manager: ManagerSettings,
    /// Inactivity reaper tick (2 s).
    pub reaper_tick: Duration,
    /// Metrics sampling interval (500 ms).
    pub sample_interval: Duration,
    /// How long to wait for in-flight requests after the sandboxes are hibernated at
    /// shutdown (5 s), before the server is stopped hard.
    pub serve_grace: Duration,
    /// The registry the agent records its metrics in (see [`crate::exporter`]); a new
    /// one by default. `wrenn dev` passes the control plane's, so that one scrape
    /// shows both.
    pub metrics: prometheus::Registry,
    /// Where to serve `GET /metrics` (plain HTTP, no authentication;
    /// `WRENN_AGENT_METRICS_ADDR` in the binary). `None`: not served.
    pub metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("runtime", &self.runtime.name())
            .field("layout", &self.layout)
            .field("listener", &self.listener.local_addr().ok())
            .field("auth_token", &self.auth_token)
            .field("events", &self.events)
            .field("tls", &self.tls)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("manager", &self.manager)
            .field("reaper_tick", &self.reaper_tick)
            .field("sample_interval", &self.sample_interval)
            .field(
                "metrics_listener",
                &self
                    .metrics_listener
                    .as_ref()
                    .and_then(|l| l.local_addr().ok()),
            )
            .finish_non_exhaustive()
    }
}

impl AgentOptions {
    /// Production defaults, no control plane, no auth.
    pub fn new(runtime: Arc<dyn Runtime>, layout: Layout, listener: TcpListener) -> Self {
        Self {
            runtime,
            layout,
            listener,
            auth_token: None,
            events: EventsConfig::default(),
            tls: false,
            heartbeat_interval: None,
            manager: ManagerSettings::default(),
            reaper_tick: DEFAULT_REAPER_TICK,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            serve_grace: Duration::from_secs(5),
            metrics: prometheus::Registry::new(),
            metrics_listener: None,
        }
    }

    /// Options from the agent's configuration: layout (`WRENN_DIR`), control-plane URL
    /// (`WRENN_CP_URL`), the manager's tunables ([`ManagerSettings::apply_config`]) and
    /// the heartbeat (`WRENN_HEARTBEAT_INTERVAL_SECS`; it runs once credentials are set).
    pub fn from_config(
        runtime: Arc<dyn Runtime>,
        config: &AgentConfig,
        listener: TcpListener,
    ) -> Self {
        let mut o = Self::new(runtime, config.layout(), listener);
        o.events.cp_url = config.cp_url.clone();
        o.manager.apply_config(config);
        o.heartbeat_interval = Some(config.heartbeat_interval);
        o
    }

    /// Sets the identity used with the control plane (events, heartbeat); see
    /// [`crate::registration`]. Without it events are only logged.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.events.credentials = Some(credentials);
        self
    }

    /// Serves mutual TLS with the credentials' certificate (set them first).
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Heartbeats every `interval` (needs a control-plane URL and credentials).
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// Sets the control plane's base URL for callbacks.
    pub fn with_control_plane(mut self, cp_url: impl Into<String>) -> Self {
        self.events.cp_url = Some(cp_url.into());
        self
    }

    /// Records the agent's metrics in `registry` instead of a registry of its own.
    pub fn with_metrics_registry(mut self, registry: prometheus::Registry) -> Self {
        self.metrics = registry;
        self
    }

    /// Serves `GET /metrics` on `listener` (plain HTTP, no authentication: bind it to
    /// a private interface).
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Requires `authorization: Bearer <token>` on every RPC (and
    /// `X-Wrenn-Agent-Token` on proxy requests).
    pub fn with_auth_token(mut self, token: Secret) -> Self {
        self.auth_token = Some(token);
        self
    }
}

/// Checks the bearer token of every gRPC call.
#[derive(Clone, Default)]
pub struct BearerAuth {
    expected: Option<Arc<str>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl BearerAuth {
    /// Requires `authorization: Bearer <token>` (`None` = accept everything).
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| Arc::from(format!("Bearer {t}"))),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if token_eq(given, expected.as_bytes()) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "missing or wrong agent token (authorization: Bearer <token>)",
            ))
        }
    }
}

/// The host agent.
#[derive(Debug)]
pub struct Agent;

struct Inner {
    manager: Arc<SandboxManager>,
    events: Arc<EventSender>,
    workers: CancellationToken,
    serve_stop: CancellationToken,
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
    started: AtomicBool,
    done: watch::Sender<bool>,
    serve_grace: Duration,
}

impl Inner {
    /// The shutdown sequence (runs once; later callers wait for it).
    async fn shutdown(self: Arc<Self>) -> Vec<SandboxId> {
        if self.started.swap(true, Ordering::SeqCst) {
            let mut rx = self.done.subscribe();
            let _ = rx.wait_for(|d| *d).await;
            return Vec::new();
        }
        tracing::info!("agent shutting down: hibernating sandboxes");
        self.workers.cancel();
        self.serve_stop.cancel();
        let kept = self.manager.shutdown().await;
        tracing::info!(count = kept.len(), "sandboxes hibernated");
        self.events.close(Duration::from_secs(5)).await;
        let server = self.server.lock().ok().and_then(|mut s| s.take());
        if let Some(mut server) = server {
            if tokio::time::timeout(self.serve_grace, &mut server)
                .await
                .is_err()
            {
                tracing::info!(
                    "in-flight requests still open after the grace; stopping the server"
                );
                server.abort();
            }
        }
        let _ = self.done.send(true);
        kept
    }
}

/// A running agent.
pub struct AgentHandle {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    metrics: prometheus::Registry,
    terminate: CancellationToken,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle")
            .field("local_addr", &self.local_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts the agent: prepares the data directory, recovers hibernated sandboxes,
    /// sweeps leftovers, starts the background workers and serves on the listener.
    pub async fn start(options: AgentOptions) -> AgentResult<AgentHandle> {
        let AgentOptions {
            runtime,
            layout,
            listener,
            auth_token,
            events,
            tls,
            heartbeat_interval,
            manager: settings,
            reaper_tick,
            sample_interval,
            serve_grace,
            metrics: registry,
            metrics_listener,
        } = options;
        let metrics = AgentMetrics::register(&registry)
            .map_err(|e| AgentError::internal(format!("registering metrics: {e}")))?;
        register_process_collector(&registry);
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(|e| AgentError::internal(format!("metrics listener address: {e}")))?;
        let runtime: Arc<dyn Runtime> = Arc::new(MeteredRuntime::new(runtime, &metrics));
        let local_addr = listener
            .local_addr()
            .map_err(|e| AgentError::internal(format!("listener address: {}", error_chain(&e))))?;
        {
            let dirs = layout.clone();
            tokio::task::spawn_blocking(move || dirs.ensure_dirs())
                .await
                .map_err(|e| AgentError::internal(error_chain(&e)))?
                .map_err(|e| {
                    AgentError::internal(format!(
                        "cannot prepare {}: {}",
                        layout.root().display(),
                        error_chain(&e)
                    ))
                })?;
        }
        let tls_config = if tls {
            let creds = events.credentials.as_ref().ok_or_else(|| {
                AgentError::internal("TLS needs the host credentials (register the agent)")
            })?;
            Some(tls::server_config(creds).map_err(|e| AgentError::internal(error_chain(&e)))?)
        } else {
            None
        };
        let heartbeat_link = match (&events.cp_url, &events.credentials, heartbeat_interval) {
            (Some(url), Some(creds), Some(interval)) => Some((
                ControlPlane::new(url).map_err(|e| AgentError::internal(error_chain(&e)))?,
                creds.clone(),
                interval,
            )),
            _ => None,
        };
        let events = Arc::new(EventSender::start(events));
        let manager = Arc::new(SandboxManager::new(
            runtime,
            layout,
            Arc::clone(&events),
            settings,
        ));
        manager.recover().await?;

        let workers = CancellationToken::new();
        let host = Arc::new(HostSampler::new());
        registry
            .register(Box::new(StateCollector::new(
                Arc::clone(&manager),
                Arc::clone(&host),
                manager.layout().root().to_path_buf(),
            )))
            .map_err(|e| AgentError::internal(format!("registering metrics: {e}")))?;
        tokio::spawn(reaper::run_reaper(
            Arc::clone(&manager),
            reaper_tick,
            workers.child_token(),
        ));
        tokio::spawn(reaper::run_health(
            Arc::clone(&manager),
            manager.settings().health_interval,
            workers.child_token(),
        ));
        tokio::spawn(reaper::run_sampler(
            Arc::clone(&manager),
            sample_interval,
            workers.child_token(),
        ));
        {
            let host = Arc::clone(&host);
            let stop = workers.child_token();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            let h = Arc::clone(&host);
                            let _ = tokio::task::spawn_blocking(move || h.tick()).await;
                        }
                    }
                }
            });
        }

        let terminate = CancellationToken::new();
        let service = AgentService::new(Arc::clone(&manager), host, terminate.clone());
        let forwarder = Forwarder::new(Arc::clone(&manager));
        let token = auth_token.as_ref().map(|t| t.expose_secret().to_owned());
        let auth = BearerAuth::new(token.as_deref());
        let grpc = HostAgentServiceServer::new(service)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        let process = ProcessServer::new(forwarder.clone())
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        let filesystem = FilesystemServer::new(forwarder)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        let router = tonic::service::Routes::new(InterceptedService::new(grpc, auth.clone()))
            .add_service(InterceptedService::new(process, auth.clone()))
            .add_service(InterceptedService::new(filesystem, auth))
            .prepare()
            .into_axum_router()
            .merge(proxy::router(Arc::clone(&manager), token))
            .layer(axum::middleware::from_fn_with_state(
                metrics.grpc_requests.clone(),
                exporter::track_grpc,
            ))
            .layer(
                tower_http::trace::TraceLayer::new_for_grpc()
                    .make_span_with(request_span)
                    // NOT_FOUND and the like are answers, not faults: the control
                    // plane logs what matters, and /metrics counts codes.
                    .on_failure(
                        tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                    ),
            );

        let serve_stop = CancellationToken::new();
        if let Some(listener) = metrics_listener {
            tokio::spawn(crate::serve::serve(
                listener,
                exporter::router(registry.clone()),
                serve_stop.clone(),
            ));
        }
        let server = match tls_config {
            Some(config) => {
                let listener = TlsListener::new(listener, config).map_err(|e| {
                    AgentError::internal(format!("TLS listener: {}", error_chain(&e)))
                })?;
                tokio::spawn(crate::serve::serve(listener, router, serve_stop.clone()))
            }
            None => {
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                tokio::spawn(crate::serve::serve(listener, router, serve_stop.clone()))
            }
        };
        let inner = Arc::new(Inner {
            manager,
            events,
            workers,
            serve_stop,
            server: std::sync::Mutex::new(Some(server)),
            started: AtomicBool::new(false),
            done: watch::Sender::new(false),
            serve_grace,
        });
        {
            // Terminate RPC → the same graceful shutdown.
            let inner = Arc::clone(&inner);
            let terminate = terminate.clone();
            tokio::spawn(async move {
                terminate.cancelled().await;
                inner.shutdown().await;
            });
        }
        if let Some((control_plane, credentials, interval)) = heartbeat_link {
            let heartbeat = Heartbeat {
                control_plane,
                credentials,
                manager: Arc::clone(&inner.manager),
                interval,
            };
            let stop = inner.workers.child_token();
            let terminate = terminate.clone();
            tokio::spawn(async move {
                if heartbeat.run(stop).await == HeartbeatEnd::HostDeleted {
                    terminate.cancel();
                }
            });
        }
        tracing::info!(%local_addr, tls, ?metrics_addr, "host agent serving");
        Ok(AgentHandle {
            inner,
            local_addr,
            metrics_addr,
            metrics: registry,
            terminate,
        })
    }
}

impl AgentHandle {
    /// The address the agent serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address `GET /metrics` is served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The registry holding the agent's metrics.
    pub fn metrics(&self) -> &prometheus::Registry {
        &self.metrics
    }

    /// The sandbox manager (for embedding and tests).
    pub fn manager(&self) -> &Arc<SandboxManager> {
        &self.inner.manager
    }

    /// Graceful shutdown: hibernates every sandbox, flushes events, stops serving.
    /// Returns the ids hibernated (empty if another caller ran the shutdown).
    pub async fn shutdown(&self) -> Vec<SandboxId> {
        Arc::clone(&self.inner).shutdown().await
    }

    /// Resolves once the agent has shut down (after [`shutdown`](Self::shutdown) or the
    /// Terminate RPC).
    pub async fn wait(&self) {
        let mut rx = self.inner.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// True once a shutdown has been requested (Terminate RPC or `shutdown`).
    pub fn is_terminating(&self) -> bool {
        self.terminate.is_cancelled() || self.inner.started.load(Ordering::SeqCst)
    }
}

/// Every call's span: the RPC (or proxied path), continuing the control plane's trace
/// (`traceparent`), so the agent's log lines carry the request's trace id.
fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "agent.request",
        path = %req.uri().path(),
        trace_id = tracing::field::Empty,
    );
    wrenn_proto::telemetry::continue_trace(&span, req.headers());
    span
}
