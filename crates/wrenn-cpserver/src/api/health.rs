//! `GET /health`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wrenn_extension::ServerContext;

use super::tags;

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers.
    status: &'static str,
    /// Server version.
    version: &'static str,
    /// Storage backend (`postgres` or `sqlite`).
    database: &'static str,
}

/// Liveness check.
#[utoipa::path(get, path = "/health", tag = tags::SYSTEM, responses((status = 200, body = Health)))]
async fn health(State(ctx): State<ServerContext>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        database: ctx.store.backend(),
    })
}

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new().routes(routes!(health))
}
