//! Listing and creating teams, and who may call the team routes.

use crate::common;

use super::{has_entry, team_name};
use chrono::Utc;
use common::{TestServer, assert_error, member_of, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::auth::{ApiKey, Role};
use wrenn_core::id::{ApiKeyId, TeamId};
use wrenn_core::model::{self};

#[tokio::test]
async fn listing_teams_shows_each_team_with_the_callers_role() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let bob = member_of(&s, owner.team, "bob@x.io", Role::Admin).await;

    let (status, body) = send(s.as_user(&bob, Method::GET, "/v1/teams")).await;
    assert_eq!(status, 200, "{body}");
    let teams = body.as_array().unwrap();
    assert_eq!(teams.len(), 2, "bob's own team and owner's team: {body}");
    let shared = teams
        .iter()
        .find(|t| t["id"] == owner.team.to_string())
        .unwrap();
    assert_eq!(shared["role"], "admin");
    assert_eq!(shared["name"], "owner@x.io's Team");
    assert_eq!(shared["is_byoc"], false);
    assert!(shared["slug"].as_str().unwrap().len() == 13, "{shared}");
    assert!(
        shared["created_at"].as_str().unwrap().ends_with('Z'),
        "{shared}"
    );
    let own = teams
        .iter()
        .find(|t| t["id"] != owner.team.to_string())
        .unwrap();
    assert_eq!(own["role"], "owner");
    s.stop().await;
}

#[tokio::test]
async fn creating_a_team_makes_the_caller_its_owner_but_not_their_default() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let (status, body) = send(
        s.as_user(&ada, Method::POST, "/v1/teams")
            .json(&json!({ "name": "Research Lab" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "Research Lab");
    assert_eq!(body["role"], "owner");
    let id: TeamId = body["id"].as_str().unwrap().parse().unwrap();
    let slug = body["slug"].as_str().unwrap();
    assert!(slug.len() == 13 && slug.as_bytes()[6] == b'-', "{slug}");

    let store = s.store();
    assert_eq!(
        store
            .get_membership(id, ada.id)
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Owner
    );
    let default = store.default_team_for_user(ada.id).await.unwrap().unwrap();
    assert_eq!(default.team.id, ada.team, "the new team is not the default");
    let entry = has_entry(&store, id, "team", "create")
        .await
        .expect("audit entry");
    assert_eq!(entry.entry.metadata["name"], "Research Lab");
    s.stop().await;
}

#[tokio::test]
async fn a_team_with_a_bad_name_is_not_created() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let long = "x".repeat(129);
    for body in [
        json!({ "name": "" }),
        json!({ "name": "   " }),
        json!({ "name": "semi;colon" }),
        json!({ "name": long }),
        json!({ "name": 7 }),
        json!({}),
        json!({ "name": "Fine", "slug": "chosen-slug" }),
    ] {
        let got = send(s.as_user(&ada, Method::POST, "/v1/teams").json(&body)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(
        s.as_user(&ada, Method::POST, "/v1/teams")
            .body("{not json")
            .header("content-type", "application/json"),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(&ada, Method::POST, "/v1/teams")).await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        s.store().list_teams_for_user(ada.id).await.unwrap().len(),
        1,
        "nothing was created"
    );
    s.stop().await;
}

#[tokio::test]
async fn team_routes_need_a_user_token() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let t = ada.team;
    let routes = [
        (Method::GET, "/v1/teams".to_string()),
        (Method::POST, "/v1/teams".to_string()),
        (Method::GET, format!("/v1/teams/{t}")),
        (Method::PATCH, format!("/v1/teams/{t}")),
        (Method::DELETE, format!("/v1/teams/{t}")),
        (Method::GET, format!("/v1/teams/{t}/members")),
        (Method::POST, format!("/v1/teams/{t}/members")),
        (Method::PATCH, format!("/v1/teams/{t}/members/{}", ada.id)),
        (Method::DELETE, format!("/v1/teams/{t}/members/{}", ada.id)),
        (Method::POST, format!("/v1/teams/{t}/leave")),
    ];
    // A team API key is not a user: it cannot manage teams.
    let key = ApiKey::generate();
    s.store()
        .create_api_key(model::ApiKey {
            id: ApiKeyId::new(),
            team_id: t,
            name: "k".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().into(),
            created_by: Some(ada.id),
            created_at: Utc::now(),
            last_used: None,
        })
        .await
        .unwrap();
    for (method, path) in routes {
        let got = send(s.req(method.clone(), &path).json(&json!({ "name": "X" }))).await;
        assert_error(&got, 401, "unauthorized");
        let got = send(
            s.req(method.clone(), &path)
                .bearer_auth("not-a-jwt")
                .json(&json!({ "name": "X" })),
        )
        .await;
        assert_error(&got, 401, "unauthorized");
        let got = send(
            s.req(method, &path)
                .header("x-api-key", key.expose_secret())
                .json(&json!({ "name": "X" })),
        )
        .await;
        assert_error(&got, 401, "unauthorized");
    }
    assert_eq!(team_name(&s, t).await, "ada@x.io's Team");
    assert!(s.store().get_team(t).await.unwrap().deleted_at.is_none());
    s.stop().await;
}
