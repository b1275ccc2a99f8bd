//! Assembles the HTTP router: core routes (with their OpenAPI document), extension
//! routes, extension middleware, and the layers every request goes through.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use wrenn_extension::{ApiError, Extension, ServerContext};

use crate::api;
use crate::ca::CertificateAuthority;
use crate::capsule_proxy::CapsuleProxy;
use crate::dashboard;
use crate::error::ServerError;
use crate::metrics::ControlPlaneMetrics;

/// The request id header.
const REQUEST_ID: &str = "x-request-id";

fn panic_response(payload: Box<dyn std::any::Any + Send>) -> Response {
    // The payload says what went wrong; the request's trace span says where.
    let message = panic_payload(payload.as_ref()).unwrap_or("a non-string payload");
    tracing::error!(panic = message, "handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal server error",
    )
    .into_response()
}

/// The message of a panic, when it panicked with one.
fn panic_payload(p: &(dyn std::any::Any + Send)) -> Option<&str> {
    p.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    panic_payload(p)
        .unwrap_or("unknown route conflict")
        .to_owned()
}

/// The full router for `ctx`, with `extensions` merged in and the dashboard answering
/// the paths outside the API that no route took (`app`).
pub fn build(
    ctx: &ServerContext,
    ca: Arc<CertificateAuthority>,
    extensions: &[Arc<dyn Extension>],
    version: &str,
    app: Option<Router>,
    metrics: &ControlPlaneMetrics,
) -> Result<Router, ServerError> {
    let limit = usize::try_from(ctx.config.max_body_bytes).unwrap_or(usize::MAX);
    let channels = crate::channels::ChannelService::from_config(&ctx.config)
        .map_err(|e| ServerError::Other(e.to_string()))?;
    let core = api::router(ctx, version, Arc::new(channels));
    // Platform admins drive the platform team's capsules through the same routes.
    let admin_capsules = api::admin_capsules::routes(
        ctx.clone(),
        core.clone().layer(DefaultBodyLimit::max(limit)),
    );
    let mut router = core.merge(admin_capsules).route(
        "/metrics",
        crate::metrics::api_endpoint(ctx.clone(), metrics.lifecycle.clone()),
    );
    for ext in extensions {
        let ext_routes = ext.routes(ctx);
        // axum refuses overlapping routes by panicking; turn that into a startup
        // error that names the extension and the route.
        let base = router.clone();
        router = std::panic::catch_unwind(AssertUnwindSafe(move || base.merge(ext_routes)))
            .map_err(|p| ServerError::Extension {
                extension: ext.name().to_owned(),
                message: format!(
                    "its routes clash with a core route: {}",
                    panic_message(p.as_ref())
                ),
            })?;
    }
    let mut router = router.fallback(move |req: Request| dashboard::fallback(app.clone(), req));
    for ext in extensions {
        router = ext.middleware(router, ctx);
    }
    // Inside the routing (`Router::layer` wraps each route and the fallback), so the
    // matched route template is known; outside the extensions' middleware, so what
    // they answer is timed too.
    let router = router.layer(axum::middleware::from_fn_with_state(
        metrics.http_requests.clone(),
        crate::metrics::track,
    ));
    let router = router
        // The host routes sign certificates with it (`api::hosts`).
        .layer(axum::Extension(Arc::clone(&ca)))
        .layer(DefaultBodyLimit::max(limit));
    // Capsule URLs (`{port}-{id}.{domain}`) never reach the API's routes, whatever their
    // path; their bodies are streamed, not limited.
    let proxy = Arc::new(CapsuleProxy::new(ctx, ca));
    Ok(proxy
        .wrap(ctx, router)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid)))
}

/// Every request's span: its id (`X-Request-Id`: the caller's, else a new UUID, sent
/// back on the response) and its trace (continuing the caller's `traceparent`; calls
/// to host agents carry it on), so each log line names both.
fn request_span(req: &Request) -> tracing::Span {
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http.request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    wrenn_proto::telemetry::continue_trace(&span, req.headers());
    span
}
