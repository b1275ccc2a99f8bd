//! Metrics RPCs: GetSandboxMetrics, FlushSandboxMetrics and GetHostMetrics.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response};
use wrenn_proto::hostagent::v1 as pb;

use super::convert::parse_sandbox_id;
use super::{AgentService, Rpc, status_of};
use crate::error::AgentError;

pub(super) async fn get_sandbox_metrics(
    svc: &AgentService,
    req: Request<pb::GetSandboxMetricsRequest>,
) -> Rpc<pb::GetSandboxMetricsResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    let points = svc.manager.metrics(id, &r.range).map_err(status_of)?;
    Ok(Response::new(pb::GetSandboxMetricsResponse { points }))
}

pub(super) async fn flush_sandbox_metrics(
    svc: &AgentService,
    req: Request<pb::FlushSandboxMetricsRequest>,
) -> Rpc<pb::FlushSandboxMetricsResponse> {
    let id = parse_sandbox_id(&req.into_inner().sandbox_id).map_err(status_of)?;
    let (points_10m, points_2h, points_24h) = svc.manager.flush_metrics(id).map_err(status_of)?;
    Ok(Response::new(pb::FlushSandboxMetricsResponse {
        points_10m,
        points_2h,
        points_24h,
    }))
}

pub(super) async fn get_host_metrics(
    svc: &AgentService,
    _req: Request<pb::GetHostMetricsRequest>,
) -> Rpc<pb::GetHostMetricsResponse> {
    let host = Arc::clone(&svc.host);
    let dir: PathBuf = svc.manager.layout().root().to_path_buf();
    let usage = tokio::task::spawn_blocking(move || host.usage(&dir))
        .await
        .map_err(|e| status_of(AgentError::internal(e)))?;
    let (count, running, vcpus, mem) = svc.manager.allocations();
    Ok(Response::new(pb::GetHostMetricsResponse {
        cpu_count: usage.cpu_count,
        cpu_used_pct: usage.cpu_used_pct,
        memory_total_bytes: usage.memory_total_bytes,
        memory_available_bytes: usage.memory_available_bytes,
        disk_total_bytes: usage.disk_total_bytes,
        disk_available_bytes: usage.disk_available_bytes,
        sandbox_count: count,
        running_sandbox_count: running,
        vcpus_allocated: vcpus,
        memory_allocated_mb: mem,
    }))
}
