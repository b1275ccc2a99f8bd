//! Teams and members: `/v1/teams…`, owner invariants, and team deletion through
//! `delete_team_core` (capsules destroyed on their hosts, data purged).

mod creating;
mod deletion;
mod members;
mod openapi;
mod reading;
mod templates_on_hosts;

use crate::common;

use std::sync::Arc;

use common::{TestServer, TestUser};
use wrenn_core::audit::{Actor, AuditQuery, AuditRecord, AuditScope};
use wrenn_core::auth::Role;
use wrenn_core::id::TeamId;
use wrenn_core::repo::Store;

fn actor(u: &TestUser) -> Actor {
    Actor::user(u.id, u.email.clone())
}

async fn team_audit(store: &Arc<dyn Store>, team: TeamId) -> Vec<AuditRecord> {
    store
        .list_audit_logs(&AuditQuery {
            team_id: team,
            scopes: vec![AuditScope::Team, AuditScope::Admin],
            resource_type: None,
            action: None,
            before: None,
            limit: 200,
        })
        .await
        .expect("audit")
}

async fn has_entry(
    store: &Arc<dyn Store>,
    team: TeamId,
    resource: &str,
    action: &str,
) -> Option<AuditRecord> {
    team_audit(store, team)
        .await
        .into_iter()
        .find(|r| r.entry.resource_type == resource && r.entry.action == action)
}

async fn team_name(s: &TestServer, team: TeamId) -> String {
    s.store().get_team(team).await.expect("team").name
}

async fn role_of(s: &TestServer, team: TeamId, user: &TestUser) -> Option<Role> {
    s.store()
        .get_membership(team, user.id)
        .await
        .expect("membership")
        .map(|m| m.role)
}
