//! ChannelRepo: notification channels.

use std::collections::BTreeMap;

use crate::fixtures::*;
use chrono::Duration;
use serde_json::json;
use wrenn_core::id::{ChannelId, TeamId};
use wrenn_core::model::{Channel, ChannelDeadLetter};

fn channel(team: TeamId, name: &str, events: &[&str]) -> Channel {
    Channel {
        id: ChannelId::new(),
        team_id: team,
        name: name.into(),
        provider: "webhook".into(),
        config: BTreeMap::from([
            ("url".into(), "enc:abc".into()),
            ("secret".into(), "enc:def".into()),
        ]),
        event_types: events.iter().map(|e| (*e).to_owned()).collect(),
        created_at: now(),
        updated_at: now(),
    }
}

async fn channels_round_trip_and_list_by_name(db: Db) {
    let (_, team) = owned_team(&db).await;
    let b = db
        .create_channel(channel(team.id, "b-ops", &["host.down"]))
        .await
        .unwrap();
    let a = db
        .create_channel(channel(team.id, "a-dev", &[]))
        .await
        .unwrap();
    assert_eq!(db.get_channel(team.id, b.id).await.unwrap(), b);
    assert_eq!(db.list_channels(team.id).await.unwrap(), [a, b]);
}

async fn channels_are_found_by_subscribed_event_type(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let both = db
        .create_channel(channel(
            team.id,
            "both",
            &["capsule.created", "capsule.paused"],
        ))
        .await
        .unwrap();
    let created = db
        .create_channel(channel(team.id, "created", &["capsule.created"]))
        .await
        .unwrap();
    db.create_channel(channel(team.id, "none", &[]))
        .await
        .unwrap();
    db.create_channel(channel(other.id, "theirs", &["capsule.created"]))
        .await
        .unwrap();

    let found = db
        .list_channels_for_event(team.id, "capsule.created")
        .await
        .unwrap();
    assert_eq!(found, [both.clone(), created]);
    assert_eq!(
        db.list_channels_for_event(team.id, "capsule.paused")
            .await
            .unwrap(),
        [both]
    );
    assert!(
        db.list_channels_for_event(team.id, "capsule")
            .await
            .unwrap()
            .is_empty(),
        "whole values only"
    );
    assert!(
        db.list_channels_for_event(team.id, "host.up")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn duplicate_channel_names_conflict_within_a_team(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    db.create_channel(channel(team.id, "alerts", &[]))
        .await
        .unwrap();
    assert_conflict(db.create_channel(channel(team.id, "alerts", &[])).await);
    db.create_channel(channel(other.id, "alerts", &[]))
        .await
        .unwrap();
    assert_invalid(
        db.create_channel(channel(TeamId::new(), "alerts", &[]))
            .await,
    );
}

async fn channels_are_scoped_to_their_team(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let ch = db
        .create_channel(channel(team.id, "alerts", &[]))
        .await
        .unwrap();
    assert_not_found(db.get_channel(other.id, ch.id).await);
    assert!(!db.delete_channel(other.id, ch.id).await.unwrap());
    assert!(db.delete_channel(team.id, ch.id).await.unwrap());
    assert!(!db.delete_channel(team.id, ch.id).await.unwrap());
    assert_not_found(db.get_channel(team.id, ch.id).await);
}

async fn channels_are_renamed_and_resubscribed(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let ch = db
        .create_channel(channel(team.id, "alerts", &["host.down"]))
        .await
        .unwrap();
    db.create_channel(channel(team.id, "taken", &[]))
        .await
        .unwrap();
    let later = ch.updated_at + Duration::seconds(5);
    let events = vec!["capsule.created".to_owned(), "host.up".to_owned()];
    let renamed = db
        .update_channel(team.id, ch.id, "ops", &events, later)
        .await
        .unwrap();
    assert_eq!(renamed.name, "ops");
    assert_eq!(renamed.event_types, events);
    assert_eq!(renamed.updated_at, later);
    assert_eq!(renamed.created_at, ch.created_at);
    assert_eq!(renamed.config, ch.config, "the config is untouched");
    assert_eq!(db.get_channel(team.id, ch.id).await.unwrap(), renamed);
    assert_eq!(
        db.list_channels_for_event(team.id, "host.up")
            .await
            .unwrap(),
        std::slice::from_ref(&renamed)
    );
    assert_conflict(
        db.update_channel(team.id, ch.id, "taken", &events, later)
            .await,
    );
    assert_not_found(
        db.update_channel(other.id, ch.id, "x", &events, later)
            .await,
    );
    assert_not_found(
        db.update_channel(team.id, ChannelId::new(), "x", &events, later)
            .await,
    );
    assert_eq!(db.get_channel(team.id, ch.id).await.unwrap(), renamed);
}

async fn channel_configs_are_replaced(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let ch = db
        .create_channel(channel(team.id, "alerts", &["host.down"]))
        .await
        .unwrap();
    let config = BTreeMap::from([("url".to_owned(), "enc:new".to_owned())]);
    let later = ch.updated_at + Duration::seconds(1);
    let updated = db
        .update_channel_config(team.id, ch.id, &config, later)
        .await
        .unwrap();
    assert_eq!(updated.config, config);
    assert_eq!(updated.updated_at, later);
    assert_eq!(
        (updated.name.as_str(), &updated.event_types),
        ("alerts", &ch.event_types)
    );
    assert_not_found(
        db.update_channel_config(other.id, ch.id, &config, later)
            .await,
    );
    assert_eq!(db.get_channel(team.id, ch.id).await.unwrap(), updated);
}

fn dead_letter(ch: &Channel, delivery: uuid::Uuid, at_offset: i64) -> ChannelDeadLetter {
    ChannelDeadLetter {
        id: uuid::Uuid::new_v4(),
        channel_id: ch.id,
        team_id: ch.team_id,
        delivery_id: delivery,
        event_type: "capsule.created".into(),
        payload: json!({"event": "capsule.created", "resource": {"id": "cl-x", "type": "capsule"}}),
        attempts: 5,
        last_status: Some(500),
        error: "HTTP 500".into(),
        created_at: now() + Duration::seconds(at_offset),
    }
}

async fn dead_letters_are_listed_newest_first_once_per_delivery(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let ch = db
        .create_channel(channel(team.id, "alerts", &[]))
        .await
        .unwrap();
    let sibling = db
        .create_channel(channel(team.id, "sibling", &[]))
        .await
        .unwrap();
    let old = dead_letter(&ch, uuid::Uuid::new_v4(), 0);
    let mut new = dead_letter(&ch, uuid::Uuid::new_v4(), 1);
    new.last_status = None;
    new.error = "connection refused".into();
    db.record_channel_dead_letter(old.clone()).await.unwrap();
    db.record_channel_dead_letter(new.clone()).await.unwrap();
    // The same delivery again (a redelivered event): recorded once.
    let mut again = dead_letter(&ch, old.delivery_id, 2);
    again.error = "second".into();
    db.record_channel_dead_letter(again).await.unwrap();
    db.record_channel_dead_letter(dead_letter(&sibling, old.delivery_id, 0))
        .await
        .unwrap();

    let listed = db
        .list_channel_dead_letters(team.id, ch.id, 50)
        .await
        .unwrap();
    assert_eq!(listed, [new.clone(), old]);
    assert_eq!(
        db.list_channel_dead_letters(team.id, ch.id, 1)
            .await
            .unwrap(),
        [new]
    );
    assert!(
        db.list_channel_dead_letters(other.id, ch.id, 50)
            .await
            .unwrap()
            .is_empty(),
        "another team sees none"
    );
    assert_eq!(
        db.list_channel_dead_letters(team.id, sibling.id, 50)
            .await
            .unwrap()
            .len(),
        1
    );

    // Deleting the channel removes its dead letters; a dead letter for a channel that
    // is gone is refused.
    assert!(db.delete_channel(team.id, ch.id).await.unwrap());
    assert!(
        db.list_channel_dead_letters(team.id, ch.id, 50)
            .await
            .unwrap()
            .is_empty()
    );
    assert_invalid(
        db.record_channel_dead_letter(dead_letter(&ch, uuid::Uuid::new_v4(), 0))
            .await,
    );
}

conformance_tests!(
    channels_are_renamed_and_resubscribed,
    channel_configs_are_replaced,
    dead_letters_are_listed_newest_first_once_per_delivery,
    channels_round_trip_and_list_by_name,
    channels_are_found_by_subscribed_event_type,
    duplicate_channel_names_conflict_within_a_team,
    channels_are_scoped_to_their_team,
);
