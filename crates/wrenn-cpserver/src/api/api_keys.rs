//! (being written)

use utoipa_axum::router::OpenApiRouter;
use wrenn_extension::ServerContext;

pub(super) fn routes() -> OpenApiRouter<ServerContext> {
    OpenApiRouter::new()
}
