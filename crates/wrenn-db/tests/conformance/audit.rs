//! AuditSink + AuditRepo: writing and keyset-paginated reading.

use std::collections::BTreeSet;

use crate::fixtures::*;
use serde_json::json;
use wrenn_core::audit::{
    Actor, ActorKind, AuditCursor, AuditEntry, AuditQuery, AuditRecord, AuditScope, AuditStatus,
};
use wrenn_core::id::{ApiKeyId, AuditLogId, TeamId};

fn query(team: TeamId) -> AuditQuery {
    AuditQuery {
        team_id: team,
        scopes: vec![AuditScope::Team, AuditScope::Admin],
        resource_type: None,
        action: None,
        before: None,
        limit: 50,
    }
}

fn cursor(record: &AuditRecord) -> AuditCursor {
    AuditCursor {
        created_at: record.created_at,
        id: record.id,
    }
}

async fn record_many(db: &Db, team: TeamId, n: usize) -> Vec<AuditRecord> {
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let entry = AuditEntry::new(
            team,
            Actor::system(),
            "sandbox",
            Some(format!("cl-{i}")),
            "create",
        );
        records.push(db.record(entry).await.unwrap());
    }
    records
}

async fn audit_entries_round_trip(db: Db) {
    let (owner, team) = owned_team(&db).await;
    let entry = AuditEntry::new(
        team.id,
        Actor::user(owner.id, &owner.email),
        "api_key",
        Some(ApiKeyId::new().to_string()),
        "create",
    )
    .scope(AuditScope::Admin)
    .status(AuditStatus::Warning)
    .metadata(json!({"name": "ci", "nested": {"n": 1}}));
    let stored = db.record(entry.clone()).await.unwrap();
    assert_eq!(stored.entry, entry);
    let system = db
        .record(AuditEntry::new(
            team.id,
            Actor::system(),
            "host",
            None,
            "marked_down",
        ))
        .await
        .unwrap();
    assert_eq!(system.entry.actor.kind, ActorKind::System);
    assert_eq!(system.entry.actor.id, None);
    assert_eq!(system.entry.metadata, json!({}));
    let key = db
        .record(
            AuditEntry::new(
                team.id,
                Actor::api_key(ApiKeyId::new(), "ci"),
                "sandbox",
                None,
                "pause",
            )
            .metadata(serde_json::Value::Null),
        )
        .await
        .unwrap();
    assert_eq!(key.entry.actor.kind, ActorKind::ApiKey);
    assert_eq!(
        key.entry.metadata,
        json!({}),
        "null metadata is stored as {{}}"
    );

    let listed = db.list_audit_logs(&query(team.id)).await.unwrap();
    assert_eq!(listed, [key, system, stored]);
}

async fn audit_listing_filters_by_team_scope_resource_and_action(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let team_scoped = db
        .record(AuditEntry::new(
            team.id,
            Actor::system(),
            "sandbox",
            None,
            "create",
        ))
        .await
        .unwrap();
    let admin_scoped = db
        .record(
            AuditEntry::new(team.id, Actor::system(), "member", None, "add")
                .scope(AuditScope::Admin),
        )
        .await
        .unwrap();
    let paused = db
        .record(AuditEntry::new(
            team.id,
            Actor::system(),
            "sandbox",
            None,
            "pause",
        ))
        .await
        .unwrap();
    db.record(AuditEntry::new(
        other.id,
        Actor::system(),
        "sandbox",
        None,
        "create",
    ))
    .await
    .unwrap();

    let ids = |records: Vec<AuditRecord>| {
        records
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<AuditLogId>>()
    };
    let members_view = AuditQuery {
        scopes: vec![AuditScope::Team],
        ..query(team.id)
    };
    assert_eq!(
        ids(db.list_audit_logs(&members_view).await.unwrap()),
        [paused.id, team_scoped.id]
    );
    let sandboxes = AuditQuery {
        resource_type: Some("sandbox".into()),
        ..query(team.id)
    };
    assert_eq!(
        ids(db.list_audit_logs(&sandboxes).await.unwrap()),
        [paused.id, team_scoped.id]
    );
    let creates = AuditQuery {
        resource_type: Some("sandbox".into()),
        action: Some("create".into()),
        ..query(team.id)
    };
    assert_eq!(
        ids(db.list_audit_logs(&creates).await.unwrap()),
        [team_scoped.id]
    );
    let admin = AuditQuery {
        scopes: vec![AuditScope::Admin],
        ..query(team.id)
    };
    assert_eq!(
        ids(db.list_audit_logs(&admin).await.unwrap()),
        [admin_scoped.id]
    );
    let nothing = AuditQuery {
        scopes: vec![],
        ..query(team.id)
    };
    assert!(db.list_audit_logs(&nothing).await.unwrap().is_empty());
}

async fn keyset_pagination_walks_every_record_once_newest_first(db: Db) {
    let (_, team) = owned_team(&db).await;
    let written = record_many(&db, team.id, 120).await;
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = db
            .list_audit_logs(&AuditQuery {
                before,
                ..query(team.id)
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        pages += 1;
        assert!(page.len() <= 50);
        before = page.last().map(cursor);
        seen.extend(page);
    }
    assert_eq!(pages, 3, "50 + 50 + 20");
    assert_eq!(seen.len(), 120, "no gaps");
    let unique: BTreeSet<AuditLogId> = seen.iter().map(|r| r.id).collect();
    assert_eq!(unique.len(), 120, "no duplicates");
    for pair in seen.windows(2) {
        assert!(
            (pair[0].created_at, pair[0].id) > (pair[1].created_at, pair[1].id),
            "strictly descending"
        );
    }
    let mut expected = written;
    expected.reverse();
    assert_eq!(seen.first(), expected.first());
}

async fn the_keyset_breaks_timestamp_ties_by_id(db: Db) {
    let (_, team) = owned_team(&db).await;
    let written = record_many(&db, team.id, 3).await;
    // A cursor at the newest record's time with the greatest possible id must still
    // return that record (same time, smaller id) and everything older.
    let newest = written.iter().max_by_key(|r| (r.created_at, r.id)).unwrap();
    let before = AuditCursor {
        created_at: newest.created_at,
        id: AuditLogId::from_uuid(uuid::Uuid::max()),
    };
    let page = db
        .list_audit_logs(&AuditQuery {
            before: Some(before),
            ..query(team.id)
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
    let before = AuditCursor {
        created_at: newest.created_at,
        id: AuditLogId::from_uuid(uuid::Uuid::nil()),
    };
    let page = db
        .list_audit_logs(&AuditQuery {
            before: Some(before),
            ..query(team.id)
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
}

async fn audit_page_sizes_are_clamped(db: Db) {
    let (_, team) = owned_team(&db).await;
    record_many(&db, team.id, 205).await;
    let size = |limit| {
        let db = db.clone();
        async move {
            db.list_audit_logs(&AuditQuery {
                limit,
                ..query(team.id)
            })
            .await
            .unwrap()
            .len()
        }
    };
    assert_eq!(size(0).await, 50, "0 means the default page");
    assert_eq!(size(1).await, 1);
    assert_eq!(size(200).await, 200);
    assert_eq!(size(5_000).await, 200, "at most 200");
}

conformance_tests!(
    audit_entries_round_trip,
    audit_listing_filters_by_team_scope_resource_and_action,
    keyset_pagination_walks_every_record_once_newest_first,
    the_keyset_breaks_timestamp_ties_by_id,
    audit_page_sizes_are_clamped,
);
