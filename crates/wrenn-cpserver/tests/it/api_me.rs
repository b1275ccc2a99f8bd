//! The logged-in user's account (`/v1/me`, `/v1/me/password*`) and user search
//! (`/v1/users/search`).

use crate::common;

use std::time::Duration;

use common::{Options, TestServer, TestUser, assert_error, json};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::audit::{AuditQuery, AuditRecord, AuditScope};
use wrenn_core::auth::{Role, TokenPurpose};
use wrenn_core::id::{TeamId, UserId, new_team_slug};
use wrenn_core::model::UserStatus;
use wrenn_core::repo::{NewTeam, NewUser};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn send(
    s: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s.req(method, path);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    json(req.send().await.unwrap()).await
}

async fn login(s: &TestServer, email: &str, password: &str) -> u16 {
    send(
        s,
        None,
        Method::POST,
        "/v1/auth/login",
        Some(json!({ "email": email, "password": password })),
    )
    .await
    .0
}

async fn audit(s: &TestServer, team: TeamId, action: &str) -> Vec<AuditRecord> {
    s.store()
        .list_audit_logs(&AuditQuery {
            team_id: team,
            scopes: vec![AuditScope::Team, AuditScope::Admin],
            resource_type: Some("user".into()),
            action: Some(action.into()),
            before: None,
            limit: 50,
        })
        .await
        .unwrap()
}

