//! [`connect`]: a store from a URL.

use std::sync::Arc;

use wrenn_core::repo::Store;

use crate::error::DbError;
use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;

/// Opens the store a URL names and applies its migrations.
///
/// - `postgres://…` or `postgresql://…` → [`PgStore`];
/// - `sqlite:path`, `sqlite://path` (created if missing) or `sqlite::memory:` →
///   [`SqliteStore`].
///
/// Any other scheme is [`DbError::UnsupportedUrl`].
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, DbError> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::connect(url).await?)),
        "sqlite" => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        _ => Err(DbError::UnsupportedUrl {
            scheme: scheme.chars().take(32).collect(),
        }),
    }
}
