//! Wrenn storage: every repository trait of [`wrenn_core::repo`] implemented with sqlx
//! for **PostgreSQL** ([`PgStore`]) and **SQLite** ([`SqliteStore`]), with the schema
//! embedded as one consolidated migration per backend (`migrations/postgres`,
//! `migrations/sqlite` at the workspace root).
//!
//! ```no_run
//! # async fn demo() -> Result<(), wrenn_db::DbError> {
//! // Picks the backend from the URL scheme and runs the migrations.
//! let store = wrenn_db::connect("sqlite::memory:").await?;
//! assert_eq!(store.backend(), "sqlite");
//! # Ok(()) }
//! ```
//!
//! # One query text, two backends
//!
//! Each repository module writes its SQL once, inside a `macro_rules!` body that is
//! expanded for both stores (see `backend.rs`). The SQL is the common subset of the
//! two dialects (numbered `$n` parameters, `RETURNING`, `ON CONFLICT`, row values);
//! the few fragments that differ (JSON merge/removal, JSON array tests, row locks,
//! how a write transaction begins, the database's clock) come from a small `Dialect`
//! trait. Timestamps are bound from Rust, never `NOW()` — except the expiry of worker
//! leases, which must not depend on the replicas' clocks and uses the database's —
//! and SQLite stores them in one fixed text format so that string order is time
//! order.
//!
//! # Errors
//!
//! Repository calls return [`wrenn_core::repo::RepoError`]: unique violations (and
//! the reserved-template-name trigger) are `Conflict`, foreign-key and check
//! violations `Invalid`, missing rows `NotFound`, undecodable stored values
//! `Corrupt`, anything else `Backend`. Setup calls ([`connect`], `migrate`) return
//! [`DbError`].

mod api_keys;
mod audit;
mod backend;
mod builds;
mod channels;
mod connect;
mod error;
mod hosts;
mod metrics;
mod postgres;
mod rows;
mod sandboxes;
mod sqlite;
mod teams;
mod templates;
mod timestamp;
mod users;
mod worker_leases;

#[cfg(feature = "testing")]
pub mod testing;

pub use connect::{ConnectOptions, connect, connect_with};
pub use error::DbError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
