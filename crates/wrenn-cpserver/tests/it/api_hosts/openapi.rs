//! The host routes in the OpenAPI document.

use crate::common;

use common::{TestServer, send};
use reqwest::Method;

#[tokio::test]
async fn the_openapi_document_lists_the_host_routes() {
    let s = TestServer::start().await;
    let got = send(s.req(Method::GET, "/openapi.json")).await;
    assert_eq!(got.0, 200);
    let paths = &got.1["paths"];
    for p in [
        "/v1/hosts",
        "/v1/hosts/{id}",
        "/v1/hosts/{id}/delete-preview",
        "/v1/hosts/{id}/token",
        "/v1/hosts/{id}/tags",
        "/v1/hosts/{id}/tags/{tag}",
        "/v1/hosts/register",
        "/v1/hosts/auth/refresh",
        "/v1/hosts/{id}/heartbeat",
    ] {
        assert!(paths.get(p).is_some(), "{p} missing");
    }
    s.stop().await;
}
