//! The team audit log: `GET /v1/audit-logs` (scopes, keyset pages, filters).

use crate::common;

use std::collections::HashSet;

use common::{Options, TestServer, TestUser, assert_error, member_of, send};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::audit::{Actor, AuditEntry, AuditScope, AuditStatus};
use wrenn_core::auth::Role;
use wrenn_core::id::TeamId;

/// Writes `n` team-scoped entries straight into the trail.
async fn plant(s: &TestServer, team: TeamId, n: usize, resource: &str, action: &str) {
    for i in 0..n {
        s.ctx
            .audit
            .record(
                AuditEntry::new(
                    team,
                    Actor::system(),
                    resource,
                    Some(format!("r{i}")),
                    action,
                )
                .metadata(json!({ "i": i })),
            )
            .await
            .expect("record");
    }
}

/// Every page of the caller's log, following the cursor.
async fn all_pages(s: &TestServer, u: &TestUser, query: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<(String, String)> = None;
    loop {
        let mut req = s.as_user(u, Method::GET, &format!("/v1/audit-logs?{query}"));
        if let Some((before, id)) = &cursor {
            req = req.query(&[("before", before), ("before_id", id)]);
        }
        let (status, body) = send(req).await;
        assert_eq!(status, 200, "{body}");
        pages.push(body["items"].as_array().unwrap().clone());
        match (body.get("next_before"), body.get("next_before_id")) {
            (Some(b), Some(id)) => {
                cursor = Some((b.as_str().unwrap().into(), id.as_str().unwrap().into()))
            }
            (None, None) => break,
            other => panic!("half a cursor: {other:?}"),
        }
        assert!(pages.len() < 100, "runaway pagination");
    }
    pages
}

#[tokio::test]
async fn entries_have_the_documented_shape() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let (status, _) = send(
        s.as_user(&owner, Method::POST, "/v1/api-keys")
            .json(&json!({ "name": "k" })),
    )
    .await;
    assert_eq!(status, 201);
    plant(&s, owner.team, 1, "sandbox", "pause").await;
    s.ctx
        .audit
        .record(
            AuditEntry::new(owner.team, Actor::system(), "host", None, "marked_down")
                .status(AuditStatus::Error),
        )
        .await
        .unwrap();

    let (status, body) = send(s.as_user(&owner, Method::GET, "/v1/audit-logs")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("next_before").is_none() && body.get("next_before_id").is_none(),
        "single page: {body}"
    );
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let bare = &items[0];
    assert_eq!(bare["resource_type"], "host");
    assert_eq!(bare["actor_type"], "system");
    assert_eq!(bare["status"], "error");
    for absent in ["actor_id", "actor_name", "resource_id", "metadata"] {
        assert!(
            bare.get(absent).is_none(),
            "{absent} omitted when empty: {bare}"
        );
    }
    let key = &items[2];
    assert!(key["id"].as_str().unwrap().starts_with("log-"));
    assert_eq!(key["actor_type"], "user");
    assert_eq!(key["actor_id"], owner.id.to_string());
    assert_eq!(key["actor_name"], "owner@x.io");
    assert_eq!(key["resource_type"], "api_key");
    assert!(key["resource_id"].as_str().unwrap().starts_with("key-"));
    assert_eq!(key["action"], "create");
    assert_eq!(key["scope"], "team");
    assert_eq!(key["status"], "success");
    assert_eq!(key["metadata"], json!({ "name": "k" }));
    chrono::DateTime::parse_from_rfc3339(key["created_at"].as_str().unwrap()).expect("RFC3339");
    s.stop().await;
}