async fn mailer_server() -> TestServer {
    TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A user with no password (as an OAuth sign-up leaves them), owning a team.
async fn passwordless_user(s: &TestServer, email: &str) -> TestUser {
    let id = UserId::new();
    s.store()
        .create_user(NewUser {
            id,
            email: email.into(),
            password_hash: None,
            name: "OAuth".into(),
            status: UserStatus::Active,
            is_admin: false,
        })
        .await
        .unwrap();
    let team = TeamId::new();
    s.store()
        .create_team(
            NewTeam {
                id: team,
                name: "OAuth's Team".into(),
                slug: new_team_slug(),
                is_byoc: false,
            },
            id,
            true,
        )
        .await
        .unwrap();
    TestUser {
        id,
        team,
        email: email.into(),
        password: String::new(),
        token: s.token_for(id, team, Role::Owner, email, false),
    }
}

// ---------------------------------------------------------------------------
// GET / PATCH /v1/me
// ---------------------------------------------------------------------------

#[tokio::test]
async fn me_describes_the_caller() {
    let s = TestServer::start().await;
    let u = s.user("me@example.com").await;
    let got = send(&s, Some(&u.token), Method::GET, "/v1/me", None).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(
        got.1,
        json!({ "name": "me", "email": "me@example.com", "has_password": true, "providers": [] })
    );

    let oauth = passwordless_user(&s, "oauth@example.com").await;
    let got = send(&s, Some(&oauth.token), Method::GET, "/v1/me", None).await;
    assert_eq!(got.1["has_password"], false);
    s.stop().await;
}

#[tokio::test]
async fn me_requires_a_valid_session() {
    let s = TestServer::start().await;
    let u = s.user("me@example.com").await;
    assert_error(
        &send(&s, None, Method::GET, "/v1/me", None).await,
        401,
        "unauthorized",
    );
    assert_error(
        &send(&s, Some("nope"), Method::GET, "/v1/me", None).await,
        401,
        "unauthorized",
    );
    let host = s
        .ctx
        .auth
        .jwt()
        .sign_host(&wrenn_core::auth::HostClaims::new(
            wrenn_core::id::HostId::new(),
        ))
        .unwrap();
    assert_error(
        &send(&s, Some(&host), Method::GET, "/v1/me", None).await,
        401,
        "unauthorized",
    );
    let reset = s
        .ctx
        .auth
        .jwt()
        .sign_purpose(
            TokenPurpose::PasswordReset,
            u.id,
            "x",
            Duration::from_secs(60),
        )
        .unwrap();
    assert_error(
        &send(&s, Some(&reset), Method::GET, "/v1/me", None).await,
        401,
        "unauthorized",
    );
    // An API key is not a user session.
    let got = json(
        s.req(Method::GET, "/v1/me")
            .header("x-api-key", "wrn_0123456789abcdef0123456789abcdef")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    s.stop().await;
}

#[tokio::test]
async fn a_token_for_a_team_the_user_left_no_longer_works() {
    let s = TestServer::start().await;
    let owner = s.user("owner@example.com").await;
    let u = s.user("leaver@example.com").await;
    s.store()
        .add_member(owner.team, u.id, Role::Member)
        .await
        .unwrap();
    let token = s.token_for(u.id, owner.team, Role::Member, &u.email, false);
    assert_eq!(
        send(&s, Some(&token), Method::GET, "/v1/me", None).await.0,
        200
    );
    assert!(s.store().remove_member(owner.team, u.id).await.unwrap());
    assert_error(
        &send(&s, Some(&token), Method::GET, "/v1/me", None).await,
        403,
        "forbidden",
    );
    let got = send(
        &s,
        Some(&token),
        Method::PATCH,
        "/v1/me",
        Some(json!({ "name": "Sneaky" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(s.store().get_user(u.id).await.unwrap().name, "leaver");
    s.stop().await;
}

#[tokio::test]
async fn renaming_yourself_returns_a_new_token_and_is_audited() {
    let s = TestServer::start().await;
    let u = s.user("rename@example.com").await;
    let got = send(
        &s,
        Some(&u.token),
        Method::PATCH,
        "/v1/me",
        Some(json!({ "name": "  Ada Lovelace " })),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(got.1["name"], "Ada Lovelace");
    assert_eq!(got.1["email"], "rename@example.com");
    assert_eq!(got.1["user_id"], u.id.to_string());
    assert_eq!(got.1["team_id"], u.team.to_string());
    let claims = s
        .ctx
        .auth
        .jwt()
        .verify_user(got.1["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        (claims.name.as_str(), claims.role),
        ("Ada Lovelace", Role::Owner)
    );
    assert_eq!(s.store().get_user(u.id).await.unwrap().name, "Ada Lovelace");

    let entries = audit(&s, u.team, "update").await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0].entry;
    assert_eq!(e.resource_id.as_deref(), Some(u.id.to_string().as_str()));
    assert_eq!(e.status.as_str(), "info");
    assert_eq!(e.actor.id.as_deref(), Some(u.id.to_string().as_str()));
    s.stop().await;
}

#[tokio::test]
async fn bad_renames_are_rejected_and_change_nothing() {
    let s = TestServer::start().await;
    let u = s.user("rename@example.com").await;
    for body in [
        json!({}),
        json!({ "name": "" }),
        json!({ "name": "   " }),
        json!({ "name": "n".repeat(101) }),
        json!({ "name": "a\u{7}b" }),
        json!({ "name": 5 }),
    ] {
        let got = send(&s, Some(&u.token), Method::PATCH, "/v1/me", Some(body)).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = json(
        s.req(Method::PATCH, "/v1/me")
            .bearer_auth(&u.token)
            .header("content-type", "application/json")
            .body("{\"name\":")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_error(
        &send(
            &s,
            None,
            Method::PATCH,
            "/v1/me",
            Some(json!({ "name": "X" })),
        )
        .await,
        401,
        "unauthorized",
    );
    assert_eq!(s.store().get_user(u.id).await.unwrap().name, "rename");
    assert!(audit(&s, u.team, "update").await.is_empty());
    s.stop().await;
}

// ---------------------------------------------------------------------------
// POST /v1/me/password
// ---------------------------------------------------------------------------

#[tokio::test]
async fn changing_your_password_needs_the_current_one_and_is_audited() {
    let s = TestServer::start().await;
    let u = s.user("pw@example.com").await;
    let body =
        |current: &str, new: &str| json!({ "current_password": current, "new_password": new });

    let got = send(
        &s,
        Some(&u.token),
        Method::POST,
        "/v1/me/password",
        Some(body("wrong password", "brand new password")),
    )
    .await;
    assert_error(&got, 401, "wrong_password");
    assert_eq!(login(&s, &u.email, &u.password).await, 200, "unchanged");

    let got = send(
        &s,
        Some(&u.token),
        Method::POST,
        "/v1/me/password",
        Some(body(&u.password, "brand new password")),
    )
    .await;
    assert_eq!(got.0, 204, "{}", got.1);
    assert_eq!(login(&s, &u.email, &u.password).await, 401);
    assert_eq!(login(&s, &u.email, "brand new password").await, 200);

    let entries = audit(&s, u.team, "password_change").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entry.status.as_str(), "info");
    assert!(
        !entries[0].entry.metadata.to_string().contains("brand new"),
        "no secrets in audit"
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_password_changes_are_rejected_and_change_nothing() {
    let s = TestServer::start().await;
    let u = s.user("pw@example.com").await;
    let cases = [
        json!({ "current_password": u.password, "new_password": "short" }),
        json!({ "current_password": u.password, "new_password": "x".repeat(129) }),
        json!({ "current_password": u.password, "new_password": "brand new password", "confirm_password": "different one" }),
        json!({ "new_password": "brand new password" }),
        json!({ "current_password": "", "new_password": "brand new password" }),
        json!({ "current_password": u.password }),
        json!({}),
    ];
    for body in cases {
        let got = send(
            &s,
            Some(&u.token),
            Method::POST,
            "/v1/me/password",
            Some(body),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(
        &s,
        None,
        Method::POST,
        "/v1/me/password",
        Some(json!({ "current_password": u.password, "new_password": "brand new password" })),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    assert_eq!(login(&s, &u.email, &u.password).await, 200);
    assert!(audit(&s, u.team, "password_change").await.is_empty());

    // A matching confirmation is fine.
    let got = send(
        &s,
        Some(&u.token),
        Method::POST,
        "/v1/me/password",
        Some(json!({ "current_password": u.password, "new_password": "brand new password", "confirm_password": "brand new password" })),
    )
    .await;
    assert_eq!(got.0, 204, "{}", got.1);
    s.stop().await;
}

#[tokio::test]
async fn an_account_without_a_password_may_set_one() {
    let s = TestServer::start().await;
    let u = passwordless_user(&s, "oauth@example.com").await;
    assert_eq!(login(&s, &u.email, "brand new password").await, 401);
    let got = send(
        &s,
        Some(&u.token),
        Method::POST,
        "/v1/me/password",
        Some(json!({ "new_password": "brand new password" })),
    )
    .await;
    assert_eq!(got.0, 204, "{}", got.1);
    let got = send(&s, Some(&u.token), Method::GET, "/v1/me", None).await;
    assert_eq!(got.1["has_password"], true);
    assert_eq!(login(&s, &u.email, "brand new password").await, 200);
    // From now on the current password is required.
    let got = send(
        &s,
        Some(&u.token),
        Method::POST,
        "/v1/me/password",
        Some(json!({ "new_password": "another new password" })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    s.stop().await;
}

// ---------------------------------------------------------------------------
// Password reset
// ---------------------------------------------------------------------------

async fn reset_flow(s: &TestServer) {
    let u = s.user("reset@example.com").await;
    let got = send(
        s,
        None,
        Method::POST,
        "/v1/me/password/reset",
        Some(json!({ "email": " Reset@Example.com " })),
    )
    .await;
    assert_eq!(got.0, 204, "{}", got.1);
    let token = s.wait_for_token("reset@example.com", 1).await;

    let confirm = |token: &str, pw: &str| json!({ "token": token, "new_password": pw });
    let got = send(
        s,
        None,
        Method::POST,
        "/v1/me/password/reset/confirm",
        Some(confirm(&token, "reset password 1")),
    )
    .await;
    assert_eq!(got.0, 204, "{}", got.1);
    assert_eq!(login(s, &u.email, &u.password).await, 401);
    assert_eq!(login(s, &u.email, "reset password 1").await, 200);
    assert_eq!(audit(s, u.team, "password_change").await.len(), 1);

    // The token works once.
    let got = send(
        s,
        None,
        Method::POST,
        "/v1/me/password/reset/confirm",
        Some(confirm(&token, "reset password 2")),
    )
    .await;
    assert_error(&got, 400, "invalid_token");
    assert_eq!(login(s, &u.email, "reset password 1").await, 200);
}

#[tokio::test]
async fn a_reset_token_sets_a_new_password_once() {
    let s = mailer_server().await;
    reset_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn the_reset_flow_works_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        mailer: true,
        postgres: true,
    })
    .await
    else {
        return;
    };
    reset_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_reset_request_for_an_unknown_or_inactive_account_answers_the_same_and_sends_nothing() {
    let s = mailer_server().await;
    let got = send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset",
        Some(json!({ "email": "nobody@example.com" })),
    )
    .await;
    assert_eq!(got, (204, Value::Null));
    let disabled = s.user("disabled@example.com").await;
    s.store()
        .set_user_status(disabled.id, UserStatus::Disabled)
        .await
        .unwrap();
    let got = send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset",
        Some(json!({ "email": "disabled@example.com" })),
    )
    .await;
    assert_eq!(got, (204, Value::Null));
    // A later request for a real account is delivered, so the earlier ones had time too.
    s.user("real@example.com").await;
    send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset",
        Some(json!({ "email": "real@example.com" })),
    )
    .await;
    s.wait_for_token("real@example.com", 1).await;
    assert_eq!(s.emails_to("nobody@example.com"), 0);
    assert_eq!(s.emails_to("disabled@example.com"), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_reset_request_without_a_mailer_still_answers_204() {
    let s = TestServer::start().await;
    s.user("nomail@example.com").await;
    let got = send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset",
        Some(json!({ "email": "nomail@example.com" })),
    )
    .await;
    assert_eq!(got, (204, Value::Null));
    s.stop().await;
}

#[tokio::test]
async fn bad_reset_input_is_rejected() {
    let s = mailer_server().await;
    let u = s.user("bad@example.com").await;
    for body in [
        json!({}),
        json!({ "email": "not-an-email" }),
        json!({ "email": null }),
    ] {
        let got = send(&s, None, Method::POST, "/v1/me/password/reset", Some(body)).await;
        assert_error(&got, 400, "invalid_request");
    }
    send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset",
        Some(json!({ "email": u.email })),
    )
    .await;
    let token = &s.wait_for_token(&u.email, 1).await;

    // A bad new password is refused before the token is looked at, and does not spend it.
    for body in [
        json!({ "token": token, "new_password": "short" }),
        json!({ "token": token }),
        json!({ "new_password": "long enough password" }),
    ] {
        let got = send(
            &s,
            None,
            Method::POST,
            "/v1/me/password/reset/confirm",
            Some(body),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(login(&s, &u.email, &u.password).await, 200);
    let got = send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset/confirm",
        Some(json!({ "token": token, "new_password": "long enough password" })),
    )
    .await;
    assert_eq!(got.0, 204, "{}", got.1);
    s.stop().await;
}

#[tokio::test]
async fn a_reset_token_dies_when_the_password_changes_another_way() {
    let s = mailer_server().await;
    let u = s.user("changed@example.com").await;
    send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset",
        Some(json!({ "email": u.email })),
    )
    .await;
    let token = &s.wait_for_token(&u.email, 1).await;
    let got = send(
        &s,
        Some(&u.token),
        Method::POST,
        "/v1/me/password",
        Some(json!({ "current_password": u.password, "new_password": "changed it myself" })),
    )
    .await;
    assert_eq!(got.0, 204, "{}", got.1);
    let got = send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset/confirm",
        Some(json!({ "token": token, "new_password": "attacker password" })),
    )
    .await;
    assert_error(&got, 400, "invalid_token");
    assert_eq!(login(&s, &u.email, "changed it myself").await, 200);
    s.stop().await;
}

#[tokio::test]
async fn tokens_of_another_purpose_or_account_state_are_rejected() {
    let s = mailer_server().await;
    let u = s.user("purpose@example.com").await;
    let jwt = s.ctx.auth.jwt();
    let hash = s
        .store()
        .get_user(u.id)
        .await
        .unwrap()
        .password_hash
        .unwrap();
    let binding = wrenn_core::auth::binding_digest(&hash);

    let activation = jwt
        .sign_purpose(
            TokenPurpose::Activation,
            u.id,
            &binding,
            Duration::from_secs(600),
        )
        .unwrap();
    let expired = jwt
        .sign_purpose_at(
            TokenPurpose::PasswordReset,
            u.id,
            &binding,
            Duration::from_secs(60),
            chrono::Utc::now().timestamp() - 3600,
        )
        .unwrap();
    let other_user = jwt
        .sign_purpose(
            TokenPurpose::PasswordReset,
            UserId::new(),
            &binding,
            Duration::from_secs(600),
        )
        .unwrap();
    let wrong_binding = jwt
        .sign_purpose(
            TokenPurpose::PasswordReset,
            u.id,
            "stale",
            Duration::from_secs(600),
        )
        .unwrap();
    for bad in [
        activation,
        expired,
        other_user,
        wrong_binding,
        u.token.clone(),
        "garbage".into(),
    ] {
        let got = send(
            &s,
            None,
            Method::POST,
            "/v1/me/password/reset/confirm",
            Some(json!({ "token": bad, "new_password": "attacker password" })),
        )
        .await;
        assert_error(&got, 400, "invalid_token");
    }
    assert_eq!(login(&s, &u.email, &u.password).await, 200);

    // A genuine reset token is neither an activation token nor a session.
    let reset = jwt
        .sign_purpose(
            TokenPurpose::PasswordReset,
            u.id,
            &binding,
            Duration::from_secs(600),
        )
        .unwrap();
    let got = send(
        &s,
        None,
        Method::POST,
        "/v1/auth/activate",
        Some(json!({ "token": reset })),
    )
    .await;
    assert_error(&got, 400, "invalid_token");
    assert_error(
        &send(&s, Some(&reset), Method::GET, "/v1/me", None).await,
        401,
        "unauthorized",
    );

    // A disabled account cannot be reset even with a well-formed token.
    s.store()
        .set_user_status(u.id, UserStatus::Disabled)
        .await
        .unwrap();
    let got = send(
        &s,
        None,
        Method::POST,
        "/v1/me/password/reset/confirm",
        Some(json!({ "token": reset, "new_password": "attacker password" })),
    )
    .await;
    assert_error(&got, 400, "invalid_token");
    s.stop().await;
}

// ---------------------------------------------------------------------------
// GET /v1/users/search
// ---------------------------------------------------------------------------

#[tokio::test]
async fn user_search_finds_active_users_by_email_prefix() {
    let s = TestServer::start().await;
    let me = s.user("searcher@example.com").await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(s.user(&format!("dev{i:02}@corp.example")).await.id);
    }
    let inactive = s.user("dev-inactive@corp.example").await;
    s.store()
        .set_user_status(inactive.id, UserStatus::Inactive)
        .await
        .unwrap();

    let got = send(
        &s,
        Some(&me.token),
        Method::GET,
        "/v1/users/search?email=dev00@",
        None,
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(
        got.1,
        json!([{ "user_id": ids[0].to_string(), "email": "dev00@corp.example" }])
    );

    let got = send(
        &s,
        Some(&me.token),
        Method::GET,
        "/v1/users/search?email=DEV01@CORP",
        None,
    )
    .await;
    assert_eq!(got.1.as_array().unwrap().len(), 1, "case-insensitive");

    let got = send(
        &s,
        Some(&me.token),
        Method::GET,
        "/v1/users/search?email=dev-inactive@",
        None,
    )
    .await;
    assert_eq!(got.1, json!([]), "inactive accounts are not offered");
    let got = send(
        &s,
        Some(&me.token),
        Method::GET,
        "/v1/users/search?email=nobody@",
        None,
    )
    .await;
    assert_eq!(got, (200, json!([])));
    s.stop().await;
}

#[tokio::test]
async fn user_search_returns_at_most_ten_matches() {
    let s = TestServer::start().await;
    let me = s.user("searcher@example.com").await;
    for i in 0..12 {
        s.user(&format!("a@team{i:02}.example")).await;
    }
    let got = send(
        &s,
        Some(&me.token),
        Method::GET,
        "/v1/users/search?email=a@team",
        None,
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let list = got.1.as_array().unwrap();
    assert_eq!(list.len(), 10);
    for m in list {
        assert!(m["user_id"].as_str().unwrap().starts_with("usr-"));
        assert!(m["email"].as_str().unwrap().starts_with("a@team"));
        assert_eq!(
            m.as_object().unwrap().len(),
            2,
            "only user_id and email: {m}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn user_search_rejects_short_or_missing_prefixes_and_anonymous_callers() {
    let s = TestServer::start().await;
    let me = s.user("searcher@example.com").await;
    for q in [
        "",
        "?email=",
        "?email=a@",
        "?email=%20%20a@",
        "?email=sea",
        "?other=x",
    ] {
        let got = send(
            &s,
            Some(&me.token),
            Method::GET,
            &format!("/v1/users/search{q}"),
            None,
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = send(
        &s,
        None,
        Method::GET,
        "/v1/users/search?email=searcher@",
        None,
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    s.stop().await;
}
