//! The System service: health, Init (defaults, idempotence, staleness, validation,
//! access token), snapshot preparation, metrics and the default environment.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Envd, collect, request, sh};
use tonic::{Code, Request};
use wrenn_proto::envd::v1::{
    GetEnvsRequest, HealthRequest, InitRequest, ListRequest, MetricsRequest,
    PrepareSnapshotRequest, StatRequest,
};

fn timestamp(at: SystemTime) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(at))
}

#[tokio::test]
async fn health_reports_the_version_and_uptime() {
    let mut envd = Envd::unix().await;
    let health = envd
        .system
        .health(HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert!(health.uptime_sec < 60);
}

#[tokio::test]
async fn init_sets_the_default_user_workdir_and_env() {
    let mut envd = Envd::unix().await;
    let workdir = envd.dir.path().display().to_string();
    let init = InitRequest {
        default_user: Some("nobody".into()),
        default_workdir: Some(workdir.clone()),
        env_vars: HashMap::from([("TEAM".into(), "blue".into())]),
        ..Default::default()
    };
    envd.system.init(init.clone()).await.unwrap();
    envd.system
        .init(init)
        .await
        .expect("the same Init again is harmless");

    let run = collect(envd.start(sh("id -u; pwd; echo $TEAM")).await.unwrap()).await;
    assert_eq!(run.stdout(), format!("65534\n{workdir}\nblue\n"));
    let envs = envd
        .system
        .get_envs(GetEnvsRequest {})
        .await
        .unwrap()
        .into_inner()
        .envs;
    assert_eq!(
        envs,
        HashMap::from([("TEAM".to_owned(), "blue".to_owned())])
    );

    envd.system
        .init(InitRequest {
            env_vars: HashMap::from([("MORE".into(), "1".into())]),
            ..Default::default()
        })
        .await
        .unwrap();
    let envs = envd
        .system
        .get_envs(GetEnvsRequest {})
        .await
        .unwrap()
        .into_inner()
        .envs;
    assert_eq!(envs.len(), 2, "env vars are merged: {envs:?}");
}

#[tokio::test]
async fn an_init_with_an_invalid_hostname_is_refused_and_changes_nothing() {
    let mut envd = Envd::unix().await;
    for name in ["", "-lead", "has space", "semi;colon", &"x".repeat(65)] {
        let err = envd
            .system
            .init(InitRequest {
                env_vars: HashMap::from([("V".into(), "set".into())]),
                hostname: Some(name.to_owned()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}: {err}");
    }
    let envs = envd
        .system
        .get_envs(GetEnvsRequest {})
        .await
        .unwrap()
        .into_inner()
        .envs;
    assert!(
        !envs.contains_key("V"),
        "a refused Init changed the defaults"
    );
}

#[tokio::test]
async fn a_stale_init_changes_nothing() {
    let mut envd = Envd::unix().await;
    let now = SystemTime::now();
    envd.system
        .init(InitRequest {
            env_vars: HashMap::from([("V".into(), "new".into())]),
            timestamp: timestamp(now),
            ..Default::default()
        })
        .await
        .unwrap();
    envd.system
        .init(InitRequest {
            env_vars: HashMap::from([("V".into(), "old".into())]),
            default_user: Some("nobody".into()),
            timestamp: timestamp(now - Duration::from_secs(10)),
            ..Default::default()
        })
        .await
        .expect("a stale Init still succeeds");
    let envs = envd
        .system
        .get_envs(GetEnvsRequest {})
        .await
        .unwrap()
        .into_inner()
        .envs;
    assert_eq!(envs["V"], "new");
    assert_eq!(envd.run("id", &["-u"]).await.stdout(), "0\n");
}

#[tokio::test]
async fn init_with_an_unknown_user_or_missing_workdir_is_invalid_and_changes_nothing() {
    let mut envd = Envd::unix().await;
    let bad_user = envd
        .system
        .init(InitRequest {
            default_user: Some("no-such-user".into()),
            env_vars: HashMap::from([("X".into(), "1".into())]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_user.code(), Code::InvalidArgument);
    let bad_dir = envd
        .system
        .init(InitRequest {
            default_workdir: Some("/no/such/dir".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_dir.code(), Code::InvalidArgument);
    let envs = envd
        .system
        .get_envs(GetEnvsRequest {})
        .await
        .unwrap()
        .into_inner()
        .envs;
    assert!(envs.is_empty());
}

fn with_token<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        wrenn_proto::ENVD_ACCESS_TOKEN_METADATA,
        "s3cret".parse().unwrap(),
    );
    request
}

#[tokio::test]
async fn an_access_token_guards_every_call_but_health() {
    let mut envd = Envd::unix().await;
    envd.system
        .init(InitRequest {
            access_token: Some("s3cret".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let unauthenticated = [
        envd.process
            .list(ListRequest {})
            .await
            .err()
            .map(|e| e.code()),
        envd.fs
            .stat(StatRequest { path: "/".into() })
            .await
            .err()
            .map(|e| e.code()),
        envd.system
            .metrics(MetricsRequest {})
            .await
            .err()
            .map(|e| e.code()),
        envd.system
            .get_envs(GetEnvsRequest {})
            .await
            .err()
            .map(|e| e.code()),
        envd.system
            .init(InitRequest::default())
            .await
            .err()
            .map(|e| e.code()),
        envd.process
            .start(request("true", &[]))
            .await
            .err()
            .map(|e| e.code()),
    ];
    for code in unauthenticated {
        assert_eq!(code, Some(Code::Unauthenticated));
    }
    envd.system
        .health(HealthRequest {})
        .await
        .expect("health needs no token");

    let mut wrong = Request::new(ListRequest {});
    wrong.metadata_mut().insert(
        wrenn_proto::ENVD_ACCESS_TOKEN_METADATA,
        "guess".parse().unwrap(),
    );
    assert_eq!(
        envd.process.list(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    envd.process
        .list(with_token(ListRequest {}))
        .await
        .expect("the right token works");

    envd.system
        .init(with_token(InitRequest {
            access_token: Some(String::new()),
            ..Default::default()
        }))
        .await
        .expect("an empty token removes it");
    envd.process.list(ListRequest {}).await.expect("open again");
}

#[tokio::test]
async fn prepare_snapshot_syncs_and_health_recovers() {
    let mut envd = Envd::unix().await;
    envd.system
        .prepare_snapshot(PrepareSnapshotRequest {})
        .await
        .unwrap();
    envd.system.health(HealthRequest {}).await.unwrap();
    assert_eq!(envd.run("true", &[]).await.exit_code(), 0);
}

#[tokio::test]
async fn metrics_report_cpu_memory_and_disk() {
    let mut envd = Envd::unix().await;
    let metrics = envd
        .system
        .metrics(MetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(metrics.cpu_count >= 1);
    assert!(
        (0.0..=100.0).contains(&metrics.cpu_used_pct),
        "{}",
        metrics.cpu_used_pct
    );
    assert!(metrics.mem_total_bytes > 64 * 1024 * 1024);
    assert!(metrics.mem_used_bytes > 0 && metrics.mem_used_bytes <= metrics.mem_total_bytes);
    assert!(metrics.disk_total_bytes > 0 && metrics.disk_used_bytes <= metrics.disk_total_bytes);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - metrics.timestamp_unix).abs() < 5);
}
