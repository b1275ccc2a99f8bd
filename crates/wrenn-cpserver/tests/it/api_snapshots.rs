//! Snapshot templates, and capsule metrics, stats and usage.

use crate::data_plane;

use std::collections::BTreeMap;

use chrono::{Duration as ChronoDuration, Utc};
use data_plane::{Env, Opts, TestUser, assert_error, json};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{MetricPoint, MetricTier, MetricsSnapshot, NewSandbox, Resources};

async fn snapshot(env: &Env, u: &TestUser, query: &str, body: Value) -> (u16, Value) {
    json(
        env.as_user(u, Method::POST, &format!("/v1/snapshots{query}"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn list(env: &Env, u: &TestUser, query: &str) -> Vec<Value> {
    let (status, body) = json(
        env.as_user(u, Method::GET, &format!("/v1/snapshots{query}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

fn names(templates: &[Value]) -> Vec<&str> {
    templates
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

async fn audit_actions(env: &Env, u: &TestUser) -> Vec<(String, String, String)> {
    let (status, body) = json(
        env.as_user(u, Method::GET, "/v1/audit-logs?resource_type=snapshot")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["action"].as_str().unwrap().to_owned(),
                i["resource_id"].as_str().unwrap_or("").to_owned(),
                i["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_running_capsule_is_snapshotted_listed_and_deleted() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let (status, body) = snapshot(
        &env,
        &u,
        "",
        json!({"sandbox_id": id.to_string(), "name": "my-snap"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "my-snap");
    assert_eq!(body["type"], "snapshot");
    assert_eq!(body["vcpus"], 1);
    assert_eq!(body["memory_mb"], 512);
    assert_eq!(body["size_bytes"], 4096);
    assert_eq!(body["platform"], false);
    assert!(chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).is_ok());
    assert_eq!(
        env.status(id).await,
        SandboxStatus::Running,
        "the capsule returns to where it was"
    );

    let all = list(&env, &u, "").await;
    assert!(names(&all).contains(&"my-snap"));
    let minimal = all
        .iter()
        .find(|t| t["name"] == "minimal")
        .expect("platform templates are listed");
    assert_eq!(minimal["platform"], true);
    assert_eq!(minimal["type"], "base");
    assert_eq!(names(&list(&env, &u, "?type=snapshot").await), ["my-snap"]);
    assert!(!names(&list(&env, &u, "?type=base").await).contains(&"my-snap"));

    // A default name.
    let (status, body) = snapshot(&env, &u, "", json!({"sandbox_id": id.to_string()})).await;
    assert_eq!(status, 201);
    let generated = body["name"].as_str().unwrap().to_owned();
    assert!(
        generated.starts_with("template-") && generated.len() == 17,
        "{generated}"
    );

    let resp = env
        .as_user(&u, Method::DELETE, "/v1/snapshots/my-snap")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!names(&list(&env, &u, "").await).contains(&"my-snap"));
    assert_error(
        &json(
            env.as_user(&u, Method::DELETE, "/v1/snapshots/my-snap")
                .send()
                .await
                .unwrap(),
        )
        .await,
        404,
        "not_found",
    );

    let audit = audit_actions(&env, &u).await;
    assert!(
        audit.contains(&("create".into(), "my-snap".into(), "success".into())),
        "{audit:?}"
    );
    assert!(
        audit.contains(&("delete".into(), "my-snap".into(), "warning".into())),
        "{audit:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_taken_name_needs_overwrite_and_platform_names_are_reserved() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let body = json!({"sandbox_id": id.to_string(), "name": "dup"});
    assert_eq!(snapshot(&env, &u, "", body.clone()).await.0, 201);
    assert_error(
        &snapshot(&env, &u, "", body.clone()).await,
        409,
        "template_name_taken",
    );
    assert_error(
        &snapshot(&env, &u, "?overwrite=false", body.clone()).await,
        409,
        "template_name_taken",
    );
    let (status, _) = snapshot(&env, &u, "?overwrite=true", body).await;
    assert_eq!(status, 201, "overwrite=true replaces the team's template");
    assert_eq!(names(&list(&env, &u, "?type=snapshot").await), ["dup"]);
    assert_error(
        &snapshot(
            &env,
            &u,
            "?overwrite=true",
            json!({"sandbox_id": id.to_string(), "name": "minimal"}),
        )
        .await,
        409,
        "name_reserved",
    );
    env.stop().await;
}

#[tokio::test]
async fn paused_capsules_can_be_snapshotted_and_others_cannot() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let paused = env.capsule(&u, SandboxStatus::Paused).await;
    let (status, body) = snapshot(
        &env,
        &u,
        "",
        json!({"sandbox_id": paused.to_string(), "name": "from-paused"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(env.status(paused).await, SandboxStatus::Paused);
    let stopped = env.capsule(&u, SandboxStatus::Stopped).await;
    let got = snapshot(
        &env,
        &u,
        "",
        json!({"sandbox_id": stopped.to_string(), "name": "from-stopped"}),
    )
    .await;
    assert_error(&got, 409, "invalid_state");
    assert!(!names(&list(&env, &u, "").await).contains(&"from-stopped"));
    env.stop().await;
}

#[tokio::test]
async fn snapshot_requests_are_checked_and_change_nothing_when_refused() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let theirs = env.capsule(&other, SandboxStatus::Running).await;
    let before = list(&env, &u, "").await.len();

    let got = json(
        env.req(Method::POST, "/v1/snapshots")
            .json(&json!({"sandbox_id": id.to_string()}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    assert_error(
        &json(env.req(Method::GET, "/v1/snapshots").send().await.unwrap()).await,
        401,
        "unauthorized",
    );
    assert_error(
        &json(
            env.req(Method::DELETE, "/v1/snapshots/x")
                .send()
                .await
                .unwrap(),
        )
        .await,
        401,
        "unauthorized",
    );
    assert_error(
        &snapshot(&env, &u, "", json!({})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &snapshot(&env, &u, "", json!({"sandbox_id": "nope"})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &snapshot(
            &env,
            &u,
            "",
            json!({"sandbox_id": id.to_string(), "name": "bad name!"}),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &snapshot(
            &env,
            &u,
            "?overwrite=maybe",
            json!({"sandbox_id": id.to_string()}),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &snapshot(
            &env,
            &u,
            "",
            json!({"sandbox_id": theirs.to_string(), "name": "stolen"}),
        )
        .await,
        404,
        "not_found",
    );
    let got = json(
        env.as_user(&u, Method::GET, "/v1/snapshots?type=bogus")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        list(&env, &u, "").await.len(),
        before,
        "nothing was created"
    );
    assert!(!names(&list(&env, &other, "").await).contains(&"stolen"));
    assert_eq!(env.status(theirs).await, SandboxStatus::Running);
    env.stop().await;
}

#[tokio::test]
async fn platform_builtin_foreign_and_used_templates_cannot_be_deleted() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let theirs = env.capsule(&other, SandboxStatus::Running).await;
    assert_eq!(
        snapshot(
            &env,
            &other,
            "",
            json!({"sandbox_id": theirs.to_string(), "name": "their-snap"})
        )
        .await
        .0,
        201
    );

    assert_error(
        &json(
            env.as_user(&u, Method::DELETE, "/v1/snapshots/minimal")
                .send()
                .await
                .unwrap(),
        )
        .await,
        403,
        "forbidden",
    );
    assert_error(
        &json(
            env.as_user(&u, Method::DELETE, "/v1/snapshots/their-snap")
                .send()
                .await
                .unwrap(),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &json(
            env.as_user(&u, Method::DELETE, "/v1/snapshots/bad%20name")
                .send()
                .await
                .unwrap(),
        )
        .await,
        400,
        "invalid_request",
    );
    assert!(
        names(&list(&env, &other, "").await).contains(&"their-snap"),
        "another team's template is untouched"
    );

    // A template a capsule was started from stays until the capsule is gone.
    let template = env
        .store()
        .get_template_for_team(other.team, "their-snap")
        .await
        .unwrap();
    let user_of_it = SandboxId::new();
    env.store()
        .insert_sandbox(NewSandbox {
            id: user_of_it,
            team_id: other.team,
            host_id: env.host,
            template: "their-snap".into(),
            template_id: template.id,
            template_team_id: other.team,
            status: SandboxStatus::Starting,
            resources: Resources {
                vcpus: 1,
                memory_mb: 512,
                disk_size_mb: 20480,
            },
            timeout_sec: 0,
            metadata: BTreeMap::new(),
        })
        .await
        .unwrap();
    let got = json(
        env.as_user(&other, Method::DELETE, "/v1/snapshots/their-snap")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 409, "conflict");
    assert_eq!(got.1["error"]["sandbox_ids"][0], user_of_it.to_string());
    env.store()
        .status_if(user_of_it, SandboxStatus::Starting, SandboxStatus::Error)
        .await
        .unwrap()
        .unwrap();
    let resp = env
        .as_user(&other, Method::DELETE, "/v1/snapshots/their-snap")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    env.stop().await;
}

#[tokio::test]
async fn snapshots_on_postgres() {
    let Some(env) = Env::start_with(Opts {
        postgres: true,
        ..Default::default()
    })
    .await
    else {
        eprintln!("skipped: WRENN_TEST_POSTGRES_URL is not set");
        return;
    };
    let u = env.user("pg@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    assert_eq!(
        snapshot(
            &env,
            &u,
            "",
            json!({"sandbox_id": id.to_string(), "name": "pg-snap"})
        )
        .await
        .0,
        201
    );
    assert_error(
        &snapshot(
            &env,
            &u,
            "",
            json!({"sandbox_id": id.to_string(), "name": "pg-snap"}),
        )
        .await,
        409,
        "template_name_taken",
    );
    assert_eq!(
        snapshot(
            &env,
            &u,
            "?overwrite=true",
            json!({"sandbox_id": id.to_string(), "name": "pg-snap"})
        )
        .await
        .0,
        201
    );
    assert_eq!(names(&list(&env, &u, "?type=snapshot").await), ["pg-snap"]);
    assert_eq!(
        env.as_user(&u, Method::DELETE, "/v1/snapshots/pg-snap")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    env.stop().await;
}

// ---------------------------------------------------------------------------------
// Metrics, stats, usage
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn capsule_metrics_come_from_the_agent_or_the_stored_points() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let (status, body) = json(
        env.as_user(&u, Method::GET, &format!("/v1/capsules/{id}/metrics"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sandbox_id"], id.to_string());
    assert_eq!(body["range"], "10m");
    let points = body["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    for field in ["timestamp_unix", "cpu_pct", "mem_bytes", "disk_bytes"] {
        assert!(!points[0][field].is_null(), "{field}");
    }
    let (_, body) = json(
        env.as_user(
            &u,
            Method::GET,
            &format!("/v1/capsules/{id}/metrics?range=2h"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(body["range"], "2h");

    // A paused capsule: the stored points within the range.
    let paused = env.capsule(&u, SandboxStatus::Paused).await;
    let now = Utc::now().timestamp();
    let point = |ts: i64| MetricPoint {
        ts,
        cpu_pct: 5.0,
        mem_bytes: 1000,
        disk_bytes: 2000,
    };
    env.store()
        .insert_metric_points(
            paused,
            MetricTier::TenMinutes,
            &[point(now - 3000), point(now - 60), point(now - 30)],
        )
        .await
        .unwrap();
    let (status, body) = json(
        env.as_user(
            &u,
            Method::GET,
            &format!("/v1/capsules/{paused}/metrics?range=5m"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["points"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["points"][0]["timestamp_unix"], now - 60);

    assert_error(
        &json(
            env.as_user(
                &u,
                Method::GET,
                &format!("/v1/capsules/{id}/metrics?range=1d"),
            )
            .send()
            .await
            .unwrap(),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &json(
            env.as_user(&u, Method::GET, "/v1/capsules/nope/metrics")
                .send()
                .await
                .unwrap(),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &json(
            env.req(Method::GET, &format!("/v1/capsules/{id}/metrics"))
                .send()
                .await
                .unwrap(),
        )
        .await,
        401,
        "unauthorized",
    );
    assert_error(
        &json(
            env.as_user(&other, Method::GET, &format!("/v1/capsules/{id}/metrics"))
                .send()
                .await
                .unwrap(),
        )
        .await,
        404,
        "not_found",
    );
    env.stop().await;
}

#[tokio::test]
async fn stats_report_the_reservation_peaks_and_a_series() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    env.capsule(&u, SandboxStatus::Running).await;
    env.capsule(&u, SandboxStatus::Running).await;
    env.capsule(&u, SandboxStatus::Paused).await;
    let now = Utc::now();
    let snap = |secs_ago: i64, running: i32| MetricsSnapshot {
        team_id: u.team,
        sampled_at: now - ChronoDuration::seconds(secs_ago),
        running_count: running,
        vcpus_reserved: running,
        memory_mb_reserved: running * 512,
        period_secs: 10,
    };
    env.store()
        .insert_metrics_snapshots(&[snap(86_400 * 3, 9), snap(120, 1), snap(60, 3)])
        .await
        .unwrap();

    // `/v1/capsules/stats` is not taken for a capsule id.
    let (status, body) = json(
        env.as_user(&u, Method::GET, "/v1/capsules/stats")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["range"], "1h");
    assert_eq!(
        body["current"],
        json!({"running_count": 2, "vcpus_reserved": 2, "memory_mb_reserved": 1024 + 256})
    );
    assert_eq!(
        body["peaks"],
        json!({"running_count": 9, "vcpus": 9, "memory_mb": 9 * 512}),
        "peaks cover 30 days"
    );
    let series = &body["series"];
    assert_eq!(series["labels"].as_array().unwrap().len(), 60);
    assert_eq!(
        series["running"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_i64)
            .max(),
        Some(3)
    );
    assert!(chrono::DateTime::parse_from_rfc3339(series["labels"][0].as_str().unwrap()).is_ok());

    let (status, body) = json(
        env.as_user(&u, Method::GET, "/v1/capsules/stats?range=30d")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["series"]["running"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_i64)
            .max(),
        Some(9)
    );
    assert_error(
        &json(
            env.as_user(&u, Method::GET, "/v1/capsules/stats?range=10m")
                .send()
                .await
                .unwrap(),
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &json(
            env.req(Method::GET, "/v1/capsules/stats")
                .send()
                .await
                .unwrap(),
        )
        .await,
        401,
        "unauthorized",
    );

    // Another team sees only its own numbers.
    let other = env.user("b@x.io").await;
    let (_, body) = json(
        env.as_user(&other, Method::GET, "/v1/capsules/stats")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["current"]["running_count"], 0);
    assert_eq!(body["peaks"]["running_count"], 0);
    env.stop().await;
}

#[tokio::test]
async fn usage_serves_rolled_up_days_and_today_live() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let now = Utc::now();
    let today = now.date_naive();
    let yesterday = today - ChronoDuration::days(1);
    let at = |t: chrono::DateTime<Utc>, vcpus: i32| MetricsSnapshot {
        team_id: u.team,
        sampled_at: t,
        running_count: 1,
        vcpus_reserved: vcpus,
        memory_mb_reserved: vcpus * 1024,
        period_secs: 10,
    };
    let noon = yesterday.and_hms_opt(12, 0, 0).unwrap().and_utc();
    let mut snaps: Vec<MetricsSnapshot> = (0..6)
        .map(|i| at(noon + ChronoDuration::seconds(10 * i), 3))
        .collect();
    // Today: six samples of 2 vCPUs = 12 × 10 s / 60 = 2 vCPU-minutes (kept after midnight).
    let start_today = today.and_hms_opt(0, 0, 0).unwrap().and_utc();
    // Distinct instants (one snapshot per team and instant), all today.
    let today_at = |i: i64| {
        let t = now - ChronoDuration::seconds(60 + i);
        if t < start_today {
            start_today + ChronoDuration::seconds(i)
        } else {
            t
        }
    };
    snaps.extend((0..6).map(|i| at(today_at(i), 2)));
    env.store().insert_metrics_snapshots(&snaps).await.unwrap();
    env.store()
        .rollup_daily_usage(u.team, yesterday)
        .await
        .unwrap();

    let (status, body) = json(
        env.as_user(&u, Method::GET, "/v1/capsules/usage")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], today.to_string());
    assert_eq!(body["from"], (today - ChronoDuration::days(29)).to_string());
    let points = body["points"].as_array().unwrap();
    assert_eq!(points.len(), 30, "one point per day");
    let day = |d: chrono::NaiveDate| {
        points
            .iter()
            .find(|p| p["date"] == d.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(day(today)["cpu_minutes"], 2.0);
    assert_eq!(day(today)["ram_mb_minutes"], 2048.0);
    assert_eq!(day(yesterday)["cpu_minutes"], 3.0);
    assert_eq!(day(today - ChronoDuration::days(5))["cpu_minutes"], 0.0);

    let q = format!("/v1/capsules/usage?from={yesterday}&to={yesterday}");
    let (_, body) = json(env.as_user(&u, Method::GET, &q).send().await.unwrap()).await;
    assert_eq!(body["points"].as_array().unwrap().len(), 1);

    for bad in [
        "?from=2026-13-01",
        "?from=2026-02-01&to=2026-01-01",
        "?from=2025-01-01&to=2025-06-01",
        "?to=yesterday",
    ] {
        let got = json(
            env.as_user(&u, Method::GET, &format!("/v1/capsules/usage{bad}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&got, 400, "invalid_request");
    }
    assert_error(
        &json(
            env.req(Method::GET, "/v1/capsules/usage")
                .send()
                .await
                .unwrap(),
        )
        .await,
        401,
        "unauthorized",
    );

    // A team without any samples gets plain zeros (not -0.0).
    let other = env.user("b@x.io").await;
    let text = env
        .as_user(&other, Method::GET, "/v1/capsules/usage")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains(":-0"), "{text}");
    env.stop().await;
}

#[tokio::test]
async fn the_hourly_rollup_stores_the_last_completed_days_at_their_own_cadence() {
    use wrenn_cpserver::workers::usage_rollup;
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let today = Utc::now().date_naive();
    let day = |back: i64| today - ChronoDuration::days(back);
    let noon = |back: i64| day(back).and_hms_opt(12, 0, 0).unwrap().and_utc();
    let at = |t: chrono::DateTime<Utc>, vcpus: i32, period: i32| MetricsSnapshot {
        team_id: u.team,
        sampled_at: t,
        running_count: 1,
        vcpus_reserved: vcpus,
        memory_mb_reserved: vcpus * 1024,
        period_secs: period,
    };
    // Yesterday: 3 vCPUs for one minute at 10 s. Three days ago: 1 vCPU for two minutes
    // at 60 s. Five days ago: beyond the roll-up's look-back.
    let mut snaps: Vec<MetricsSnapshot> = (0..6)
        .map(|i| at(noon(1) + ChronoDuration::seconds(10 * i), 3, 10))
        .collect();
    snaps.extend((0..2).map(|i| at(noon(3) + ChronoDuration::minutes(i), 1, 60)));
    snaps.push(at(noon(5), 8, 10));
    env.store().insert_metrics_snapshots(&snaps).await.unwrap();

    let written = usage_rollup::rollup(env.store().as_ref(), today)
        .await
        .unwrap();
    assert_eq!(
        written, 2,
        "one row per team and completed day with snapshots"
    );
    let stored = env
        .store()
        .list_daily_usage(u.team, day(6), today)
        .await
        .unwrap();
    let days: Vec<_> = stored.iter().map(|d| (d.day, d.cpu_minutes)).collect();
    assert_eq!(days, [(day(3), 2.0), (day(1), 3.0)]);
    // Running it again (the next hour) changes nothing.
    usage_rollup::rollup(env.store().as_ref(), today)
        .await
        .unwrap();
    assert_eq!(
        env.store()
            .list_daily_usage(u.team, day(6), today)
            .await
            .unwrap(),
        stored
    );

    let (status, body) = json(
        env.as_user(&u, Method::GET, "/v1/capsules/usage")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cpu = |d: chrono::NaiveDate| {
        body["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["date"] == d.to_string())
            .unwrap()["cpu_minutes"]
            .as_f64()
            .unwrap()
    };
    assert_eq!((cpu(day(3)), cpu(day(1)), cpu(today)), (2.0, 3.0, 0.0));
    env.stop().await;
}

#[tokio::test]
async fn the_sampler_writes_one_snapshot_per_team_and_period_whoever_samples() {
    use std::time::Duration;
    use wrenn_cpserver::workers::metrics_sampler;
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    env.capsule(&u, SandboxStatus::Running).await;
    env.capsule(&u, SandboxStatus::Paused).await;
    let period = Duration::from_secs(10);
    let t = chrono::TimeZone::timestamp_opt(&Utc, 1_800_000_003, 0).unwrap();
    // Two replicas ticking in the same period, and one in the next.
    for now in [
        t,
        t + ChronoDuration::seconds(4),
        t + ChronoDuration::seconds(10),
    ] {
        metrics_sampler::sample(env.store().as_ref(), now, period)
            .await
            .unwrap();
    }
    let snaps = env
        .store()
        .list_metrics_snapshots(
            u.team,
            t - ChronoDuration::minutes(1),
            t + ChronoDuration::minutes(1),
        )
        .await
        .unwrap();
    let stamps: Vec<i64> = snaps.iter().map(|s| s.sampled_at.timestamp()).collect();
    assert_eq!(stamps, [1_800_000_000, 1_800_000_010]);
    let s = &snaps[0];
    assert_eq!(
        (s.running_count, s.period_secs),
        (1, 10),
        "one running capsule; the snapshot stands for the sampler's period"
    );
    assert!(s.memory_mb_reserved > s.vcpus_reserved, "{s:?}");
    env.stop().await;
}
