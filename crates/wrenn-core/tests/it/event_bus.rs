//! The in-process bus passes the event-bus conformance suite.

use std::sync::Arc;

use wrenn_core::events::{EventBus, InProcessBus};

async fn bus() -> Option<Arc<dyn EventBus>> {
    Some(Arc::new(InProcessBus::new()))
}

wrenn_core::event_bus_conformance!(bus());

#[tokio::test]
async fn trimmed_entries_are_not_redelivered() {
    use std::time::Duration;
    use wrenn_core::events::{Event, SandboxEvent, SandboxEventKind};
    use wrenn_core::id::{HostId, SandboxId};
    let bus = InProcessBus::with_max_len(2);
    bus.create_group("s", "g").await.unwrap();
    let ev = Event::Sandbox(SandboxEvent::new(
        SandboxEventKind::Paused,
        SandboxId::new(),
        HostId::new(),
    ));
    bus.publish("s", &ev).await.unwrap();
    let first = bus
        .read_group("s", "g", "c", 1, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    for _ in 0..3 {
        bus.publish("s", &ev).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let claimed = bus
        .claim_stale("s", "g", "c2", Duration::ZERO, 10)
        .await
        .unwrap();
    assert!(claimed.is_empty(), "the pending entry was trimmed");
    let rest = bus
        .read_group("s", "g", "c", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2, "only the two retained entries remain");
}
