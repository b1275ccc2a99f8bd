//! `DELETE /v1/hosts/{id}`, `GET /v1/hosts/{id}/delete-preview`: capsules need force,
//! idle hosts go at once, under the host access rules.

use crate::common;

use super::{
    admin, audit, create_host, create_regular, enable_byoc, heartbeat, host_count, online_regular,
    refresh, start_capsule, wait_status,
};
use common::{Options, TestServer, assert_error, member_of, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::audit::{AuditScope, AuditStatus};
use wrenn_core::auth::Role;
use wrenn_core::id::PLATFORM_TEAM_ID;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::repo::RepoError;

async fn delete_with_capsules_flow(s: &TestServer) {
    let root = admin(s).await;
    let c = online_regular(s, &root, "10.0.0.1:50051").await;
    let a = start_capsule(s, &root).await;
    let b = start_capsule(s, &root).await;
    for sb in [a, b] {
        assert_eq!(s.store().get_sandbox(sb).await.unwrap().host_id, c.host);
    }
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();

    // The preview lists them.
    let got = send(s.as_user(
        &root,
        Method::GET,
        &format!("/v1/hosts/{}/delete-preview", c.host),
    ))
    .await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    assert_eq!(got.1["host"]["id"], c.host.to_string());
    let mut ids: Vec<String> = got.1["sandbox_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, want);

    // Without force: 409 with the ids, nothing changes.
    let path = format!("/v1/hosts/{}", c.host);
    let got = send(s.as_user(&root, Method::DELETE, &path)).await;
    assert_error(&got, 409, "host_has_sandboxes");
    let mut ids: Vec<String> = got.1["error"]["sandbox_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, want);
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}?force=false"))).await;
    assert_error(&got, 409, "host_has_sandboxes");
    assert!(s.store().get_host(c.host).await.is_ok());
    for sb in [a, b] {
        assert_eq!(
            s.store().get_sandbox(sb).await.unwrap().status,
            SandboxStatus::Running
        );
    }

    // With force: 204, the capsules end stopped, the host and its credentials are gone.
    let got = send(s.as_user(&root, Method::DELETE, &format!("{path}?force=true"))).await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    for sb in [a, b] {
        wait_status(s, sb, SandboxStatus::Stopped).await;
    }
    assert!(matches!(
        s.store().get_host(c.host).await,
        Err(RepoError::NotFound { .. })
    ));
    assert_error(&refresh(s, &c.refresh).await, 401, "unauthorized");
    assert_error(&send(heartbeat(s, c.host, &c.jwt)).await, 404, "not_found");
    assert_error(
        &send(s.as_user(&root, Method::GET, &path)).await,
        404,
        "not_found",
    );
    let deleted = audit(s, PLATFORM_TEAM_ID, "delete").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].entry.status, AuditStatus::Warning);
    assert_eq!(deleted[0].entry.scope, AuditScope::Admin);
}

#[tokio::test]
async fn deleting_a_host_with_capsules_needs_force() {
    let s = TestServer::start().await;
    delete_with_capsules_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn deleting_a_host_with_capsules_needs_force_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        eprintln!("skipped: WRENN_TEST_POSTGRES_URL not set");
        return;
    };
    delete_with_capsules_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn deleting_an_idle_host_is_204() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let (pending, _) = create_regular(&s, &root).await;
    let got = send(s.as_user(&root, Method::DELETE, &format!("/v1/hosts/{pending}"))).await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    assert_eq!(host_count(&s).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn deleting_hosts_follows_the_access_rules() {
    let s = TestServer::start().await;
    let root = admin(&s).await;
    let owner = s.user("owner@x.io").await;
    enable_byoc(&s, owner.team).await;
    let adm = member_of(&s, owner.team, "adm@x.io", Role::Admin).await;
    let mem = member_of(&s, owner.team, "mem@x.io", Role::Member).await;
    let eve = s.user("eve@x.io").await;
    let (regular, _) = create_regular(&s, &root).await;
    let (byoc, _) = create_host(
        &s,
        &owner,
        json!({ "type": "byoc", "team_id": owner.team.to_string() }),
    )
    .await;
    for path in [
        format!("/v1/hosts/{byoc}"),
        format!("/v1/hosts/{byoc}/delete-preview"),
    ] {
        let method = if path.ends_with("preview") {
            Method::GET
        } else {
            Method::DELETE
        };
        assert_error(
            &send(s.req(method.clone(), &path)).await,
            401,
            "unauthorized",
        );
        assert_error(
            &send(s.as_user(&mem, method.clone(), &path)).await,
            403,
            "forbidden",
        );
        assert_error(
            &send(s.as_user(&eve, method.clone(), &path)).await,
            404,
            "not_found",
        );
    }
    // The team's owner cannot touch the platform host.
    let got = send(s.as_user(&owner, Method::DELETE, &format!("/v1/hosts/{regular}"))).await;
    assert_error(&got, 404, "not_found");
    // Bad input.
    let got = send(s.as_user(&root, Method::DELETE, "/v1/hosts/nope")).await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(
        &root,
        Method::DELETE,
        &format!("/v1/hosts/{byoc}?force=maybe"),
    ))
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = send(s.as_user(&root, Method::GET, "/v1/hosts/nope/delete-preview")).await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(host_count(&s).await, 2);
    // A team admin may delete the team's host.
    let got = send(s.as_user(
        &adm,
        Method::GET,
        &format!("/v1/hosts/{byoc}/delete-preview"),
    ))
    .await;
    assert_eq!(got.0, 200, "body: {}", got.1);
    assert_eq!(got.1["sandbox_ids"], json!([]));
    let got = send(s.as_user(&adm, Method::DELETE, &format!("/v1/hosts/{byoc}"))).await;
    assert_eq!(got.0, 204, "body: {}", got.1);
    let deleted = audit(&s, owner.team, "delete").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(host_count(&s).await, 1);
    s.stop().await;
}
