//! Sandbox and host metrics from the agent.

use crate::common;

use common::{TestAgent, eventually};
use tonic::Code;
use wrenn_proto::hostagent::v1 as pb;

#[tokio::test]
async fn metrics_sandbox_and_host() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();
    eventually("samples", || {
        let mut c = c.clone();
        async move {
            !c.get_sandbox_metrics(pb::GetSandboxMetricsRequest {
                sandbox_id: id.to_string(),
                range: "5m".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .points
            .is_empty()
        }
    })
    .await;
    let points = c
        .get_sandbox_metrics(pb::GetSandboxMetricsRequest {
            sandbox_id: id.to_string(),
            range: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .points;
    let p = points.last().unwrap();
    assert!(p.mem_bytes > 0 && (0.0..=100.0).contains(&p.cpu_pct) && p.timestamp_unix > 0);
    let err = c
        .get_sandbox_metrics(pb::GetSandboxMetricsRequest {
            sandbox_id: id.to_string(),
            range: "3d".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let flushed = c
        .flush_sandbox_metrics(pb::FlushSandboxMetricsRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!flushed.points_10m.is_empty());
    let host = c
        .get_host_metrics(pb::GetHostMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(host.cpu_count >= 1 && host.memory_total_bytes > 0 && host.disk_total_bytes > 0);
    assert_eq!(
        (
            host.sandbox_count,
            host.running_sandbox_count,
            host.vcpus_allocated
        ),
        (1, 1, 1)
    );
    assert_eq!(host.memory_allocated_mb, 512);
}
