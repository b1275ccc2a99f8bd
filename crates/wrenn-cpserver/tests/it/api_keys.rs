//! Team API keys: `POST/GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`, and the
//! key-authentication path (cache, batched `last_used`, instant revocation).

use crate::common;

use common::{Options, TestServer, TestUser, assert_error, member_of, send};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::audit::{AuditQuery, AuditRecord, AuditScope};
use wrenn_core::auth::{Role, hash_api_key};
use wrenn_core::id::{ApiKeyId, TeamId};
use wrenn_extension::Principal;

/// Creates a key through the API; returns the response body.
async fn create_key(s: &TestServer, u: &TestUser, name: Option<&str>) -> Value {
    let body = match name {
        Some(n) => json!({ "name": n }),
        None => json!({}),
    };
    let (status, body) = send(s.as_user(u, Method::POST, "/v1/api-keys").json(&body)).await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn audit_of(s: &TestServer, team: TeamId, action: &str) -> Vec<AuditRecord> {
    s.store()
        .list_audit_logs(&AuditQuery {
            team_id: team,
            scopes: vec![AuditScope::Team, AuditScope::Admin],
            resource_type: Some("api_key".into()),
            action: Some(action.into()),
            before: None,
            limit: 200,
        })
        .await
        .expect("audit")
}

#[tokio::test]
async fn a_new_key_is_shown_once_and_only_its_hash_is_stored() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let body = create_key(&s, &ada, Some("ci runner")).await;
    let key = body["key"].as_str().unwrap();
    assert!(key.starts_with("wrn_") && key.len() == 36, "{key}");
    assert!(
        key[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(body["key_prefix"], &key[..10]);
    assert!(body["id"].as_str().unwrap().starts_with("key-"));
    assert_eq!(body["team_id"], ada.team.to_string());
    assert_eq!(body["name"], "ci runner");
    assert_eq!(body["created_by"], ada.id.to_string());
    assert_eq!(body["creator_email"], "ada@x.io");
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(body.get("last_used").is_none(), "never used yet: {body}");

    // Stored by hash; the plaintext never comes back.
    let stored = s
        .store()
        .get_api_key_by_hash(&hash_api_key(key))
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.key.key_prefix, &key[..10]);
    assert_eq!(stored.key.key_hash, hash_api_key(key));
    let (status, list) = send(s.as_user(&ada, Method::GET, "/v1/api-keys")).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("key").is_none(), "{list}");
    assert!(!list.to_string().contains(key));
    assert_eq!(list[0]["creator_email"], "ada@x.io");

    let entries = audit_of(&s, ada.team, "create").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entry.metadata, json!({ "name": "ci runner" }));
    assert_eq!(entries[0].entry.status.as_str(), "success");
    assert_eq!(entries[0].entry.scope, AuditScope::Team);
    s.stop().await;
}

#[tokio::test]
async fn a_key_without_a_name_gets_the_default_name() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    assert_eq!(create_key(&s, &ada, None).await["name"], "Unnamed API Key");
    assert_eq!(
        create_key(&s, &ada, Some("   ")).await["name"],
        "Unnamed API Key"
    );
    s.stop().await;
}

