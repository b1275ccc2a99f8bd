//! Reading and renaming a team: members shown, other teams and malformed ids refused,
//! who may rename, and the slug that never changes.

use crate::common;

use super::{has_entry, role_of, team_name};
use common::{TestServer, assert_error, member_of, send};
use reqwest::Method;
use serde_json::json;
use wrenn_core::auth::Role;

#[tokio::test]
async fn getting_the_team_shows_it_with_its_members() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let bob = member_of(&s, owner.team, "bob@x.io", Role::Member).await;
    let (status, body) =
        send(s.as_user(&bob, Method::GET, &format!("/v1/teams/{}", owner.team))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["team"]["id"], owner.team.to_string());
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["user_id"], owner.id.to_string(), "owner first");
    assert_eq!(members[0]["role"], "owner");
    assert_eq!(members[1]["email"], "bob@x.io");
    assert_eq!(members[1]["name"], "bob");
    assert!(members[1]["joined_at"].is_string());

    let (status, list) = send(s.as_user(
        &bob,
        Method::GET,
        &format!("/v1/teams/{}/members", owner.team),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(&list, &body["members"]);
    s.stop().await;
}

#[tokio::test]
async fn another_teams_id_is_refused_until_the_caller_switches_team() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    let eve = s.user("eve@x.io").await;
    let victim = ada.team;
    let calls = [
        (Method::GET, format!("/v1/teams/{victim}"), json!(null)),
        (
            Method::PATCH,
            format!("/v1/teams/{victim}"),
            json!({ "name": "Pwned" }),
        ),
        (Method::DELETE, format!("/v1/teams/{victim}"), json!(null)),
        (
            Method::GET,
            format!("/v1/teams/{victim}/members"),
            json!(null),
        ),
        (
            Method::POST,
            format!("/v1/teams/{victim}/members"),
            json!({ "email": "eve@x.io" }),
        ),
        (
            Method::PATCH,
            format!("/v1/teams/{victim}/members/{}", ada.id),
            json!({ "role": "member" }),
        ),
        (
            Method::DELETE,
            format!("/v1/teams/{victim}/members/{}", ada.id),
            json!(null),
        ),
        (
            Method::POST,
            format!("/v1/teams/{victim}/leave"),
            json!(null),
        ),
    ];
    for (method, path, body) in calls {
        let got = send(s.as_user(&eve, method, &path).json(&body)).await;
        assert_error(&got, 403, "forbidden");
        assert!(
            got.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("switch-team"),
            "{}",
            got.1
        );
    }
    // A token for a team the user is not a member of is refused by the extractor.
    let forged = s.token_for(eve.id, victim, Role::Owner, "eve@x.io", false);
    let got = send(
        s.req(Method::GET, &format!("/v1/teams/{victim}"))
            .bearer_auth(forged),
    )
    .await;
    assert_error(&got, 403, "forbidden");

    assert_eq!(team_name(&s, victim).await, "ada@x.io's Team");
    assert_eq!(s.store().list_members(victim).await.unwrap().len(), 1);
    assert!(
        s.store()
            .get_team(victim)
            .await
            .unwrap()
            .deleted_at
            .is_none()
    );
    assert_eq!(role_of(&s, victim, &ada).await, Some(Role::Owner));
    s.stop().await;
}

#[tokio::test]
async fn malformed_ids_are_bad_requests() {
    let s = TestServer::start().await;
    let ada = s.user("ada@x.io").await;
    for (method, path) in [
        (Method::GET, "/v1/teams/nope".to_string()),
        (Method::GET, format!("/v1/teams/{}", ada.id)),
        (
            Method::PATCH,
            format!("/v1/teams/{}/members/nope", ada.team),
        ),
        (
            Method::DELETE,
            format!("/v1/teams/{}/members/{}", ada.team, ada.team),
        ),
    ] {
        let got = send(
            s.as_user(&ada, method, &path)
                .json(&json!({ "role": "member" })),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    s.stop().await;
}

#[tokio::test]
async fn owners_and_admins_rename_the_team_members_cannot() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let admin = member_of(&s, owner.team, "admin@x.io", Role::Admin).await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    let path = format!("/v1/teams/{}", owner.team);

    let got = send(
        s.as_user(&member, Method::PATCH, &path)
            .json(&json!({ "name": "Mine" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(team_name(&s, owner.team).await, "owner@x.io's Team");

    let resp = s
        .as_user(&admin, Method::PATCH, &path)
        .json(&json!({ "name": "  Blue Team " }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(team_name(&s, owner.team).await, "Blue Team");
    let resp = s
        .as_user(&owner, Method::PATCH, &path)
        .json(&json!({ "name": "Red Team" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(team_name(&s, owner.team).await, "Red Team");

    let entry = has_entry(&s.store(), owner.team, "team", "rename")
        .await
        .expect("audit");
    assert_eq!(
        entry.entry.metadata,
        json!({ "old_name": "Blue Team", "new_name": "Red Team" })
    );
    assert_eq!(entry.entry.status.as_str(), "info");
    s.stop().await;
}

#[tokio::test]
async fn a_membership_revoked_after_the_token_was_issued_is_not_trusted() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    // Bob's token says admin, but the database says member.
    let bob = member_of(&s, owner.team, "bob@x.io", Role::Member).await;
    let lying = s.token_for(bob.id, owner.team, Role::Admin, "bob@x.io", false);
    let got = send(
        s.req(Method::PATCH, &format!("/v1/teams/{}", owner.team))
            .bearer_auth(&lying)
            .json(&json!({ "name": "Bob's" })),
    )
    .await;
    assert_error(&got, 403, "forbidden");
    // And once removed, the token stops working for that team.
    s.store().remove_member(owner.team, bob.id).await.unwrap();
    let got = send(s.as_user(&bob, Method::GET, &format!("/v1/teams/{}", owner.team))).await;
    assert_error(&got, 403, "forbidden");
    assert_eq!(team_name(&s, owner.team).await, "owner@x.io's Team");
    s.stop().await;
}

#[tokio::test]
async fn the_slug_never_changes() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let before = s.store().get_team(owner.team).await.unwrap();
    let path = format!("/v1/teams/{}", owner.team);
    let got = send(
        s.as_user(&owner, Method::PATCH, &path)
            .json(&json!({ "name": "New", "slug": "my-slug" })),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        s.store().get_team(owner.team).await.unwrap(),
        before,
        "nothing changed"
    );
    for bad in [
        json!({ "name": "" }),
        json!({ "name": "<script>" }),
        json!({}),
        json!({ "name": null }),
    ] {
        let got = send(s.as_user(&owner, Method::PATCH, &path).json(&bad)).await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_eq!(
        s.store().get_team(owner.team).await.unwrap(),
        before,
        "nothing changed"
    );
    let resp = s
        .as_user(&owner, Method::PATCH, &path)
        .json(&json!({ "name": "New" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        s.store().get_team(owner.team).await.unwrap().slug,
        before.slug
    );
    s.stop().await;
}
