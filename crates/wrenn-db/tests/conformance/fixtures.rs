//! Small builders shared by the conformance tests.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{Host, HostKind, NewSandbox, Resources, Sandbox, Team, User, UserStatus};
use wrenn_core::repo::{HostSpec, NewHost, NewTeam, NewUser, RepoError, Store};

/// The store under test.
pub type Db = Arc<dyn Store>;

/// A random, unique email.
pub fn email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Input for a fresh active user.
pub fn new_user(email: &str) -> NewUser {
    NewUser {
        id: UserId::new(),
        email: email.to_owned(),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        name: "Ada".into(),
        status: UserStatus::Active,
        is_admin: false,
    }
}

/// A fresh active user.
pub async fn user(db: &Db) -> User {
    db.create_user(new_user(&email()))
        .await
        .expect("create user")
}

/// Input for a fresh team with a random slug.
pub fn new_team(name: &str) -> NewTeam {
    NewTeam {
        id: TeamId::new(),
        name: name.into(),
        slug: wrenn_core::id::new_team_slug(),
        is_byoc: false,
    }
}

/// A fresh team owned by `owner` (not their default).
pub async fn team(db: &Db, owner: UserId) -> Team {
    db.create_team(new_team("Team"), owner, false)
        .await
        .expect("create team")
}

/// A fresh user and a team they own.
pub async fn owned_team(db: &Db) -> (User, Team) {
    let owner = user(db).await;
    let team = team(db, owner.id).await;
    (owner, team)
}

/// A pending regular host.
pub async fn host(db: &Db, created_by: Option<UserId>) -> Host {
    db.create_host(NewHost {
        id: HostId::new(),
        kind: HostKind::Regular,
        team_id: None,
        provider: "test".into(),
        availability_zone: "az-1".into(),
        created_by,
    })
    .await
    .expect("create host")
}

/// What an agent reports.
pub fn spec(address: &str) -> HostSpec {
    HostSpec {
        address: address.into(),
        arch: "x86_64".into(),
        cpu_cores: 16,
        memory_mb: 65_536,
        disk_gb: 500,
    }
}

/// A registered (online) regular host at `address`.
pub async fn online_host(db: &Db, address: &str) -> Host {
    let host = host(db, None).await;
    assert!(
        db.register_host(host.id, &spec(address))
            .await
            .expect("register")
    );
    db.get_host(host.id).await.expect("get host")
}

/// Input for a sandbox of the built-in template.
pub fn new_sandbox(team: TeamId, host: HostId, status: SandboxStatus) -> NewSandbox {
    NewSandbox {
        id: SandboxId::new(),
        team_id: team,
        host_id: host,
        template: "minimal".into(),
        template_id: BUILTIN_TEMPLATE_ID,
        template_team_id: PLATFORM_TEAM_ID,
        status,
        resources: Resources {
            vcpus: 2,
            memory_mb: 1024,
            disk_size_mb: 20_480,
        },
        timeout_sec: 300,
        metadata: Default::default(),
    }
}

/// A sandbox row in `status`.
pub async fn sandbox(db: &Db, team: TeamId, host: HostId, status: SandboxStatus) -> Sandbox {
    db.insert_sandbox(new_sandbox(team, host, status))
        .await
        .expect("insert sandbox")
}

/// Now, truncated to what both backends store (microseconds).
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    t - Duration::nanoseconds(i64::from(t.timestamp_subsec_nanos() % 1_000))
}

/// Asserts a `RepoError::NotFound`.
pub fn assert_not_found<T: std::fmt::Debug>(result: Result<T, RepoError>) {
    assert!(
        matches!(result, Err(RepoError::NotFound { .. })),
        "expected NotFound, got {result:?}"
    );
}

/// Asserts a `RepoError::Conflict`.
pub fn assert_conflict<T: std::fmt::Debug>(result: Result<T, RepoError>) {
    assert!(
        matches!(result, Err(RepoError::Conflict(_))),
        "expected Conflict, got {result:?}"
    );
}

/// Asserts a `RepoError::Invalid`.
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, RepoError>) {
    assert!(
        matches!(result, Err(RepoError::Invalid(_))),
        "expected Invalid, got {result:?}"
    );
}
