//! The schema itself: seeds, idempotent migrations, corrupt rows, backend names.

use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::repo::RepoError;
use wrenn_db::testing::TestStore;

use crate::fixtures::*;

async fn seed_rows_exist_after_migrate(db: Db) {
    let platform = db.get_team(PLATFORM_TEAM_ID).await.unwrap();
    assert_eq!(platform.name, "Platform");
    assert_eq!(platform.slug, "platform");
    assert!(!platform.is_byoc);
    assert!(platform.deleted_at.is_none());
    let minimal = db.get_template(BUILTIN_TEMPLATE_ID).await.unwrap();
    assert_eq!(minimal.name, "minimal");
    assert_eq!(minimal.team_id, PLATFORM_TEAM_ID);
    assert!(minimal.protected);
}

async fn migrating_twice_is_a_no_op(db: &TestStore) {
    let store = db.store();
    let (_, team) = owned_team(&store).await;
    db.migrate().await.expect("second migration");
    db.migrate().await.expect("third migration");
    assert_eq!(store.get_team(team.id).await.unwrap(), team);
    assert_eq!(
        store.list_all_templates().await.unwrap().len(),
        1,
        "seeds are not duplicated"
    );
}

async fn the_store_names_its_backend(db: &TestStore) {
    assert!(matches!(db.store().backend(), "sqlite" | "postgres"));
    assert_eq!(db.store().backend(), db.backend());
}

async fn corrupt_rows_are_reported_not_panicked_on(db: &TestStore) {
    let store = db.store();
    let (_, team) = owned_team(&store).await;
    let host = host(&store, None).await;
    let sb = sandbox(&store, team.id, host.id, SandboxStatus::Running).await;
    let changed = db
        .execute("UPDATE sandboxes SET status = 'exploded'")
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let err = store.get_sandbox(sb.id).await.unwrap_err();
    assert!(
        matches!(err, RepoError::Corrupt(ref msg) if msg.contains("exploded")),
        "{err:?}"
    );
    assert!(matches!(
        store.list_sandboxes(team.id).await,
        Err(RepoError::Corrupt(_))
    ));

    db.execute("UPDATE sandboxes SET status = 'running', metadata = '{\"n\": 1}'")
        .await
        .unwrap();
    let err = store.get_sandbox(sb.id).await.unwrap_err();
    assert!(
        matches!(err, RepoError::Corrupt(_)),
        "non-string metadata: {err:?}"
    );
    assert_not_found(store.get_sandbox(SandboxId::new()).await);
}

async fn team_slugs_cannot_be_changed_even_by_hand(db: &TestStore) {
    let store = db.store();
    let (_, team) = owned_team(&store).await;
    let sql = format!(
        "UPDATE teams SET slug = 'changed' WHERE slug = '{}'",
        team.slug
    );
    assert!(
        db.execute(&sql).await.is_err(),
        "the trigger refuses slug changes"
    );
    assert_eq!(store.get_team(team.id).await.unwrap().slug, team.slug);
}

async fn timestamps_are_stored_in_one_sortable_format(db: &TestStore) {
    let store = db.store();
    let (owner, team) = owned_team(&store).await;
    let host = online_host(&store, "10.0.0.1:1").await;
    let sb = sandbox(&store, team.id, host.id, SandboxStatus::Starting).await;
    store
        .running_if(
            sb.id,
            SandboxStatus::Starting,
            "10.0.0.1",
            &Default::default(),
        )
        .await
        .unwrap();
    store.soft_delete_user(owner.id).await.unwrap();
    let columns = [
        ("teams", "created_at"),
        ("users", "created_at"),
        ("users", "deleted_at"),
        ("users_teams", "created_at"),
        ("hosts", "last_heartbeat_at"),
        ("sandboxes", "created_at"),
        ("sandboxes", "started_at"),
        ("sandboxes", "last_updated"),
    ];
    // SQLite: fixed-width UTC text with exactly six fractional digits, so that text
    // order is time order. Postgres: a real TIMESTAMPTZ column.
    let well_formed = match db.backend() {
        "sqlite" => {
            "GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]\
             .[0-9][0-9][0-9][0-9][0-9][0-9]Z'"
        }
        _ => "IS NOT NULL AND pg_typeof({c}) = 'timestamp with time zone'::regtype",
    };
    for (table, column) in columns {
        let predicate = well_formed.replace("{c}", column);
        let good = db
            .execute(&format!(
                "UPDATE {table} SET {column} = {column} WHERE {column} {predicate}"
            ))
            .await
            .unwrap();
        let all = db
            .execute(&format!(
                "UPDATE {table} SET {column} = {column} WHERE {column} IS NOT NULL"
            ))
            .await
            .unwrap();
        assert!(good > 0, "{table}.{column} has no values");
        assert_eq!(good, all, "{table}.{column} has values in another format");
    }
}

conformance_tests!(seed_rows_exist_after_migrate);
conformance_tests!(
    @test_store
    migrating_twice_is_a_no_op,
    the_store_names_its_backend,
    corrupt_rows_are_reported_not_panicked_on,
    team_slugs_cannot_be_changed_even_by_hand,
    timestamps_are_stored_in_one_sortable_format,
);