#[tokio::test]
async fn members_see_team_entries_and_owners_and_admins_also_admin_entries() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let admin = member_of(&s, owner.team, "admin@x.io", Role::Admin).await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    s.user("carol@x.io").await;
    // One team-scoped entry (key creation) and one admin-scoped one (member added).
    let (status, _) = send(
        s.as_user(&member, Method::POST, "/v1/api-keys")
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = send(
        s.as_user(
            &owner,
            Method::POST,
            &format!("/v1/teams/{}/members", owner.team),
        )
        .json(&json!({ "email": "carol@x.io" })),
    )
    .await;
    assert_eq!(status, 201);

    let scopes = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["scope"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, body) = send(s.as_user(&member, Method::GET, "/v1/audit-logs")).await;
    assert_eq!(scopes(&body), ["team"]);
    for who in [&owner, &admin] {
        let (_, body) = send(s.as_user(who, Method::GET, "/v1/audit-logs")).await;
        assert_eq!(scopes(&body), ["admin", "team"], "{body}");
    }
    // A platform admin who is a plain member also sees admin entries.
    let platform_admin = member_of(&s, owner.team, "root@x.io", Role::Member).await;
    s.store()
        .set_user_admin(platform_admin.id, true)
        .await
        .unwrap();
    let (_, body) = send(s.as_user(&platform_admin, Method::GET, "/v1/audit-logs")).await;
    assert_eq!(scopes(&body).len(), 2, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn another_teams_entries_are_never_shown() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let eve = s.user("eve@x.io").await;
    plant(&s, ada.team, 3, "sandbox", "create").await;
    let (status, body) = send(s.as_user(&eve, Method::GET, "/v1/audit-logs")).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"], json!([]));
    // A token for ada's team is refused for eve.
    let forged = s.token_for(eve.id, ada.team, Role::Owner, "eve@x.io", false);
    let got = send(s.req(Method::GET, "/v1/audit-logs").bearer_auth(forged)).await;
    assert_error(&got, 403, "forbidden");
    s.stop().await;
}

#[tokio::test]
async fn the_log_needs_a_user_token() {
    let s = TestServer::start().await;
    let got = send(s.req(Method::GET, "/v1/audit-logs")).await;
    assert_error(&got, 401, "unauthorized");
    let got = send(s.req(Method::GET, "/v1/audit-logs").bearer_auth("x.y.z")).await;
    assert_error(&got, 401, "unauthorized");
    let got = send(
        s.req(Method::GET, "/v1/audit-logs")
            .header("x-api-key", "wrn_0123456789abcdef0123456789abcdef"),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    s.stop().await;
}

async fn keyset_pages_cover_everything_once(s: &TestServer) {
    let owner = s.user("owner@x.io").await;
    plant(s, owner.team, 23, "sandbox", "create").await;
    let pages = all_pages(s, &owner, "limit=5").await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [5, 5, 5, 5, 3]);
    let all: Vec<&Value> = pages.iter().flatten().collect();
    let ids: HashSet<&str> = all.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 23, "no entry repeated or skipped");
    // Newest first.
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = all
        .iter()
        .map(|i| chrono::DateTime::parse_from_rfc3339(i["created_at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert_eq!(all[0]["metadata"]["i"], 22);
    assert_eq!(all[22]["metadata"]["i"], 0);

    // An exactly full last page ends with an empty one.
    let pages = all_pages(s, &owner, "limit=23").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [23, 0]);
}

#[tokio::test]
async fn keyset_pages_cover_everything_once_on_sqlite() {
    let s = TestServer::start().await;
    keyset_pages_cover_everything_once(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keyset_pages_cover_everything_once_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    keyset_pages_cover_everything_once(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn the_page_size_defaults_to_50_and_is_clamped_to_200() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    plant(&s, owner.team, 205, "sandbox", "create").await;
    let (_, body) = send(s.as_user(&owner, Method::GET, "/v1/audit-logs")).await;
    assert_eq!(body["items"].as_array().unwrap().len(), 50);
    assert!(body["next_before"].is_string());
    let (status, body) = send(s.as_user(&owner, Method::GET, "/v1/audit-logs?limit=1000")).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 200);
    s.stop().await;
}

#[tokio::test]
async fn bad_query_parameters_are_refused() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    plant(&s, owner.team, 2, "sandbox", "create").await;
    let id = "log-0000000000000000000000001";
    for q in [
        "limit=0".to_string(),
        "limit=-3".into(),
        "limit=ten".into(),
        "limit=".into(),
        "limit=5&limit=6".into(),
        "before=2026-01-01T00:00:00Z".into(),
        format!("before_id={id}"),
        format!("before=yesterday&before_id={id}"),
        "before=2026-01-01T00:00:00Z&before_id=cl-0000000000000000000000001".into(),
        format!("resource_type={}", "x".repeat(65)),
    ] {
        let got = send(s.as_user(&owner, Method::GET, &format!("/v1/audit-logs?{q}"))).await;
        assert_error(&got, 400, "invalid_request");
    }
    s.stop().await;
}

#[tokio::test]
async fn filters_match_one_or_several_values() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    plant(&s, owner.team, 3, "sandbox", "create").await;
    plant(&s, owner.team, 2, "sandbox", "destroy").await;
    plant(&s, owner.team, 4, "api_key", "create").await;
    plant(&s, owner.team, 1, "channel", "delete").await;
    let count = |body: &Value| body["items"].as_array().unwrap().len();

    let (_, body) =
        send(s.as_user(&owner, Method::GET, "/v1/audit-logs?resource_type=sandbox")).await;
    assert_eq!(count(&body), 5);
    let (_, body) = send(s.as_user(
        &owner,
        Method::GET,
        "/v1/audit-logs?resource_type=sandbox&action=destroy",
    ))
    .await;
    assert_eq!(count(&body), 2);
    let (_, body) = send(s.as_user(&owner, Method::GET, "/v1/audit-logs?action=create")).await;
    assert_eq!(count(&body), 7);
    let (_, body) = send(s.as_user(
        &owner,
        Method::GET,
        "/v1/audit-logs?resource_type=api_key&resource_type=channel",
    ))
    .await;
    assert_eq!(count(&body), 5);
    let types: HashSet<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["resource_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, HashSet::from(["api_key", "channel"]));

    // Several values page like one: merged newest first, cursor and all.
    let pages = all_pages(
        &s,
        &owner,
        "resource_type=sandbox&resource_type=api_key&limit=4",
    )
    .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 1]);
    let ids: HashSet<&str> = pages
        .iter()
        .flatten()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 9);
    s.stop().await;
}

#[tokio::test]
async fn admin_scoped_entries_are_not_leaked_through_filters() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    s.ctx
        .audit
        .record(
            AuditEntry::new(owner.team, Actor::system(), "member", None, "add")
                .scope(AuditScope::Admin),
        )
        .await
        .unwrap();
    let (_, body) =
        send(s.as_user(&member, Method::GET, "/v1/audit-logs?resource_type=member")).await;
    assert_eq!(body["items"], json!([]));
    s.stop().await;
}
