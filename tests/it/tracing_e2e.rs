//! Trace context across processes: `wrenn dev` exporting its spans over OTLP to a
//! collector run by this test. A request that carries a `traceparent` continues that
//! trace in the control plane, and the host agent's span for the gRPC call the request
//! caused (reached over loopback gRPC, a separate server) is a child in the same trace:
//! its parent came over the wire. Every response names its request id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use reqwest::Method;
use serde_json::json;

use crate::dev::start_dev_with;

/// One received span: (trace id, span id, parent span id, name), ids in hex.
type Received = (String, String, String, String);

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((
                        hex::encode(&s.trace_id),
                        hex::encode(&s.span_id),
                        hex::encode(&s.parent_span_id),
                        s.name,
                    ));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_trace_continues_into_the_host_agent() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    {
        let collector = collector.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
    let dev = start_dev_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("RUST_LOG", "info"),
    ]);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = dev
        .req(Method::POST, "/v1/capsules")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-from-the-client")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-request-id"],
        "req-from-the-client",
        "a caller's request id is kept and sent back"
    );
    assert!(resp.status().is_success(), "{}", resp.status());
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = dev.req(Method::GET, "/v1/capsules").send().await.unwrap();
    let generated = other.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(
        generated.len(),
        36,
        "a new request id is a UUID: {generated}"
    );

    // The control plane's request span and the agent's CreateSandbox span, in one trace.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut http, mut agent) = (None, None);
    while Instant::now() < deadline && (http.is_none() || agent.is_none()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let spans = collector.spans.lock().unwrap().clone();
        let in_trace: Vec<&Received> = spans.iter().filter(|s| s.0 == trace).collect();
        http = in_trace
            .iter()
            .find(|s| s.3 == "http.request")
            .cloned()
            .cloned();
        agent = in_trace
            .iter()
            .find(|s| s.3 == "agent.request")
            .cloned()
            .cloned();
    }
    let http = http.expect("the control plane exported its request span in the caller's trace");
    assert_eq!(
        http.2, "00f067aa0ba902b7",
        "its parent is the caller's span"
    );
    let agent = agent.expect("the host agent exported its span in the same trace");
    let spans = collector.spans.lock().unwrap().clone();
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.1.as_str(), s)).collect();
    // Walk up from the agent's span: it reaches the control plane's request span.
    let mut at = agent.2.as_str();
    let mut reached = false;
    for _ in 0..16 {
        if at == http.1 {
            reached = true;
            break;
        }
        match by_id.get(at) {
            Some(parent) => at = parent.2.as_str(),
            None => break,
        }
    }
    assert!(
        reached,
        "the agent's span descends from the request span: {agent:?} in {spans:?}"
    );
    dev.call(Method::DELETE, &format!("/v1/capsules/{id}"), None)
        .await;
}
