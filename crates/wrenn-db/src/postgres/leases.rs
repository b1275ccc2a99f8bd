//! [`Leases`]: Postgres connections kept between queries without sqlx's
//! per-release round trip.
//!
//! sqlx's pool checks every connection handed back to it with a `Sync` round trip
//! (its guard against a connection left mid-query by a dropped future). Nearly all
//! of the store's traffic is one statement per call, so that check doubles the round
//! trips to the server and the work it does. [`Leases`] takes connections from the
//! pool and keeps them on its own idle stack after a query that **ran to
//! completion**, handing them out again without the check:
//!
//! - callers queue on [`Leases`]' own permits (one per pool connection), so a
//!   finished connection goes straight to the next caller, never through the pool;
//! - a connection whose query did not complete (an error, or the caller dropped the
//!   future) goes back to the pool, which checks it and closes it if it is broken;
//! - a connection idle for [`PING_AFTER_IDLE`] or longer is pinged before reuse, so
//!   one the server dropped while idle (restart, `idle_session_timeout`) is replaced
//!   instead of failing a query;
//! - a connection held longer than the pool's `max_lifetime` goes back to the pool,
//!   which closes it;
//! - a transaction ([`PgTransaction`]) holds its permit until it ends; its connection
//!   then returns to the pool (whose check flushes the rollback of a dropped one);
//! - closing the pool empties the stack at once, so `PgPool::close` completes.
//!
//! Every connection still comes from, and counts against, the sqlx pool.

use std::borrow::Cow;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Connection, Describe, Either, Execute, Executor, Postgres, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A kept connection idle at least this long is pinged before it is reused.
pub(crate) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The store's Postgres connections: an [`Executor`] over a [`PgPool`] that skips
/// the pool's round trip on release for queries that completed.
#[derive(Clone)]
pub(crate) struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// One per pool connection: held by every lease and open transaction.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    max_lifetime: Option<Duration>,
}

/// A connection on the idle stack.
struct Idle {
    conn: PoolConnection<Postgres>,
    /// When it went idle.
    since: Instant,
    /// When it was first taken from the pool (a lower bound of its age).
    taken: Instant,
}

/// A connection checked out of [`Leases`] for one query.
struct Lease {
    conn: Option<PoolConnection<Postgres>>,
    taken: Instant,
    /// Set once the query ran to completion: only then is the connection kept.
    completed: bool,
    inner: Arc<Inner>,
    /// Released after `Drop::drop` has put the connection back on the stack.
    permit: Option<OwnedSemaphorePermit>,
}

/// A write transaction of the Postgres store. It dereferences to the connection
/// (`&mut *tx` is an executor) and holds its [`Leases`] permit until it ends.
pub(crate) struct PgTransaction {
    tx: Transaction<'static, Postgres>,
    _permit: OwnedSemaphorePermit,
}

fn lock(idle: &Mutex<Vec<Idle>>) -> MutexGuard<'_, Vec<Idle>> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

impl Leases {
    /// Over `pool`. Inside a Tokio runtime this also starts a small task that empties
    /// the idle stack when the pool is closed (and ends when the pool is gone).
    pub(crate) fn new(pool: PgPool) -> Self {
        let size = usize::try_from(pool.options().get_max_connections()).unwrap_or(1);
        let inner = Arc::new(Inner {
            max_lifetime: pool.options().get_max_lifetime(),
            permits: Arc::new(Semaphore::new(size.max(1))),
            idle: Mutex::new(Vec::new()),
            pool,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let closed = inner.pool.close_event();
            let weak: Weak<Inner> = Arc::downgrade(&inner);
            runtime.spawn(async move {
                closed.await;
                if let Some(inner) = weak.upgrade() {
                    inner.permits.close();
                    lock(&inner.idle).clear();
                }
            });
        }
        Self { inner }
    }

    /// The underlying sqlx pool.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Empties the idle stack and closes the pool (waiting for leased connections).
    pub(crate) async fn close(&self) {
        self.inner.permits.close();
        lock(&self.inner.idle).clear();
        self.inner.pool.close().await;
    }

    /// How many connections are on the idle stack (for tests).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        lock(&self.inner.idle).len()
    }

