//! Events and the [`EventBus`] that carries them.
//!
//! The bus has Redis-Streams semantics: append-only named streams, consumer groups
//! that each see every entry once, per-consumer pending lists that must be
//! acknowledged, and claiming of entries left pending by a dead consumer. The
//! embedded default is [`InProcessBus`]; production uses Redis Streams
//! (`wrenn-cpserver`). Both pass the same conformance suite
//! (module `conformance`, feature `testing`).

use std::time::Duration;

mod in_process;
mod publisher;
mod types;

#[cfg(feature = "testing")]
pub mod conformance;

pub use in_process::{DEFAULT_MAX_LEN, InProcessBus};
pub use publisher::{MAX_BACKLOG, Publisher};
pub use types::{
    Event, EventResource, PLATFORM_STREAM, PlatformEvent, PlatformEventKind, SANDBOX_STREAM,
    SandboxEvent, SandboxEventKind,
};

/// Position of an entry in a stream (Redis form `ms-seq`). Ordered within a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub String);

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry handed to a reader.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Its position.
    pub id: EventId,
    /// The event.
    pub event: Event,
    /// How many times it has been delivered to a group consumer (1 on first delivery;
    /// 0 for plain tail reads).
    pub delivery_count: u32,
}

/// Bus failure.
#[derive(Debug, thiserror::Error)]
pub enum EventBusError {
    /// The consumer group does not exist.
    #[error("consumer group {group:?} does not exist on stream {stream:?}")]
    NoGroup {
        /// Stream.
        stream: String,
        /// Group.
        group: String,
    },
    /// An entry could not be encoded or decoded.
    #[error("malformed event: {0}")]
    Codec(String),
    /// An id given by the caller is not a valid position.
    #[error("invalid event id {0:?}")]
    InvalidId(String),
    /// The backend failed or is unreachable.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// An append-only event log with consumer groups.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends an event (the stream is created on first use) and returns its id.
    async fn publish(&self, stream: &str, event: &Event) -> Result<EventId, EventBusError>;

    /// Creates a consumer group that starts at the end of the stream (it sees only
    /// entries published afterwards). Idempotent.
    async fn create_group(&self, stream: &str, group: &str) -> Result<(), EventBusError>;

    /// Delivers up to `max` entries never delivered to the group before, to
    /// `consumer`, waiting up to `block` for the first one. Delivered entries stay
    /// pending for that consumer until [`EventBus::ack`].
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventBusError>;

    /// Acknowledges entries; returns how many were pending.
    async fn ack(&self, stream: &str, group: &str, ids: &[EventId]) -> Result<u64, EventBusError>;

    /// Transfers to `consumer` up to `max` entries that have been pending on any
    /// consumer of the group for at least `min_idle`, incrementing their delivery count.
    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, EventBusError>;

    /// Reads up to `max` entries after `after` (exclusive), or — when `after` is
    /// `None` — only entries published after this call, waiting up to `block`.
    /// Groups are not involved (for live tails such as SSE).
    async fn read_after(
        &self,
        stream: &str,
        after: Option<&EventId>,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventBusError>;

    /// The id of the newest entry, if any (a tail's starting point).
    async fn last_id(&self, stream: &str) -> Result<Option<EventId>, EventBusError>;
}
