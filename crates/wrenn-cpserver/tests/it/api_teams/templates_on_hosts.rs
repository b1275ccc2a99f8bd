//! A deleted team's template files are removed from every online host.

use crate::common;

use std::sync::{Arc, Mutex};

use common::online_host;
use wrenn_core::agents::{AgentInventory, HostAgents, HostCallError, SandboxSpec, StartedSandbox};
use wrenn_core::audit::Actor;
use wrenn_core::config::Config;
use wrenn_core::id::{HostId, SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::{self, TemplateKind};
use wrenn_core::repo::NewTemplate;
use wrenn_core::testing::FakeAgents;
use wrenn_cpserver::teams::delete_team_core;
use wrenn_db::testing::TestStores;

/// FakeAgents, also recording which template files were removed from which host.
#[derive(Default)]
struct RecordingAgents {
    inner: FakeAgents,
    removed: Mutex<Vec<(HostId, TeamId, TemplateId)>>,
}

#[async_trait::async_trait]
impl HostAgents for RecordingAgents {
    async fn create_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError> {
        self.inner.create_sandbox(host, spec).await
    }
    async fn pause_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.inner.pause_sandbox(host, id).await
    }
    async fn resume_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, HostCallError> {
        self.inner.resume_sandbox(host, spec).await
    }
    async fn destroy_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.inner.destroy_sandbox(host, id).await
    }
    async fn ping_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
        self.inner.ping_sandbox(host, id).await
    }
    async fn take_metric_history(
        &self,
        host: HostId,
        id: SandboxId,
    ) -> Result<wrenn_core::model::MetricHistory, HostCallError> {
        self.inner.take_metric_history(host, id).await
    }
    async fn create_snapshot(
        &self,
        host: HostId,
        id: SandboxId,
        team: TeamId,
        t: TemplateId,
    ) -> Result<u64, HostCallError> {
        self.inner.create_snapshot(host, id, team, t).await
    }
    async fn delete_snapshot(
        &self,
        host: HostId,
        team: TeamId,
        t: TemplateId,
    ) -> Result<(), HostCallError> {
        self.removed.lock().unwrap().push((host, team, t));
        Err(HostCallError::Internal("disk busy".into())) // best effort: must not stop the deletion
    }
    async fn copy_template(
        &self,
        from: HostId,
        to: HostId,
        team: TeamId,
        t: TemplateId,
    ) -> Result<u64, HostCallError> {
        self.inner.copy_template(from, to, team, t).await
    }
    async fn list_sandboxes(&self, host: HostId) -> Result<AgentInventory, HostCallError> {
        self.inner.list_sandboxes(host).await
    }
}

#[tokio::test]
async fn team_templates_are_removed_from_every_online_host() {
    let db = TestStores::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let wrenn_dir = dir.path().to_string_lossy().into_owned();
    let config = Config::from_lookup(|k| (k == "WRENN_DIR").then(|| wrenn_dir.clone())).unwrap();
    let agents = Arc::new(RecordingAgents::default());
    let server = wrenn_cpserver::Builder::new(config)
        .with_store(db.store())
        .with_host_agents(agents.clone())
        .build()
        .await
        .unwrap();
    let ctx = server.context().clone();
    let store = db.store();
    let (a, b) = (online_host(&store).await, online_host(&store).await);
    let down = online_host(&store).await;
    assert!(
        store
            .set_host_status_if(down, HostStatus::Online, HostStatus::Unreachable)
            .await
            .unwrap()
    );

    let owner = wrenn_core::id::UserId::new();
    store
        .create_user(wrenn_core::repo::NewUser {
            id: owner,
            email: "owner@x.io".into(),
            password_hash: None,
            name: "Owner".into(),
            status: model::UserStatus::Active,
            is_admin: false,
        })
        .await
        .unwrap();
    let team = TeamId::new();
    store
        .create_team(
            wrenn_core::repo::NewTeam {
                id: team,
                name: "T".into(),
                slug: wrenn_core::id::new_team_slug(),
                is_byoc: false,
            },
            owner,
            true,
        )
        .await
        .unwrap();
    let mut templates = Vec::new();
    for name in ["snap-one", "snap-two"] {
        let t = store
            .create_template(NewTemplate {
                id: TemplateId::new(),
                team_id: team,
                name: name.into(),
                kind: TemplateKind::Snapshot,
                vcpus: 1,
                memory_mb: 512,
                size_bytes: 1,
                default_user: "root".into(),
                default_env: Default::default(),
                metadata: Default::default(),
                start_command: String::new(),
                start_cwd: String::new(),
            })
            .await
            .unwrap();
        templates.push(t.id);
    }

    let done = delete_team_core(&ctx, team, &Actor::system())
        .await
        .unwrap();
    assert_eq!(done.templates_deleted, 2);
    let mut removed = agents.removed.lock().unwrap().clone();
    removed.sort();
    let mut want: Vec<_> = [a, b]
        .iter()
        .flat_map(|h| templates.iter().map(move |t| (*h, team, *t)))
        .collect();
    want.sort();
    assert_eq!(
        removed, want,
        "every template on every online host, none on the unreachable one"
    );
    assert!(
        store
            .list_team_owned_templates(team)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_team(team).await.unwrap().deleted_at.is_some());
    // The built-in template is not touched.
    assert!(
        store
            .get_template(wrenn_core::id::BUILTIN_TEMPLATE_ID)
            .await
            .is_ok()
    );
}
