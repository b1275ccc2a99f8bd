//! ChannelRepo: notification channels.

use std::collections::BTreeMap;

use crate::fixtures::*;
use wrenn_core::id::{ChannelId, TeamId};
use wrenn_core::model::Channel;

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

conformance_tests!(
    channels_round_trip_and_list_by_name,
    channels_are_found_by_subscribed_event_type,
    duplicate_channel_names_conflict_within_a_team,
    channels_are_scoped_to_their_team,
);
