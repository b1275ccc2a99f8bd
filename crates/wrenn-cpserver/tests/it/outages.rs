//! What clients are told while the database is away: errors to retry, never that
//! their capsule does not exist.

use reqwest::{Method, StatusCode};

use crate::common::{OwnDatabase, TestServer, make_key, online_host};

#[tokio::test]
async fn a_database_outage_is_a_server_error_not_a_missing_capsule() {
    let Some(db) = OwnDatabase::create("wrenn_outage").await else {
        return;
    };
    let store = wrenn_db::connect(&db.url()).await.expect("migrated store");
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_on(store, dir.path(), &[], None).await;
    online_host(&s.store()).await;
    let ada = s.user("ada@outage.io").await;
    let resp = s
        .as_user(&ada, Method::POST, "/v1/capsules")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // SDK users come with an API key, which the server knows without the database
    // once it has seen it.
    let key = make_key(&s.store(), ada.team, ada.id).await;
    let get = || {
        s.http
            .get(format!("{}/v1/capsules/{id}", s.base))
            .header("X-API-Key", key.expose_secret())
            .send()
    };
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);

    db.drop_now().await;
    let status = get().await.unwrap().status();
    assert!(
        status.is_server_error(),
        "a capsule whose database is gone answered {status}, not a server error"
    );
    s.stop().await;
}
