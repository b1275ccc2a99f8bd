//! `wrenn_db::connect`: backend selection by URL, and the in-memory SQLite store
//! (a single connection, so every transaction path must avoid a second checkout).

use std::sync::Arc;

use wrenn_core::auth::Role;
use wrenn_core::id::{PLATFORM_TEAM_ID, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{BuildStatus, Resources, UserStatus};
use wrenn_core::repo::{NewTeam, NewUser, Store, UserRepo};
use wrenn_db::{ConnectOptions, DbError, SqliteStore, connect, connect_with};

fn new_user() -> NewUser {
    NewUser {
        id: UserId::new(),
        email: format!("{}@example.com", uuid::Uuid::new_v4().simple()),
        password_hash: None,
        name: "Lin".into(),
        status: UserStatus::Active,
        is_admin: true,
    }
}

#[tokio::test]
async fn unknown_schemes_are_refused_without_echoing_the_url() {
    for url in ["mysql://root:secret@db/wrenn", "wrenn.db", "", "http://x"] {
        let err = match connect(url).await {
            Err(err) => err,
            Ok(_) => panic!("{url:?} must be refused"),
        };
        assert!(
            matches!(err, DbError::UnsupportedUrl { .. }),
            "{url:?}: {err}"
        );
        let message = err.to_string();
        assert!(message.contains("postgres://"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}

#[tokio::test]
async fn sqlite_urls_open_migrated_stores() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        format!("sqlite://{}", dir.path().join("a.db").display()),
        format!("sqlite:{}", dir.path().join("nested/dir/b.db").display()),
        "sqlite::memory:".to_owned(),
    ] {
        let store = connect(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(store.backend(), "sqlite");
        assert_eq!(
            store.get_team(PLATFORM_TEAM_ID).await.unwrap().slug,
            "platform"
        );
    }
    assert!(dir.path().join("nested/dir/b.db").exists());
}

#[tokio::test]
async fn reopening_a_sqlite_file_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrenn.db");
    let user = new_user();
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create_user(user.clone()).await.unwrap();
        store.close().await;
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_user(user.id).await.unwrap().email, user.email);
}

#[tokio::test]
async fn postgres_urls_open_migrated_stores() {
    let Some(url) = wrenn_db::testing::postgres_url() else {
        if wrenn_db::testing::require_services() {
            panic!("WRENN_TEST_POSTGRES_URL is not set but WRENN_TEST_REQUIRE_SERVICES=1");
        }
        println!("skipping postgres: WRENN_TEST_POSTGRES_URL not set");
        return;
    };
    // A schema of its own, selected through the URL's `options` parameter, so the
    // test never touches the shared database's default schema.
    use sqlx::Connection;
    let schema = format!("wrenn_test_connect_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let outcome = async {
        let store = connect(&scoped).await?;
        assert_eq!(store.backend(), "postgres");
        assert_eq!(store.get_team(PLATFORM_TEAM_ID).await?.name, "Platform");
        let alt = scoped.replacen("postgres://", "postgresql://", 1);
        let again = connect(&alt).await?;
        assert_eq!(again.backend(), "postgres");
        let sized = wrenn_db::PgStore::connect_with(&scoped, 3).await?;
        assert_eq!(sized.pool().options().get_max_connections(), 3);
        let wide = connect_with(&scoped, ConnectOptions { max_connections: 5 }).await?;
        assert_eq!(wide.get_team(PLATFORM_TEAM_ID).await?.name, "Platform");
        sized.close().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
    outcome.unwrap();
}

#[tokio::test]
async fn the_in_memory_store_runs_every_transaction_on_its_single_connection() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
    let owner = store.create_user(new_user()).await.unwrap();
    let member = store.create_user(new_user()).await.unwrap();
    let team_id = TeamId::new();
    let team = NewTeam {
        id: team_id,
        name: "Mem".into(),
        slug: wrenn_core::id::new_team_slug(),
        is_byoc: false,
    };
    store.create_team(team, owner.id, true).await.unwrap();
    store
        .add_member(team_id, member.id, Role::Member)
        .await
        .unwrap();
    assert!(
        store
            .update_member_role_if(team_id, member.id, Role::Member, Role::Admin)
            .await
            .unwrap()
            .is_some()
    );
    store.set_user_admin(member.id, true).await.unwrap();
    store.set_user_admin(owner.id, false).await.unwrap();
    store.soft_delete_user(member.id).await.unwrap();
    store.hard_delete_user(member.id).await.unwrap();
    store.purge_team_data(team_id).await.unwrap();

    let host = wrenn_core::id::HostId::new();
    let sandbox = store
        .insert_sandbox(wrenn_core::model::NewSandbox {
            id: SandboxId::new(),
            team_id,
            host_id: host,
            template: "minimal".into(),
            template_id: wrenn_core::id::BUILTIN_TEMPLATE_ID,
            template_team_id: PLATFORM_TEAM_ID,
            status: SandboxStatus::Missing,
            resources: Resources {
                vcpus: 1,
                memory_mb: 512,
                disk_size_mb: 20_480,
            },
            timeout_sec: 0,
            metadata: Default::default(),
        })
        .await
        .unwrap();
    let moved = store
        .bulk_status_if(
            &[sandbox.id],
            SandboxStatus::Missing,
            SandboxStatus::Running,
        )
        .await
        .unwrap();
    assert_eq!(moved, [sandbox.id]);
    assert!(
        store
            .status_if(
                SandboxId::new(),
                SandboxStatus::Running,
                SandboxStatus::Pausing
            )
            .await
            .is_err()
    );
    let build = store
        .build_status_if(
            wrenn_core::id::BuildId::new(),
            BuildStatus::Pending,
            BuildStatus::Running,
            "",
        )
        .await;
    assert!(build.is_err());
    store
        .rollup_daily_usage(team_id, chrono::Utc::now().date_naive())
        .await
        .unwrap();
    store
        .touch_api_keys(&[(wrenn_core::id::ApiKeyId::new(), chrono::Utc::now())])
        .await
        .unwrap();
}
