//! [`ServerContext`]: everything a handler, worker or extension may use.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wrenn_core::agents::HostAgents;
use wrenn_core::audit::{AuditEntry, AuditSink};
use wrenn_core::config::Config;
use wrenn_core::events::EventBus;
use wrenn_core::lifecycle::Lifecycle;
use wrenn_core::repo::Store;
use wrenn_core::scheduler::Scheduler;

use crate::auth::Authenticate;
use crate::hosts::HostConnections;
use crate::mailer::Mailer;
use wrenn_core::data_plane::DataPlane;

/// The control plane's shared state. Cheap to clone (a bundle of `Arc`s); it is the
/// axum state of every route, core and extension alike.
#[derive(Clone)]
pub struct ServerContext {
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// The sandbox lifecycle service.
    pub lifecycle: Lifecycle,
    /// Host placement.
    pub scheduler: Arc<dyn Scheduler>,
    /// Lifecycle calls on host agents.
    pub agents: Arc<dyn HostAgents>,
    /// gRPC channels to host agents (the data plane's transport; host admin evicts
    /// channels of hosts it deletes or re-registers).
    pub hosts: Arc<dyn HostConnections>,
    /// Calls inside running capsules (exec, processes, files, PTY, metrics).
    pub data_plane: Arc<dyn DataPlane>,
    /// Credential checks (JWT keys, API-key cache).
    pub auth: Arc<dyn Authenticate>,
    /// Where audit entries go.
    pub audit: Arc<dyn AuditSink>,
    /// The event bus, for reading and consuming streams. Platform events are
    /// published through [`Lifecycle::events`](wrenn_core::lifecycle::Lifecycle::events),
    /// which keeps them through a bus outage.
    pub events: Arc<dyn EventBus>,
    /// Typed configuration.
    pub config: Arc<Config>,
    /// Outgoing email, when configured.
    pub mailer: Option<Arc<dyn Mailer>>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// This control plane's id, unique among the replicas sharing the database
    /// (made once per server: host name, process id and a random part). Singleton
    /// workers ([`Worker::singleton`](crate::Worker::singleton)) hold their leases
    /// under it.
    pub replica_id: Arc<str>,
    /// The server's Prometheus registry, served at `GET /metrics` (owned by this
    /// server, never the process-wide default registry). An extension registers its
    /// own collectors here once, typically in [`Extension::routes`](crate::Extension::routes)
    /// or when it is built, with names prefixed by its own (`billing_…`): registering
    /// a name twice is an error.
    pub metrics: prometheus::Registry,
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext")
            .field("store", &self.store.backend())
            .field("listen_addr", &self.config.listen_addr)
            .field("replica_id", &self.replica_id)
            .field("shutting_down", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl ServerContext {
    /// Writes an audit entry; a failure is logged, never returned (auditing must not
    /// turn a successful operation into an error).
    pub async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.audit.record(entry).await {
            tracing::warn!(error = %e, "could not write audit entry");
        }
    }
}
