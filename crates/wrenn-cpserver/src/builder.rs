//! [`Builder`]: what the server is made of. Every part has a default built from
//! the configuration, and every part can be replaced — that is how a custom
//! platform embeds the control plane.

use std::sync::Arc;
use std::time::Duration;

use wrenn_core::agents::HostAgents;
use wrenn_core::audit::AuditSink;
use wrenn_core::config::Config;
use wrenn_core::data_plane::DataPlane;
use wrenn_core::events::EventBus;
use wrenn_core::repo::Store;
use wrenn_core::scheduler::Scheduler;
use wrenn_extension::{Extension, Mailer};

use crate::dashboard::DashboardChoice;
use crate::error::ServerError;

/// Configures a control-plane server. Finish with [`crate::run`], [`crate::serve`]
/// or [`Builder::build`].
#[must_use]
pub struct Builder {
    pub(crate) config: Config,
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) events: Option<Arc<dyn EventBus>>,
    pub(crate) scheduler: Option<Arc<dyn Scheduler>>,
    pub(crate) agents: Option<Arc<dyn HostAgents>>,
    pub(crate) data_plane: Option<Arc<dyn DataPlane>>,
    pub(crate) audit: Option<Arc<dyn AuditSink>>,
    pub(crate) mailer: Option<Arc<dyn Mailer>>,
    pub(crate) extensions: Vec<Arc<dyn Extension>>,
    pub(crate) version: String,
    pub(crate) commit: String,
    pub(crate) shutdown_grace: Duration,
    pub(crate) dashboard: DashboardChoice,
    pub(crate) metrics: Option<prometheus::Registry>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("listen_addr", &self.config.listen_addr)
            .field(
                "extensions",
                &self
                    .extensions
                    .iter()
                    .map(|e| e.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// From environment variables (and `.env`); see [`Config`].
    pub fn from_env() -> Result<Self, ServerError> {
        Ok(Self::new(Config::from_env()?))
    }

    /// From an explicit configuration.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            store: None,
            events: None,
            scheduler: None,
            agents: None,
            data_plane: None,
            audit: None,
            mailer: None,
            extensions: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: "unknown".to_owned(),
            shutdown_grace: Duration::from_secs(30),
            dashboard: DashboardChoice::Default,
            metrics: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Mutable access to the configuration.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Adds an extension.
    pub fn with_extension(mut self, ext: Arc<dyn Extension>) -> Self {
        self.extensions.push(ext);
        self
    }

    /// Adds extensions, in order.
    pub fn with_extensions(mut self, exts: impl IntoIterator<Item = Arc<dyn Extension>>) -> Self {
        self.extensions.extend(exts);
        self
    }

    /// Uses this store instead of connecting to `DATABASE_URL`.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this event bus instead of Redis (`REDIS_URL`) or the in-process bus.
    pub fn with_event_bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.events = Some(bus);
        self
    }

    /// Uses this scheduler instead of the configured strategy.
    pub fn with_scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// Uses these host agents instead of the gRPC host pool.
    pub fn with_host_agents(mut self, agents: Arc<dyn HostAgents>) -> Self {
        self.agents = Some(agents);
        self
    }

    /// Serves exec, processes, files, terminals and capsule metrics with this data
    /// plane instead of the gRPC one over the host pool's channels.
    pub fn with_data_plane(mut self, data_plane: Arc<dyn DataPlane>) -> Self {
        self.data_plane = Some(data_plane);
        self
    }

    /// Sends audit entries here instead of the store.
    pub fn with_audit_sink(mut self, audit: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Sends email through this mailer instead of SMTP (`SMTP_HOST`).
    pub fn with_mailer(mut self, mailer: Arc<dyn Mailer>) -> Self {
        self.mailer = Some(mailer);
        self
    }

    /// Version and commit reported by `/health` and the OpenAPI document.
    pub fn with_version(mut self, version: impl Into<String>, commit: impl Into<String>) -> Self {
        self.version = version.into();
        self.commit = commit.into();
        self
    }

    /// How long shutdown waits for in-flight requests, workers and lifecycle tasks.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Registers the server's metrics in `registry` (and serves it at `/metrics`)
    /// instead of a new registry of its own — for an embedder that exposes one
    /// registry for several components (`wrenn dev` adds the in-process agent's).
    /// Never pass the process-wide default registry to two servers: their series
    /// would clash and the second build fail.
    pub fn with_metrics_registry(mut self, registry: prometheus::Registry) -> Self {
        self.metrics = Some(registry);
        self
    }

    /// Serves nothing outside the API: `/` and every other non-API path answer the
    /// JSON 404, as without the `dashboard` feature.
    pub fn without_dashboard(mut self) -> Self {
        self.dashboard = DashboardChoice::Disabled;
        self
    }

    /// Serves `dashboard` instead of the embedded web dashboard, for every request
    /// outside the API (`/v1/…`, `/docs/…`, `/openapi.json`) that no route took.
    pub fn with_dashboard(mut self, dashboard: axum::Router) -> Self {
        self.dashboard = DashboardChoice::Custom(dashboard);
        self
    }
}
