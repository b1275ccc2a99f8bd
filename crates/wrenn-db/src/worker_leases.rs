//! [`WorkerLeaseRepo`] on both backends: the leases of singleton workers.
//!
//! Unlike every other table, `worker_leases` is stamped with the database's clock
//! ([`Dialect::NOW`]): a lease's expiry decides which replica runs a worker, so it
//! must not depend on the replicas' clocks agreeing.

use std::time::Duration;

use async_trait::async_trait;
use wrenn_core::repo::{RepoResult, WorkerLeaseRepo};

use crate::backend::{Dialect, for_each_backend};
use crate::error::db;

/// A lease's time to live as the queries bind it: seconds, to the millisecond.
fn ttl_secs(ttl: Duration) -> f64 {
    // Millisecond precision is all SQLite's clock has; u32 millis are ~49 days.
    f64::from(u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX)) / 1000.0
}

macro_rules! impl_worker_lease_repo {
    ($store:ty) => {
        #[async_trait]
        impl WorkerLeaseRepo for $store {
            #[tracing::instrument(level = "debug", skip(self))]
            async fn acquire_lease(
                &self,
                name: &str,
                holder: &str,
                ttl: Duration,
            ) -> RepoResult<bool> {
                let now = <$store as Dialect>::NOW;
                // Taken when free (insert) or expired, renewed by its holder; a valid
                // lease of another holder makes the update's WHERE false, which
                // returns no row. `acquired_at` is when the current holding began.
                let sql = format!(
                    "INSERT INTO worker_leases (name, holder, acquired_at, expires_at) \
                     VALUES ($1, $2, {now}, {until}) \
                     ON CONFLICT (name) DO UPDATE SET \
                       holder = excluded.holder, \
                       acquired_at = CASE \
                         WHEN worker_leases.holder = excluded.holder \
                           AND worker_leases.expires_at >= {now} \
                         THEN worker_leases.acquired_at ELSE excluded.acquired_at END, \
                       expires_at = excluded.expires_at \
                     WHERE worker_leases.holder = excluded.holder \
                        OR worker_leases.expires_at < {now} \
                     RETURNING holder",
                    until = <$store as Dialect>::now_plus_secs("$3"),
                );
                let held: Option<(String,)> = sqlx::query_as(&sql)
                    .bind(name)
                    .bind(holder)
                    .bind(ttl_secs(ttl))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("worker lease"))?;
                Ok(held.is_some())
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn release_lease(&self, name: &str, holder: &str) -> RepoResult<bool> {
                let done = sqlx::query("DELETE FROM worker_leases WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .execute(&self.pool)
                    .await
                    .map_err(db("worker lease"))?;
                Ok(done.rows_affected() > 0)
            }

            #[tracing::instrument(level = "debug", skip(self))]
            async fn lease_holder(&self, name: &str) -> RepoResult<Option<String>> {
                let sql = format!(
                    "SELECT holder FROM worker_leases WHERE name = $1 AND expires_at >= {}",
                    <$store as Dialect>::NOW
                );
                let holder: Option<(String,)> = sqlx::query_as(&sql)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("worker lease"))?;
                Ok(holder.map(|(h,)| h))
            }
        }
    };
}

for_each_backend!(impl_worker_lease_repo);
