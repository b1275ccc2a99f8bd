//! Wrenn's domain: typed ids, the sandbox lifecycle, scheduling, authentication,
//! audit, events, host paths, configuration, validation — and the traits that every
//! storage, event and host-agent backend implements. No database, HTTP or gRPC code
//! lives here.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod config;
pub mod data_plane;
pub mod events;
pub mod host_api;
pub mod id;
pub mod layout;
pub mod lifecycle;
pub mod model;
pub mod repo;
pub mod report;
pub mod scheduler;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;
