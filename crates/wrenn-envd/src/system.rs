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
        tokio::task::spawn_blocking(rustix::fs::sync)
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