#[tokio::test]
async fn creating_a_key_needs_a_valid_json_body() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let got = send(s.as_user(&ada, Method::POST, "/v1/api-keys")).await;
    assert_error(&got, 400, "invalid_request");
    let got = send(
        s.as_user(&ada, Method::POST, "/v1/api-keys")
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let long = "k".repeat(129);
    for bad in [
        json!({ "name": long }),
        json!({ "name": 5 }),
        json!({ "name": "tab\there" }),
        json!([]),
    ] {
        let got = send(s.as_user(&ada, Method::POST, "/v1/api-keys").json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    assert!(
        s.store().list_api_keys(ada.team).await.unwrap().is_empty(),
        "nothing was created"
    );
    s.stop().await;
}

#[tokio::test]
async fn only_a_user_token_mints_or_revokes_keys() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let body = create_key(&s, &ada, Some("k")).await;
    let key = body["key"].as_str().unwrap();
    let id = body["id"].as_str().unwrap();

    for (method, path) in [
        (Method::POST, "/v1/api-keys".to_string()),
        (Method::DELETE, format!("/v1/api-keys/{id}")),
    ] {
        let got = send(s.req(method.clone(), &path).json(&json!({}))).await;
        assert_error(&got, 401, "unauthorized");
        let got = send(
            s.req(method.clone(), &path)
                .bearer_auth("garbage")
                .json(&json!({})),
        )
        .await;
        assert_error(&got, 401, "unauthorized");
        // A key cannot mint (or revoke) keys.
        let got = send(
            s.req(method, &path)
                .header("x-api-key", key)
                .json(&json!({})),
        )
        .await;
        assert_error(&got, 401, "unauthorized");
    }
    let got = send(s.req(Method::GET, "/v1/api-keys")).await;
    assert_error(&got, 401, "unauthorized");
    let got = send(
        s.req(Method::GET, "/v1/api-keys")
            .header("x-api-key", "wrn_00000000000000000000000000000000"),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    assert_eq!(
        s.store().list_api_keys(ada.team).await.unwrap().len(),
        1,
        "nothing changed"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_fresh_key_authenticates_and_its_use_is_recorded() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let body = create_key(&s, &ada, Some("sdk")).await;
    let key = body["key"].as_str().unwrap();

    let auth = s
        .ctx
        .auth
        .api_key(key)
        .await
        .expect("the key authenticates");
    assert_eq!(auth.team_id, ada.team);
    assert!(matches!(auth.principal, Principal::ApiKey { ref name, .. } if name == "sdk"));
    // Listing accepts the team's key too (the benchmark route).
    let (status, list) = send(s.req(Method::GET, "/v1/api-keys").header("x-api-key", key)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["id"], body["id"]);

    assert!(s.ctx.auth.flush_usage().await.unwrap() >= 1);
    let (_, list) = send(s.as_user(&ada, Method::GET, "/v1/api-keys")).await;
    let last_used = list[0]["last_used"]
        .as_str()
        .expect("last_used written after the flush");
    let at = chrono::DateTime::parse_from_rfc3339(last_used).unwrap();
    assert!(
        (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
            .num_seconds()
            .abs()
            < 60
    );
    s.stop().await;
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let body = create_key(&s, &ada, Some("short-lived")).await;
    let key = body["key"].as_str().unwrap();
    let id = body["id"].as_str().unwrap();
    // Warm the cache: a stale cache entry must not outlive the revocation.
    s.ctx.auth.api_key(key).await.unwrap();
    let (status, _) = send(s.req(Method::GET, "/v1/api-keys").header("x-api-key", key)).await;
    assert_eq!(status, 200);

    let resp = s
        .as_user(&ada, Method::DELETE, &format!("/v1/api-keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    let err = s.ctx.auth.api_key(key).await.unwrap_err();
    assert_eq!(err.status.as_u16(), 401);
    let got = send(s.req(Method::GET, "/v1/api-keys").header("x-api-key", key)).await;
    assert_error(&got, 401, "unauthorized");
    assert!(s.store().list_api_keys(ada.team).await.unwrap().is_empty());

    let entries = audit_of(&s, ada.team, "revoke").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entry.status.as_str(), "warning");
    assert_eq!(entries[0].entry.resource_id.as_deref(), Some(id));

    // Revoking again changes nothing and is not an error (no 404, as in the contract).
    let resp = s
        .as_user(&ada, Method::DELETE, &format!("/v1/api-keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        audit_of(&s, ada.team, "revoke").await.len(),
        1,
        "nothing revoked, nothing recorded"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_malformed_key_id_is_a_bad_request() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    create_key(&s, &ada, None).await;
    for bad in ["nope", "usr-0000000000000000000000000", "key-!!"] {
        let got = send(s.as_user(&ada, Method::DELETE, &format!("/v1/api-keys/{bad}"))).await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(s.store().list_api_keys(ada.team).await.unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn keys_belong_to_one_team() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let eve = s.user("eve@x.io").await;
    let body = create_key(&s, &ada, Some("ada's")).await;
    let key = body["key"].as_str().unwrap();
    let id = body["id"].as_str().unwrap();

    let (status, list) = send(s.as_user(&eve, Method::GET, "/v1/api-keys")).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([]), "eve sees none of ada's keys");
    // Eve "revokes" ada's key: nothing happens.
    let resp = s
        .as_user(&eve, Method::DELETE, &format!("/v1/api-keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(s.store().list_api_keys(ada.team).await.unwrap().len(), 1);
    assert_eq!(
        s.ctx.auth.api_key(key).await.unwrap().team_id,
        ada.team,
        "still works"
    );
    assert!(audit_of(&s, eve.team, "revoke").await.is_empty());
    assert!(audit_of(&s, ada.team, "revoke").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn every_member_manages_the_teams_keys_and_sees_who_made_them() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let bob = member_of(&s, owner.team, "bob@x.io", Role::Member).await;
    let bobs = create_key(&s, &bob, Some("bob's")).await;
    create_key(&s, &owner, Some("owner's")).await;
    let (_, list) = send(s.as_user(&owner, Method::GET, "/v1/api-keys")).await;
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "owner's", "newest first");
    assert_eq!(list[1]["creator_email"], "bob@x.io");

    // The creator's account disappears for good: the key stays, its creator is null.
    s.store().hard_delete_user(bob.id).await.unwrap();
    let (_, list) = send(s.as_user(&owner, Method::GET, "/v1/api-keys")).await;
    let bobs_now = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == bobs["id"])
        .unwrap()
        .clone();
    assert_eq!(bobs_now["creator_email"], Value::Null);
    assert!(bobs_now.get("created_by").is_none(), "{bobs_now}");
    // A plain member may revoke a key someone else made.
    let carol = member_of(&s, owner.team, "carol@x.io", Role::Member).await;
    let resp = s
        .as_user(
            &carol,
            Method::DELETE,
            &format!("/v1/api-keys/{}", bobs["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(s.store().list_api_keys(owner.team).await.unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_lifecycle_works_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let ada = s.user("ada@x.io").await;
    let body = create_key(&s, &ada, Some("pg")).await;
    let key = body["key"].as_str().unwrap();
    let id: ApiKeyId = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.ctx.auth.api_key(key).await.unwrap().team_id, ada.team);
    s.ctx.auth.flush_usage().await.unwrap();
    let (_, list) = send(s.req(Method::GET, "/v1/api-keys").header("x-api-key", key)).await;
    assert!(list[0]["last_used"].is_string(), "{list}");
    assert_eq!(list[0]["creator_email"], "ada@x.io");
    let resp = s
        .as_user(&ada, Method::DELETE, &format!("/v1/api-keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(s.ctx.auth.api_key(key).await.is_err());
    assert_eq!(audit_of(&s, ada.team, "revoke").await.len(), 1);
    s.stop().await;
}
