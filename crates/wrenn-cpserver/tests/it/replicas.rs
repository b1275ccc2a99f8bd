//! Two control planes on one database, each with its own connection pool (replicas
//! behind a load balancer), racing the identity writes that no process-local lock can
//! serialise: the same sign-up on both at once (and with it the first account, which
//! administers the platform), one password-reset token spent on both at once, and an
//! owner deleting their account on one while adding a member on the other (a team
//! never keeps members without its owner). On SQLite (two stores on one file) and on
//! Postgres.

use reqwest::Method;
use serde_json::json;
use wrenn_core::model::UserStatus;

use crate::common::{Options, TestServer, send};

/// Two control planes on one database (PostgreSQL if `postgres`, else one SQLite
/// file); `None` when the test database is not configured.
async fn two_replicas(mailer: bool, postgres: bool) -> Option<(TestServer, TestServer)> {
    let a = TestServer::start_with(Options { mailer, postgres }).await?;
    let b = a.replica().await;
    Some((a, b))
}

async fn same_sign_ups_on_two_replicas(postgres: bool) {
    let Some((a, b)) = two_replicas(false, postgres).await else {
        return;
    };
    let signup = |s: &TestServer, email: &str| {
        s.req(Method::POST, "/v1/auth/signup").json(&json!({
            "email": email,
            "name": "Racer",
            "password": "a long enough password",
        }))
    };
    for n in 0..6 {
        let email = format!("racer-{n}@example.com");
        let (x, y) = tokio::join!(send(signup(&a, &email)), send(signup(&b, &email)));
        for (status, body) in [&x, &y] {
            assert!(matches!(status, 201 | 409), "{status}: {body}");
        }
        assert!(
            x.0 == 201 || y.0 == 201,
            "one of them signs up: {x:?} {y:?}"
        );
        let user = a
            .store()
            .get_user_by_email(&email)
            .await
            .expect("one account");
        assert_eq!(user.status, UserStatus::Active, "{email}");
        // Whichever replica answered, the account logs in on both.
        for s in [&a, &b] {
            let (status, body) = send(s.req(Method::POST, "/v1/auth/login").json(&json!({
                "email": email,
                "password": "a long enough password",
            })))
            .await;
            assert_eq!(status, 200, "{email}: {body}");
        }
    }
    let users = a.store().list_users(100, 0).await.unwrap();
    assert_eq!(users.len(), 6);
    assert_eq!(
        users.iter().filter(|u| u.is_admin).count(),
        1,
        "the first account to become active administers the platform, only it"
    );
    b.stop().await;
    a.stop().await;
}

async fn one_reset_token_on_two_replicas(postgres: bool) {
    let Some((a, b)) = two_replicas(true, postgres).await else {
        return;
    };
    let user = a.user("twice@example.com").await;
    let (status, body) = send(
        a.req(Method::POST, "/v1/me/password/reset")
            .json(&json!({ "email": user.email })),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let token = a.wait_for_token(&user.email, 1).await;
    for round in 0..3 {
        let confirm = |s: &TestServer, password: &str| {
            s.req(Method::POST, "/v1/me/password/reset/confirm")
                .json(&json!({ "token": token, "new_password": password }))
        };
        let (x, y) = tokio::join!(
            send(confirm(&a, "first new password")),
            send(confirm(&b, "second new password"))
        );
        let spent = [&x, &y].iter().filter(|(status, _)| *status == 204).count();
        if round == 0 {
            assert_eq!(spent, 1, "the token is spent exactly once: {x:?} {y:?}");
        } else {
            assert_eq!(spent, 0, "and never again: {x:?} {y:?}");
        }
        for (status, body) in [&x, &y] {
            if *status != 204 {
                assert_eq!(
                    (*status, body["error"]["code"].as_str()),
                    (400, Some("invalid_token"))
                );
            }
        }
    }
    b.stop().await;
    a.stop().await;
}

async fn account_deletion_and_a_new_member_on_two_replicas(postgres: bool) {
    let Some((a, b)) = two_replicas(false, postgres).await else {
        return;
    };
    for n in 0..6 {
        let owner = a.user(&format!("owner-{n}@example.com")).await;
        let joiner = a.user(&format!("joiner-{n}@example.com")).await;
        let (deleted, added) = tokio::join!(
            send(
                a.as_user(&owner, Method::DELETE, "/v1/me")
                    .json(&json!({ "confirmation": owner.email }))
            ),
            send(
                b.as_user(
                    &owner,
                    Method::POST,
                    &format!("/v1/teams/{}/members", owner.team)
                )
                .json(&json!({ "email": joiner.email }))
            )
        );
        assert!(matches!(deleted.0, 204 | 409), "{deleted:?}");
        assert!(matches!(added.0, 201 | 401 | 403 | 404), "{added:?}");
        let store = a.store();
        let owner_gone = store.get_user(owner.id).await.is_err();
        let team_live = store
            .get_team(owner.team)
            .await
            .is_ok_and(|t| t.deleted_at.is_none());
        let joined = store
            .get_membership(owner.team, joiner.id)
            .await
            .unwrap()
            .is_some();
        assert!(
            !(owner_gone && team_live && joined),
            "round {n}: a live team kept a member without its owner ({deleted:?}, {added:?})"
        );
        if deleted.0 == 409 {
            assert!(
                joined && !owner_gone,
                "refused because the member joined first"
            );
        }
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_sqlite_never_leave_a_team_without_its_owner() {
    account_deletion_and_a_new_member_on_two_replicas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_postgres_never_leave_a_team_without_its_owner() {
    account_deletion_and_a_new_member_on_two_replicas(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_sqlite_race_the_same_sign_up_and_make_one_admin() {
    same_sign_ups_on_two_replicas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_postgres_race_the_same_sign_up_and_make_one_admin() {
    same_sign_ups_on_two_replicas(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_sqlite_spend_a_reset_token_once() {
    one_reset_token_on_two_replicas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_postgres_spend_a_reset_token_once() {
    one_reset_token_on_two_replicas(true).await;
}
