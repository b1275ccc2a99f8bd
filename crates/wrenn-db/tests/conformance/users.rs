//! UserRepo: accounts, OAuth links, admin flags and permissions, deletion.

use chrono::Duration;
use serde_json::json;
use wrenn_core::audit::{Actor, AuditEntry, AuditQuery, AuditScope};
use wrenn_core::auth::Role;
use wrenn_core::id::{ApiKeyId, HostTokenId, UserId};
use wrenn_core::model::{ApiKey, HostToken, OAuthLink, UserStatus};

use crate::fixtures::*;

fn api_key(team: wrenn_core::id::TeamId, created_by: UserId) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new(),
        team_id: team,
        name: "ci".into(),
        key_hash: format!("hash-{}", uuid::Uuid::new_v4()),
        key_prefix: "wrn_0123ab".into(),
        created_by: Some(created_by),
        created_at: now(),
        last_used: None,
    }
}

async fn users_are_found_by_id_and_by_email_in_any_case(db: Db) {
    let mut new = new_user("Grace.Hopper@Example.com");
    new.is_admin = true;
    let user = db.create_user(new.clone()).await.unwrap();
    assert_eq!(user.id, new.id);
    assert_eq!(user.email, "grace.hopper@example.com", "stored lowercased");
    assert_eq!(user.password_hash, new.password_hash);
    assert_eq!(user.name, "Ada");
    assert!(user.is_admin);
    assert_eq!(user.status, UserStatus::Active);
    assert_eq!(user.created_at, user.updated_at);
    assert!(user.deleted_at.is_none());
    assert_eq!(db.get_user(user.id).await.unwrap(), user);
    assert_eq!(
        db.get_user_by_email("GRACE.hopper@example.COM")
            .await
            .unwrap(),
        user
    );
}

async fn duplicate_emails_conflict_whatever_their_case(db: Db) {
    let address = email();
    db.create_user(new_user(&address)).await.unwrap();
    assert_conflict(db.create_user(new_user(&address)).await);
    assert_conflict(db.create_user(new_user(&address.to_uppercase())).await);
}

async fn oauth_users_have_no_password(db: Db) {
    let mut new = new_user(&email());
    new.password_hash = None;
    new.status = UserStatus::Inactive;
    let user = db.create_user(new).await.unwrap();
    assert!(user.password_hash.is_none());
    assert_eq!(user.status, UserStatus::Inactive);
}

async fn names_passwords_and_statuses_update(db: Db) {
    let user = user(&db).await;
    let renamed = db.update_user_name(user.id, "Grace").await.unwrap();
    assert_eq!(renamed.name, "Grace");
    assert!(renamed.updated_at >= user.updated_at);
    db.update_password(user.id, "new-hash").await.unwrap();
    assert_eq!(
        db.get_user(user.id).await.unwrap().password_hash.as_deref(),
        Some("new-hash")
    );
    let disabled = db
        .set_user_status(user.id, UserStatus::Disabled)
        .await
        .unwrap();
    assert_eq!(disabled.status, UserStatus::Disabled);
    assert_invalid(db.set_user_status(user.id, UserStatus::Deleted).await);
}

async fn a_password_is_replaced_only_while_it_is_the_expected_one(db: Db) {
    let user = user(&db).await;
    let old = user.password_hash.clone().unwrap();
    assert!(
        db.update_password_if(user.id, &old, "second")
            .await
            .unwrap()
    );
    // A second request holding the same old hash (a reset token spent twice) loses.
    assert!(!db.update_password_if(user.id, &old, "third").await.unwrap());
    assert_eq!(
        db.get_user(user.id).await.unwrap().password_hash.as_deref(),
        Some("second")
    );
    assert!(
        !db.update_password_if(UserId::new(), &old, "x")
            .await
            .unwrap()
    );
}

fn inactive(address: &str) -> wrenn_core::repo::NewUser {
    let mut new = new_user(address);
    new.status = UserStatus::Inactive;
    new
}

