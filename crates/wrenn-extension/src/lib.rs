//! The surface an enterprise build of Wrenn codes against.
//!
//! An extension implements [`Extension`] and is handed to the server builder:
//!
//! ```ignore
//! wrenn_cpserver::run(Builder::from_env()?.with_extensions([Arc::new(Billing::new())])).await
//! ```
//!
//! It receives a [`ServerContext`] (store, lifecycle, scheduler, host agents and
//! connections to them, auth, audit, event bus, config, shutdown token), may add routes (authenticated with the
//! extractors of [`auth`]), wrap the router in middleware, run supervised
//! [`Worker`]s, and react to sandbox events. Errors use the one envelope of
//! [`ApiError`].

pub mod auth;
mod context;
mod error;
mod extension;
pub mod extract;
pub mod hosts;
mod mailer;
mod worker;

pub use auth::{
    AdminAuth, AuthContext, Authenticate, HostAuth, Principal, UserAuth, UserPrincipal,
};
pub use context::ServerContext;
pub use error::{ApiError, ApiResult};
pub use extension::Extension;
pub use hosts::HostConnections;
pub use mailer::{Email, MailError, Mailer};
/// The Prometheus client the [`ServerContext::metrics`] registry is of.
pub use prometheus;
pub use worker::{MIN_SINGLETON_TTL, Supervisor, Worker, WorkerError};
