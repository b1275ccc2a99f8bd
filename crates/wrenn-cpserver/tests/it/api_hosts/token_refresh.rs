//! `POST /v1/hosts/auth/refresh`: refresh token failures, and concurrent refreshes.

use crate::common;

use super::{admin, online_regular, refresh};
use chrono::Utc;
use common::{TestServer, assert_error, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::auth::OpaqueToken;
use wrenn_core::id::HostRefreshTokenId;
use wrenn_core::model::HostRefreshToken;

#[tokio::test]
async fn every_refresh_token_failure_is_401_and_a_missing_field_is_400() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let creds = online_regular(&s, &root, "10.0.0.1:50051").await;
    let now = Utc::now();
    // Expired.
    let expired = OpaqueToken::generate();
    s.store()
        .create_refresh_token(HostRefreshToken {
            id: HostRefreshTokenId::new(),
            host_id: creds.host,
            token_hash: expired.hash(),
            expires_at: now - chrono::Duration::seconds(1),
            created_at: now - chrono::Duration::days(61),
            revoked_at: None,
        })
        .await
        .unwrap();
    // Revoked.
    let revoked = OpaqueToken::generate();
    let rec = s
        .store()
        .create_refresh_token(HostRefreshToken {
            id: HostRefreshTokenId::new(),
            host_id: creds.host,
            token_hash: revoked.hash(),
            expires_at: now + chrono::Duration::days(1),
            created_at: now,
            revoked_at: None,
        })
        .await
        .unwrap();
    assert!(s.store().revoke_refresh_token(rec.id).await.unwrap());
    for bad in [
        OpaqueToken::generate().expose_secret().to_owned(),
        expired.expose_secret().to_owned(),
        revoked.expose_secret().to_owned(),
        "nope".to_owned(),
        String::new(),
        creds.jwt.clone(),
    ] {
        assert_error(&refresh(&s, &bad).await, 401, "unauthorized");
    }
    for bad in [
        json!({}),
        json!({ "refresh_token": 7 }),
        json!({ "token": creds.refresh }),
    ] {
        let got = send(s.req(Method::POST, "/v1/hosts/auth/refresh").json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    // None of that spent the real token.
    let got = refresh(&s, &creds.refresh).await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    s.stop().await;
}

#[tokio::test]
async fn of_concurrent_refreshes_with_one_token_exactly_one_wins() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let creds = online_regular(&s, &root, "10.0.0.1:50051").await;
    let results = futures::future::join_all((0..4).map(|_| refresh(&s, &creds.refresh))).await;
    let won: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    assert_eq!(won.len(), 1, "results: {results:?}");
    for r in results.iter().filter(|r| r.0 != 200) {
        assert_error(r, 401, "unauthorized");
    }
    assert_error(&refresh(&s, &creds.refresh).await, 401, "unauthorized");
    let got = refresh(&s, won[0].1["refresh_token"].as_str().unwrap()).await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    s.stop().await;
}
