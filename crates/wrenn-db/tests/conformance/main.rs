//! The storage conformance suite: every behaviour the `wrenn_core::repo` traits
//! promise, checked against every backend this machine offers.
//!
//! Each test is an `async fn(Arc<dyn Store>)` written once; [`conformance_tests!`]
//! instantiates it as `sqlite_<name>` (always, on a fresh SQLite file) and
//! `postgres_<name>` (on a fresh schema when `WRENN_TEST_POSTGRES_URL` is set; with
//! `WRENN_TEST_REQUIRE_SERVICES=1` a missing URL fails instead of skipping).
//!
//! ```sh
//! WRENN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! WRENN_TEST_REQUIRE_SERVICES=1 cargo test -p wrenn-db --all-features
//! ```

/// Instantiates conformance tests for both backends.
///
/// `conformance_tests!(a, b)` takes `async fn(Arc<dyn Store>)` tests;
/// `conformance_tests!(@test_store a)` takes `async fn(&TestStore)` tests (for the
/// few that need the concrete store: re-running migrations, planting raw rows).
macro_rules! conformance_tests {
    (@test_store $($name:ident),* $(,)?) => {
        $(
            pastey::paste! {
                #[tokio::test(flavor = "multi_thread")]
                async fn [<sqlite_ $name>]() {
                    let db = wrenn_db::testing::TestStores::sqlite().await;
                    $name(&db).await;
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn [<postgres_ $name>]() {
                    let Some(db) = wrenn_db::testing::TestStores::postgres().await else {
                        return;
                    };
                    $name(&db).await;
                }
            }
        )*
    };
    ($($name:ident),* $(,)?) => {
        $(
            pastey::paste! {
                #[tokio::test(flavor = "multi_thread")]
                async fn [<sqlite_ $name>]() {
                    let db = wrenn_db::testing::TestStores::sqlite().await;
                    $name(db.store()).await;
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn [<postgres_ $name>]() {
                    let Some(db) = wrenn_db::testing::TestStores::postgres().await else {
                        return;
                    };
                    $name(db.store()).await;
                }
            }
        )*
    };
}

mod fixtures;

mod api_keys;
mod audit;
mod builds;
mod channels;
mod hosts;
mod metrics;
mod sandboxes;
mod schema;
mod teams;
mod templates;
mod users;
mod worker_leases;
