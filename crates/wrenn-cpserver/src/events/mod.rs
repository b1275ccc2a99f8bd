//! Event bus backends owned by the control plane: Redis Streams.

mod redis;

pub use self::redis::RedisBus;
