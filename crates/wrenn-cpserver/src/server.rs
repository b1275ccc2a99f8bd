//! The bootstrap: turns a [`Builder`] into a running server, and shuts it down
//! gracefully.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wrenn_core::auth::JwtKeys;
use wrenn_core::config::SchedulerKind;
use wrenn_core::events::{EventBus, InProcessBus};
use wrenn_core::lifecycle::Lifecycle;
use wrenn_core::repo::Store;
use wrenn_core::scheduler::{LeastLoaded, RoundRobin, Scheduler, SingleHost};
use wrenn_extension::{Extension, Mailer, ServerContext, Supervisor};

use crate::authenticator::Authenticator;
use crate::builder::Builder;
use crate::error::ServerError;
use crate::events::RedisBus;
use crate::host_data_plane::GrpcDataPlane;
use crate::host_pool::{GrpcHostAgents, HostChannels};
use crate::mailer::SmtpMailer;
use crate::metrics::{ControlPlaneMetrics, MeteredAgents};
use crate::secrets::Secrets;
use crate::{router, workers};

/// A fully assembled control plane, not yet listening.
pub struct Server {
    ctx: ServerContext,
    router: Router,
    extensions: Vec<Arc<dyn Extension>>,
    secrets: Secrets,
    grace: Duration,
    metrics: ControlPlaneMetrics,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Runs the bootstrap up to (not including) binding the listener: config,
    /// store and migrations, event bus, secrets, host pool, scheduler, audit,
    /// lifecycle, router. Workers start in [`Server::serve`].
    pub async fn build(self) -> Result<Server, ServerError> {
        let mut config = self.config;
        config
            .layout()
            .ensure_dirs()
            .map_err(|e| ServerError::io(&config.wrenn_dir, e))?;
        let secrets = Secrets::load_or_generate(&config)?;
        // The channel-config key in use, generated into `WRENN_DIR` when unset: the
        // channels API and dispatcher read it from here.
        config.encryption_key = Some(secrets.encryption_key.0);
        let config = Arc::new(config);

        let store: Arc<dyn Store> = match self.store {
            Some(s) => s,
            None => {
                let options = wrenn_db::ConnectOptions {
                    max_connections: config.database_max_connections,
                };
                wrenn_db::connect_with(&config.database_url, options).await?
            }
        };
        info!(backend = store.backend(), "store ready");
        // Builds another control plane left running are failed by the build worker
        // when it takes the builds over (another replica may be running them now).
        let replica_id = new_replica_id();
        info!(%replica_id, "replica id (the holder of this control plane's worker leases)");

        let events: Arc<dyn EventBus> = match (self.events, &config.redis_url) {
            (Some(bus), _) => bus,
            (None, Some(url)) => Arc::new(RedisBus::connect(url).await?),
            (None, None) => Arc::new(InProcessBus::new()),
        };

        let jwt = JwtKeys::new(secrets.jwt_secret.as_bytes())
            .map_err(|e| ServerError::Secrets(e.to_string()))?;

        let registry = self.metrics.unwrap_or_default();
        let metrics = ControlPlaneMetrics::register(&registry)
            .map_err(|e| ServerError::Other(format!("registering metrics: {e}")))?;

        let hosts = Arc::new(HostChannels::new(store.clone(), secrets.ca.clone()));
        let data_plane = self.data_plane;
        let agents: Arc<dyn wrenn_core::agents::HostAgents> = match self.agents {
            Some(a) => a,
            None => Arc::new(GrpcHostAgents::new(hosts.clone())),
        };
        // Every lifecycle call is timed, whichever agents the server was given.
        let agents: Arc<dyn wrenn_core::agents::HostAgents> =
            Arc::new(MeteredAgents::new(agents, metrics.lifecycle.clone()));
        let scheduler: Arc<dyn Scheduler> = match self.scheduler {
            Some(s) => s,
            None => match config.scheduler {
                SchedulerKind::LeastLoaded => {
                    Arc::new(LeastLoaded::new(store.clone()).with_overcommit(config.overcommit))
                }
                SchedulerKind::RoundRobin => {
                    Arc::new(RoundRobin::new(store.clone()).with_overcommit(config.overcommit))
                }
                SchedulerKind::SingleHost => Arc::new(
                    SingleHost::only_online(store.clone()).with_overcommit(config.overcommit),
                ),
            },
        };
        let audit = match self.audit {
            Some(a) => a,
            None => store.clone() as Arc<dyn wrenn_core::audit::AuditSink>,
        };
        let mailer = match self.mailer {
            Some(m) => Some(m),
            None => match &config.smtp {
                Some(smtp) => Some(Arc::new(SmtpMailer::new(smtp)?) as Arc<dyn Mailer>),
                None => None,
            },
        };
        let lifecycle = Lifecycle::new(
            store.clone(),
            agents.clone(),
            events.clone(),
            scheduler.clone(),
        );
        lifecycle.set_team_max_capsules(config.team_max_capsules);
        let data_plane = data_plane.unwrap_or_else(|| Arc::new(GrpcDataPlane::new(hosts.clone())));
        // Templates' start commands run in new capsules through the data plane.
        lifecycle.set_data_plane(data_plane.clone());
        let ctx = ServerContext {
            auth: Arc::new(Authenticator::new(jwt, store.clone())),
            store,
            lifecycle,
            scheduler,
            agents,
            data_plane,
            hosts,
            audit,
            events,
            config,
            mailer,
            shutdown: CancellationToken::new(),
            replica_id,
            metrics: registry,
        };
        let router = router::build(
            &ctx,
            secrets.ca.clone(),
            &self.extensions,
            &self.version,
            self.dashboard.into_router(),
            &metrics,
        )?;
        Ok(Server {
            ctx,
            router,
            extensions: self.extensions,
            secrets,
            grace: self.shutdown_grace,
            metrics,
        })
    }
}