async fn activation_is_spent_once_bound_to_the_password_and_makes_the_first_admin(db: Db) {
    let first = db.create_user(inactive(&email())).await.unwrap();
    let hash = first.password_hash.clone();
    // Bound to the password the token was issued for.
    assert!(
        db.activate_user(first.id, Some("another"))
            .await
            .unwrap()
            .is_none()
    );
    let active = db
        .activate_user(first.id, hash.as_deref())
        .await
        .unwrap()
        .expect("activated");
    assert_eq!(active.status, UserStatus::Active);
    assert!(
        active.is_admin,
        "the first account to become active administers"
    );
    assert!(
        db.activate_user(first.id, hash.as_deref())
            .await
            .unwrap()
            .is_none(),
        "spent"
    );
    let second = db.create_user(inactive(&email())).await.unwrap();
    let second = db
        .activate_user(second.id, second.password_hash.as_deref())
        .await
        .unwrap()
        .expect("activated");
    assert!(!second.is_admin, "only the first");
    // Not inactive: an active or disabled account is not activated again.
    let disabled = user(&db).await;
    db.set_user_status(disabled.id, UserStatus::Disabled)
        .await
        .unwrap();
    assert!(
        db.activate_user(disabled.id, disabled.password_hash.as_deref())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.activate_user(UserId::new(), None)
            .await
            .unwrap()
            .is_none()
    );
}

async fn simultaneous_first_activations_make_exactly_one_admin(db: Db) {
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(db.create_user(inactive(&email())).await.unwrap());
    }
    let activations = users.into_iter().map(|u| {
        let db = db.clone();
        tokio::spawn(async move { db.activate_user(u.id, u.password_hash.as_deref()).await })
    });
    let activated: Vec<_> = futures::future::join_all(activations)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap().expect("activated"))
        .collect();
    assert!(activated.iter().all(|u| u.status == UserStatus::Active));
    assert_eq!(activated.iter().filter(|u| u.is_admin).count(), 1);
}

async fn an_owner_with_members_is_not_deleted_and_no_one_joins_a_deleted_owners_team(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let member = user(&db).await;
    db.add_member(team.id, member.id, Role::Member)
        .await
        .unwrap();
    assert_conflict(db.soft_delete_user(owner.id).await);
    assert!(db.get_user(owner.id).await.is_ok(), "still there");
    let (alone, own) = owned_team(&db).await;
    db.soft_delete_user(alone.id).await.unwrap();
    let late = user(&db).await;
    assert_not_found(db.add_member(own.id, late.id, Role::Member).await);
}

async fn an_account_deletion_racing_a_new_member_never_leaves_a_team_without_its_owner(db: Db) {
    for _ in 0..12 {
        let (owner, team) = owned_team(&db).await;
        let member = user(&db).await;
        let (deleted, added) = tokio::join!(
            {
                let db = db.clone();
                tokio::spawn(async move { db.soft_delete_user(owner.id).await })
            },
            {
                let db = db.clone();
                tokio::spawn(async move { db.add_member(team.id, member.id, Role::Member).await })
            }
        );
        let (deleted, added) = (deleted.unwrap(), added.unwrap());
        assert!(
            deleted.is_ok() != added.is_ok(),
            "exactly one wins: {deleted:?} {added:?}"
        );
        let owner_gone = db.get_user(owner.id).await.is_err();
        let members = db.list_members(team.id).await.unwrap();
        assert!(
            !(owner_gone && members.iter().any(|m| m.user_id == member.id)),
            "a member joined a team whose owner is deleted"
        );
    }
}

async fn unknown_users_are_not_found(db: Db) {
    let nobody = UserId::new();
    assert_not_found(db.get_user(nobody).await);
    assert_not_found(db.get_user_by_email("nobody@example.com").await);
    assert_not_found(db.update_user_name(nobody, "x").await);
    assert_not_found(db.update_password(nobody, "x").await);
    assert_not_found(db.set_user_status(nobody, UserStatus::Active).await);
    assert_not_found(db.set_user_admin(nobody, true).await);
    assert_not_found(db.soft_delete_user(nobody).await);
    assert_not_found(db.hard_delete_user(nobody).await);
    assert_not_found(db.grant_admin_permission(nobody, "hosts").await);
}

