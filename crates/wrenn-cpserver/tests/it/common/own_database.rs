//! A Postgres database of a test's own, for tests that take it away from a running
//! server (outages).

/// A Postgres database of its own for an outage test (one test can drop it while a
/// server uses it), dropped at the end.
pub struct OwnDatabase {
    admin_url: String,
    name: String,
}

impl OwnDatabase {
    /// A new database on the test Postgres, migrated by the server that opens it;
    /// `None` (the test is skipped) when no Postgres is configured and none is required.
    pub async fn create(prefix: &str) -> Option<Self> {
        let Some(admin_url) = wrenn_db::testing::postgres_url() else {
            assert!(
                !wrenn_db::testing::require_services(),
                "WRENN_TEST_POSTGRES_URL is required"
            );
            eprintln!("skipped: WRENN_TEST_POSTGRES_URL is not set");
            return None;
        };
        let db = Self {
            admin_url,
            name: format!("{prefix}_{}", uuid::Uuid::new_v4().simple()),
        };
        {
            use sqlx::Executor;
            let mut admin = db.admin().await;
            admin
                .execute(format!("CREATE DATABASE {}", db.name).as_str())
                .await
                .expect("create database");
        }
        Some(db)
    }

    pub fn url(&self) -> String {
        let (base, _) = self
            .admin_url
            .rsplit_once('/')
            .expect("a database in the URL");
        format!("{base}/{}", self.name)
    }

    pub async fn admin(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.admin_url)
            .await
            .expect("admin connection")
    }

    pub async fn drop_now(&self) {
        use sqlx::Executor;
        let mut admin = self.admin().await;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop database");
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::{Connection, Executor};
                if let Ok(mut admin) = sqlx::PgConnection::connect(&url).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}
