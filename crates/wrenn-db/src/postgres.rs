//! [`PgStore`]: the PostgreSQL backend.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::backend::Dialect;
use crate::error::DbError;

/// The embedded Postgres schema (`migrations/postgres`).
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Every repository of [`wrenn_core::repo`] on PostgreSQL.
///
/// Cheap to clone (it is a connection pool). Build it with [`PgStore::connect`], or
/// wrap an existing pool with [`PgStore::from_pool`] and call [`PgStore::migrate`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
}

impl PgStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) and applies the
    /// embedded migrations (a no-op when the schema is current).
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let options = PgConnectOptions::from_str(url).map_err(|source| DbError::Connect {
            backend: Self::NAME,
            source,
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|source| DbError::Connect {
                backend: Self::NAME,
                source,
            })?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool as is (no migrations are run; see [`PgStore::migrate`]).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations that are not applied yet (idempotent). They
    /// go into the first schema of the connection's `search_path`.
    pub async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|source| DbError::Migrate {
                backend: Self::NAME,
                source,
            })
    }
}

impl Dialect for PgStore {
    type Db = sqlx::Postgres;
    const NAME: &'static str = "postgres";
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_ROWS: &'static str = " FOR UPDATE";

    fn json_merge(col: &str, param: &str) -> String {
        format!("{col} || {param}")
    }
    fn json_remove_key(col: &str, key: &str) -> String {
        // `jsonb - text` fails on scalars; leave anything but an object untouched.
        format!("CASE WHEN jsonb_typeof({col}) = 'object' THEN {col} - '{key}' ELSE {col} END")
    }
    fn json_array_contains(col: &str, param: &str) -> String {
        format!("{col} @> jsonb_build_array(CAST({param} AS TEXT))")
    }
    fn json_array_concat(col: &str, param: &str) -> String {
        format!("{col} || {param}")
    }
}

impl wrenn_core::repo::Store for PgStore {
    fn backend(&self) -> &'static str {
        Self::NAME
    }
}