async fn revoking_the_last_admin_is_a_conflict(db: Db) {
    let first = user(&db).await;
    let second = user(&db).await;
    assert!(db.set_user_admin(first.id, true).await.unwrap().is_admin);
    assert_conflict(db.set_user_admin(first.id, false).await);
    assert!(db.set_user_admin(second.id, true).await.unwrap().is_admin);
    assert!(!db.set_user_admin(first.id, false).await.unwrap().is_admin);
    assert_conflict(db.set_user_admin(second.id, false).await);
    // Revoking from a non-admin is fine even with a single admin left.
    assert!(!db.set_user_admin(first.id, false).await.unwrap().is_admin);
}

async fn soft_deleting_a_user_hides_them_and_removes_their_api_keys(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let colleague = user(&db).await;
    db.add_member(team.id, colleague.id, Role::Member)
        .await
        .unwrap();
    let mine = db.create_api_key(api_key(team.id, owner.id)).await.unwrap();
    let theirs = db
        .create_api_key(api_key(team.id, colleague.id))
        .await
        .unwrap();
    let before = db.count_users().await.unwrap();

    db.soft_delete_user(colleague.id).await.unwrap();
    assert_not_found(db.get_user(colleague.id).await);
    let deleted = db.get_user_by_email(&colleague.email).await.unwrap();
    assert_eq!(deleted.status, UserStatus::Deleted);
    assert!(deleted.deleted_at.is_some());
    assert_eq!(db.count_users().await.unwrap(), before - 1);
    let keys: Vec<ApiKeyId> = db
        .list_api_keys(team.id)
        .await
        .unwrap()
        .iter()
        .map(|k| k.key.id)
        .collect();
    assert_eq!(keys, [mine.id]);
    assert!(
        db.get_api_key_by_hash(&theirs.key_hash)
            .await
            .unwrap()
            .is_none()
    );
    // Idempotent.
    db.soft_delete_user(colleague.id).await.unwrap();
    // A deleted user can no longer be edited.
    assert_not_found(db.update_user_name(colleague.id, "x").await);
}

