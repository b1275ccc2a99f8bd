//! Liveness and admission at the control plane: a capsule its host reports dead
//! becomes `error` with the reason (and data-plane calls on it answer 409), a capsule
//! no host could hold is refused at once, a host out of capacity leaves a clear
//! reason, and the per-team capsule quota holds exactly under concurrency on SQLite
//! and Postgres.

use crate::data_plane;

use std::time::Duration;

use data_plane::{Env, Opts, assert_error, eventually, json};
use reqwest::Method;
use serde_json::json;
use wrenn_core::agents::HostCallError;
use wrenn_core::auth::HostClaims;
use wrenn_core::events::{Event, EventId, PLATFORM_STREAM, PlatformEventKind};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::repo::FAILURE_METADATA_KEY;
use wrenn_core::testing::Op;

async fn platform_events(env: &Env) -> Vec<(PlatformEventKind, String)> {
    env.ctx
        .events
        .read_after(
            PLATFORM_STREAM,
            Some(&EventId("0-0".into())),
            1000,
            Duration::ZERO,
        )
        .await
        .expect("events")
        .into_iter()
        .filter_map(|d| match d.event {
            Event::Platform(e) => Some((e.event, e.resource.id)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn liveness_a_capsule_its_host_reports_dead_is_error_with_the_reason_and_answers_409() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let reason = "the capsule's init (envd) killed by signal 9 (SIGKILL)";
    let token = env
        .ctx
        .auth
        .jwt()
        .sign_host(&HostClaims::new(env.host))
        .unwrap();
    let resp = env
        .req(Method::POST, "/v1/hosts/sandbox-events")
        .header("X-Host-Token", &token)
        .json(&json!({"event": "failed", "sandbox_id": id.to_string(),
                      "host_id": env.host.to_string(), "timestamp": 0, "error": reason}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    eventually(10, "the consumer to fail the capsule", || async {
        env.status(id).await == SandboxStatus::Error
    })
    .await;

    let (status, body) = json(
        env.as_user(&u, Method::GET, &format!("/v1/capsules/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "error");
    assert_eq!(body["metadata"][FAILURE_METADATA_KEY], reason);
    assert!(
        platform_events(&env)
            .await
            .contains(&(PlatformEventKind::CapsuleFailed, id.to_string())),
        "capsule.failed published"
    );

    // Data-plane calls on it answer 409 with the status, never 503.
    let got = json(
        env.as_user(&u, Method::POST, &format!("/v1/capsules/{id}/exec"))
            .json(&json!({"cmd": "true"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 409, "invalid_state");
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("error"),
        "{}",
        got.1
    );
    let got = json(
        env.as_user(&u, Method::POST, &format!("/v1/capsules/{id}/files/list"))
            .json(&json!({"path": "/"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 409, "invalid_state");
    env.stop().await;
}

#[tokio::test]
async fn liveness_the_host_monitor_fails_a_running_capsule_its_host_reports_in_error() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    env.agents
        .sandboxes
        .lock()
        .unwrap()
        .insert(id, SandboxStatus::Error);
    let report = wrenn_cpserver::workers::host_monitor::pass(
        &env.ctx,
        &wrenn_cpserver::workers::host_monitor::MonitorSettings::default(),
    )
    .await
    .expect("pass");
    assert_eq!(env.status(id).await, SandboxStatus::Error, "{report:?}");
    env.stop().await;
}

#[tokio::test]
async fn admission_a_capsule_larger_than_any_host_is_refused_at_once() {
    let env = Env::start().await; // one host: 16 GiB, 8 cores
    let u = env.user("a@x.io").await;
    let got = json(
        env.as_user(&u, Method::POST, "/v1/capsules")
            .json(&json!({"memory_mb": 32768, "vcpus": 16}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "capsule_too_large");
    let message = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("32768 MiB of memory requested, at most 15360"),
        "{message}"
    );
    // Nothing was created.
    let listed = env.store().list_sandboxes(u.team).await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(env.agents.count(Op::Create), 0);
    env.stop().await;
}

#[tokio::test]
async fn admission_a_create_the_host_refuses_for_capacity_is_error_with_the_reason() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    env.agents.fail_next(
        Op::Create,
        HostCallError::ResourceExhausted(
            "host memory exhausted: the capsule needs 512 MiB but 100 of the host's 15360 \
             MiB for capsules are free"
                .into(),
        ),
    );
    let got = json(
        env.as_user(&u, Method::POST, "/v1/capsules")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.0, 202, "{}", got.1);
    let id: SandboxId = got.1["id"].as_str().unwrap().parse().unwrap();
    eventually(10, "the create to fail", || async {
        env.status(id).await == SandboxStatus::Error
    })
    .await;
    let row = env.store().get_sandbox(id).await.unwrap();
    let reason = row
        .metadata
        .get(FAILURE_METADATA_KEY)
        .cloned()
        .unwrap_or_default();
    assert!(reason.contains("host memory exhausted"), "{reason}");
    env.stop().await;
}

async fn team_quota_holds_exactly(env: Env) {
    let u = env.user("a@x.io").await;
    env.ctx.lifecycle.set_team_max_capsules(5);
    // Small capsules, so that the scheduler's own headroom never refuses one.
    let creates = (0..20).map(|_| {
        let req = env
            .as_user(&u, Method::POST, "/v1/capsules")
            .json(&json!({"memory_mb": 128, "disk_size_mb": 1024}));
        async move { json(req.send().await.unwrap()).await }
    });
    let answers = futures::future::join_all(creates).await;
    let created = |a: &&(u16, serde_json::Value)| a.0 == 201 || a.0 == 202;
    let accepted = answers.iter().filter(created).count();
    assert_eq!(accepted, 5, "{answers:?}");
    for refused in answers.iter().filter(|a| !created(a)) {
        assert_error(refused, 429, "quota_exceeded");
        let message = refused.1["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("limit is 5"), "{message}");
    }
    let live = env.store().list_sandboxes(u.team).await.unwrap();
    assert_eq!(live.len(), 5);

    // Resuming a hibernated capsule counts too; destroying one makes room.
    let sleeping = env.capsule(&u, SandboxStatus::Hibernated).await;
    let resume = |id: SandboxId| {
        env.as_user(&u, Method::POST, &format!("/v1/capsules/{id}/resume"))
            .send()
    };
    let got = json(resume(sleeping).await.unwrap()).await;
    assert_error(&got, 429, "quota_exceeded");
    assert_eq!(env.status(sleeping).await, SandboxStatus::Hibernated);
    let victim = live[0].id;
    let got = json(
        env.as_user(&u, Method::DELETE, &format!("/v1/capsules/{victim}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.0, 202, "{}", got.1);
    eventually(10, "the destroy to finish", || async {
        env.status(victim).await == SandboxStatus::Stopped
    })
    .await;
    let got = json(resume(sleeping).await.unwrap()).await;
    assert_eq!(got.0, 202, "{}", got.1);
    env.stop().await;
}

#[tokio::test]
async fn admission_the_team_quota_holds_exactly_under_concurrency() {
    team_quota_holds_exactly(Env::start().await).await;
}

#[tokio::test]
async fn admission_the_team_quota_holds_exactly_under_concurrency_on_postgres() {
    let Some(env) = Env::start_with(Opts {
        postgres: true,
        ..Opts::default()
    })
    .await
    else {
        return;
    };
    team_quota_holds_exactly(env).await;
}
