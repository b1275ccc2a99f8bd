//! Exec, background processes and the exec/process WebSocket streams, against a
//! host agent that runs real processes.

use crate::data_plane;

use std::time::Duration;

use data_plane::{Env, Frame, Opts, Ws, alive, assert_error, eventually, json, json_frames};
use reqwest::Method;
use serde_json::{Value, json};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;

fn sh(line: &str) -> Value {
    json!({ "cmd": "/bin/sh", "args": ["-c", line] })
}

async fn exec(env: &Env, user: &data_plane::TestUser, id: SandboxId, body: Value) -> (u16, Value) {
    json(
        env.as_user(user, Method::POST, &format!("/v1/capsules/{id}/exec"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn foreground_exec_returns_stdout_stderr_and_the_exit_code() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let (status, body) = exec(&env, &u, id, sh("echo out; echo err >&2; exit 42")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sandbox_id"], id.to_string());
    assert_eq!(body["cmd"], "/bin/sh");
    assert_eq!(body["stdout"], "out\n");
    assert_eq!(body["stderr"], "err\n");
    assert_eq!(body["exit_code"], 42);
    assert_eq!(body["encoding"], "utf-8");
    assert!(body["duration_ms"].as_u64().is_some());

    let (status, body) = exec(&env, &u, id, sh("sleep 1")).await;
    assert_eq!(status, 200);
    assert!(body["duration_ms"].as_u64().unwrap() >= 900, "{body}");
    assert_eq!(body["exit_code"], 0);
    env.stop().await;
}

#[tokio::test]
async fn foreground_exec_honours_envs_and_cwd() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let (status, _) = json(
        env.as_user(&u, Method::POST, &format!("/v1/capsules/{id}/files/mkdir"))
            .json(&json!({"path": "/work"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let mut body = sh("echo \"$GREETING\" > here.txt; echo \"$GREETING\"");
    body["envs"] = json!({ "GREETING": "hello from env" });
    body["cwd"] = json!("/work");
    let (status, got) = exec(&env, &u, id, body).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["stdout"], "hello from env\n");
    let file = env
        .as_user(&u, Method::POST, &format!("/v1/capsules/{id}/files/read"))
        .json(&json!({"path": "/work/here.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(
        file.text().await.unwrap(),
        "hello from env\n",
        "the command ran in /work"
    );

    // The default working directory is the user's home.
    let (_, got) = exec(&env, &u, id, sh("echo home > at-home.txt")).await;
    assert_eq!(got["exit_code"], 0);
    let file = env
        .as_user(&u, Method::POST, &format!("/v1/capsules/{id}/files/read"))
        .json(&json!({"path": "/root/at-home.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(file.text().await.unwrap(), "home\n");

    // A missing cwd is the caller's mistake.
    let mut body = sh("true");
    body["cwd"] = json!("/does/not/exist");
    assert_error(&exec(&env, &u, id, body).await, 400, "invalid_request");
    env.stop().await;
}

#[tokio::test]
async fn foreground_output_is_capped_at_16_mib_per_stream_and_says_so() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let cap = wrenn_cpserver::host_data_plane::EXEC_OUTPUT_CAP;
    let line = format!(
        "head -c {} /dev/zero | tr '\\0' a; echo err >&2",
        cap + 4096
    );
    let (status, body) = exec(&env, &u, id, sh(&line)).await;
    assert_eq!(status, 200, "{}", body["error"]);
    assert_eq!(body["truncated"], true);
    let stdout = body["stdout"].as_str().unwrap();
    assert_eq!(stdout.len(), cap);
    assert!(stdout.bytes().all(|b| b == b'a'));
    assert_eq!(
        body["stderr"], "err\n",
        "the other stream keeps its own output"
    );
    assert_eq!(body["exit_code"], 0);

    let (status, body) = exec(&env, &u, id, sh("echo small")).await;
    assert_eq!(status, 200);
    assert_ne!(body["truncated"], true, "{body}");
    env.stop().await;
}

#[tokio::test]
async fn binary_output_is_base64_on_both_streams() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let (status, body) = exec(&env, &u, id, sh("printf '\\377'; echo hi >&2")).await;
    assert_eq!(status, 200);
    assert_eq!(body["encoding"], "base64");
    assert_eq!(body["stdout"], "/w==");
    assert_eq!(
        body["stderr"], "aGkK",
        "stderr is base64 too, although it is valid UTF-8"
    );
    env.stop().await;
}

#[tokio::test]
async fn exec_checks_come_in_the_contract_order_and_change_nothing() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let paused = env.capsule(&u, SandboxStatus::Paused).await;
    let theirs = env.capsule(&other, SandboxStatus::Running).await;

    let got = json(
        env.req(Method::POST, &format!("/v1/capsules/{id}/exec"))
            .json(&sh("true"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    let got = json(
        env.req(Method::POST, &format!("/v1/capsules/{id}/exec"))
            .header("X-API-Key", "wrn_00000000000000000000000000000000")
            .json(&sh("true"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 401, "unauthorized");
    let got = json(
        env.as_user(&u, Method::POST, "/v1/capsules/nope/exec")
            .json(&sh("true"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    // Another team's capsule is not found, even with a bad body.
    assert_error(&exec(&env, &u, theirs, json!({})).await, 404, "not_found");
    // A capsule that is not running is 409 before the body is looked at.
    let got = exec(&env, &u, paused, json!({})).await;
    assert_error(&got, 409, "invalid_state");
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("paused")
    );
    // Then the body.
    assert_error(&exec(&env, &u, id, json!({})).await, 400, "invalid_request");
    assert_error(
        &exec(&env, &u, id, json!({"cmd": ""})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &exec(&env, &u, id, json!({"cmd": "true", "timeout_sec": -1})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &exec(
            &env,
            &u,
            id,
            json!({"cmd": "true", "background": true, "tag": "bad tag"}),
        )
        .await,
        400,
        "invalid_request",
    );
    // What execve could never take is refused here, not passed on to fail as a 502.
    let huge_arg = "x".repeat(wrenn_core::validate::MAX_COMMAND_STRING_BYTES + 1);
    let got = exec(&env, &u, id, json!({"cmd": "echo", "args": [huge_arg]})).await;
    assert_error(&got, 400, "invalid_request");
    assert!(got.1["error"]["message"].as_str().unwrap().contains("args"));
    let many = vec!["x".repeat(100_000); 20];
    let got = exec(
        &env,
        &u,
        id,
        json!({"cmd": "echo", "args": many, "background": true}),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_error(
        &exec(&env, &u, id, json!({"cmd": "echo", "envs": {"A=B": "1"}})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &exec(&env, &u, id, json!({"cmd": "ec\u{0}ho"})).await,
        400,
        "invalid_request",
    );
    let got = json(
        env.as_user(&u, Method::POST, &format!("/v1/capsules/{id}/exec"))
            .body("{nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert_eq!(
        env.agent.calls_for(id) + env.agent.calls_for(paused) + env.agent.calls_for(theirs),
        0,
        "nothing reached the agent"
    );
    assert_eq!(env.status(paused).await, SandboxStatus::Paused);
    env.stop().await;
}

#[tokio::test]
async fn an_api_key_runs_commands_in_its_team() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let key = env.api_key(&u).await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let got = json(
        env.req(Method::POST, &format!("/v1/capsules/{id}/exec"))
            .header("X-API-Key", &key)
            .json(&sh("echo ok"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.0, 200);
    assert_eq!(got.1["stdout"], "ok\n");
    env.stop().await;
}

#[tokio::test]
async fn a_command_outliving_its_timeout_is_an_agent_error() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let mut body = sh("sleep 5");
    body["timeout_sec"] = json!(1);
    let started = std::time::Instant::now();
    let got = exec(&env, &u, id, body).await;
    assert_eq!(got.1["error"]["code"], "agent_error", "{}", got.1);
    assert!(started.elapsed() < Duration::from_secs(4));
    env.stop().await;
}

#[tokio::test]
async fn background_exec_answers_202_then_the_process_is_listed_and_killed() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let (status, body) = exec(&env, &u, id, json!({"cmd": "sleep", "args": ["30"], "background": true, "envs": {"A": "1"}, "cwd": "/root"})).await;
    assert_eq!(status, 202, "{body}");
    let pid = body["pid"].as_u64().unwrap() as u32;
    assert!(pid > 0);
    let tag = body["tag"].as_str().unwrap().to_owned();
    assert!(tag.starts_with("proc-") && tag.len() == 13, "{tag}");
    assert_eq!(body["sandbox_id"], id.to_string());
    assert_eq!(body["cmd"], "sleep");

    let (status, list) = json(
        env.as_user(&u, Method::GET, &format!("/v1/capsules/{id}/processes"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let procs = list["processes"].as_array().unwrap();
    let p = procs.iter().find(|p| p["pid"] == pid).expect("listed");
    assert_eq!(p["tag"], tag.as_str());
    assert_eq!(p["cmd"], "sleep");
    assert_eq!(p["args"], json!(["30"]));

    let resp = env
        .as_user(
            &u,
            Method::DELETE,
            &format!("/v1/capsules/{id}/processes/{pid}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    eventually(5, "the process to die", || async { !alive(pid) }).await;
    eventually(5, "the process to leave the list", || async {
        let (_, list) = json(
            env.as_user(&u, Method::GET, &format!("/v1/capsules/{id}/processes"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        !list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid)
    })
    .await;
    // Killing it again: it is gone.
    let got = json(
        env.as_user(
            &u,
            Method::DELETE,
            &format!("/v1/capsules/{id}/processes/{pid}"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_error(&got, 404, "not_found");
    env.stop().await;
}

#[tokio::test]
async fn a_background_tag_is_echoed_addresses_the_process_and_must_be_unique() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let mut body = sh("trap 'exit 0' TERM; while true; do sleep 0.1; done");
    body["background"] = json!(true);
    body["tag"] = json!("web");
    let (status, got) = exec(&env, &u, id, body.clone()).await;
    assert_eq!(status, 202);
    assert_eq!(got["tag"], "web");
    let pid = got["pid"].as_u64().unwrap() as u32;
    assert_error(&exec(&env, &u, id, body).await, 409, "conflict");

    let got = json(
        env.as_user(
            &u,
            Method::DELETE,
            &format!("/v1/capsules/{id}/processes/web?signal=SIGBOGUS"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_error(&got, 400, "invalid_request");
    assert!(alive(pid));
    let resp = env
        .as_user(
            &u,
            Method::DELETE,
            &format!("/v1/capsules/{id}/processes/web?signal=SIGTERM"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    eventually(5, "SIGTERM to end the process", || async { !alive(pid) }).await;
    env.stop().await;
}

#[tokio::test]
async fn process_routes_check_credentials_team_state_and_selector() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let paused = env.capsule(&u, SandboxStatus::Paused).await;
    let theirs = env.capsule(&other, SandboxStatus::Running).await;
    let (status, body) = exec(
        &env,
        &other,
        theirs,
        json!({"cmd": "sleep", "args": ["30"], "background": true}),
    )
    .await;
    assert_eq!(status, 202);
    let their_pid = body["pid"].as_u64().unwrap();

    assert_error(
        &json(
            env.req(Method::GET, &format!("/v1/capsules/{id}/processes"))
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
            env.req(Method::DELETE, &format!("/v1/capsules/{id}/processes/1"))
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
            env.as_user(&u, Method::GET, "/v1/capsules/cl-bad/processes")
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
            env.as_user(&u, Method::GET, &format!("/v1/capsules/{theirs}/processes"))
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
            env.as_user(
                &u,
                Method::DELETE,
                &format!("/v1/capsules/{theirs}/processes/{their_pid}"),
            )
            .send()
            .await
            .unwrap(),
        )
        .await,
        404,
        "not_found",
    );
    assert!(
        alive(their_pid as u32),
        "another team's process is untouched"
    );
    assert_error(
        &json(
            env.as_user(&u, Method::GET, &format!("/v1/capsules/{paused}/processes"))
                .send()
                .await
                .unwrap(),
        )
        .await,
        409,
        "invalid_state",
    );
    assert_error(
        &json(
            env.as_user(
                &u,
                Method::DELETE,
                &format!("/v1/capsules/{paused}/processes/1"),
            )
            .send()
            .await
            .unwrap(),
        )
        .await,
        409,
        "invalid_state",
    );
    assert_error(
        &json(
            env.as_user(
                &u,
                Method::DELETE,
                &format!("/v1/capsules/{id}/processes/0"),
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
            env.as_user(
                &u,
                Method::DELETE,
                &format!("/v1/capsules/{id}/processes/bad%20tag"),
            )
            .send()
            .await
            .unwrap(),
        )
        .await,
        400,
        "invalid_request",
    );
    let (status, list) = json(
        env.as_user(&u, Method::GET, &format!("/v1/capsules/{id}/processes"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["processes"], json!([]), "always an array");
    let _ = env
        .as_user(
            &other,
            Method::DELETE,
            &format!("/v1/capsules/{theirs}/processes/{their_pid}"),
        )
        .send()
        .await;
    env.stop().await;
}

fn ws_path(id: SandboxId) -> String {
    format!("/v1/capsules/{id}/exec/stream")
}

#[tokio::test]
async fn the_exec_stream_relays_start_output_and_exit() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let key = env.api_key(&u).await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let mut ws = Ws::connect(&env.authority(), &ws_path(id), &[("X-API-Key", &key)])
        .await
        .unwrap();
    ws.send_json(&json!({"type": "start", "cmd": "/bin/sh", "args": ["-c", "echo hello; echo oops >&2; printf 'caf\\303\\251\\n'; exit 3"]})).await;
    let frames = json_frames(&ws.drain(10).await);
    assert_eq!(frames[0]["type"], "start");
    assert!(frames[0]["pid"].as_u64().unwrap() > 0);
    let stdout: String = frames
        .iter()
        .filter(|f| f["type"] == "stdout")
        .map(|f| f["data"].as_str().unwrap())
        .collect();
    let stderr: String = frames
        .iter()
        .filter(|f| f["type"] == "stderr")
        .map(|f| f["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "hello\ncafé\n", "plain text, not base64");
    assert_eq!(stderr, "oops\n");
    let last = frames.last().unwrap();
    assert_eq!(last, &json!({"type": "exit", "exit_code": 3}));

    // exit_code is present when it is 0.
    let mut ws = Ws::connect(
        &env.authority(),
        &ws_path(id),
        &[("Authorization", &format!("Bearer {}", u.token))],
    )
    .await
    .unwrap();
    ws.send_json(&json!({"type": "start", "cmd": "true"})).await;
    let frames = json_frames(&ws.drain(10).await);
    assert_eq!(
        frames.last().unwrap(),
        &json!({"type": "exit", "exit_code": 0})
    );
    env.stop().await;
}

#[tokio::test]
async fn the_exec_stream_accepts_a_first_message_token_and_refuses_bad_ones() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;

    let mut ws = Ws::connect(&env.authority(), &ws_path(id), &[])
        .await
        .unwrap();
    ws.send_json(&json!({"type": "auth", "token": u.token}))
        .await;
    ws.send_json(&json!({"type": "start", "cmd": "echo", "args": ["via first message"]}))
        .await;
    let frames = json_frames(&ws.drain(10).await);
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "stdout" && f["data"] == "via first message\n"),
        "{frames:?}"
    );

    let calls = env.agent.calls_for(id);
    // An invalid token: an error frame, then the socket closes.
    let mut ws = Ws::connect(&env.authority(), &ws_path(id), &[])
        .await
        .unwrap();
    ws.send_json(&json!({"type": "auth", "token": "not-a-jwt"}))
        .await;
    let frames = ws.drain(10).await;
    let msgs = json_frames(&frames);
    assert_eq!(msgs.len(), 1, "{frames:?}");
    assert_eq!(msgs[0]["type"], "error");
    assert!(msgs[0]["data"].as_str().unwrap().contains("unauthorized"));
    assert!(matches!(frames.last(), Some(Frame::Close)));

    // Invalid header credentials and no auth message: refused.
    let mut ws = Ws::connect(
        &env.authority(),
        &ws_path(id),
        &[("X-API-Key", "wrn_00000000000000000000000000000000")],
    )
    .await
    .unwrap();
    ws.send_json(&json!({"type": "start", "cmd": "true"})).await;
    let msgs = json_frames(&ws.drain(10).await);
    assert_eq!(msgs[0]["type"], "error");
    assert!(
        msgs[0]["data"].as_str().unwrap().contains("unauthorized"),
        "{msgs:?}"
    );
    assert_eq!(env.agent.calls_for(id), calls, "nothing ran");
    env.stop().await;
}

#[tokio::test]
async fn exec_stream_failures_after_the_upgrade_are_error_frames() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let paused = env.capsule(&u, SandboxStatus::Paused).await;
    let theirs = env.capsule(&other, SandboxStatus::Running).await;
    let auth = format!("Bearer {}", u.token);

    let refused = Ws::connect(
        &env.authority(),
        "/v1/capsules/nope/exec/stream",
        &[("Authorization", &auth)],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(
        refused.status, 400,
        "a malformed id is refused before the upgrade"
    );
    let plain = json(
        env.as_user(&u, Method::GET, &ws_path(theirs))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&plain, 400, "invalid_request");

    for (id, needle) in [(theirs, "not found"), (paused, "not running")] {
        let mut ws = Ws::connect(&env.authority(), &ws_path(id), &[("Authorization", &auth)])
            .await
            .unwrap();
        let msgs = json_frames(&ws.drain(10).await);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(msgs[0]["type"], "error");
        assert!(
            msgs[0]["data"].as_str().unwrap().contains(needle),
            "{msgs:?}"
        );
    }
    // A bad start message.
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let mut ws = Ws::connect(&env.authority(), &ws_path(id), &[("Authorization", &auth)])
        .await
        .unwrap();
    ws.send_json(&json!({"type": "start"})).await;
    let msgs = json_frames(&ws.drain(10).await);
    assert_eq!(msgs[0]["type"], "error");
    assert_eq!(
        env.agent.calls_for(id) + env.agent.calls_for(theirs) + env.agent.calls_for(paused),
        0
    );
    env.stop().await;
}

#[tokio::test]
async fn stop_ends_the_exec_stream_and_kills_the_command() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let mut ws = Ws::connect(
        &env.authority(),
        &ws_path(id),
        &[("Authorization", &format!("Bearer {}", u.token))],
    )
    .await
    .unwrap();
    ws.send_json(&json!({"type": "start", "cmd": "sleep", "args": ["30"]}))
        .await;
    let start = ws.next_json().await;
    assert_eq!(start["type"], "start");
    let pid = start["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    ws.send_json(&json!({"type": "stop"})).await;
    let rest = ws.drain(10).await;
    assert!(matches!(rest.last(), Some(Frame::Close)), "{rest:?}");
    eventually(5, "the streamed command to be killed", || async {
        !alive(pid)
    })
    .await;
    env.stop().await;
}

#[tokio::test]
async fn the_process_stream_replays_output_and_reports_the_exit() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let mut body = sh("echo first; sleep 0.5; echo second; exit 7");
    body["background"] = json!(true);
    body["tag"] = json!("job");
    let (status, started) = exec(&env, &u, id, body).await;
    assert_eq!(status, 202);
    let pid = started["pid"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    for selector in [pid.to_string(), "job".to_owned()] {
        let path = format!("/v1/capsules/{id}/processes/{selector}/stream");
        let mut ws = Ws::connect(
            &env.authority(),
            &path,
            &[("Authorization", &format!("Bearer {}", u.token))],
        )
        .await
        .unwrap();
        let frames = json_frames(&ws.drain(10).await);
        assert_eq!(frames[0], json!({"type": "start", "pid": pid}));
        let out: String = frames
            .iter()
            .filter(|f| f["type"] == "stdout")
            .map(|f| f["data"].as_str().unwrap())
            .collect();
        assert_eq!(
            out, "first\nsecond\n",
            "output produced before attaching is replayed"
        );
        assert_eq!(
            frames.last().unwrap(),
            &json!({"type": "exit", "exit_code": 7})
        );
    }

    // Unknown process, another team: error frames.
    let other = env.user("b@x.io").await;
    let mut ws = Ws::connect(
        &env.authority(),
        &format!("/v1/capsules/{id}/processes/99999/stream"),
        &[("Authorization", &format!("Bearer {}", u.token))],
    )
    .await
    .unwrap();
    let msgs = json_frames(&ws.drain(10).await);
    assert_eq!(msgs[0]["type"], "error");
    let mut ws = Ws::connect(
        &env.authority(),
        &format!("/v1/capsules/{id}/processes/job/stream"),
        &[("Authorization", &format!("Bearer {}", other.token))],
    )
    .await
    .unwrap();
    let msgs = json_frames(&ws.drain(10).await);
    assert!(
        msgs[0]["data"].as_str().unwrap().contains("not found"),
        "{msgs:?}"
    );
    let refused = Ws::connect(
        &env.authority(),
        &format!("/v1/capsules/{id}/processes/bad%20sel/stream"),
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.status, 400);
    env.stop().await;
}

#[tokio::test]
async fn exec_and_background_processes_on_postgres() {
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
    let (status, body) = exec(&env, &u, id, sh("echo pg")).await;
    assert_eq!((status, body["stdout"].as_str()), (200, Some("pg\n")));
    let (status, body) = exec(
        &env,
        &u,
        id,
        json!({"cmd": "sleep", "args": ["30"], "background": true}),
    )
    .await;
    assert_eq!(status, 202);
    let pid = body["pid"].as_u64().unwrap();
    let resp = env
        .as_user(
            &u,
            Method::DELETE,
            &format!("/v1/capsules/{id}/processes/{pid}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let paused = env.capsule(&u, SandboxStatus::Paused).await;
    assert_error(
        &exec(&env, &u, paused, sh("true")).await,
        409,
        "invalid_state",
    );
    env.stop().await;
}
