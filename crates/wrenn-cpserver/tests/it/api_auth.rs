//! Sign-up, activation, login and team switching (`/v1/auth/*`).

use crate::common;

use std::time::Duration;

use common::{Options, TestServer, TestUser, assert_error, json};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::auth::{Role, TokenPurpose, UserClaims};
use wrenn_core::id::{TeamId, UserId, new_team_slug};
use wrenn_core::model::UserStatus;
use wrenn_core::repo::NewTeam;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn post(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    json(s.req(Method::POST, path).json(&body).send().await.unwrap()).await
}

async fn post_as(s: &TestServer, token: &str, path: &str, body: Value) -> (u16, Value) {
    json(
        s.req(Method::POST, path)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn get_as(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    json(
        s.req(Method::GET, path)
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The token in the last email sent to `to` (the line starting with `Token: `).
fn emailed_token(s: &TestServer, to: &str) -> String {
    let mail = s
        .mailer
        .as_ref()
        .expect("server has a mailer")
        .last_to(to)
        .unwrap_or_else(|| panic!("no email to {to}"));
    mail.body
        .lines()
        .find_map(|l| l.trim().strip_prefix("Token: "))
        .unwrap_or_else(|| panic!("no token in {:?}", mail.body))
        .trim()
        .to_owned()
}

fn claims(s: &TestServer, token: &str) -> UserClaims {
    s.ctx
        .auth
        .jwt()
        .verify_user(token)
        .expect("a valid user token")
}

async fn signup(s: &TestServer, email: &str, password: &str, name: &str) -> (u16, Value) {
    post(
        s,
        "/v1/auth/signup",
        json!({ "email": email, "password": password, "name": name }),
    )
    .await
}

async fn login(s: &TestServer, email: &str, password: &str) -> (u16, Value) {
    post(
        s,
        "/v1/auth/login",
        json!({ "email": email, "password": password }),
    )
    .await
}

fn assert_auth_response(body: &Value, email: &str, name: &str) {
    for field in ["token", "user_id", "team_id", "email", "name"] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }
    assert!(body["user_id"].as_str().unwrap().starts_with("usr-"));
    assert!(body["team_id"].as_str().unwrap().starts_with("team-"));
    assert_eq!(body["email"], email);
    assert_eq!(body["name"], name);
}

/// A team owned by `owner` that `member` joins with `role`.
async fn shared_team(s: &TestServer, owner: &TestUser, member: UserId, role: Role) -> TeamId {
    let team = TeamId::new();
    s.store()
        .create_team(
            NewTeam {
                id: team,
                name: "Shared".into(),
                slug: new_team_slug(),
                is_byoc: false,
            },
            owner.id,
            false,
        )
        .await
        .unwrap();
    s.store().add_member(team, member, role).await.unwrap();
    team
}

// ---------------------------------------------------------------------------
// The main flow
// ---------------------------------------------------------------------------

async fn main_flow(s: &TestServer) {
    let store = s.store();

    // Sign up: the account exists but is inactive, and has no team yet.
    let got = signup(s, " Ada@Example.COM ", "correct horse battery", "Ada").await;
    assert_eq!(got.0, 201, "{}", got.1);
    assert!(
        got.1["message"].as_str().unwrap().contains("email"),
        "{}",
        got.1
    );
    let user = store.get_user_by_email("ada@example.com").await.unwrap();
    assert_eq!(user.status, UserStatus::Inactive);
    assert!(!user.is_admin);
    assert!(
        store
            .default_team_for_user(user.id)
            .await
            .unwrap()
            .is_none()
    );

    // Not activated yet: login is refused (only with the right password).
    assert_error(
        &login(s, "ada@example.com", "correct horse battery").await,
        403,
        "account_not_activated",
    );
    assert_error(
        &login(s, "ada@example.com", "wrong password!").await,
        401,
        "unauthorized",
    );

    // Activate with the emailed token.
    let token = emailed_token(s, "ada@example.com");
    let got = post(s, "/v1/auth/activate", json!({ "token": token })).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_auth_response(&got.1, "ada@example.com", "Ada");
    let activated = claims(s, got.1["token"].as_str().unwrap());
    assert_eq!(activated.sub, user.id);
    assert_eq!(activated.role, Role::Owner);
    assert!(
        activated.is_admin,
        "the first active user administers the platform"
    );
    let user = store.get_user(user.id).await.unwrap();
    assert_eq!(user.status, UserStatus::Active);
    assert!(user.is_admin);
    let team = store.default_team_for_user(user.id).await.unwrap().unwrap();
    assert_eq!(team.team.id, activated.team_id);
    assert_eq!(team.team.name, "Ada's Team");
    assert_eq!(team.role, Role::Owner);
    assert!(team.is_default);

    // The token is spent.
    assert_error(
        &post(s, "/v1/auth/activate", json!({ "token": token })).await,
        409,
        "already_activated",
    );

    // Login lands in the default team.
    let got = login(s, "ADA@example.com", "correct horse battery").await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_auth_response(&got.1, "ada@example.com", "Ada");
    assert_eq!(got.1["team_id"], activated.team_id.to_string());
    let session = got.1["token"].as_str().unwrap().to_owned();

    // Switch to a team Ada was added to as a member.
    let bob = s.user("bob@example.com").await;
    let shared = shared_team(s, &bob, user.id, Role::Member).await;
    let got = post_as(
        s,
        &session,
        "/v1/auth/switch-team",
        json!({ "team_id": shared.to_string() }),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_auth_response(&got.1, "ada@example.com", "Ada");
    assert_eq!(got.1["team_id"], shared.to_string());
    let switched = got.1["token"].as_str().unwrap().to_owned();
    let c = claims(s, &switched);
    assert_eq!(
        (c.team_id, c.role, c.is_admin),
        (shared, Role::Member, true)
    );

    // The new token works.
    let got = get_as(s, &switched, "/v1/me").await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(
        got.1,
        json!({ "name": "Ada", "email": "ada@example.com", "has_password": true, "providers": [] })
    );
}

#[tokio::test]
async fn sign_up_activate_log_in_switch_team_and_read_me() {
    let s = TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap();
    main_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn the_main_flow_works_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        mailer: true,
        postgres: true,
    })
    .await
    else {
        return;
    };
    main_flow(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn sign_up_without_a_mailer_activates_at_once_and_says_so() {
    let s = TestServer::start().await;
    let got = signup(&s, "solo@example.com", "correct horse battery", "Solo").await;
    assert_eq!(got.0, 201, "{}", got.1);
    let message = got.1["message"].as_str().unwrap();
    assert!(message.contains("active"), "{message}");
    assert!(message.contains("no email"), "{message}");

    let user = s
        .store()
        .get_user_by_email("solo@example.com")
        .await
        .unwrap();
    assert_eq!(user.status, UserStatus::Active);
    assert!(user.is_admin, "first user");
    let team = s
        .store()
        .default_team_for_user(user.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(team.team.name, "Solo's Team");

    let got = login(&s, "solo@example.com", "correct horse battery").await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(got.1["team_id"], team.team.id.to_string());

    // The second user is not an admin.
    let got = signup(&s, "second@example.com", "correct horse battery", "Second").await;
    assert_eq!(got.0, 201, "{}", got.1);
    let second = s
        .store()
        .get_user_by_email("second@example.com")
        .await
        .unwrap();
    assert!(!second.is_admin);
    s.stop().await;
}

#[tokio::test]
async fn the_first_user_to_activate_becomes_admin_and_the_next_does_not() {
    let s = TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap();
    // Both sign up before either activates: signing up first does not matter.
    assert_eq!(
        signup(&s, "one@example.com", "correct horse battery", "One")
            .await
            .0,
        201
    );
    assert_eq!(
        signup(&s, "two@example.com", "correct horse battery", "Two")
            .await
            .0,
        201
    );
    let two = post(
        &s,
        "/v1/auth/activate",
        json!({ "token": emailed_token(&s, "two@example.com") }),
    )
    .await;
    assert_eq!(two.0, 200, "{}", two.1);
    let one = post(
        &s,
        "/v1/auth/activate",
        json!({ "token": emailed_token(&s, "one@example.com") }),
    )
    .await;
    assert_eq!(one.0, 200, "{}", one.1);
    assert!(claims(&s, two.1["token"].as_str().unwrap()).is_admin);
    assert!(!claims(&s, one.1["token"].as_str().unwrap()).is_admin);
    let store = s.store();
    assert!(
        store
            .get_user_by_email("two@example.com")
            .await
            .unwrap()
            .is_admin
    );
    assert!(
        !store
            .get_user_by_email("one@example.com")
            .await
            .unwrap()
            .is_admin
    );

    // Each got their own default team, owned.
    let one_id: UserId = one.1["user_id"].as_str().unwrap().parse().unwrap();
    let teams = store.list_teams_for_user(one_id).await.unwrap();
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0].role, Role::Owner);
    assert_eq!(teams[0].team.name, "One's Team");
    s.stop().await;
}

// ---------------------------------------------------------------------------
// Sign-up
// ---------------------------------------------------------------------------

#[tokio::test]
async fn signing_up_with_a_taken_email_is_a_conflict_and_changes_nothing() {
    let s = TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let existing = s.user("taken@example.com").await;
    for email in ["taken@example.com", "  TAKEN@Example.com "] {
        let got = signup(&s, email, "another password", "Impostor").await;
        assert_error(&got, 409, "email_taken");
    }
    assert_eq!(s.emails_to("taken@example.com"), 0);
    let user = s.store().get_user(existing.id).await.unwrap();
    assert_eq!(user.name, "taken");
    assert_eq!(
        login(&s, "taken@example.com", &existing.password).await.0,
        200
    );

    // A disabled account keeps its email too.
    s.store()
        .set_user_status(existing.id, UserStatus::Disabled)
        .await
        .unwrap();
    assert_error(
        &signup(&s, "taken@example.com", "another password", "Impostor").await,
        409,
        "email_taken",
    );
    s.stop().await;
}

#[tokio::test]
async fn signing_up_again_before_activating_sends_a_fresh_token_and_only_the_latest_works() {
    let s = TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        signup(&s, "again@example.com", "first password", "First")
            .await
            .0,
        201
    );
    let first = emailed_token(&s, "again@example.com");
    // One second apart so the two tokens differ even in their timestamps.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = signup(&s, "again@example.com", "second password", "Second").await;
    assert_eq!(got.0, 201, "{}", got.1);
    assert_eq!(s.emails_to("again@example.com"), 2);
    let second = emailed_token(&s, "again@example.com");
    assert_ne!(first, second);
    assert_eq!(s.store().count_users().await.unwrap(), 1);

    // The first token was for the first password: it no longer activates anything.
    assert_error(
        &post(&s, "/v1/auth/activate", json!({ "token": first })).await,
        400,
        "invalid_token",
    );
    let got = post(&s, "/v1/auth/activate", json!({ "token": second })).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(got.1["name"], "Second");
    assert_error(
        &login(&s, "again@example.com", "first password").await,
        401,
        "unauthorized",
    );
    assert_eq!(
        login(&s, "again@example.com", "second password").await.0,
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_sign_up_input_is_rejected_and_creates_nothing() {
    let s = TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let cases = [
        json!({ "password": "correct horse battery", "name": "A" }),
        json!({ "email": "a@example.com", "name": "A" }),
        json!({ "email": "a@example.com", "password": "correct horse battery" }),
        json!({ "email": "a@example.com", "password": "short", "name": "A" }),
        json!({ "email": "a@example.com", "password": "x".repeat(129), "name": "A" }),
        json!({ "email": "not-an-email", "password": "correct horse battery", "name": "A" }),
        json!({ "email": "a@localhost", "password": "correct horse battery", "name": "A" }),
        json!({ "email": "", "password": "correct horse battery", "name": "A" }),
        json!({ "email": "a@example.com", "password": "correct horse battery", "name": "   " }),
        json!({ "email": "a@example.com", "password": "correct horse battery", "name": "n".repeat(101) }),
        json!({ "email": 42, "password": "correct horse battery", "name": "A" }),
        json!([]),
        json!(null),
    ];
    for body in cases {
        let got = post(&s, "/v1/auth/signup", body.clone()).await;
        assert_error(&got, 400, "invalid_request");
        assert!(
            !got.1.to_string().contains("correct horse"),
            "no echo: {}",
            got.1
        );
    }
    // Malformed JSON and the wrong content type.
    let got = json(
        s.req(Method::POST, "/v1/auth/signup")
            .header("content-type", "application/json")
            .body("{\"email\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = json(
        s.req(Method::POST, "/v1/auth/signup")
            .header("content-type", "text/plain")
            .body(r#"{"email":"a@example.com","password":"correct horse battery","name":"A"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    let got = json(s.req(Method::POST, "/v1/auth/signup").send().await.unwrap()).await;
    assert_error(&got, 400, "invalid_request");

    assert_eq!(s.store().count_users().await.unwrap(), 0);
    assert!(s.mailer.as_ref().unwrap().sent.lock().unwrap().is_empty());
    s.stop().await;
}

// ---------------------------------------------------------------------------
// Activation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn activation_rejects_bad_foreign_and_tampered_tokens() {
    let s = TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        signup(&s, "act@example.com", "correct horse battery", "Act")
            .await
            .0,
        201
    );
    let good = emailed_token(&s, "act@example.com");
    let user = s
        .store()
        .get_user_by_email("act@example.com")
        .await
        .unwrap();
    let jwt = s.ctx.auth.jwt();

    let reset = jwt
        .sign_purpose(
            TokenPurpose::PasswordReset,
            user.id,
            "inactive",
            TokenPurpose::PasswordReset.lifetime(),
        )
        .unwrap();
    let someone = s.user("someone@example.com").await;
    let expired = jwt
        .sign_purpose_at(
            TokenPurpose::Activation,
            user.id,
            "x",
            Duration::from_secs(60),
            chrono::Utc::now().timestamp() - 3600,
        )
        .unwrap();
    let unknown_user = jwt
        .sign_purpose(
            TokenPurpose::Activation,
            UserId::new(),
            "inactive",
            Duration::from_secs(60),
        )
        .unwrap();
    // Flip one character in the middle of the payload.
    let mid = good.find('.').unwrap() + 10;
    let flipped = if &good[mid..=mid] == "A" { "B" } else { "A" };
    let tampered = format!("{}{}{}", &good[..mid], flipped, &good[mid + 1..]);
    let wrong_binding = jwt
        .sign_purpose(
            TokenPurpose::Activation,
            user.id,
            "inactive:0000",
            Duration::from_secs(60),
        )
        .unwrap();
    for bad in [
        String::new(),
        "garbage".into(),
        "a.b.c".into(),
        tampered,
        reset,
        someone.token.clone(),
        expired,
        unknown_user,
        wrong_binding,
    ] {
        let got = post(&s, "/v1/auth/activate", json!({ "token": bad })).await;
        assert_error(&got, 400, "invalid_token");
    }
    let got = post(&s, "/v1/auth/activate", json!({})).await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        s.store().get_user(user.id).await.unwrap().status,
        UserStatus::Inactive,
        "nothing activated"
    );
    // The genuine token still works.
    assert_eq!(
        post(&s, "/v1/auth/activate", json!({ "token": good }))
            .await
            .0,
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn a_disabled_account_cannot_be_activated() {
    let s = TestServer::start_with(Options {
        mailer: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        signup(&s, "dis@example.com", "correct horse battery", "Dis")
            .await
            .0,
        201
    );
    let token = emailed_token(&s, "dis@example.com");
    let user = s
        .store()
        .get_user_by_email("dis@example.com")
        .await
        .unwrap();
    s.store()
        .set_user_status(user.id, UserStatus::Disabled)
        .await
        .unwrap();
    assert_error(
        &post(&s, "/v1/auth/activate", json!({ "token": token })).await,
        400,
        "invalid_token",
    );
    assert_eq!(
        s.store().get_user(user.id).await.unwrap().status,
        UserStatus::Disabled
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------

#[tokio::test]
async fn login_refuses_unknown_emails_wrong_passwords_and_closed_accounts() {
    let s = TestServer::start().await;
    let u = s.user("login@example.com").await;

    let unknown = login(&s, "nobody@example.com", "correct horse battery").await;
    assert_error(&unknown, 401, "unauthorized");
    let wrong = login(&s, "login@example.com", "not the password").await;
    assert_error(&wrong, 401, "unauthorized");
    assert_eq!(
        unknown.1["error"]["message"], wrong.1["error"]["message"],
        "unknown email and wrong password look the same"
    );

    s.store()
        .set_user_status(u.id, UserStatus::Disabled)
        .await
        .unwrap();
    assert_error(
        &login(&s, "login@example.com", &u.password).await,
        403,
        "account_disabled",
    );
    // Without the password, a disabled account looks like any failed login.
    assert_error(
        &login(&s, "login@example.com", "not the password").await,
        401,
        "unauthorized",
    );

    s.store()
        .set_user_status(u.id, UserStatus::Active)
        .await
        .unwrap();
    s.store().soft_delete_user(u.id).await.unwrap();
    assert_error(
        &login(&s, "login@example.com", &u.password).await,
        401,
        "unauthorized",
    );
    s.stop().await;
}

#[tokio::test]
async fn login_rejects_bad_input() {
    let s = TestServer::start().await;
    s.user("input@example.com").await;
    for body in [
        json!({}),
        json!({ "email": "input@example.com" }),
        json!({ "password": "correct horse battery" }),
        json!({ "email": "input@example.com", "password": "" }),
        json!({ "email": "not-an-email", "password": "correct horse battery" }),
        json!({ "email": ["input@example.com"], "password": "correct horse battery" }),
    ] {
        assert_error(
            &post(&s, "/v1/auth/login", body).await,
            400,
            "invalid_request",
        );
    }
    let got = json(
        s.req(Method::POST, "/v1/auth/login")
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    s.stop().await;
}

#[tokio::test]
async fn login_gives_a_user_whose_teams_are_gone_a_new_default_team() {
    let s = TestServer::start().await;
    let u = s.user("orphan@example.com").await;
    assert!(s.store().soft_delete_team(u.team).await.unwrap());
    let got = login(&s, "orphan@example.com", &u.password).await;
    assert_eq!(got.0, 200, "{}", got.1);
    let c = claims(&s, got.1["token"].as_str().unwrap());
    assert_ne!(c.team_id, u.team);
    assert_eq!(c.role, Role::Owner);
    let team = s.store().get_team(c.team_id).await.unwrap();
    assert_eq!(team.name, "orphan's Team");
    s.stop().await;
}

#[tokio::test]
async fn login_prefers_the_default_team_and_reads_the_role_from_the_database() {
    let s = TestServer::start().await;
    let owner = s.user("owner@example.com").await;
    let u = s.user("member@example.com").await;
    // Joining another team does not change the login team.
    shared_team(&s, &owner, u.id, Role::Admin).await;
    let got = login(&s, "member@example.com", &u.password).await;
    assert_eq!(got.0, 200, "{}", got.1);
    let c = claims(&s, got.1["token"].as_str().unwrap());
    assert_eq!(
        (c.team_id, c.role, c.is_admin),
        (u.team, Role::Owner, false)
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------
// Switch team
// ---------------------------------------------------------------------------

#[tokio::test]
async fn switching_to_a_team_you_do_not_belong_to_is_forbidden() {
    let s = TestServer::start().await;
    let alice = s.user("alice@example.com").await;
    let mallory = s.user("mallory@example.com").await;
    let got = post_as(
        &s,
        &mallory.token,
        "/v1/auth/switch-team",
        json!({ "team_id": alice.team.to_string() }),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    // Forging the claims does not help: the token is re-checked against the database.
    let forged = s.token_for(mallory.id, alice.team, Role::Owner, &mallory.email, true);
    let got = post_as(
        &s,
        &forged,
        "/v1/auth/switch-team",
        json!({ "team_id": alice.team.to_string() }),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert!(
        s.store()
            .get_membership(alice.team, mallory.id)
            .await
            .unwrap()
            .is_none()
    );
    s.stop().await;
}

#[tokio::test]
async fn switch_team_rejects_bad_ids_unknown_and_deleted_teams_and_missing_credentials() {
    let s = TestServer::start().await;
    let owner = s.user("owner@example.com").await;
    let u = s.user("u@example.com").await;
    let gone = shared_team(&s, &owner, u.id, Role::Member).await;
    assert!(s.store().soft_delete_team(gone).await.unwrap());

    for bad in [
        json!({ "team_id": "nope" }),
        json!({ "team_id": u.id.to_string() }),
        json!({}),
        json!({ "team_id": 7 }),
    ] {
        let got = post_as(&s, &u.token, "/v1/auth/switch-team", bad).await;
        assert_error(&got, 400, "invalid_request");
    }
    let got = post_as(
        &s,
        &u.token,
        "/v1/auth/switch-team",
        json!({ "team_id": TeamId::new().to_string() }),
    )
    .await;
    assert_error(&got, 404, "not_found");
    let got = post_as(
        &s,
        &u.token,
        "/v1/auth/switch-team",
        json!({ "team_id": gone.to_string() }),
    )
    .await;
    assert_error(&got, 404, "not_found");

    let body = json!({ "team_id": u.team.to_string() });
    let got = post(&s, "/v1/auth/switch-team", body.clone()).await;
    assert_error(&got, 401, "unauthorized");
    let got = post_as(&s, "not.a.token", "/v1/auth/switch-team", body.clone()).await;
    assert_error(&got, 401, "unauthorized");
    // A purpose token is not a session.
    let activation = s
        .ctx
        .auth
        .jwt()
        .sign_purpose(
            TokenPurpose::Activation,
            u.id,
            "inactive",
            Duration::from_secs(60),
        )
        .unwrap();
    let got = post_as(&s, &activation, "/v1/auth/switch-team", body).await;
    assert_error(&got, 401, "unauthorized");
    s.stop().await;
}

#[tokio::test]
async fn the_jwt_role_is_never_trusted() {
    let s = TestServer::start().await;
    let owner = s.user_with("boss@example.com", true).await;
    let u = s.user_with("demoted@example.com", true).await;
    let shared = shared_team(&s, &owner, u.id, Role::Admin).await;

    // A token issued while the user was a team admin and a platform admin...
    let got = post_as(
        &s,
        &u.token,
        "/v1/auth/switch-team",
        json!({ "team_id": shared.to_string() }),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let old = got.1["token"].as_str().unwrap().to_owned();
    let c = claims(&s, &old);
    assert_eq!((c.role, c.is_admin), (Role::Admin, true));

    // ...is demoted in the database on both counts.
    s.store()
        .update_member_role_if(shared, u.id, Role::Admin, Role::Member)
        .await
        .unwrap()
        .unwrap();
    s.store().set_user_admin(u.id, false).await.unwrap();

    // The old token still authenticates, but what it is re-issued with comes from
    // the database, not from its own claims.
    let got = post_as(
        &s,
        &old,
        "/v1/auth/switch-team",
        json!({ "team_id": shared.to_string() }),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let c = claims(&s, got.1["token"].as_str().unwrap());
    assert_eq!(
        (c.team_id, c.role, c.is_admin),
        (shared, Role::Member, false)
    );

    // PATCH /v1/me re-issues from the database too.
    let got = json(
        s.req(Method::PATCH, "/v1/me")
            .bearer_auth(&old)
            .json(&json!({ "name": "Demoted" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.0, 200, "{}", got.1);
    let c = claims(&s, got.1["token"].as_str().unwrap());
    assert_eq!((c.role, c.is_admin), (Role::Member, false));
    s.stop().await;
}

#[tokio::test]
async fn the_auth_routes_are_documented() {
    let s = TestServer::start().await;
    let (status, doc) = json(s.req(Method::GET, "/openapi.json").send().await.unwrap()).await;
    assert_eq!(status, 200);
    for (path, method) in [
        ("/v1/auth/signup", "post"),
        ("/v1/auth/activate", "post"),
        ("/v1/auth/login", "post"),
        ("/v1/auth/switch-team", "post"),
        ("/v1/me", "get"),
        ("/v1/me", "patch"),
        ("/v1/me/password", "post"),
        ("/v1/me/password/reset", "post"),
        ("/v1/me/password/reset/confirm", "post"),
        ("/v1/users/search", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    assert!(doc["components"]["schemas"]["AuthResponse"].is_object());
    s.stop().await;
}
