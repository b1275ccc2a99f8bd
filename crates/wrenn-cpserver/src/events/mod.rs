//! Event bus backends owned by the control plane: Redis Streams ([`RedisBus`]).
//!
//! The embedded default, `wrenn_core::events::InProcessBus`, lives in `wrenn-core`;
//! both pass the same conformance suite.

mod redis;

pub use self::redis::{PAYLOAD_FIELD, RedisBus};
