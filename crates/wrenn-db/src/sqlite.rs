//! [`SqliteStore`]: the SQLite backend (the embedded default).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::backend::Dialect;
use crate::error::DbError;

/// The embedded SQLite schema (`migrations/sqlite`).
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a connection waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of a file-backed store (SQLite serialises writers anyway).
const FILE_POOL_SIZE: u32 = 8;

/// Every repository of [`wrenn_core::repo`] on SQLite.
///
/// Cheap to clone (it is a connection pool). Every connection runs with
/// `foreign_keys = ON`, `busy_timeout = 5 s`; file databases also use WAL and
/// `synchronous = NORMAL`.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) the database file at `path`
    /// and applies the embedded migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, DbError> {
        Self::open_with(SqliteConnectOptions::new().filename(path.as_ref())).await
    }

    /// Opens a database from a `sqlite:` URL (`sqlite:path`, `sqlite://path`, with
    /// optional SQLite URI parameters) and applies the embedded migrations.
    /// `sqlite::memory:` gives [`SqliteStore::in_memory`].
    pub async fn open_url(url: &str) -> Result<Self, DbError> {
        let rest = url.strip_prefix("sqlite:").unwrap_or(url);
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest.starts_with(":memory:") {
            return Self::in_memory().await;
        }
        let options = SqliteConnectOptions::from_str(url).map_err(|source| DbError::Connect {
            backend: Self::NAME,
            source,
        })?;
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self, DbError> {
        let dir = options.get_filename().parent();
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(FILE_POOL_SIZE)
            .acquire_timeout(Duration::from_secs(30))
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

    /// A private in-memory database, migrated. It lives as long as the store: the
    /// pool holds its single connection forever (so calls are serialised).
    pub async fn in_memory() -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|source| DbError::Connect {
                backend: Self::NAME,
                source,
            })?
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
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

    /// Wraps an existing pool as is (no migrations are run; see
    /// [`SqliteStore::migrate`]). Its connections must have `foreign_keys = ON`.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection; queries after this fail with a closed-pool error.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies the embedded migrations that are not applied yet (idempotent).
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

impl Dialect for SqliteStore {
    type Db = sqlx::Sqlite;
    const NAME: &'static str = "sqlite";
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCK_ROWS: &'static str = "";
    const LOCK_IDENTITY: Option<&'static str> = None;

    // The one stored text format (`timestamp.rs`): SQLite's clock has milliseconds,
    // padded to six digits. `'now'` is one instant for the whole statement.
    const NOW: &'static str = "strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')";

    fn now_plus_secs(param: &str) -> String {
        format!("strftime('%Y-%m-%dT%H:%M:%f000Z', 'now', printf('%+.3f seconds', {param}))")
    }
    fn json_merge(col: &str, param: &str) -> String {
        format!("json_patch({col}, {param})")
    }
    fn json_remove_key(col: &str, key: &str) -> String {
        format!("json_remove({col}, '$.{key}')")
    }
    fn json_array_contains(col: &str, param: &str) -> String {
        format!("EXISTS (SELECT 1 FROM json_each({col}) AS e WHERE e.value = {param})")
    }
    fn json_array_concat(col: &str, param: &str) -> String {
        format!(
            "(SELECT json_group_array(j.value) FROM (\
               SELECT 0 AS part, a.key AS k, a.value AS value FROM json_each({col}) AS a \
               UNION ALL \
               SELECT 1, b.key, b.value FROM json_each({param}) AS b \
               ORDER BY part, k) AS j)"
        )
    }
}

impl wrenn_core::repo::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        Self::NAME
    }
}
