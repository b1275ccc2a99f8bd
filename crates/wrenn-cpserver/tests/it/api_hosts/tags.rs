//! Host tags: added, listed and removed under the host access rules.

use crate::common;

use super::{admin, audit, create_host, create_regular, enable_byoc};
use common::{TestServer, assert_error, member_of, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::auth::Role;
use wrenn_core::id::PLATFORM_TEAM_ID;

#[tokio::test]
async fn tags_are_added_listed_and_removed() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, _) = create_regular(&s, &root).await;
    let path = format!("/v1/hosts/{id}/tags");
    for tag in ["gpu", "zone:eu-1.a_b", "gpu"] {
        let got = send(
            s.as_user(&root, Method::POST, &path)
                .json(&json!({ "tag": tag })),
        )
        .await;
        assert_eq!(got.0, 204, "body: {}", got.1);
    }
    let got = send(s.as_user(&root, Method::GET, &path)).await;
    assert_eq!(got, (200, json!(["gpu", "zone:eu-1.a_b"])));
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}/gpu"))).await;
    assert_eq!(got.0, 204);
    // Removing an absent tag is also 204.
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}/gpu"))).await;
    assert_eq!(got.0, 204);
    let got = send(s.as_user(&root, Method::GET, &path)).await;
    assert_eq!(got, (200, json!(["zone:eu-1.a_b"])));
    assert_eq!(audit(&s, PLATFORM_TEAM_ID, "tag_add").await.len(), 3);
    assert_eq!(audit(&s, PLATFORM_TEAM_ID, "tag_remove").await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn bad_tags_are_400_and_change_nothing() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, _) = create_regular(&s, &root).await;
    let path = format!("/v1/hosts/{id}/tags");
    for bad in [
        json!({ "tag": "" }),
        json!({ "tag": "a b" }),
        json!({ "tag": "a/b" }),
        json!({ "tag": "x".repeat(65) }),
        json!({ "tag": 3 }),
        json!({}),
    ] {
        let got = send(s.as_user(&root, Method::POST, &path).json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}/a%20b"))).await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(&root, Method::GET, "/v1/hosts/nope/tags")).await;
    assert_error(&got, 400, "invalid_request");
    assert!(s.store().list_host_tags(id).await.unwrap().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn tags_follow_the_host_access_rules() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    enable_byoc(&s, owner.team).await;
    let mem = member_of(&s, owner.team, "mem@x.io", Role::Member).await;
    let eve = s.user("eve@x.io").await;
    let (id, _) = create_host(
        &s,
        &owner,
        json!({ "type": "byoc", "team_id": owner.team.to_string() }),
    )
    .await;
    let path = format!("/v1/hosts/{id}/tags");
    let got = send(
        s.as_user(&owner, Method::POST, &path)
            .json(&json!({ "tag": "mine" })),
    )
    .await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    // No credentials.
    assert_error(&send(s.req(Method::GET, &path)).await, 401, "unauthorized");
    assert_error(
        &send(s.req(Method::POST, &path).json(&json!({ "tag": "x" }))).await,
        401,
        "unauthorized",
    );
    assert_error(
        &send(s.req(Method::DELETE, &format!("{path}/mine"))).await,
        401,
        "unauthorized",
    );
    // A member reads but does not change.
    let got = send(s.as_user(&mem, Method::GET, &path)).await;
    assert_eq!(got, (200, json!(["mine"])));
    let got = send(
        s.as_user(&mem, Method::POST, &path)
            .json(&json!({ "tag": "x" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    let got = send(s.as_user(&mem, Method::DELETE, &format!("{path}/mine"))).await;
    assert_error(&got, 403, "forbidden");
    // An outsider sees nothing.
    for req in [
        s.as_user(&eve, Method::GET, &path),
        s.as_user(&eve, Method::POST, &path)
            .json(&json!({ "tag": "x" })),
        s.as_user(&eve, Method::DELETE, &format!("{path}/mine")),
    ] {
        assert_error(&send(req).await, 404, "not_found");
    }
    assert_eq!(s.store().list_host_tags(id).await.unwrap(), ["mine"]);
    s.stop().await;
}
