//! The web dashboard: a single-page app served at `/` next to the API.
//!
//! The app's source is `dashboard/` at the repository root; `npm run build` there writes
//! the bundle into this crate's `dashboard-dist/`, which is committed and embedded
//! with `rust-embed` when the `dashboard` feature is on (the default), so building
//! the control plane needs no Node. [`crate::Builder::without_dashboard`] turns it off
//! and [`crate::Builder::with_dashboard`] serves another router in its place.
//!
//! Whatever serves the dashboard only sees requests no API route took, outside the
//! API's own prefixes: `/v1/…`, `/docs/…` and `/openapi.json` keep answering the JSON
//! 404 envelope (see [`is_api_path`]).

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use wrenn_extension::ApiError;

/// Whether `path` belongs to the API (whose unknown routes answer JSON 404s), not to
/// the dashboard.
pub fn is_api_path(path: &str) -> bool {
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    under("/v1") || under("/docs") || path == "/openapi.json"
}

/// The fallback of the control plane's router: an API path nobody serves is a JSON
/// 404; anything else goes to `dashboard`, if there is one.
pub(crate) async fn fallback(dashboard: Option<Router>, req: Request) -> Response {
    match dashboard {
        Some(app) if !is_api_path(req.uri().path()) => match app.oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        _ => ApiError::not_found("route").into_response(),
    }
}

/// What [`crate::Builder`] serves outside the API.
#[derive(Clone, Default)]
pub(crate) enum DashboardChoice {
    /// The embedded app when the `dashboard` feature is on, else nothing.
    #[default]
    Default,
    /// The embedder's router.
    Custom(Router),
    /// Nothing: every path outside the API is a JSON 404.
    Disabled,
}

impl DashboardChoice {
    /// The router to fall back to, if any.
    pub(crate) fn into_router(self) -> Option<Router> {
        match self {
            #[cfg(feature = "dashboard")]
            Self::Default => Some(embedded::router()),
            #[cfg(not(feature = "dashboard"))]
            Self::Default => None,
            Self::Custom(router) => Some(router),
            Self::Disabled => None,
        }
    }
}

#[cfg(feature = "dashboard")]
pub use embedded::router as embedded_router;

#[cfg(feature = "dashboard")]
mod embedded {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::{Arc, OnceLock};

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use rust_embed::{EmbeddedFile, RustEmbed};
    use wrenn_extension::ApiError;

    /// The built bundle (`npm run build` in `dashboard/`).
    #[derive(RustEmbed)]
    #[folder = "dashboard-dist/"]
    struct Bundle;

    /// The page every app route loads.
    const INDEX: &str = "index.html";

    /// Where Vite puts content-hashed files; they never change under their name.
    const HASHED_DIR: &str = "assets/";

    /// What the page may load and talk to: its own origin only (no CDN, no fonts from
    /// elsewhere); inline styles for the terminal's and the charts' computed sizes.
    const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
        style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; \
        connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
        frame-ancestors 'none'";

    /// The embedded dashboard: its files under their paths (hashed assets cached for
    /// good), and `index.html` for every other path, so that the app's own routes
    /// (`/capsules/cl-…`) load it too.
    pub fn router() -> Router {
        let gzipped = Gzipped::default();
        // Compress ahead, off the request path: the first visitor should not wait.
        let fill = gzipped.clone();
        std::thread::spawn(move || fill.get_or_init(gzip_bundle).len());
        Router::new().fallback(serve).with_state(gzipped)
    }

    /// The gzip of every compressible bundle file, made once per router.
    type Gzipped = Arc<OnceLock<HashMap<String, Bytes>>>;

    async fn serve(
        State(gzipped): State<Gzipped>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response {
        if method != Method::GET && method != Method::HEAD {
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the dashboard only answers GET and HEAD",
            )
            .into_response();
        }
        let path = uri.path().trim_start_matches('/');
        if !path.is_empty()
            && path != INDEX
            && let Some(file) = Bundle::get(path)
        {
            return file_response(path, &file, &headers, &gzipped);
        }
        if path.starts_with(HASHED_DIR) {
            // A stale page asking for an asset of an older build: HTML would not do.
            return (StatusCode::NOT_FOUND, "no such dashboard asset").into_response();
        }
        match Bundle::get(INDEX) {
            Some(file) => file_response(INDEX, &file, &headers, &gzipped),
            None => (
                StatusCode::NOT_FOUND,
                "the dashboard bundle has no index.html",
            )
                .into_response(),
        }
    }

