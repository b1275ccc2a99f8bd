//! The request-timing middleware: `wrenn_http_request_duration_seconds`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::HistogramVec;

/// `route` label of requests that no route took (dashboard files, 404s).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Middleware (applied with `Router::layer`, so that it runs inside the routing and
/// sees the [`MatchedPath`]) that times each request until its response headers.
/// The `route` label is the route template, never the raw path, so its values are
/// as few as the routes.
pub(crate) async fn track(
    State(histogram): State<HistogramVec>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    histogram
        .with_label_values(&[
            method,
            route.as_deref().unwrap_or(UNMATCHED_ROUTE),
            response.status().as_str(),
        ])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: the standard methods by name, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(method_label(&Method::TRACE), "other");
    }
}
