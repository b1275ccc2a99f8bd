//! The `envd.v1.System` service: health, configuration (Init), snapshot preparation,
//! metrics and the default environment.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};
use wrenn_proto::envd::v1::{
    GetEnvsRequest, GetEnvsResponse, HealthRequest, HealthResponse, InitRequest, InitResponse,
    MetricsRequest, MetricsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    system_server,
};

use crate::error::EnvdError;
use crate::metrics::{self, CpuSampler};
use crate::state::{InitChange, Shared};

/// envd's version, reported by Health.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `System` service.
#[derive(Debug, Clone)]
pub(crate) struct SystemService {
    shared: Arc<Shared>,
    cpu: Arc<CpuSampler>,
}

impl SystemService {
    pub(crate) fn new(shared: Arc<Shared>, cpu: Arc<CpuSampler>) -> Self {
        Self { shared, cpu }
    }
}

#[tonic::async_trait]
impl system_server::System for SystemService {
    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        if self.shared.recover_after_restore() {
            tracing::info!("first health check after a snapshot: recovered");
        }
        let uptime_sec = SystemTime::now()
            .duration_since(self.shared.started_at)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Response::new(HealthResponse {
            version: VERSION.to_owned(),
            uptime_sec,
        }))
    }

    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        self.shared.authorize(request.metadata())?;
        let request = request.into_inner();
        let timestamp = request
            .timestamp
            .map(SystemTime::try_from)
            .transpose()
            .map_err(|err| EnvdError::invalid(format!("invalid timestamp: {err}")))?;
        let applied = self.shared.apply_init(InitChange {
            default_user: request.default_user,
            default_workdir: request.default_workdir,
            env_vars: request.env_vars,
            access_token: request.access_token,
            hostname: request.hostname,
            timestamp,
        })?;
        if !applied {
            tracing::info!("ignored an Init older than the last applied one");
        }
        self.shared.recover_after_restore();
        Ok(Response::new(InitResponse {}))
    }

    async fn prepare_snapshot(
        &self,
        request: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        self.shared.authorize(request.metadata())?;
        // Flush this sandbox's root filesystem only (`syncfs`), never the whole host
        // (`sync(2)` would wait for every other sandbox's and the host's dirty pages).
        tokio::task::spawn_blocking(sync_root_filesystem)
            .await
            .map_err(EnvdError::from)?;
        self.shared.prepare_snapshot();
        Ok(Response::new(PrepareSnapshotResponse {}))
    }

    async fn metrics(
        &self,
        request: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        self.shared.authorize(request.metadata())?;
        Ok(Response::new(metrics::collect(&self.cpu).await))
    }

    async fn get_envs(
        &self,
        request: Request<GetEnvsRequest>,
    ) -> Result<Response<GetEnvsResponse>, Status> {
        self.shared.authorize(request.metadata())?;
        let envs = self.shared.defaults().envs.into_iter().collect();
        Ok(Response::new(GetEnvsResponse { envs }))
    }
}

/// `syncfs(2)` on the filesystem holding `/` (the sandbox's root). Best effort: a
/// failure to open `/` is logged, not reported, as `sync(2)` would not report either.
fn sync_root_filesystem() {
    match std::fs::File::open("/") {
        Ok(root) => {
            if let Err(err) = rustix::fs::syncfs(&root) {
                tracing::warn!("syncfs(/): {err}");
            }
        }
        Err(err) => tracing::warn!("open / for syncfs: {err}"),
    }
}