    /// Whether a file of this media type is worth compressing.
    fn compressible(content_type: &str) -> bool {
        content_type.starts_with("text/")
            || content_type.starts_with("application/json")
            || content_type.starts_with("image/svg")
    }

    /// The gzip of every compressible bundle file that gzip makes smaller.
    fn gzip_bundle() -> HashMap<String, Bytes> {
        Bundle::iter()
            .filter(|path| compressible(content_type(path)))
            .filter_map(|path| {
                let file = Bundle::get(&path)?;
                let mut gz = GzEncoder::new(Vec::new(), Compression::best());
                gz.write_all(&file.data).ok()?;
                let packed = gz.finish().ok()?;
                (packed.len() < file.data.len()).then(|| (path.into_owned(), Bytes::from(packed)))
            })
            .collect()
    }

    /// Whether the client takes gzip (`Accept-Encoding`, not refused with `q=0`).
    pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|coding| {
                let mut parts = coding.split(';').map(str::trim);
                let name = parts.next().unwrap_or_default();
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
            })
    }

    fn file_response(
        path: &str,
        file: &EmbeddedFile,
        headers: &HeaderMap,
        gzipped: &Gzipped,
    ) -> Response {
        let kind = content_type(path);
        let gzipped = if accepts_gzip(headers) {
            gzipped.get_or_init(gzip_bundle).get(path)
        } else {
            None
        };
        let hash = hex::encode(&file.metadata.sha256_hash()[..16]);
        // Each encoding is a representation of its own (RFC 9110 §8.8.3).
        let etag = if gzipped.is_some() {
            format!("\"{hash}-gzip\"")
        } else {
            format!("\"{hash}\"")
        };
        let cache = if path.starts_with(HASHED_DIR) {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let mut builder = Response::builder()
            .header(header::ETAG, &etag)
            .header(header::CACHE_CONTROL, cache)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        if compressible(kind) {
            builder = builder.header(header::VARY, "accept-encoding");
        }
        if path == INDEX {
            builder = builder
                .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
                .header(header::REFERRER_POLICY, "no-referrer")
                .header(header::X_FRAME_OPTIONS, "DENY");
        }
        let built = if fresh {
            builder.status(StatusCode::NOT_MODIFIED).body(Body::empty())
        } else {
            builder = builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            match gzipped {
                Some(gz) => builder
                    .header(header::CONTENT_ENCODING, "gzip")
                    .body(Body::from(gz.clone())),
                None => builder.body(Body::from(file.data.clone())),
            }
        };
        built.unwrap_or_else(|e| ApiError::internal(e).into_response())
    }

    /// The media type of a bundle file, by its extension.
    pub(super) fn content_type(path: &str) -> &'static str {
        let ext = path.rsplit_once('.').map_or("", |(_, ext)| ext);
        match ext {
            "html" => "text/html; charset=utf-8",
            "js" | "mjs" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "json" | "map" => "application/json",
            "svg" => "image/svg+xml",
            "png" => "image/png",
            "ico" => "image/x-icon",
            "woff2" => "font/woff2",
            "txt" => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use wrenn_core::config::Config;
    use wrenn_core::testing::FakeAgents;
    use wrenn_db::testing::TestStores;

    use super::*;
    use crate::Builder;

    #[test]
    fn api_paths_stay_with_the_api() {
        for p in [
            "/v1",
            "/v1/",
            "/v1/nope",
            "/docs",
            "/docs/x",
            "/openapi.json",
        ] {
            assert!(is_api_path(p), "{p}");
        }
        for p in ["/", "/capsules", "/v1x", "/v10/a", "/docsx", "/index.html"] {
            assert!(!is_api_path(p), "{p}");
        }
    }

    /// What a test keeps alive while it uses the router: its database and directory.
    type Keep = (wrenn_db::testing::TestStore, tempfile::TempDir);

    /// The router of a control plane on an empty SQLite store, set up by `setup`.
    async fn router(setup: impl FnOnce(Builder) -> Builder) -> (Router, Keep) {
        let db = TestStores::sqlite().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let wrenn_dir = dir.path().to_string_lossy().into_owned();
        let config =
            Config::from_lookup(|k| (k == "WRENN_DIR").then(|| wrenn_dir.clone())).expect("config");
        let builder = Builder::new(config)
            .with_store(db.store())
            .with_host_agents(FakeAgents::new());
        let server = setup(builder).build().await.expect("build server");
        (server.router(), (db, dir))
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, header::HeaderMap, String) {
        let res = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn content_type(h: &header::HeaderMap) -> &str {
        h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[cfg(feature = "dashboard")]
    #[tokio::test]
    async fn the_embedded_dashboard_is_served_next_to_the_api() {
        let (app, _keep) = router(|b| b).await;
        let (status, headers, index) = get(&app, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type(&headers), "text/html; charset=utf-8");
        assert!(index.contains("<div id=\"app\">"), "{index}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));

        // An app route loads the same page.
        let (status, headers, page) = get(&app, "/capsules/cl-abc").await;
        assert_eq!(
            (status, content_type(&headers)),
            (StatusCode::OK, "text/html; charset=utf-8")
        );
        assert_eq!(page, index);

        // Hashed assets, with their type and cached for good.
        let script = index
            .split('"')
            .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
            .expect("index.html names its script");
        let (status, headers, _) = get(&app, script).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type(&headers), "text/javascript; charset=utf-8");
        assert!(
            headers[header::CACHE_CONTROL]
                .to_str()
                .unwrap_or_default()
                .contains("immutable")
        );
        let (status, _, _) = get(&app, "/assets/gone-123.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Compressed for clients that take gzip, as a representation of its own.
        let res = app
            .clone()
            .oneshot(
                Request::get(script)
                    .header(header::ACCEPT_ENCODING, "br, gzip;q=0.8")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(res.headers()[header::VARY], "accept-encoding");
        assert_ne!(res.headers()[header::ETAG], headers[header::ETAG]);
        let packed = res.into_body().collect().await.expect("body").to_bytes();
        let mut unpacked = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&packed[..]),
            &mut unpacked,
        )
        .expect("gzip");
        assert_eq!(unpacked, get(&app, script).await.2.into_bytes());
        assert!(!embedded::accepts_gzip(&header::HeaderMap::from_iter([(
            header::ACCEPT_ENCODING,
            header::HeaderValue::from_static("gzip;q=0, br")
        )])));

        // A revalidation of an unchanged file is a 304.
        let etag = headers[header::ETAG].clone();
        let res = app
            .clone()
            .oneshot(
                Request::get(script)
                    .header(header::IF_NONE_MATCH, etag)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

        // The API keeps its JSON 404s and its routes.
        for path in ["/v1/nope", "/v1", "/v1/capsules/x/nope"] {
            let (status, headers, body) = get(&app, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(
                content_type(&headers).starts_with("application/json"),
                "{path}"
            );
            assert!(body.contains("\"not_found\""), "{path}: {body}");
        }
        let (status, _, body) = get(&app, "/health").await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // Capsule URLs stay the capsule proxy's, whatever their path.
        let res = app
            .clone()
            .oneshot(
                Request::get("/")
                    .header(header::HOST, "8080-cl-0000000000000000000000000.localhost")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_ne!(res.status(), StatusCode::OK);
        assert!(content_type(res.headers()).starts_with("application/json"));
    }

    #[tokio::test]
    async fn without_the_dashboard_every_other_path_is_a_json_404() {
        let (app, _keep) = router(Builder::without_dashboard).await;
        for path in ["/", "/capsules", "/v1/nope"] {
            let (status, headers, body) = get(&app, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(
                content_type(&headers).starts_with("application/json"),
                "{path}"
            );
            assert!(body.contains("\"not_found\""), "{path}: {body}");
        }
    }

    #[tokio::test]
    async fn an_embedder_can_serve_its_own_dashboard() {
        let own = Router::new().fallback(|| async { "our console" });
        let (app, _keep) = router(|b| b.with_dashboard(own)).await;
        assert_eq!(get(&app, "/anything").await.2, "our console");
        assert_eq!(get(&app, "/v1/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[cfg(feature = "dashboard")]
    #[test]
    fn content_types() {
        assert_eq!(
            embedded::content_type("assets/index-1.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            embedded::content_type("index.html"),
            "text/html; charset=utf-8"
        );
        assert_eq!(embedded::content_type("noext"), "application/octet-stream");
    }
}
