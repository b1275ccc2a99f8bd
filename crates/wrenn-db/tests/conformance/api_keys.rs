//! ApiKeyRepo: team API keys.

use chrono::Duration;
use wrenn_core::auth::Role;
use wrenn_core::id::{ApiKeyId, TeamId, UserId};
use wrenn_core::model::ApiKey;

use crate::fixtures::*;

fn key(team: TeamId, created_by: Option<UserId>) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new(),
        team_id: team,
        name: "deploy".into(),
        key_hash: format!("{:064x}", uuid::Uuid::new_v4().as_u128()),
        key_prefix: "wrn_1a2b3c".into(),
        created_by,
        created_at: now(),
        last_used: None,
    }
}

async fn api_keys_are_found_by_hash_with_their_teams_byoc_flag(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let stored = db
        .create_api_key(key(team.id, Some(owner.id)))
        .await
        .unwrap();
    let found = db
        .get_api_key_by_hash(&stored.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.key, stored);
    assert!(!found.team_is_byoc);
    db.set_team_byoc(team.id, true).await.unwrap();
    assert!(
        db.get_api_key_by_hash(&stored.key_hash)
            .await
            .unwrap()
            .unwrap()
            .team_is_byoc
    );
    assert!(
        db.get_api_key_by_hash("no-such-hash")
            .await
            .unwrap()
            .is_none()
    );
}

async fn api_keys_of_deleted_teams_do_not_authenticate(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let stored = db
        .create_api_key(key(team.id, Some(owner.id)))
        .await
        .unwrap();
    db.soft_delete_team(team.id).await.unwrap();
    assert!(
        db.get_api_key_by_hash(&stored.key_hash)
            .await
            .unwrap()
            .is_none()
    );
}

async fn duplicate_api_key_hashes_conflict(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let first = db
        .create_api_key(key(team.id, Some(owner.id)))
        .await
        .unwrap();
    let mut clash = key(team.id, Some(owner.id));
    clash.key_hash = first.key_hash.clone();
    assert_conflict(db.create_api_key(clash).await);
    assert_invalid(db.create_api_key(key(TeamId::new(), None)).await);
}

async fn api_keys_list_newest_first_with_the_creators_email_even_once_the_creator_is_gone(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let colleague = user(&db).await;
    db.add_member(team.id, colleague.id, Role::Member)
        .await
        .unwrap();
    let mut older = key(team.id, Some(owner.id));
    older.created_at = now() - Duration::minutes(5);
    let older = db.create_api_key(older).await.unwrap();
    let newer = db
        .create_api_key(key(team.id, Some(colleague.id)))
        .await
        .unwrap();
    let orphan = db.create_api_key(key(team.id, None)).await.unwrap();
    let (_, other_team) = owned_team(&db).await;
    db.create_api_key(key(other_team.id, None)).await.unwrap();

    let listed = db.list_api_keys(team.id).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed.last().unwrap().key, older);
    let email_of = |id| {
        listed
            .iter()
            .find(|k| k.key.id == id)
            .unwrap()
            .creator_email
            .clone()
    };
    assert_eq!(email_of(older.id), Some(owner.email.clone()));
    assert_eq!(email_of(newer.id), Some(colleague.email.clone()));
    assert_eq!(email_of(orphan.id), None);

    // Hard deletion keeps the keys (soft deletion is what removes them) and the
    // LEFT JOIN still lists them, without an email.
    db.hard_delete_user(colleague.id).await.unwrap();
    let listed = db.list_api_keys(team.id).await.unwrap();
    assert_eq!(listed.len(), 3);
    let newer_now = listed.iter().find(|k| k.key.id == newer.id).unwrap();
    assert_eq!(newer_now.creator_email, None);
    assert_eq!(newer_now.key.created_by, None);
    assert_eq!(
        listed
            .iter()
            .find(|k| k.key.id == older.id)
            .unwrap()
            .creator_email,
        Some(owner.email.clone())
    );
}

async fn deleting_an_api_key_needs_its_own_team(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let stored = db
        .create_api_key(key(team.id, Some(owner.id)))
        .await
        .unwrap();
    assert!(!db.delete_api_key(other.id, stored.id).await.unwrap());
    assert!(db.delete_api_key(team.id, stored.id).await.unwrap());
    assert!(!db.delete_api_key(team.id, stored.id).await.unwrap());
    assert!(
        db.get_api_key_by_hash(&stored.key_hash)
            .await
            .unwrap()
            .is_none()
    );
}

async fn touching_api_keys_records_last_use_and_never_goes_back(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let a = db
        .create_api_key(key(team.id, Some(owner.id)))
        .await
        .unwrap();
    let b = db
        .create_api_key(key(team.id, Some(owner.id)))
        .await
        .unwrap();
    let t1 = now();
    let t0 = t1 - Duration::minutes(1);
    db.touch_api_keys(&[(a.id, t1), (b.id, t0), (ApiKeyId::new(), t1)])
        .await
        .unwrap();
    db.touch_api_keys(&[(a.id, t0)]).await.unwrap();
    db.touch_api_keys(&[]).await.unwrap();
    let last_used = |k: &ApiKey| k.last_used;
    let a = db
        .get_api_key_by_hash(&a.key_hash)
        .await
        .unwrap()
        .unwrap()
        .key;
    let b = db
        .get_api_key_by_hash(&b.key_hash)
        .await
        .unwrap()
        .unwrap()
        .key;
    assert_eq!(
        last_used(&a),
        Some(t1),
        "an older use does not overwrite a newer one"
    );
    assert_eq!(last_used(&b), Some(t0));
}

async fn deleting_api_keys_by_creator_spares_everyone_elses(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let colleague = user(&db).await;
    db.create_api_key(key(team.id, Some(colleague.id)))
        .await
        .unwrap();
    db.create_api_key(key(team.id, Some(colleague.id)))
        .await
        .unwrap();
    let kept = db
        .create_api_key(key(team.id, Some(owner.id)))
        .await
        .unwrap();
    assert_eq!(
        db.delete_api_keys_by_creator(colleague.id).await.unwrap(),
        2
    );
    assert_eq!(
        db.delete_api_keys_by_creator(colleague.id).await.unwrap(),
        0
    );
    let left: Vec<ApiKeyId> = db
        .list_api_keys(team.id)
        .await
        .unwrap()
        .iter()
        .map(|k| k.key.id)
        .collect();
    assert_eq!(left, [kept.id]);
}

conformance_tests!(
    api_keys_are_found_by_hash_with_their_teams_byoc_flag,
    api_keys_of_deleted_teams_do_not_authenticate,
    duplicate_api_key_hashes_conflict,
    api_keys_list_newest_first_with_the_creators_email_even_once_the_creator_is_gone,
    deleting_an_api_key_needs_its_own_team,
    touching_api_keys_records_last_use_and_never_goes_back,
    deleting_api_keys_by_creator_spares_everyone_elses,
);