    /// A permit, then a connection: the most recently used kept one (pinged first if
    /// it idled for [`PING_AFTER_IDLE`]), or one from the pool.
    async fn lease(&self) -> Result<Lease, sqlx::Error> {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            if self.inner.pool.is_closed() {
                lock(&self.inner.idle).clear();
                return Err(sqlx::Error::PoolClosed);
            }
            let kept = lock(&self.inner.idle).pop();
            let Some(mut idle) = kept else {
                // Holding a permit, the pool has room (it may still be taking back a
                // connection that was not kept).
                let conn = self.inner.pool.acquire().await?;
                return Ok(self.wrap(conn, Instant::now(), permit));
            };
            if self
                .inner
                .max_lifetime
                .is_some_and(|max| idle.taken.elapsed() >= max)
            {
                // Back to the pool, which closes it for its age.
                drop(idle);
                continue;
            }
            if idle.since.elapsed() >= PING_AFTER_IDLE {
                if let Err(error) = idle.conn.ping().await {
                    tracing::debug!(%error, "kept connection failed its ping; replacing it");
                    let _ = idle.conn.detach().close_hard().await;
                    continue;
                }
            }
            return Ok(self.wrap(idle.conn, idle.taken, permit));
        }
    }

    fn wrap(
        &self,
        conn: PoolConnection<Postgres>,
        taken: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Lease {
        Lease {
            conn: Some(conn),
            taken,
            completed: false,
            inner: Arc::clone(&self.inner),
            permit: Some(permit),
        }
    }

    /// Starts a transaction with `statement` (`BEGIN …`) on a leased connection.
    pub(crate) async fn begin_with(
        &self,
        statement: &'static str,
    ) -> Result<PgTransaction, sqlx::Error> {
        let mut lease = self.lease().await?;
        let (Some(conn), Some(permit)) = (lease.conn.take(), lease.permit.take()) else {
            return Err(sqlx::Error::PoolClosed);
        };
        let tx = Transaction::begin(conn, Some(Cow::Borrowed(statement))).await?;
        Ok(PgTransaction {
            tx,
            _permit: permit,
        })
    }
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leases")
            .field("pool", &self.inner.pool)
            .field("kept", &lock(&self.inner.idle).len())
            .finish()
    }
}

impl Lease {
    fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_deref_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.completed || self.inner.pool.is_closed() {
            // The pool checks it (and closes it if it is broken).
            drop(conn);
            return;
        }
        lock(&self.inner.idle).push(Idle {
            conn,
            since: Instant::now(),
            taken: self.taken,
        });
    }
}

