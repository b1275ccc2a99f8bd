//! [`PgStore`]: the PostgreSQL backend.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use wrenn_core::config::DEFAULT_DB_MAX_CONNECTIONS;

use crate::backend::Dialect;
use crate::error::DbError;

mod leases;

pub(crate) use leases::Leases;
use leases::PING_AFTER_IDLE;

/// The embedded Postgres schema (`migrations/postgres`).
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Every repository of [`wrenn_core::repo`] on PostgreSQL.
///
/// Cheap to clone (it is a connection pool). Build it with [`PgStore::connect`], or
/// wrap an existing pool with [`PgStore::from_pool`] and call [`PgStore::migrate`].
///
/// A query costs one round trip: connections whose query completed are kept and
/// reused without the pool's release check; one idle for a second or more is pinged
/// before reuse, so a connection the server dropped is replaced rather than failing a
/// query. Close the store with [`PgStore::close`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(crate) pool: Leases,
}

impl PgStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) with at most
    /// [`DEFAULT_DB_MAX_CONNECTIONS`] connections and applies the embedded
    /// migrations (a no-op when the schema is current).
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        Self::connect_with(url, DEFAULT_DB_MAX_CONNECTIONS).await
    }

    /// [`PgStore::connect`] with at most `max_connections` connections (at least 1).
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, DbError> {
        let options = PgConnectOptions::from_str(url).map_err(|source| DbError::Connect {
            backend: Self::NAME,
            source,
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // The pool checks a connection when it comes back; check again on
            // acquire only when it has been idle for a while.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
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
        Self {
            pool: Leases::new(pool),
        }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        self.pool.pool()
    }

    /// Closes every connection; queries after this fail with a closed-pool error.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies the embedded migrations that are not applied yet (idempotent). They
    /// go into the first schema of the connection's `search_path`.
    pub async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR
            .run(self.pool.pool())
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
    // A transaction-scoped advisory lock (the key is arbitrary, Wrenn's own).
    const LOCK_IDENTITY: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(2004779587470436)");

    // The start of the statement (autocommit): one instant for the whole statement.
    const NOW: &'static str = "now()";

    fn now_plus_secs(param: &str) -> String {
        format!("(now() + make_interval(secs => {param}))")
    }
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
