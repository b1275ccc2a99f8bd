//! The [`Extension`] trait: how an enterprise build adds routes, middleware,
//! workers and event hooks to the control plane.

use axum::Router;
use wrenn_core::events::SandboxEvent;

use crate::context::ServerContext;
use crate::worker::{Worker, WorkerError};

/// A feature added to the control plane by a crate that depends on
/// `wrenn-cpserver` + `wrenn-extension`:
///
/// ```no_run
/// # use std::sync::Arc;
/// # use wrenn_extension::{Extension, ServerContext};
/// struct Billing;
///
/// #[async_trait::async_trait]
/// impl Extension for Billing {
///     fn name(&self) -> &str { "billing" }
///     fn routes(&self, ctx: &ServerContext) -> axum::Router {
///         axum::Router::new().route("/v1/billing", axum::routing::get(|| async { "ok" }))
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Extension: Send + Sync + 'static {
    /// A short unique name (used in logs and startup errors).
    fn name(&self) -> &str;

    /// Routes merged into the server after the core routes. A route that clashes
    /// with a core route (same method and path) is a startup error naming both.
    /// Use the extractors of [`crate::auth`] to authenticate.
    fn routes(&self, ctx: &ServerContext) -> Router {
        let _ = ctx;
        Router::new()
    }

    /// Wraps the whole router (core and extension routes) in middleware, e.g.
    /// `router.layer(…)`. Applied in extension order; the default adds nothing.
    fn middleware(&self, router: Router, ctx: &ServerContext) -> Router {
        let _ = ctx;
        router
    }

    /// Background workers, supervised by the server: cancelled at shutdown and
    /// restarted with backoff when they fail.
    fn workers(&self, ctx: &ServerContext) -> Vec<Worker> {
        let _ = ctx;
        Vec::new()
    }

    /// Called by the event consumer for every sandbox event after the core has
    /// applied it. An error leaves the event unacknowledged, so it is delivered
    /// again (implementations must be idempotent).
    async fn on_sandbox_event(
        &self,
        ctx: &ServerContext,
        event: &SandboxEvent,
    ) -> Result<(), WorkerError> {
        let _ = (ctx, event);
        Ok(())
    }
}
