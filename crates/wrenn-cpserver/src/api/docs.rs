//! The OpenAPI document (`/openapi.json`, `/openapi.yaml`) and Swagger UI at
//! `/docs`, served from assets vendored into the binary (nothing is fetched).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_swagger_ui::SwaggerUi;

/// Declares the three credential kinds.
pub(super) struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "host_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Host-Token"))),
        );
    }
}

pub(super) fn routes(openapi: OpenApi) -> Router {
    let yaml = openapi
        .to_yaml()
        .unwrap_or_else(|e| format!("# could not render YAML: {e}\n"));
    Router::new()
        .route(
            "/openapi.yaml",
            get(move || {
                let yaml = yaml.clone();
                async move { ([(header::CONTENT_TYPE, "application/yaml")], yaml).into_response() }
            }),
        )
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
}
