//! Test support for the domain modules: a control-plane context over in-memory
//! SQLite (no mailer, fake host agents), and users and callers made in its store.
#![cfg(test)]

use wrenn_core::auth::{Role, hash_password};
use wrenn_core::config::Config;
use wrenn_core::id::{TeamId, UserId};
use wrenn_core::model::{User, UserStatus};
use wrenn_core::repo::NewUser;
use wrenn_core::testing::FakeAgents;
use wrenn_db::testing::{TestStore, TestStores};
use wrenn_extension::{ServerContext, UserAuth, UserPrincipal};

use crate::Builder;

/// The password of every user made by [`TestContext::user`].
pub const PASSWORD: &str = "correct horse battery";

/// A built (not serving) control plane; the database and directory live as long as it.
pub struct TestContext {
    /// The context the domain functions take.
    pub ctx: ServerContext,
    _db: TestStore,
    _dir: tempfile::TempDir,
}

impl TestContext {
    /// A fresh control plane on an empty SQLite database.
    pub async fn new() -> Self {
        let db = TestStores::sqlite().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let wrenn_dir = dir.path().to_string_lossy().into_owned();
        let config =
            Config::from_lookup(|k| (k == "WRENN_DIR").then(|| wrenn_dir.clone())).expect("config");
        let server = Builder::new(config)
            .with_store(db.store())
            .with_host_agents(FakeAgents::new())
            .build()
            .await
            .expect("build server");
        Self {
            ctx: server.context().clone(),
            _db: db,
            _dir: dir,
        }
    }

    /// An active user (platform admin when `admin`) with [`PASSWORD`] and a default
    /// team they own.
    pub async fn user(&self, email: &str, admin: bool) -> (User, TeamId) {
        let user = self
            .ctx
            .store
            .create_user(NewUser {
                id: UserId::new(),
                email: email.to_owned(),
                password_hash: Some(hash_password(PASSWORD).expect("hash")),
                name: email.split('@').next().unwrap_or("user").to_owned(),
                status: UserStatus::Active,
                is_admin: admin,
            })
            .await
            .expect("create user");
        let (team, _) = crate::accounts::ensure_default_team(&self.ctx, &user)
            .await
            .expect("default team");
        (user, team)
    }
}

/// `user` calling with a token for `team`, in which they have `role`.
pub fn caller(user: &User, team: TeamId, role: Role) -> UserAuth {
    UserAuth {
        team_id: team,
        user: UserPrincipal {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            role,
            is_admin: user.is_admin,
        },
    }
}
