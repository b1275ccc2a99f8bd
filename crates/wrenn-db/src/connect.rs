//! [`connect`]: a store from a URL.

use std::sync::Arc;

use wrenn_core::repo::Store;

use crate::error::DbError;
use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;

/// How a store connects, beyond its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Most connections a Postgres store opens (SQLite keeps its own small pool).
    pub max_connections: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: wrenn_core::config::DEFAULT_DB_MAX_CONNECTIONS,
        }
    }
}

/// Opens the store a URL names with default [`ConnectOptions`] and applies its
/// migrations (see [`connect_with`]).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, DbError> {
    connect_with(url, ConnectOptions::default()).await
}

/// Opens the store a URL names and applies its migrations.
///
/// - `postgres://…` or `postgresql://…` → [`PgStore`];
/// - `sqlite:path`, `sqlite://path` (created if missing) or `sqlite::memory:` →
///   [`SqliteStore`].
///
/// Any other scheme is [`DbError::UnsupportedUrl`].
pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Arc<dyn Store>, DbError> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Ok(Arc::new(
            PgStore::connect_with(url, options.max_connections).await?,
        )),
        "sqlite" => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        _ => Err(DbError::UnsupportedUrl {
            scheme: scheme.chars().take(32).collect(),
        }),
    }
}
