//! Wrenn: isolated sandboxes for AI agents and developers.
//!
//! This umbrella crate re-exports the crate family so an application can depend on
//! one crate:
//! - [`core`] — domain, lifecycle, schedulers, auth, events and the backend traits;
//! - [`proto`] — the `hostagent.v1` and `envd.v1` wire protocols;
//! - [`db`] — the PostgreSQL and SQLite stores;
//! - [`cpserver`] and [`extension`] — the control plane and its extension surface;
//! - [`dev`] — `wrenn dev`, the platform on its embedded defaults;
//! - [`image`] — `wrenn image build`, the default capsule image.

pub use wrenn_core as core;
pub use wrenn_cpserver as cpserver;
pub use wrenn_db as db;
pub use wrenn_extension as extension;
pub use wrenn_proto as proto;

pub mod dev;
pub mod image;
pub mod shipped_templates;
