//! Fixtures for lifecycle tests.

use std::sync::Arc;

use wrenn_core::id::{HostId, TeamId, UserId};
use wrenn_core::model::UserStatus;
use wrenn_core::repo::{NewTeam, NewUser, Store};
#[allow(unused_imports)]
pub use wrenn_core::testing::{FakeAgents, Op};

/// An online regular host in `store`.
pub async fn online_host(store: &Arc<dyn Store>) -> HostId {
    wrenn_core::testing::online_host(store.as_ref()).await
}

/// A user owning a fresh team.
pub async fn team(store: &Arc<dyn Store>) -> (UserId, TeamId) {
    let user = UserId::new();
    store
        .create_user(NewUser {
            id: user,
            email: format!("{}@example.com", user.uuid().simple()),
            password_hash: None,
            name: "Test".into(),
            status: UserStatus::Active,
            is_admin: false,
        })
        .await
        .expect("user");
    let team = TeamId::new();
    store
        .create_team(
            NewTeam {
                id: team,
                name: "Test team".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            user,
            true,
        )
        .await
        .expect("team");
    (user, team)
}
