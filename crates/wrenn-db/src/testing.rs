//! Throw-away stores for tests and benchmarks (feature `testing`).
//!
//! ```no_run
//! use wrenn_db::testing::TestStores;
//!
//! // In a `#[tokio::test(flavor = "multi_thread")] async fn`:
//! # async fn example() {
//! // Always available: a fresh SQLite file.
//! let sqlite = TestStores::sqlite().await;
//! assert_eq!(sqlite.store().backend(), "sqlite");
//!
//! // `None` = skipped (URL not set and services not required); panics when
//! // WRENN_TEST_REQUIRE_SERVICES=1 and WRENN_TEST_POSTGRES_URL is missing.
//! let Some(postgres) = TestStores::postgres().await else { return };
//! let store = postgres.store(); // Arc<dyn wrenn_core::repo::Store>
//! # let _ = store;
//! # }
//! ```
//!
//! - [`TestStores::sqlite`]: a fresh SQLite file in its own temporary directory
//!   (WAL, like production), removed when the [`TestStore`] is dropped.
//! - [`TestStores::postgres`]: when [`POSTGRES_URL_ENV`] is set, a fresh schema
//!   `wrenn_test_<random>` in that database, migrated, used through `search_path`,
//!   and dropped (best effort) with the [`TestStore`].
//! - [`require_services`]: [`REQUIRE_SERVICES_ENV`]` = 1` turns "skipped" into a panic.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use wrenn_core::repo::Store;

use crate::{PgStore, SqliteStore};

/// Environment variable holding the Postgres URL tests may use.
pub const POSTGRES_URL_ENV: &str = "WRENN_TEST_POSTGRES_URL";
/// Environment variable that, when `1`, makes missing services a failure.
pub const REQUIRE_SERVICES_ENV: &str = "WRENN_TEST_REQUIRE_SERVICES";

/// Whether tests must fail (rather than skip) when a service URL is missing:
/// `WRENN_TEST_REQUIRE_SERVICES=1` (CI sets it).
pub fn require_services() -> bool {
    std::env::var(REQUIRE_SERVICES_ENV).is_ok_and(|v| v.trim() == "1")
}

/// The Postgres URL for tests, if set and non-empty.
pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_ENV)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// A fresh store plus whatever must be cleaned up when it goes away.
pub struct TestStore {
    store: Arc<dyn Store>,
    concrete: Concrete,
    cleanup: Cleanup,
}

/// The same store as its concrete type, for the few test helpers that need it.
enum Concrete {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

enum Cleanup {
    /// The SQLite file lives in this directory, removed on drop.
    Dir(tempfile::TempDir),
    /// The Postgres schema to drop.
    Schema { url: String, schema: String },
}

impl TestStore {
    /// The store (cheap to clone).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Another store on the same database (its own connection pool), as a second
    /// control-plane replica would open it: for tests of what holds across replicas.
    ///
    /// # Panics
    /// If the database cannot be opened again (a broken test machine).
    pub async fn replica(&self) -> Arc<dyn Store> {
        match (&self.concrete, &self.cleanup) {
            (Concrete::Sqlite(_), Cleanup::Dir(dir)) => Arc::new(
                SqliteStore::open(dir.path().join("wrenn.db"))
                    .await
                    .expect("open the SQLite store again"),
            ),
            (Concrete::Postgres(_), Cleanup::Schema { url, schema }) => {
                let options = PgConnectOptions::from_str(url)
                    .expect("the Postgres URL")
                    .options([("search_path", schema.as_str())]);
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await
                    .expect("connect to the test schema again");
                Arc::new(PgStore::from_pool(pool))
            }
            _ => unreachable!("a SQLite store lives in a directory, a Postgres one in a schema"),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Runs the embedded migrations again (a no-op on a current schema).
    pub async fn migrate(&self) -> Result<(), crate::DbError> {
        match &self.concrete {
            Concrete::Sqlite(store) => store.migrate().await,
            Concrete::Postgres(store) => store.migrate().await,
        }
    }

    /// Runs one raw SQL statement against the store's database and returns the
    /// number of rows it changed: for tests that must plant data the repositories
    /// would never write (e.g. a corrupt row).
    pub async fn execute(&self, sql: &str) -> Result<u64, crate::DbError> {
        let done = match &self.concrete {
            Concrete::Sqlite(store) => sqlx::query(sql)
                .execute(store.pool())
                .await?
                .rows_affected(),
            Concrete::Postgres(store) => sqlx::query(sql)
                .execute(store.pool())
                .await?
                .rows_affected(),
        };
        Ok(done)
    }
}

impl std::fmt::Debug for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.cleanup {
            Cleanup::Dir(dir) => dir.path().display().to_string(),
            Cleanup::Schema { schema, .. } => schema.clone(),
        };
        f.debug_struct("TestStore")
            .field("backend", &self.backend())
            .field("at", &place)
            .finish()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Cleanup::Schema { url, schema } = &self.cleanup {
            drop_schema(url.clone(), schema.clone());
        }
    }
}

/// Drops a test schema from a helper thread with its own runtime, so this works
/// from `Drop` inside any (or no) tokio runtime. Failures are only logged.
fn drop_schema(url: String, schema: String) {
    let job = std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => return eprintln!("test schema {schema} not dropped: {err}"),
        };
        runtime.block_on(async {
            let result = async {
                let mut conn = PgConnection::connect(&url).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            }
            .await;
            if let Err(err) = result {
                eprintln!("test schema {schema} not dropped: {err}");
            }
        });
    });
    let _ = job.join();
}

