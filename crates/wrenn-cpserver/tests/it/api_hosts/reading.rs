//! `GET /v1/hosts`, `GET /v1/hosts/{id}`: who sees which hosts.

use crate::common;

use super::{admin, create_host, create_regular, enable_byoc};
use common::{TestServer, assert_error, member_of, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::auth::Role;
use wrenn_core::id::HostId;

#[tokio::test]
async fn admins_see_every_host_and_members_see_their_teams_byoc_hosts() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let ada = s.user("ada@x.io").await;
    enable_byoc(&s, ada.team).await;
    let mem = member_of(&s, ada.team, "mem@x.io", Role::Member).await;
    let eve = s.user("eve@x.io").await;
    let (regular, _) = create_regular(&s, &root).await;
    let (byoc, _) = create_host(
        &s,
        &ada,
        json!({ "type": "byoc", "team_id": ada.team.to_string() }),
    )
    .await;

    let got = send(s.as_user(&root, Method::GET, "/v1/hosts")).await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    let all = got.1.as_array().unwrap();
    assert_eq!(all.len(), 2);
    let b = all.iter().find(|h| h["id"] == byoc.to_string()).unwrap();
    assert_eq!(b["team_name"], "ada@x.io's Team");
    let r = all.iter().find(|h| h["id"] == regular.to_string()).unwrap();
    assert!(r.get("team_name").is_none());

    for who in [&ada, &mem] {
        let got = send(s.as_user(who, Method::GET, "/v1/hosts")).await;
        assert_eq!(got.0, 200, "body: {}", got.1);
        let ids: Vec<&str> = got
            .1
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [byoc.to_string()]);
        let got = send(s.as_user(who, Method::GET, &format!("/v1/hosts/{byoc}"))).await;
        assert_eq!(got.0, 200, "body: {}", got.1);
        assert_eq!(got.1["status"], "pending");
        // The platform host is invisible to them.
        let got = send(s.as_user(who, Method::GET, &format!("/v1/hosts/{regular}"))).await;
        assert_error(&got, 404, "not_found");
    }
    let got = send(s.as_user(&eve, Method::GET, "/v1/hosts")).await;
    assert_eq!(got, (200, json!([])));
    let got = send(s.as_user(&eve, Method::GET, &format!("/v1/hosts/{byoc}"))).await;
    assert_error(&got, 404, "not_found");
    let got = send(s.as_user(&root, Method::GET, &format!("/v1/hosts/{byoc}"))).await;
    assert_eq!(got.1["team_name"], "ada@x.io's Team");
    s.stop().await;
}

#[tokio::test]
async fn reading_hosts_needs_credentials_and_well_formed_ids() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (id, _) = create_regular(&s, &root).await;
    for path in ["/v1/hosts".to_owned(), format!("/v1/hosts/{id}")] {
        assert_error(&send(s.req(Method::GET, &path)).await, 401, "unauthorized");
        assert_error(
            &send(s.req(Method::GET, &path).bearer_auth("x.y.z")).await,
            401,
            "unauthorized",
        );
    }
    for bad in ["/v1/hosts/nope", "/v1/hosts/cl-0000000000000000000000000"] {
        let got = send(s.as_user(&root, Method::GET, bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(s.as_user(&root, Method::GET, &format!("/v1/hosts/{}", HostId::new()))).await;
    assert_error(&got, 404, "not_found");
    s.stop().await;
}
