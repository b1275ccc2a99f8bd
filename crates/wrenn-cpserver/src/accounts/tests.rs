use axum::http::StatusCode;
use wrenn_core::auth::Role;
use wrenn_core::validate;
use wrenn_extension::ApiError;

use super::*;
use crate::testing::{PASSWORD, TestContext, caller};

#[test]
fn default_team_names_are_valid_team_names() {
    assert_eq!(default_team_name("Ada"), "Ada's Team");
    assert_eq!(default_team_name("José  Núñez"), "Jos Nez's Team");
    assert_eq!(default_team_name("…"), "My Team");
    let long = default_team_name(&"a".repeat(300));
    assert!(long.chars().count() <= validate::MAX_TEAM_NAME_LEN);
    for n in ["Ada", "José Núñez", "…", "x.y/z", &"a".repeat(300)] {
        assert!(validate::team_name(&default_team_name(n)).is_ok(), "{n}");
    }
}

#[test]
fn names_are_limited_to_100_characters() {
    assert_eq!(check_name("  Ada ").unwrap(), "Ada");
    assert!(check_name(&"a".repeat(100)).is_ok());
    assert!(matches!(
        check_name(&"a".repeat(101)),
        Err(AccountError::NameTooLong)
    ));
    assert!(matches!(check_name("   "), Err(AccountError::Invalid(_))));
    assert!(check_name("a\u{0}b").is_err());
}

#[test]
fn password_policy_errors_name_their_field() {
    let e = ApiError::from(check_password("new_password", "short").unwrap_err());
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert!(e.message.starts_with("new_password: "), "{}", e.message);
}

#[test]
fn errors_map_to_their_http_answers() {
    let cases = [
        (
            AccountError::EmailTaken,
            StatusCode::CONFLICT,
            "email_taken",
        ),
        (
            AccountError::InvalidToken("reset"),
            StatusCode::BAD_REQUEST,
            "invalid_token",
        ),
        (
            AccountError::AlreadyActivated,
            StatusCode::CONFLICT,
            "already_activated",
        ),
        (
            AccountError::InvalidCredentials,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            AccountError::NotActivated,
            StatusCode::FORBIDDEN,
            "account_not_activated",
        ),
        (
            AccountError::Disabled,
            StatusCode::FORBIDDEN,
            "account_disabled",
        ),
        (
            AccountError::WrongPassword,
            StatusCode::UNAUTHORIZED,
            "wrong_password",
        ),
        (
            AccountError::OwnsTeamWithMembers,
            StatusCode::CONFLICT,
            "owns_team_with_members",
        ),
    ];
    for (e, status, code) in cases {
        let message = e.to_string();
        let api = ApiError::from(e);
        assert_eq!((api.status, api.code.as_ref()), (status, code), "{message}");
        assert_eq!(api.message, message);
    }
    let e = ApiError::from(AccountError::InvalidToken("activation"));
    assert_eq!(
        e.message,
        "activation token is invalid, expired or already used"
    );
}

