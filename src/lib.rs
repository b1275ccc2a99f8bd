//! Wrenn: isolated sandboxes for AI agents and developers.
//!
//! This umbrella crate re-exports the crate family so an application can depend on
//! one crate:
//! - [`core`] — domain, lifecycle, schedulers, auth, events and the backend traits;
//! - [`proto`] — the `hostagent.v1` and `envd.v1` wire protocols;
//! - [`db`] — the PostgreSQL and SQLite stores.

pub use wrenn_core as core;
pub use wrenn_db as db;
pub use wrenn_proto as proto;
