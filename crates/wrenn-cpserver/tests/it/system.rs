//! Health, OpenAPI, docs, unknown routes, body limits, graceful shutdown.

use crate::common;

use common::{TestServer, json};
use reqwest::Method;

#[tokio::test]
async fn health_reports_ok_and_the_backend() {
    let s = TestServer::start().await;
    let (status, body) = json(s.req(Method::GET, "/health").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "sqlite");
    s.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_generated_and_served_offline() {
    let s = TestServer::start().await;
    let (status, doc) = json(s.req(Method::GET, "/openapi.json").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(doc["paths"]["/health"]["get"].is_object());
    let yaml = s.req(Method::GET, "/openapi.yaml").send().await.unwrap();
    assert_eq!(yaml.status(), 200);
    assert!(yaml.text().await.unwrap().contains("openapi: 3.1"));
    let docs = s.req(Method::GET, "/docs/").send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "Swagger UI page"
    );
    s.stop().await;
}

#[tokio::test]
async fn unknown_routes_get_the_error_envelope() {
    let s = TestServer::start().await;
    let got = json(s.req(Method::GET, "/v1/nope").send().await.unwrap()).await;
    common::assert_error(&got, 404, "not_found");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_is_graceful_and_prompt() {
    let s = TestServer::start().await;
    let started = std::time::Instant::now();
    s.stop().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