impl Server {
    /// The shared context (for tests and embedders).
    pub fn context(&self) -> &ServerContext {
        &self.ctx
    }

    /// The loaded secrets.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The HTTP router (for in-process requests without a listener).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The control plane's own metric collectors (registered in
    /// [`ServerContext::metrics`]).
    pub fn metrics(&self) -> &ControlPlaneMetrics {
        &self.metrics
    }

    /// The router of the metrics listener: `GET /metrics` only, behind the metrics
    /// token when one is configured. [`Server::serve`] serves it on
    /// `WRENN_METRICS_ADDR` when that is set; an embedder may serve it anywhere.
    pub fn metrics_router(&self) -> Router {
        crate::metrics::listener_router(self.ctx.clone(), self.metrics.lifecycle.clone())
    }

    /// Starts the workers and serves on `listener` until `shutdown` resolves or the
    /// context's token is cancelled; then stops accepting, lets in-flight requests
    /// finish, stops workers and lifecycle tasks, each bounded by the grace period.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let ctx = self.ctx.clone();
        let token = ctx.shutdown.clone();
        let metrics_listener = match ctx.config.metrics.listen_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(ServerError::Serve)?),
            None => None,
        };
        let mut all_workers =
            workers::core_workers_metered(&ctx, &self.extensions, self.metrics.events.clone());
        for ext in &self.extensions {
            all_workers.extend(ext.workers(&ctx));
        }
        let supervisor = Supervisor::start(&ctx, all_workers, token.child_token());
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        info!(%addr, "control plane listening");

        if let Some(listener) = metrics_listener {
            let addr = listener.local_addr().map_err(ServerError::Serve)?;
            info!(%addr, "metrics listening");
            let stop = token.clone();
            let metrics = axum::serve(listener, self.metrics_router())
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .into_future();
            tokio::spawn(async move {
                if let Err(error) = metrics.await {
                    warn!(%error, "metrics listener failed");
                }
            });
        }

        let stop = token.clone();
        // No Nagle delay: streamed responses (SSE, WebSocket frames, file chunks)
        // go out as they are written.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        });
        let http = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .into_future();
        let mut http = tokio::spawn(http);
        {
            let token = token.clone();
            tokio::spawn(async move {
                shutdown.await;
                token.cancel();
            });
        }
        let early = tokio::select! {
            r = &mut http => Some(r),
            _ = token.cancelled() => None,
        };
        let served = match early {
            Some(r) => r,
            None => {
                info!("shutting down");
                match tokio::time::timeout(self.grace, &mut http).await {
                    Ok(r) => r,
                    Err(_) => {
                        warn!("in-flight requests did not finish in time; closing them");
                        http.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        token.cancel();
        supervisor.shutdown(self.grace).await;
        if !ctx.lifecycle.shutdown(self.grace).await {
            warn!(
                "lifecycle tasks still running at shutdown; the host monitor will resolve their sandboxes"
            );
        }
        if let Err(e) = ctx.auth.flush_usage().await {
            warn!(error = %e, "could not record API-key usage at shutdown");
        }
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Serve(e)),
            Err(join) => Err(ServerError::Other(format!(
                "http server task failed: {join}"
            ))),
        }
    }
}

/// A fresh replica id: the host's name, the process id and a random part (one
/// process may run several servers, as tests do).
fn new_replica_id() -> Arc<str> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    Arc::from(format!("{host}/{}/{}", std::process::id(), &random[..12]))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Builds the server, binds `WRENN_CP_LISTEN_ADDR` and serves until SIGTERM/SIGINT.
pub async fn run(builder: Builder) -> Result<(), ServerError> {
    let addr = builder.config.listen_addr;
    let server = builder.build().await?;
    let listener = TcpListener::bind(addr).await.map_err(ServerError::Serve)?;
    server.serve(listener, shutdown_signal()).await
}

/// Builds the server and serves on an already-bound listener until `shutdown`
/// resolves (for tests and embedders running the control plane in-process).
pub async fn serve(
    builder: Builder,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    builder.build().await?.serve(listener, shutdown).await
}
