//! The Wrenn control plane.
//!
//! ```no_run
//! # async fn main_() -> Result<(), wrenn_cpserver::ServerError> {
//! use wrenn_cpserver::Builder;
//! wrenn_cpserver::run(Builder::from_env()?).await
//! # }
//! ```
//!
//! [`Builder`] assembles the server from configuration, and lets an embedder
//! replace any part (store, event bus, scheduler, host agents, audit sink, mailer)
//! and add [`wrenn_extension::Extension`]s. [`run`] serves until SIGTERM/SIGINT;
//! [`serve`] serves on a given listener until a given future resolves.

pub mod accounts;
mod api;
pub mod authenticator;
mod builder;
pub mod builds;
pub mod ca;
pub mod capsule_proxy;
pub mod channels;
pub mod dashboard;
mod error;
pub mod events;
pub mod host_admin;
pub mod host_channels;
pub mod host_data_plane;
pub mod host_identity;
pub mod host_pool;
pub mod logging;
pub mod mailer;
pub mod metrics;
mod router;
pub mod secrets;
mod server;
pub mod teams;
pub mod templates;
mod testing;
pub mod workers;

pub use builder::Builder;
pub use error::ServerError;
pub use server::{Server, run, serve, shutdown_signal};
pub use wrenn_extension as extension;