async fn email_prefix_search_ignores_case_and_treats_wildcards_literally(db: Db) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let alice = db
        .create_user(new_user(&format!("{tag}.alice@example.com")))
        .await
        .unwrap();
    let alina = db
        .create_user(new_user(&format!("{tag}.alina@example.com")))
        .await
        .unwrap();
    let under = db
        .create_user(new_user(&format!("{tag}_x@example.com")))
        .await
        .unwrap();
    let gone = db
        .create_user(new_user(&format!("{tag}.alfred@example.com")))
        .await
        .unwrap();
    db.soft_delete_user(gone.id).await.unwrap();

    let found = db
        .search_users_by_email_prefix(&format!("{}.AL", tag.to_uppercase()), 10)
        .await
        .unwrap();
    let ids: Vec<UserId> = found.iter().map(|u| u.id).collect();
    assert_eq!(
        ids,
        [alice.id, alina.id],
        "sorted by email, deleted users hidden"
    );
    let limited = db
        .search_users_by_email_prefix(&format!("{tag}.al"), 1)
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    // `_` and `%` are literal characters, not wildcards.
    let literal = db
        .search_users_by_email_prefix(&format!("{tag}_"), 10)
        .await
        .unwrap();
    assert_eq!(literal.iter().map(|u| u.id).collect::<Vec<_>>(), [under.id]);
    assert!(
        db.search_users_by_email_prefix(&format!("{tag}%"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn list_users_pages_newest_first(db: Db) {
    let a = user(&db).await;
    let b = user(&db).await;
    let page = db.list_users(2, 0).await.unwrap();
    assert_eq!(page.iter().map(|u| u.id).collect::<Vec<_>>(), [b.id, a.id]);
    let next = db.list_users(1, 1).await.unwrap();
    assert_eq!(next[0].id, a.id);
}

async fn users_deleted_before_a_cutoff_are_listed(db: Db) {
    let kept = user(&db).await;
    let gone = user(&db).await;
    db.soft_delete_user(gone.id).await.unwrap();
    let later = now() + Duration::seconds(5);
    let expired = db.list_users_deleted_before(later).await.unwrap();
    assert!(expired.iter().any(|u| u.id == gone.id));
    assert!(!expired.iter().any(|u| u.id == kept.id));
    let earlier = now() - Duration::days(15);
    assert!(
        !db.list_users_deleted_before(earlier)
            .await
            .unwrap()
            .iter()
            .any(|u| u.id == gone.id)
    );
}

async fn hard_deleting_a_user_anonymises_their_audit_trail(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let gone = user(&db).await;
    let by_gone = db
        .record(AuditEntry::new(
            team.id,
            Actor::user(gone.id, &gone.email),
            "sandbox",
            Some("cl-x".into()),
            "create",
        ))
        .await
        .unwrap();
    let about_gone = db
        .record(
            AuditEntry::new(
                team.id,
                Actor::user(owner.id, &owner.email),
                "member",
                Some(gone.id.to_string()),
                "add",
            )
            .scope(AuditScope::Admin)
            .metadata(json!({"email": gone.email, "role": "member"})),
        )
        .await
        .unwrap();
    let unrelated = db
        .record(
            AuditEntry::new(
                team.id,
                Actor::user(owner.id, &owner.email),
                "member",
                Some(owner.id.to_string()),
                "add",
            )
            .metadata(json!({"email": owner.email})),
        )
        .await
        .unwrap();

    db.soft_delete_user(gone.id).await.unwrap();
    db.hard_delete_user(gone.id).await.unwrap();
    assert_not_found(db.get_user_by_email(&gone.email).await);

    let records = db
        .list_audit_logs(&AuditQuery {
            team_id: team.id,
            scopes: vec![AuditScope::Team, AuditScope::Admin],
            resource_type: None,
            action: None,
            before: None,
            limit: 50,
        })
        .await
        .unwrap();
    let find = |id| records.iter().find(|r| r.id == id).unwrap().clone();
    let by_gone = find(by_gone.id);
    assert_eq!(by_gone.entry.actor.id, None);
    assert_eq!(by_gone.entry.actor.name, "deleted-user");
    assert_eq!(by_gone.entry.resource_id.as_deref(), Some("cl-x"));
    let about_gone = find(about_gone.id);
    assert_eq!(about_gone.entry.resource_id, None);
    assert_eq!(about_gone.entry.metadata, json!({"role": "member"}));
    assert_eq!(
        about_gone.entry.actor.id,
        Some(owner.id.to_string()),
        "the actor was someone else"
    );
    assert_eq!(find(unrelated.id), unrelated);
}

async fn hard_deleting_a_user_removes_memberships_oauth_links_and_admin_permissions(db: Db) {
    let (_, team) = owned_team(&db).await;
    let gone = user(&db).await;
    db.add_member(team.id, gone.id, Role::Member).await.unwrap();
    db.link_oauth(OAuthLink {
        provider: "github".into(),
        provider_id: "4242".into(),
        user_id: gone.id,
        email: gone.email.clone(),
        created_at: now(),
    })
    .await
    .unwrap();
    db.grant_admin_permission(gone.id, "hosts").await.unwrap();

    db.hard_delete_user(gone.id).await.unwrap();
    assert!(db.get_membership(team.id, gone.id).await.unwrap().is_none());
    assert!(db.get_oauth_link("github", "4242").await.unwrap().is_none());
    assert!(db.list_admin_permissions(gone.id).await.unwrap().is_empty());
    assert_eq!(db.list_members(team.id).await.unwrap().len(), 1);
}

async fn hard_deleting_a_user_keeps_their_api_keys_hosts_and_host_tokens_without_creator(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let gone = user(&db).await;
    db.add_member(team.id, gone.id, Role::Admin).await.unwrap();
    let key = db.create_api_key(api_key(team.id, gone.id)).await.unwrap();
    let host = host(&db, Some(gone.id)).await;
    let token = db
        .create_host_token(HostToken {
            id: HostTokenId::new(),
            host_id: host.id,
            token_hash: format!("tok-{}", uuid::Uuid::new_v4()),
            created_by: Some(gone.id),
            created_at: now(),
            expires_at: now() + Duration::hours(1),
            used_at: None,
        })
        .await
        .unwrap();

    db.hard_delete_user(gone.id).await.unwrap();

    let keys = db.list_api_keys(team.id).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key.id, key.id);
    assert_eq!(keys[0].key.created_by, None);
    assert_eq!(keys[0].creator_email, None);
    assert_eq!(db.get_host(host.id).await.unwrap().created_by, None);
    assert_eq!(db.get_host_token(token.id).await.unwrap().created_by, None);
    assert!(
        db.get_membership(team.id, owner.id)
            .await
            .unwrap()
            .is_some()
    );
}

async fn oauth_identities_link_once(db: Db) {
    let user = user(&db).await;
    assert!(db.get_oauth_link("github", "1").await.unwrap().is_none());
    let link = OAuthLink {
        provider: "github".into(),
        provider_id: "1".into(),
        user_id: user.id,
        email: user.email.clone(),
        created_at: now(),
    };
    db.link_oauth(link.clone()).await.unwrap();
    assert_eq!(
        db.get_oauth_link("github", "1").await.unwrap(),
        Some(link.clone())
    );
    let other = self::user(&db).await;
    assert_conflict(
        db.link_oauth(OAuthLink {
            user_id: other.id,
            ..link
        })
        .await,
    );
    assert_invalid(
        db.link_oauth(OAuthLink {
            provider: "github".into(),
            provider_id: "2".into(),
            user_id: UserId::new(),
            email: String::new(),
            created_at: now(),
        })
        .await,
    );
}

async fn admin_permissions_are_granted_idempotently_and_listed_sorted(db: Db) {
    let user = user(&db).await;
    assert!(db.list_admin_permissions(user.id).await.unwrap().is_empty());
    db.grant_admin_permission(user.id, "templates")
        .await
        .unwrap();
    db.grant_admin_permission(user.id, "hosts").await.unwrap();
    db.grant_admin_permission(user.id, "hosts").await.unwrap();
    assert_eq!(
        db.list_admin_permissions(user.id).await.unwrap(),
        ["hosts", "templates"]
    );
}

conformance_tests!(
    users_are_found_by_id_and_by_email_in_any_case,
    duplicate_emails_conflict_whatever_their_case,
    oauth_users_have_no_password,
    names_passwords_and_statuses_update,
    unknown_users_are_not_found,
    revoking_the_last_admin_is_a_conflict,
    a_password_is_replaced_only_while_it_is_the_expected_one,
    activation_is_spent_once_bound_to_the_password_and_makes_the_first_admin,
    simultaneous_first_activations_make_exactly_one_admin,
    an_owner_with_members_is_not_deleted_and_no_one_joins_a_deleted_owners_team,
    an_account_deletion_racing_a_new_member_never_leaves_a_team_without_its_owner,
    soft_deleting_a_user_hides_them_and_removes_their_api_keys,
    email_prefix_search_ignores_case_and_treats_wildcards_literally,
    list_users_pages_newest_first,
    users_deleted_before_a_cutoff_are_listed,
    hard_deleting_a_user_anonymises_their_audit_trail,
    hard_deleting_a_user_removes_memberships_oauth_links_and_admin_permissions,
    hard_deleting_a_user_keeps_their_api_keys_hosts_and_host_tokens_without_creator,
    oauth_identities_link_once,
    admin_permissions_are_granted_idempotently_and_listed_sorted,
);
