use axum::http::StatusCode;
use wrenn_core::auth::Role;
use wrenn_core::id::TeamId;
use wrenn_core::model::HostKind;
use wrenn_extension::ApiError;

use super::*;
use crate::testing::{TestContext, caller};

#[test]
fn addresses_are_host_and_port() {
    for ok in [
        "127.0.0.1:50051",
        "http://10.0.0.2:1",
        "agent-1.example.com:443",
        "[::1]:50051",
        " localhost:8080 ",
    ] {
        assert!(validate_address(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "host:port",
        "https://a:1",
        "a b:1",
        ":50051",
        "-bad.example:1",
        "a:1/path",
    ] {
        assert!(validate_address(bad).is_err(), "{bad}");
    }
}

#[test]
fn tags_are_short_and_plain() {
    assert!(validate_tag("gpu").is_ok());
    assert!(validate_tag("zone:eu-west-1.a_b").is_ok());
    assert!(validate_tag(&"a".repeat(64)).is_ok());
    assert!(validate_tag("").is_err());
    assert!(validate_tag(&"a".repeat(65)).is_err());
    assert!(validate_tag("a b").is_err());
    assert!(validate_tag("a/b").is_err());
    assert!(validate_tag("é").is_err());
}

#[test]
fn labels_and_resources_are_checked() {
    assert_eq!(label("provider", Some(" aws ".into()), 8).unwrap(), "aws");
    assert_eq!(label("provider", None, 8).unwrap(), "");
    let e = label("provider", Some("x".repeat(9)), 8).unwrap_err();
    assert_eq!(e.to_string(), "provider must be at most 8 characters");
    assert!(label("arch", Some("a\nb".into()), 8).is_err());
    assert_eq!(resource("disk_gb", Some(0)).unwrap(), Some(0));
    let e = ApiError::from(resource("disk_gb", Some(-1)).unwrap_err());
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(e.message, "disk_gb must not be negative");
}

#[test]
fn a_host_with_capsules_answers_with_their_ids() {
    let ids = vec![SandboxId::new(), SandboxId::new()];
    let e = ApiError::from(HostError::HasSandboxes {
        sandbox_ids: ids.clone(),
    });
    assert_eq!(
        (e.status, e.code.as_ref()),
        (StatusCode::CONFLICT, "host_has_sandboxes")
    );
    assert!(e.message.starts_with("the host has 2 active capsule(s)"));
    let details = e.details.expect("details");
    assert_eq!(details["sandbox_ids"], json!(ids));
}

fn byoc(team: TeamId) -> HostRequest {
    HostRequest {
        kind: HostKind::Byoc,
        team_id: Some(team),
        provider: None,
        availability_zone: None,
    }
}

#[tokio::test]
async fn who_may_create_and_see_hosts() {
    let t = TestContext::new().await;
    let ctx = &t.ctx;
    let (root, root_team) = t.user("root@example.com", true).await;
    let (ada, team) = t.user("ada@example.com", false).await;
    let (bob, bob_team) = t.user("bob@example.com", false).await;
    let admin = caller(&root, root_team, Role::Owner);
    let owner = caller(&ada, team, Role::Owner);
    let outsider = caller(&bob, bob_team, Role::Owner);

    let regular = HostRequest {
        kind: HostKind::Regular,
        team_id: None,
        provider: None,
        availability_zone: None,
    };
    assert!(matches!(
        create(ctx, &owner, regular).await,
        Err(HostError::RegularNeedsAdmin)
    ));
    assert!(matches!(
        create(ctx, &owner, byoc(team)).await,
        Err(HostError::ByocDisabled)
    ));
    crate::teams::set_byoc(ctx, &admin.actor(), team, true)
        .await
        .unwrap();
    assert!(matches!(
        create(ctx, &outsider, byoc(team)).await,
        Err(HostError::NotTeamManager)
    ));
    let (host, token) = create(ctx, &owner, byoc(team)).await.unwrap();
    assert_eq!(host.status, HostStatus::Pending);
    assert_eq!(token.expose_secret().len(), 64);

    // Visible to its team and to admins (with the team's name), to no one else.
    assert!(matches!(
        get(ctx, &outsider, host.id).await,
        Err(HostError::HostNotFound)
    ));
    assert!(list(ctx, &outsider).await.unwrap().is_empty());
    let (_, name) = get(ctx, &admin, host.id).await.unwrap();
    assert_eq!(name.as_deref(), Some("ada's Team"));
    let (_, name) = get(ctx, &owner, host.id).await.unwrap();
    assert_eq!(name, None);

    // A member sees it but may not manage it.
    let member = caller(&ada, team, Role::Member);
    assert!(list_tags(ctx, &member, host.id).await.unwrap().is_empty());
    assert!(matches!(
        add_tag(ctx, &member, host.id, "gpu").await,
        Err(HostError::NotManager { action: "tag it" })
    ));
}

#[tokio::test]
async fn tags_tokens_and_deletion() {
    let t = TestContext::new().await;
    let ctx = &t.ctx;
    let (root, team) = t.user("root@example.com", true).await;
    let admin = caller(&root, team, Role::Owner);
    crate::teams::set_byoc(ctx, &admin.actor(), team, true)
        .await
        .unwrap();
    let (host, first) = create(ctx, &admin, byoc(team)).await.unwrap();

    assert!(matches!(
        add_tag(ctx, &admin, host.id, "a b").await,
        Err(HostError::TagCharacters)
    ));
    add_tag(ctx, &admin, host.id, "gpu").await.unwrap();
    add_tag(ctx, &admin, host.id, "gpu").await.unwrap();
    assert_eq!(list_tags(ctx, &admin, host.id).await.unwrap(), ["gpu"]);
    remove_tag(ctx, &admin, host.id, "gpu").await.unwrap();
    remove_tag(ctx, &admin, host.id, "gpu").await.unwrap();
    assert!(list_tags(ctx, &admin, host.id).await.unwrap().is_empty());

    let (_, second) = regenerate_token(ctx, &admin, host.id).await.unwrap();
    assert_ne!(first.expose_secret(), second.expose_secret());

    let (_, doomed) = delete_preview(ctx, &admin, host.id).await.unwrap();
    assert!(doomed.is_empty());
    delete(ctx, &admin, host.id, false).await.unwrap();
    assert!(matches!(
        get(ctx, &admin, host.id).await,
        Err(HostError::HostNotFound)
    ));
}
