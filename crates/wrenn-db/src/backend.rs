//! What lets one query text serve both backends.
//!
//! Every repository module writes its trait implementations once, as the body of a
//! local `macro_rules!` taking the store type, and hands that macro to
//! [`for_each_backend!`], which expands it for [`PgStore`](crate::PgStore) and
//! [`SqliteStore`](crate::SqliteStore). Inside the body `self.pool` is the concrete
//! pool, so every query is type-checked against each backend, while the SQL text is
//! written exactly once. The handful of fragments the two dialects spell differently
//! come from [`Dialect`].

/// The SQL fragments that differ between the backends.
pub(crate) trait Dialect {
    /// The sqlx database type (for `QueryBuilder`).
    type Db: sqlx::Database;
    /// Backend name, as [`wrenn_core::repo::Store::backend`] reports it.
    const NAME: &'static str;
    /// Statement opening a write transaction. SQLite takes the write lock up front
    /// (`BEGIN IMMEDIATE`) so a transaction never fails to upgrade a read lock.
    const BEGIN_WRITE: &'static str;
    /// Suffix locking the rows a `SELECT` reads inside a write transaction (`FOR UPDATE`
    /// on Postgres; nothing on SQLite, whose write transactions are already exclusive).
    const LOCK_ROWS: &'static str;
    /// Statement serialising identity writes (activations) inside a write
    /// transaction, across connections and processes: an advisory lock on Postgres;
    /// none on SQLite, whose write transactions are already exclusive.
    const LOCK_IDENTITY: Option<&'static str>;

    /// The database's current time, as the backend stores timestamps. Only leases
    /// use it (their expiry must not depend on the replicas' clocks); every other
    /// timestamp is bound from Rust.
    const NOW: &'static str;

    /// The database's current time plus `param` (a float8/REAL number of seconds),
    /// as the backend stores timestamps.
    fn now_plus_secs(param: &str) -> String;
    /// `col` (a JSON object) with the keys of the JSON object `param` set over it.
    fn json_merge(col: &str, param: &str) -> String;
    /// `col` (a JSON object) without `key` (a plain identifier-like key).
    fn json_remove_key(col: &str, key: &str) -> String;
    /// Whether `col` (a JSON array of strings) contains the text `param`.
    fn json_array_contains(col: &str, param: &str) -> String;
    /// `col` (a JSON array) followed by the elements of the JSON array `param`.
    fn json_array_concat(col: &str, param: &str) -> String;
}

/// Expands a `macro_rules!` taking a store type for every backend.
macro_rules! for_each_backend {
    ($impl_macro:ident) => {
        $impl_macro!(crate::postgres::PgStore);
        $impl_macro!(crate::sqlite::SqliteStore);
    };
}

pub(crate) use for_each_backend;

/// Appends a parenthesised list of bound values to a `QueryBuilder`, for `IN`:
/// `push_in!(qb, values)`.
macro_rules! push_in {
    ($qb:expr, $values:expr) => {{
        let mut sep = $qb.separated(", ");
        sep.push_unseparated("(");
        for value in $values {
            sep.push_bind(value);
        }
        sep.push_unseparated(")");
    }};
}

pub(crate) use push_in;

/// `RepoResult<bool>`: whether `table` has a row with `id = $id` (`$ex` is any
/// executor: the pool, or `&mut *tx` inside a transaction).
macro_rules! row_exists {
    ($ex:expr, $table:literal, $id:expr) => {
        sqlx::query_scalar::<_, i32>(concat!("SELECT 1 FROM ", $table, " WHERE id = $1"))
            .bind($id)
            .fetch_optional($ex)
            .await
            .map(|found| found.is_some())
            .map_err(crate::error::db($table))
    };
}

pub(crate) use row_exists;

/// Opens a write transaction (`BEGIN IMMEDIATE` on SQLite) on `$store`'s pool. Used
/// inside a store's impl (it names the backend through `Self`).
macro_rules! begin_write {
    ($store:expr, $entity:literal) => {
        $store
            .pool
            .begin_with(<Self as crate::backend::Dialect>::BEGIN_WRITE)
            .await
            .map_err(crate::error::db($entity))
    };
}

pub(crate) use begin_write;

/// Takes the identity lock ([`Dialect::LOCK_IDENTITY`]) in the write transaction
/// `$tx`, where the backend has one (SQLite's write transaction already excludes
/// every other writer). Used inside a store's impl.
macro_rules! lock_identity {
    ($tx:expr, $entity:literal) => {
        match <Self as crate::backend::Dialect>::LOCK_IDENTITY {
            Some(lock) => sqlx::query(lock)
                .execute(&mut *$tx)
                .await
                .map(drop)
                .map_err(crate::error::db($entity)),
            None => Ok(()),
        }
    };
}

pub(crate) use lock_identity;
