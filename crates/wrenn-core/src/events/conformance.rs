//! The [`EventBus`] conformance suite. Every implementation runs it through
//! [`event_bus_conformance!`](crate::event_bus_conformance), which expands to one
//! `#[tokio::test]` per behaviour below, given an async expression producing a fresh
//! `Option<Arc<dyn EventBus>>` (`None` = backend unavailable, test skipped).
//!
//! Each check uses its own randomly named stream so implementations backed by a
//! shared server (Redis) need no cleanup between tests.

use std::sync::Arc;
use std::time::Duration;

use super::{Event, EventBus, SandboxEvent, SandboxEventKind};
use crate::id::{HostId, SandboxId};

/// A fresh stream name.
pub fn stream_name() -> String {
    format!("wrenn:test:{}", uuid::Uuid::new_v4().simple())
}

fn event(n: i64) -> Event {
    let mut e = SandboxEvent::new(SandboxEventKind::Started, SandboxId::new(), HostId::new());
    e.timestamp = n;
    Event::Sandbox(e)
}

fn stamp(e: &Event) -> i64 {
    match e {
        Event::Sandbox(s) => s.timestamp,
        Event::Platform(p) => p.timestamp.timestamp(),
    }
}

const NO_WAIT: Duration = Duration::from_millis(0);