/// Constructors of fresh stores.
#[derive(Debug, Clone, Copy)]
pub struct TestStores;

impl TestStores {
    /// A migrated SQLite store in a new temporary directory.
    ///
    /// # Panics
    /// If the directory or database cannot be created (a broken test machine).
    pub async fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().expect("create a temporary directory for SQLite");
        let store = SqliteStore::open(dir.path().join("wrenn.db"))
            .await
            .expect("open a fresh SQLite store");
        TestStore {
            store: Arc::new(store.clone()),
            concrete: Concrete::Sqlite(store),
            cleanup: Cleanup::Dir(dir),
        }
    }

    /// A migrated Postgres store in a fresh schema, or `None` (after printing
    /// `skipping postgres: WRENN_TEST_POSTGRES_URL not set`) when the URL is not set
    /// and [`require_services`] is false.
    ///
    /// # Panics
    /// When the URL is missing but services are required, or when the database
    /// cannot be reached or migrated.
    pub async fn postgres() -> Option<TestStore> {
        let Some(url) = postgres_url() else {
            if require_services() {
                panic!(
                    "{POSTGRES_URL_ENV} is not set but {REQUIRE_SERVICES_ENV}=1: the Postgres \
                     suite must run (e.g. {POSTGRES_URL_ENV}=postgres://postgres@127.0.0.1:5432/test)"
                );
            }
            println!("skipping postgres: {POSTGRES_URL_ENV} not set");
            return None;
        };
        let (store, schema) = match Self::fresh_postgres(&url).await {
            Ok(created) => created,
            Err(err) => panic!("cannot create a fresh Postgres test schema: {err}"),
        };
        Some(TestStore {
            store: Arc::new(store.clone()),
            concrete: Concrete::Postgres(store),
            cleanup: Cleanup::Schema { url, schema },
        })
    }

    /// Creates `wrenn_test_<random>` and a migrated store whose connections use it.
    async fn fresh_postgres(url: &str) -> Result<(PgStore, String), crate::DbError> {
        let schema = format!("wrenn_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(url).await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let options = PgConnectOptions::from_str(url)?.options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let store = PgStore::from_pool(pool);
        store.migrate().await?;
        Ok((store, schema))
    }

    /// Both backends this machine offers: SQLite always, Postgres when configured
    /// (see [`TestStores::postgres`] for when it panics).
    pub async fn all() -> Vec<TestStore> {
        let mut stores = vec![Self::sqlite().await];
        stores.extend(Self::postgres().await);
        stores
    }
}
