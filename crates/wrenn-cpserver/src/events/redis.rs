//! (being written) Redis Streams implementation of the event bus.

use wrenn_core::events::EventBusError;

/// Redis Streams event bus.
#[derive(Debug)]
pub struct RedisBus;

impl RedisBus {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Self, EventBusError> {
        Err(EventBusError::Unavailable(format!("redis bus for {url} is being written")))
    }
}

impl RedisBus {}

#[async_trait::async_trait]
impl wrenn_core::events::EventBus for RedisBus {
    async fn publish(&self, _: &str, _: &wrenn_core::events::Event) -> Result<wrenn_core::events::EventId, EventBusError> {
        Err(EventBusError::Unavailable("being written".into()))
    }
    async fn create_group(&self, _: &str, _: &str) -> Result<(), EventBusError> {
        Err(EventBusError::Unavailable("being written".into()))
    }
    async fn read_group(&self, _: &str, _: &str, _: &str, _: usize, _: std::time::Duration) -> Result<Vec<wrenn_core::events::Delivery>, EventBusError> {
        Err(EventBusError::Unavailable("being written".into()))
    }
    async fn ack(&self, _: &str, _: &str, _: &[wrenn_core::events::EventId]) -> Result<u64, EventBusError> {
        Err(EventBusError::Unavailable("being written".into()))
    }
    async fn claim_stale(&self, _: &str, _: &str, _: &str, _: std::time::Duration, _: usize) -> Result<Vec<wrenn_core::events::Delivery>, EventBusError> {
        Err(EventBusError::Unavailable("being written".into()))
    }
    async fn read_after(&self, _: &str, _: Option<&wrenn_core::events::EventId>, _: usize, _: std::time::Duration) -> Result<Vec<wrenn_core::events::Delivery>, EventBusError> {
        Err(EventBusError::Unavailable("being written".into()))
    }
    async fn last_id(&self, _: &str) -> Result<Option<wrenn_core::events::EventId>, EventBusError> {
        Err(EventBusError::Unavailable("being written".into()))
    }
}