/// A group created after some entries sees only later entries, in order.
pub async fn group_sees_only_entries_published_after_creation(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    bus.publish(&s, &event(0)).await.expect("publish");
    bus.create_group(&s, "g").await.expect("group");
    for n in 1..=3 {
        bus.publish(&s, &event(n)).await.expect("publish");
    }
    let got = bus
        .read_group(&s, "g", "c1", 10, NO_WAIT)
        .await
        .expect("read");
    assert_eq!(
        got.iter().map(|d| stamp(&d.event)).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(got.iter().all(|d| d.delivery_count == 1));
}

/// Creating a group twice keeps its position.
pub async fn creating_a_group_twice_is_harmless(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    bus.publish(&s, &event(1)).await.expect("publish");
    bus.create_group(&s, "g").await.expect("group again");
    let got = bus
        .read_group(&s, "g", "c", 10, NO_WAIT)
        .await
        .expect("read");
    assert_eq!(got.len(), 1);
}

/// Two groups each get every entry; two consumers of one group split them.
pub async fn groups_are_independent_and_consumers_share(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    bus.create_group(&s, "a").await.expect("group");
    bus.create_group(&s, "b").await.expect("group");
    for n in 0..4 {
        bus.publish(&s, &event(n)).await.expect("publish");
    }
    let a1 = bus
        .read_group(&s, "a", "c1", 2, NO_WAIT)
        .await
        .expect("read");
    let a2 = bus
        .read_group(&s, "a", "c2", 10, NO_WAIT)
        .await
        .expect("read");
    let b = bus
        .read_group(&s, "b", "c1", 10, NO_WAIT)
        .await
        .expect("read");
    assert_eq!(a1.len(), 2);
    assert_eq!(a2.len(), 2);
    assert_eq!(b.len(), 4);
    assert!(
        bus.read_group(&s, "a", "c3", 10, NO_WAIT)
            .await
            .expect("read")
            .is_empty()
    );
}

/// Reading from a group that does not exist is an error, not an empty read.
pub async fn reading_an_unknown_group_fails(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    bus.publish(&s, &event(1)).await.expect("publish");
    let err = bus.read_group(&s, "nope", "c", 1, NO_WAIT).await;
    assert!(err.is_err(), "expected an error, got {err:?}");
}

/// Unacknowledged entries can be claimed by another consumer after the idle time;
/// acknowledged ones cannot.
pub async fn unacked_entries_are_claimed_after_idle(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    bus.publish(&s, &event(1)).await.expect("publish");
    bus.publish(&s, &event(2)).await.expect("publish");
    let got = bus
        .read_group(&s, "g", "dead", 10, NO_WAIT)
        .await
        .expect("read");
    assert_eq!(got.len(), 2);
    assert_eq!(
        bus.ack(&s, "g", &[got[0].id.clone()]).await.expect("ack"),
        1
    );
    // Not idle long enough yet.
    let early = bus
        .claim_stale(&s, "g", "alive", Duration::from_secs(60), 10)
        .await
        .expect("claim");
    assert!(early.is_empty());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let claimed = bus
        .claim_stale(&s, "g", "alive", Duration::from_millis(10), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(stamp(&claimed[0].event), 2);
    assert_eq!(claimed[0].delivery_count, 2);
    assert_eq!(
        bus.ack(&s, "g", &[claimed[0].id.clone()])
            .await
            .expect("ack"),
        1
    );
    assert_eq!(
        bus.ack(&s, "g", &[claimed[0].id.clone()])
            .await
            .expect("ack"),
        0
    );
}

/// A blocked group read wakes up when an entry is published.
pub async fn blocked_read_wakes_on_publish(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    let reader = {
        let (bus, s) = (bus.clone(), s.clone());
        tokio::spawn(async move {
            bus.read_group(&s, "g", "c", 10, Duration::from_secs(5))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.publish(&s, &event(7)).await.expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(4), reader)
        .await
        .expect("woke in time")
        .expect("join")
        .expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(stamp(&got[0].event), 7);
}

/// A blocked read with nothing to read returns empty after the block time.
pub async fn blocked_read_times_out_empty(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    let got = bus
        .read_group(&s, "g", "c", 10, Duration::from_millis(50))
        .await
        .expect("read");
    assert!(got.is_empty());
}

/// Tail reads see entries after a position, or only new ones from `None`.
pub async fn tail_reads_follow_positions(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    assert_eq!(bus.last_id(&s).await.expect("last"), None);
    let first = bus.publish(&s, &event(1)).await.expect("publish");
    bus.publish(&s, &event(2)).await.expect("publish");
    let after = bus
        .read_after(&s, Some(&first), 10, NO_WAIT)
        .await
        .expect("read");
    assert_eq!(
        after.iter().map(|d| stamp(&d.event)).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(
        bus.last_id(&s).await.expect("last"),
        Some(after[0].id.clone())
    );
    let fresh = bus
        .read_after(&s, None, 10, Duration::from_millis(20))
        .await
        .expect("read");
    assert!(fresh.is_empty(), "None must mean only new entries");
    let tail = {
        let (bus, s) = (bus.clone(), s.clone());
        tokio::spawn(async move { bus.read_after(&s, None, 10, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.publish(&s, &event(3)).await.expect("publish");
    let got = tail.await.expect("join").expect("read");
    assert_eq!(
        got.iter().map(|d| stamp(&d.event)).collect::<Vec<_>>(),
        vec![3]
    );
}

/// Events survive the trip through the bus unchanged.
pub async fn events_round_trip_unchanged(bus: Arc<dyn EventBus>) {
    let s = stream_name();
    bus.create_group(&s, "g").await.expect("group");
    let mut e = SandboxEvent::new(SandboxEventKind::Failed, SandboxId::new(), HostId::new());
    e.error = Some("boom: \"quoted\" \n newline".into());
    e.host_ip = Some("10.0.0.1".into());
    let ev = Event::Sandbox(e);
    bus.publish(&s, &ev).await.expect("publish");
    let got = bus
        .read_group(&s, "g", "c", 1, NO_WAIT)
        .await
        .expect("read");
    assert_eq!(got[0].event, ev);
}

/// Expands to one `#[tokio::test]` per conformance check. `$make` is an async
/// expression evaluating to `Option<Arc<dyn EventBus>>`.
#[macro_export]
macro_rules! event_bus_conformance {
    ($make:expr) => {
        $crate::event_bus_conformance!(@tests $make;
            group_sees_only_entries_published_after_creation,
            creating_a_group_twice_is_harmless,
            groups_are_independent_and_consumers_share,
            reading_an_unknown_group_fails,
            unacked_entries_are_claimed_after_idle,
            blocked_read_wakes_on_publish,
            blocked_read_times_out_empty,
            tail_reads_follow_positions,
            events_round_trip_unchanged,
        );
    };
    (@tests $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(bus) = $make.await else { return };
                $crate::events::conformance::$name(bus).await;
            }
        )+
    };
}
