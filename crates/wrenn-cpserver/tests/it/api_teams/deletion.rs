//! Deleting a team: only by its owner, its capsules destroyed on their hosts and its
//! data purged, once, and not blocked by a failing host.

use crate::common;

use super::{actor, has_entry};
use chrono::Utc;
use common::{Options, TestServer, TestUser, assert_error, member_of, online_host, send};
use reqwest::Method;
use wrenn_core::agents::HostCallError;
use wrenn_core::audit::AuditScope;
use wrenn_core::auth::{ApiKey, Role};
use wrenn_core::id::{ApiKeyId, ChannelId, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::{CreateSandbox, SandboxStatus};
use wrenn_core::model::{self, Channel, MetricPoint, MetricTier, MetricsSnapshot, TemplateKind};
use wrenn_core::repo::NewTemplate;
use wrenn_core::testing::Op;
use wrenn_cpserver::teams::{DeleteTeamError, delete_team_core};

#[tokio::test]
async fn only_the_owner_deletes_the_team() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let admin = member_of(&s, owner.team, "admin@x.io", Role::Admin).await;
    let member = member_of(&s, owner.team, "member@x.io", Role::Member).await;
    for who in [&admin, &member] {
        let got = send(s.as_user(who, Method::DELETE, &format!("/v1/teams/{}", owner.team))).await;
        assert_error(&got, 403, "forbidden");
    }
    assert!(
        s.store()
            .get_team(owner.team)
            .await
            .unwrap()
            .deleted_at
            .is_none()
    );
    s.stop().await;
}

/// Everything a team can own, for deletion tests.
struct Estate {
    running: SandboxId,
    paused: SandboxId,
    hibernated: SandboxId,
    key: ApiKey,
    template: TemplateId,
}

async fn furnish(s: &TestServer, owner: &TestUser) -> Estate {
    let ctx = &s.ctx;
    let store = s.store();
    let who = actor(owner);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let sb = ctx
            .lifecycle
            .create(owner.team, &who, CreateSandbox::default())
            .await
            .expect("create capsule");
        ids.push(sb.id);
    }
    ctx.lifecycle.wait_idle().await;
    ctx.lifecycle
        .pause(owner.team, ids[1], &who)
        .await
        .expect("pause");
    ctx.lifecycle.wait_idle().await;
    // Hibernated: the row says so (the agent keeps the sandbox's state on disk).
    store
        .status_if(ids[2], SandboxStatus::Running, SandboxStatus::Hibernated)
        .await
        .unwrap()
        .expect("hibernate");
    for (id, want) in [
        (ids[0], SandboxStatus::Running),
        (ids[1], SandboxStatus::Paused),
        (ids[2], SandboxStatus::Hibernated),
    ] {
        assert_eq!(store.get_sandbox(id).await.unwrap().status, want);
        assert!(s.agents.status_on_host(id).is_some());
    }

    let key = ApiKey::generate();
    store
        .create_api_key(model::ApiKey {
            id: ApiKeyId::new(),
            team_id: owner.team,
            name: "ci".into(),
            key_hash: key.hash(),
            key_prefix: key.prefix().into(),
            created_by: Some(owner.id),
            created_at: Utc::now(),
            last_used: None,
        })
        .await
        .unwrap();
    ctx.auth
        .api_key(key.expose_secret())
        .await
        .expect("the key works before deletion");
    store
        .create_channel(Channel {
            id: ChannelId::new(),
            team_id: owner.team,
            name: "alerts".into(),
            provider: "webhook".into(),
            config: [("url".to_string(), "enc".to_string())].into(),
            event_types: vec!["capsule.created".into()],
            created_at: Utc::now(),
            updated_at: Utc::now(),
        })
        .await
        .unwrap();
    let point = MetricPoint {
        ts: Utc::now().timestamp(),
        cpu_pct: 12.5,
        mem_bytes: 1 << 20,
        disk_bytes: 1 << 30,
    };
    store
        .insert_metric_points(ids[0], MetricTier::TenMinutes, &[point])
        .await
        .unwrap();
    store
        .insert_metrics_snapshots(&[MetricsSnapshot {
            team_id: owner.team,
            sampled_at: Utc::now(),
            running_count: 1,
            vcpus_reserved: 1,
            memory_mb_reserved: 512,
            period_secs: 10,
        }])
        .await
        .unwrap();
    let template = store
        .create_template(NewTemplate {
            id: TemplateId::new(),
            team_id: owner.team,
            name: "my-snapshot".into(),
            kind: TemplateKind::Snapshot,
            vcpus: 1,
            memory_mb: 512,
            size_bytes: 4096,
            default_user: "root".into(),
            default_env: Default::default(),
            metadata: Default::default(),
            start_command: String::new(),
            start_cwd: String::new(),
        })
        .await
        .unwrap()
        .id;
    Estate {
        running: ids[0],
        paused: ids[1],
        hibernated: ids[2],
        key,
        template,
    }
}