#[tokio::test]
async fn signup_without_mailer_activates_at_once_and_logs_in() {
    let t = TestContext::new().await;
    let ctx = &t.ctx;
    let outcome = signup(ctx, "Ada@Example.com", PASSWORD.into(), " Ada ")
        .await
        .unwrap();
    assert_eq!(outcome, Signup::Active);
    // The first account to become active is the platform admin.
    let user = ctx
        .store
        .get_user_by_email("ada@example.com")
        .await
        .unwrap();
    assert_eq!(user.status, UserStatus::Active);
    assert!(user.is_admin);
    assert!(matches!(
        signup(ctx, "ada@example.com", PASSWORD.into(), "Ada").await,
        Err(AccountError::EmailTaken)
    ));

    let session = login(ctx, "ada@example.com", PASSWORD.into())
        .await
        .unwrap();
    assert_eq!(session.user_id, user.id);
    assert_eq!(session.name, "Ada");
    let team = ctx
        .store
        .default_team_for_user(user.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.team_id, team.team.id);
    assert_eq!(team.role, Role::Owner);

    for (email, password) in [
        ("ada@example.com", "wrong password"),
        ("bob@example.com", PASSWORD),
    ] {
        assert!(matches!(
            login(ctx, email, password.into()).await,
            Err(AccountError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        login(ctx, "ada@example.com", String::new()).await,
        Err(AccountError::EmptyPassword)
    ));
}

#[tokio::test]
async fn signup_checks_fields_before_touching_the_store() {
    let t = TestContext::new().await;
    let bad = [
        ("not-an-email", PASSWORD, "Ada"),
        ("ada@example.com", "short", "Ada"),
        ("ada@example.com", PASSWORD, "   "),
    ];
    for (email, password, name) in bad {
        assert!(signup(&t.ctx, email, password.into(), name).await.is_err());
    }
    assert!(
        t.ctx
            .store
            .get_user_by_email("ada@example.com")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn disabled_and_inactive_accounts_cannot_log_in() {
    let t = TestContext::new().await;
    let (user, _) = t.user("ada@example.com", false).await;
    for (status, expect) in [
        (UserStatus::Disabled, "account_disabled"),
        (UserStatus::Inactive, "account_not_activated"),
    ] {
        t.ctx.store.set_user_status(user.id, status).await.unwrap();
        let e = login(&t.ctx, &user.email, PASSWORD.into())
            .await
            .unwrap_err();
        assert_eq!(ApiError::from(e).code, expect);
    }
}

#[tokio::test]
async fn password_changes_need_the_current_password() {
    let t = TestContext::new().await;
    let (user, team) = t.user("ada@example.com", false).await;
    let me = caller(&user, team, Role::Owner);
    let change = |current: Option<&str>, new: &str, confirm: Option<&str>| PasswordChange {
        current: current.map(Into::into),
        new: new.into(),
        confirm: confirm.map(Into::into),
    };
    let new = "a brand new password";
    let refused = [
        (
            change(Some(PASSWORD), new, Some("other")),
            "PasswordMismatch",
        ),
        (change(None, new, None), "CurrentPasswordRequired"),
        (change(Some("nope nope nope"), new, None), "WrongPassword"),
    ];
    for (c, expect) in refused {
        let e = change_password(&t.ctx, &me, c).await.unwrap_err();
        assert!(format!("{e:?}").starts_with(expect), "{e:?}");
    }
    change_password(&t.ctx, &me, change(Some(PASSWORD), new, Some(new)))
        .await
        .unwrap();
    login(&t.ctx, &user.email, new.into()).await.unwrap();
}

#[tokio::test]
async fn renaming_returns_a_session_with_the_new_name() {
    let t = TestContext::new().await;
    let (user, team) = t.user("ada@example.com", false).await;
    let me = caller(&user, team, Role::Owner);
    let session = rename(&t.ctx, &me, "  Ada L. ").await.unwrap();
    assert_eq!((session.name.as_str(), session.team_id), ("Ada L.", team));
    assert!(matches!(
        rename(&t.ctx, &me, &"a".repeat(101)).await,
        Err(AccountError::NameTooLong)
    ));
}

#[tokio::test]
async fn an_owner_of_a_team_with_members_keeps_the_account() {
    let t = TestContext::new().await;
    let (ada, team) = t.user("ada@example.com", false).await;
    let (bob, _) = t.user("bob@example.com", false).await;
    let me = caller(&ada, team, Role::Owner);
    assert!(matches!(
        delete_account(&t.ctx, &me, "someone@example.com").await,
        Err(AccountError::ConfirmationMismatch)
    ));
    t.ctx
        .store
        .add_member(team, bob.id, Role::Member)
        .await
        .unwrap();
    assert!(matches!(
        delete_account(&t.ctx, &me, "ADA@example.com").await,
        Err(AccountError::OwnsTeamWithMembers)
    ));
    t.ctx.store.remove_member(team, bob.id).await.unwrap();
    delete_account(&t.ctx, &me, " ada@example.com ")
        .await
        .unwrap();
    let gone = t.ctx.store.get_user(ada.id).await;
    assert!(
        !matches!(&gone, Ok(u) if u.status != UserStatus::Deleted),
        "{gone:?}"
    );
    let live = t.ctx.store.get_team(team).await;
    assert!(
        !matches!(&live, Ok(t) if t.deleted_at.is_none()),
        "{live:?}"
    );
}

#[tokio::test]
async fn admins_cannot_disable_themselves_and_activation_gives_a_team() {
    let t = TestContext::new().await;
    let (admin, team) = t.user("root@example.com", true).await;
    let admin = caller(&admin, team, Role::Owner);
    assert!(matches!(
        set_active(&t.ctx, &admin, admin.user.id, false).await,
        Err(AccountError::CannotDeactivateSelf)
    ));
    let pending = t
        .ctx
        .store
        .create_user(NewUser {
            id: UserId::new(),
            email: "new@example.com".into(),
            password_hash: None,
            name: "New".into(),
            status: UserStatus::Inactive,
            is_admin: false,
        })
        .await
        .unwrap();
    set_active(&t.ctx, &admin, pending.id, true).await.unwrap();
    assert!(
        t.ctx
            .store
            .default_team_for_user(pending.id)
            .await
            .unwrap()
            .is_some()
    );
    set_active(&t.ctx, &admin, pending.id, false).await.unwrap();
    let user = t.ctx.store.get_user(pending.id).await.unwrap();
    assert_eq!(user.status, UserStatus::Disabled);
}
