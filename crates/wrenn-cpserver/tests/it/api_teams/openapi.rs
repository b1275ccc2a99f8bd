//! The tenancy routes in the OpenAPI document.

use crate::common;

use common::{TestServer, send};
use reqwest::Method;

#[tokio::test]
async fn the_tenancy_routes_are_documented() {
    let s = TestServer::start().await;
    let (status, doc) = send(s.req(Method::GET, "/openapi.json")).await;
    assert_eq!(status, 200);
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/v1/teams", &["get", "post"][..]),
        ("/v1/teams/{id}", &["get", "patch", "delete"]),
        ("/v1/teams/{id}/members", &["get", "post"]),
        ("/v1/teams/{id}/members/{uid}", &["patch", "delete"]),
        ("/v1/teams/{id}/leave", &["post"]),
        ("/v1/api-keys", &["get", "post"]),
        ("/v1/api-keys/{id}", &["delete"]),
        ("/v1/audit-logs", &["get"]),
        ("/v1/me", &["delete"]),
        ("/v1/admin/users", &["get"]),
        ("/v1/admin/users/{id}/active", &["put"]),
        ("/v1/admin/teams", &["get"]),
        ("/v1/admin/teams/{id}", &["delete"]),
        ("/v1/admin/teams/{id}/byoc", &["put"]),
        ("/v1/admin/templates", &["get"]),
        ("/v1/admin/audit-logs", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} is documented");
        }
    }
    let team_name = &doc["components"]["schemas"]["TeamName"];
    assert!(team_name["properties"]["name"].is_object(), "{team_name}");
    assert!(
        team_name["properties"].get("slug").is_none(),
        "the slug is not an input: {team_name}"
    );
    let params = doc["paths"]["/v1/audit-logs"]["get"]["parameters"].to_string();
    assert!(
        params.contains("before_id") && params.contains("resource_type"),
        "{params}"
    );
    s.stop().await;
}