/// The whole owner deletion flow, on whichever backend `s` runs.
async fn deleting_a_team_destroys_its_capsules_and_purges_its_data(s: &TestServer) {
    let store = s.store();
    online_host(&store).await;
    let owner = s.user("owner@x.io").await;
    let bystander = s.user("bystander@x.io").await;
    let estate = furnish(s, &owner).await;
    let kept = s
        .ctx
        .lifecycle
        .create(bystander.team, &actor(&bystander), CreateSandbox::default())
        .await
        .unwrap()
        .id;
    s.ctx.lifecycle.wait_idle().await;
    let slug = store.get_team(owner.team).await.unwrap().slug;

    let resp = s
        .as_user(&owner, Method::DELETE, &format!("/v1/teams/{}", owner.team))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    s.ctx.lifecycle.wait_idle().await;

    // Every capsule was destroyed on its host, whatever its status, and the rows end stopped.
    for id in [estate.running, estate.paused, estate.hibernated] {
        assert_eq!(s.agents.status_on_host(id), None, "{id} still on the host");
        assert_eq!(
            store.get_sandbox(id).await.unwrap().status,
            SandboxStatus::Stopped
        );
        assert!(
            s.agents.calls.lock().unwrap().contains(&(Op::Destroy, id)),
            "{id} destroyed through HostAgents"
        );
    }
    assert_eq!(s.agents.count(Op::Destroy), 3);
    // Another team's capsule is untouched.
    assert_eq!(
        store.get_sandbox(kept).await.unwrap().status,
        SandboxStatus::Running
    );
    assert!(s.agents.status_on_host(kept).is_some());

    // Keys, channels, metrics and templates are gone; the key stops working at once.
    assert!(store.list_api_keys(owner.team).await.unwrap().is_empty());
    assert!(
        store
            .get_api_key_by_hash(&estate.key.hash())
            .await
            .unwrap()
            .is_none()
    );
    let err = s
        .ctx
        .auth
        .api_key(estate.key.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.status.as_u16(), 401);
    assert!(store.list_channels(owner.team).await.unwrap().is_empty());
    assert!(
        store
            .list_metric_points(estate.running, MetricTier::TenMinutes)
            .await
            .unwrap()
            .is_empty()
    );
    let day = chrono::Duration::days(1);
    assert!(
        store
            .list_metrics_snapshots(owner.team, Utc::now() - day, Utc::now() + day)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_team_owned_templates(owner.team)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_template(estate.template).await.is_err());

    // The team is soft-deleted: row and slug kept (reserved), members can no longer use it.
    let team = store.get_team(owner.team).await.unwrap();
    assert!(team.deleted_at.is_some());
    assert_eq!(
        store.get_team_by_slug(&slug).await.unwrap().id,
        owner.team,
        "slug stays reserved"
    );
    let got = send(s.as_user(&owner, Method::GET, &format!("/v1/teams/{}", owner.team))).await;
    assert_error(&got, 403, "forbidden");
    let other_token = s.token_for(owner.id, owner.team, Role::Owner, &owner.email, false);
    let got = send(s.req(Method::GET, "/v1/teams").bearer_auth(other_token)).await;
    assert_error(&got, 403, "forbidden");

    // Recorded for platform admins.
    let entry = has_entry(&store, PLATFORM_TEAM_ID, "team", "delete")
        .await
        .expect("audit");
    assert_eq!(
        entry.entry.resource_id.as_deref(),
        Some(owner.team.to_string().as_str())
    );
    assert_eq!(entry.entry.status.as_str(), "warning");
    assert_eq!(entry.entry.scope, AuditScope::Admin);
    assert_eq!(
        entry.entry.actor.id.as_deref(),
        Some(owner.id.to_string().as_str())
    );
}

#[tokio::test]
async fn deleting_a_team_destroys_its_capsules_and_purges_its_data_on_sqlite() {
    let s = TestServer::start().await;
    deleting_a_team_destroys_its_capsules_and_purges_its_data(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_team_destroys_its_capsules_and_purges_its_data_on_postgres() {
    let Some(s) = TestServer::start_with(Options {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    deleting_a_team_destroys_its_capsules_and_purges_its_data(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_deleted_team_cannot_be_deleted_again_and_the_platform_team_never() {
    let s = TestServer::start().await;
    let owner = s.user("owner@x.io").await;
    let ctx = &s.ctx;
    let done = delete_team_core(ctx, owner.team, &actor(&owner))
        .await
        .unwrap();
    assert!(done.soft_deleted);
    assert!(matches!(
        delete_team_core(ctx, owner.team, &actor(&owner)).await,
        Err(DeleteTeamError::NotFound)
    ));
    assert!(matches!(
        delete_team_core(ctx, TeamId::new(), &actor(&owner)).await,
        Err(DeleteTeamError::NotFound)
    ));
    assert!(matches!(
        delete_team_core(ctx, PLATFORM_TEAM_ID, &actor(&owner)).await,
        Err(DeleteTeamError::PlatformTeam)
    ));
    assert!(
        s.store()
            .get_team(PLATFORM_TEAM_ID)
            .await
            .unwrap()
            .deleted_at
            .is_none()
    );
    s.stop().await;
}

#[tokio::test]
async fn a_host_failing_to_destroy_does_not_block_team_deletion() {
    // Marking the capsule `stopping` is what the deletion waits for; the agent call
    // runs in the background (retried), and the host monitor finishes what it misses.
    let s = TestServer::start().await;
    online_host(&s.store()).await;
    let owner = s.user("owner@x.io").await;
    let sb = s
        .ctx
        .lifecycle
        .create(owner.team, &actor(&owner), CreateSandbox::default())
        .await
        .unwrap();
    s.ctx.lifecycle.wait_idle().await;
    s.agents
        .fail_next(Op::Destroy, HostCallError::Unavailable("host down".into()));
    s.agents
        .fail_next(Op::Destroy, HostCallError::Unavailable("host down".into()));
    delete_team_core(&s.ctx, owner.team, &actor(&owner))
        .await
        .expect("marking succeeded");
    s.ctx.lifecycle.wait_idle().await;
    let status = s.store().get_sandbox(sb.id).await.unwrap().status;
    assert!(
        matches!(status, SandboxStatus::Stopped | SandboxStatus::Stopping),
        "{status}"
    );
    assert!(
        s.store()
            .get_team(owner.team)
            .await
            .unwrap()
            .deleted_at
            .is_some()
    );
    s.stop().await;
}