impl PgTransaction {
    /// Commits; the connection returns to the pool.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Deref for PgTransaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for PgTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl<'p> Executor<'p> for &'_ Leases {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let leases = self.clone();
        Box::pin(sqlx_core::try_stream! {
            let mut lease = leases.lease().await?;
            let mut rows = lease.conn().fetch_many(query);
            while let Some(row) = rows.try_next().await? {
                r#yield!(row);
            }
            drop(rows);
            lease.completed = true;
            Ok(())
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let leases = self.clone();
        Box::pin(async move {
            let mut lease = leases.lease().await?;
            let row = lease.conn().fetch_optional(query).await?;
            lease.completed = true;
            Ok(row)
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        let leases = self.clone();
        Box::pin(async move {
            let mut lease = leases.lease().await?;
            let statement = lease.conn().prepare_with(sql, parameters).await?;
            lease.completed = true;
            Ok(statement)
        })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        let leases = self.clone();
        Box::pin(async move {
            let mut lease = leases.lease().await?;
            let described = lease.conn().describe(sql).await?;
            lease.completed = true;
            Ok(described)
        })
    }
}

#[cfg(test)]
mod tests {
    //! These run against the Postgres of `WRENN_TEST_POSTGRES_URL` (skipped when it is
    //! unset, unless `WRENN_TEST_REQUIRE_SERVICES=1`).

    use std::str::FromStr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::testing::{POSTGRES_URL_ENV, REQUIRE_SERVICES_ENV, postgres_url, require_services};

    fn options() -> Option<PgConnectOptions> {
        let Some(url) = postgres_url() else {
            assert!(
                !require_services(),
                "{POSTGRES_URL_ENV} is not set but {REQUIRE_SERVICES_ENV}=1"
            );
            eprintln!("skipped: {POSTGRES_URL_ENV} is not set");
            return None;
        };
        Some(PgConnectOptions::from_str(&url).expect("valid Postgres URL"))
    }

    async fn leases(options: PgConnectOptions, size: u32) -> Leases {
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .expect("connect to Postgres");
        Leases::new(pool)
    }

    async fn backend_pid(leases: &Leases) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(leases)
            .await
            .expect("query")
    }

    /// A TCP relay in front of Postgres that counts the `Sync` messages the client
    /// sends (each one is a round trip of the extended query protocol).
    struct SyncCounter {
        port: u16,
        syncs: Arc<AtomicUsize>,
    }

    impl SyncCounter {
        async fn start(upstream: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let syncs = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&syncs);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let server = TcpStream::connect(&upstream).await.expect("upstream");
                    tokio::spawn(Self::relay(client, server, Arc::clone(&counted)));
                }
            });
            Self { port, syncs }
        }

        async fn relay(client: TcpStream, server: TcpStream, syncs: Arc<AtomicUsize>) {
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
            });
            // Client → server: the startup message (length-prefixed, no type byte),
            // then typed messages (type byte + length including itself).
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let mut started = false;
            loop {
                let Ok(n) = client_rx.read(&mut chunk).await else {
                    return;
                };
                if n == 0 || server_tx.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    let header = if started { 5 } else { 4 };
                    if buf.len() < header {
                        break;
                    }
                    let len_at = header - 4;
                    let len = u32::from_be_bytes(buf[len_at..header].try_into().expect("4 bytes"));
                    let total = len_at + len as usize;
                    if buf.len() < total {
                        break;
                    }
                    if started && buf[0] == b'S' {
                        syncs.fetch_add(1, Ordering::SeqCst);
                    }
                    started = true;
                    buf.drain(..total);
                }
            }
        }

        fn count(&self) -> usize {
            self.syncs.load(Ordering::SeqCst)
        }
    }

    /// `size` connections to the test Postgres through a [`SyncCounter`] (plain TCP,
    /// so the relay can read the protocol).
    async fn counted_leases(size: u32) -> Option<(SyncCounter, Leases)> {
        let options = options()?;
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let relay = SyncCounter::start(upstream).await;
        let options = options
            .host("127.0.0.1")
            .port(relay.port)
            .ssl_mode(PgSslMode::Disable);
        Some((relay, leases(options, size).await))
    }

    #[tokio::test]
    async fn a_completed_query_costs_one_round_trip() {
        let Some((relay, leases)) = counted_leases(2).await else {
            return;
        };
        let query = "SELECT $1::int4 + 1";
        let one: i32 = sqlx::query_scalar(query)
            .bind(1)
            .fetch_one(&leases)
            .await
            .unwrap();
        assert_eq!(one, 2);

        let before = relay.count();
        for i in 0..20 {
            let got: i32 = sqlx::query_scalar(query)
                .bind(i)
                .fetch_one(&leases)
                .await
                .unwrap();
            assert_eq!(got, i + 1);
        }
        let rows: Vec<i32> = sqlx::query_scalar(query)
            .bind(7)
            .fetch_all(&leases)
            .await
            .unwrap();
        assert_eq!(rows, vec![8]);
        assert_eq!(
            relay.count() - before,
            21,
            "one Sync per query: no check round trip on release"
        );
        assert_eq!(leases.kept(), 1, "the one connection is kept for reuse");
    }

    #[tokio::test]
    async fn queries_queued_for_a_connection_still_cost_one_round_trip() {
        let Some((relay, leases)) = counted_leases(2).await else {
            return;
        };
        let query = "SELECT $1::int4 * 2";
        // The first burst prepares the statement on both connections; the second
        // is counted.
        let burst = |leases: Leases| async move {
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let leases = leases.clone();
                    tokio::spawn(async move {
                        for i in 0..20 {
                            let got: i32 = sqlx::query_scalar(query)
                                .bind(t * 100 + i)
                                .fetch_one(&leases)
                                .await?;
                            assert_eq!(got, (t * 100 + i) * 2);
                        }
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
        };
        burst(leases.clone()).await;
        let before = relay.count();
        burst(leases.clone()).await;
        assert_eq!(
            relay.count() - before,
            160,
            "8 callers × 20 queries over 2 connections: one Sync each, none for checks"
        );
    }

    #[tokio::test]
    async fn sequential_queries_reuse_one_connection() {
        let Some(options) = options() else { return };
        let leases = leases(options, 4).await;
        let first = backend_pid(&leases).await;
        for _ in 0..5 {
            assert_eq!(backend_pid(&leases).await, first);
        }
    }

    #[tokio::test]
    async fn a_cancelled_query_does_not_leak_its_answer_into_the_next() {
        let Some(options) = options() else { return };
        let leases = leases(options, 1).await;
        let slow = sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_sleep(0.5)").fetch_one(&leases);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), slow)
                .await
                .is_err(),
            "the slow query is cut short"
        );
        assert_eq!(leases.kept(), 0, "an interrupted connection is not kept");
        let answer: i32 = sqlx::query_scalar("SELECT 42")
            .fetch_one(&leases)
            .await
            .unwrap();
        assert_eq!(answer, 42);
    }

    #[tokio::test]
    async fn a_failed_query_hands_its_connection_back_to_the_pool() {
        let Some(options) = options() else { return };
        let leases = leases(options, 1).await;
        let failed = sqlx::query("SELECT * FROM no_such_table_anywhere")
            .execute(&leases)
            .await;
        assert!(failed.is_err());
        assert_eq!(leases.kept(), 0);
        let answer: i32 = sqlx::query_scalar("SELECT 7")
            .fetch_one(&leases)
            .await
            .unwrap();
        assert_eq!(answer, 7);
    }

    #[tokio::test]
    async fn a_connection_the_server_dropped_while_idle_is_replaced() {
        let Some(options) = options() else { return };
        let admin = leases(options.clone(), 1).await;
        let leases = leases(options, 1).await;
        let old = backend_pid(&leases).await;
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(old)
            .fetch_one(&admin)
            .await
            .unwrap();
        assert!(killed);
        tokio::time::sleep(PING_AFTER_IDLE + Duration::from_millis(100)).await;
        let new = backend_pid(&leases).await;
        assert_ne!(new, old, "a fresh connection serves the query");
    }

    #[tokio::test]
    async fn transactions_run_on_kept_connections_without_deadlock() {
        let Some(options) = options() else { return };
        let leases = leases(options, 1).await;
        backend_pid(&leases).await;
        assert_eq!(leases.kept(), 1, "the pool's only connection is kept");
        let mut tx = tokio::time::timeout(Duration::from_secs(5), leases.begin_with("BEGIN"))
            .await
            .expect("begin takes the kept connection")
            .unwrap();
        let inside: i32 = sqlx::query_scalar("SELECT 3")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(inside, 3);
        tx.commit().await.unwrap();
        let after: i32 = sqlx::query_scalar("SELECT 4")
            .fetch_one(&leases)
            .await
            .unwrap();
        assert_eq!(after, 4);
    }

    #[tokio::test]
    async fn callers_waiting_on_the_pool_get_the_connections_that_finish() {
        let Some(options) = options() else { return };
        let leases = leases(options, 2).await;
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let leases = leases.clone();
                tokio::spawn(async move {
                    let mut tx = leases.begin_with("BEGIN").await?;
                    let got: i32 = sqlx::query_scalar("SELECT $1::int4 FROM pg_sleep(0.01)")
                        .bind(i)
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    let again: i32 = sqlx::query_scalar("SELECT $1::int4")
                        .bind(got)
                        .fetch_one(&leases)
                        .await?;
                    Ok::<_, sqlx::Error>(again)
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let got = task.await.unwrap().expect("no caller starves");
            assert_eq!(got, i32::try_from(i).unwrap());
        }
    }

    #[tokio::test]
    async fn closing_the_pool_with_kept_connections_completes() {
        let Some(options) = options() else { return };
        let leases = leases(options, 2).await;
        backend_pid(&leases).await;
        assert_eq!(leases.kept(), 1);
        tokio::time::timeout(Duration::from_secs(5), leases.pool().close())
            .await
            .expect("PgPool::close does not wait on kept connections");
        assert!(matches!(
            sqlx::query("SELECT 1").execute(&leases).await,
            Err(sqlx::Error::PoolClosed)
        ));
    }
}
