//! The PTY WebSocket, against a host agent that runs real (pipe-backed) terminals.

use crate::data_plane;

use std::time::Duration;

use data_plane::{Env, Frame, Ws, alive, json_frames};
use serde_json::{Value, json};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;

/// A capsule, upgrade headers, the first message and what the error must say.
type Case<'a> = (SandboxId, Vec<(&'a str, String)>, Value, &'a str);

fn pty_path(id: SandboxId) -> String {
    format!("/v1/capsules/{id}/pty")
}

/// Reads frames until the terminal output contains `needle`; returns everything read.
async fn output_until(ws: &mut Ws, needle: &str) -> String {
    let mut out = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !out.contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in {out:?}"
        );
        match ws.next(10).await {
            Some(Frame::Binary(b)) => out.push_str(&String::from_utf8_lossy(&b)),
            Some(Frame::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "ping", "unexpected control frame {v}");
            }
            other => panic!("connection ended while waiting for {needle:?}: {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn a_terminal_starts_takes_input_resizes_and_reports_its_exit() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let key = env.api_key(&u).await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let mut ws = Ws::connect(&env.authority(), &pty_path(id), &[("X-API-Key", &key)])
        .await
        .unwrap();
    ws.send_json(&json!({"type": "start", "cmd": "/bin/sh", "cols": 100, "rows": 30, "envs": {"WHO": "pty"}})).await;
    let started = ws.next_json().await;
    assert_eq!(started["type"], "started");
    let tag = started["tag"].as_str().unwrap().to_owned();
    assert!(tag.starts_with("pty-") && tag.len() == 12, "{tag}");
    assert!(started["pid"].as_u64().unwrap() > 0);

    // Keystrokes as binary frames (what SDK 0.3.0 sends); output comes back binary.
    ws.send_binary(b"echo hello $WHO $COLUMNS\n").await;
    output_until(&mut ws, "hello pty 100").await;
    // The legacy JSON input form, base64.
    ws.send_json(&json!({"type": "input", "data": "ZWNobyBsZWdhY3kK"}))
        .await;
    output_until(&mut ws, "legacy").await;

    ws.send_json(&json!({"type": "resize", "cols": 0, "rows": 10}))
        .await;
    ws.send_json(&json!({"type": "resize", "cols": 120, "rows": 40}))
        .await;
    ws.send_json(&json!({"type": "pong"})).await;
    ws.send_binary(b"exit 3\n").await;
    let rest = ws.drain(10).await;
    let msgs = json_frames(&rest);
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"type": "exit", "exit_code": 3}),
        "{rest:?}"
    );
    assert!(matches!(rest.last(), Some(Frame::Close)));
    assert_eq!(
        *env.agent.resizes.lock().unwrap(),
        vec![(tag, 120, 40)],
        "a resize with a zero side is ignored"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_terminal_outlives_its_socket_and_reattaches_by_tag() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let auth = format!("Bearer {}", u.token);
    let mut ws = Ws::connect(&env.authority(), &pty_path(id), &[("Authorization", &auth)])
        .await
        .unwrap();
    ws.send_json(&json!({"type": "start", "cmd": "/bin/sh"}))
        .await;
    let started = ws.next_json().await;
    let (tag, pid) = (
        started["tag"].as_str().unwrap().to_owned(),
        started["pid"].as_u64().unwrap() as u32,
    );
    ws.send_close().await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(alive(pid), "closing the socket only detaches");

    let mut ws = Ws::connect(&env.authority(), &pty_path(id), &[("Authorization", &auth)])
        .await
        .unwrap();
    ws.send_json(&json!({"type": "connect", "tag": tag})).await;
    let again = ws.next_json().await;
    assert_eq!(again, json!({"type": "started", "tag": tag, "pid": pid}));
    ws.send_binary(b"echo still here\n").await;
    output_until(&mut ws, "still here").await;
    ws.send_json(&json!({"type": "kill"})).await;
    let msgs = json_frames(&ws.drain(10).await);
    let exit = msgs
        .iter()
        .find(|m| m["type"] == "exit")
        .expect("exit frame");
    assert!(
        exit["exit_code"].is_i64(),
        "exit_code is always present: {exit}"
    );
    assert!(!alive(pid));
    env.stop().await;
}

#[tokio::test]
async fn terminal_failures_are_fatal_error_frames() {
    let env = Env::start().await;
    let u = env.user("a@x.io").await;
    let other = env.user("b@x.io").await;
    let id = env.capsule(&u, SandboxStatus::Running).await;
    let paused = env.capsule(&u, SandboxStatus::Paused).await;
    let theirs = env.capsule(&other, SandboxStatus::Running).await;
    let auth = format!("Bearer {}", u.token);

    let refused = Ws::connect(
        &env.authority(),
        "/v1/capsules/cl-nope/pty",
        &[("Authorization", &auth)],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("invalid_request"), "{}", refused.body);

    let cases: Vec<Case> = vec![
        (
            theirs,
            vec![("Authorization", auth.clone())],
            json!({"type": "start"}),
            "not found",
        ),
        (
            paused,
            vec![("Authorization", auth.clone())],
            json!({"type": "start"}),
            "not running",
        ),
        (
            id,
            vec![("Authorization", auth.clone())],
            json!({"type": "connect", "tag": "pty-00000000"}),
            "no process with tag",
        ),
        (
            id,
            vec![("Authorization", auth.clone())],
            json!({"type": "connect"}),
            "tag",
        ),
        (
            id,
            vec![("Authorization", auth.clone())],
            json!({"type": "dance"}),
            "start or connect",
        ),
        (
            id,
            vec![],
            json!({"type": "auth", "token": "garbage"}),
            "unauthorized",
        ),
        (id, vec![], json!({"type": "start"}), "unauthorized"),
    ];
    for (capsule, headers, first, needle) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut ws = Ws::connect(&env.authority(), &pty_path(capsule), &headers)
            .await
            .unwrap();
        ws.send_json(&first).await;
        let frames = ws.drain(10).await;
        let msgs = json_frames(&frames);
        assert_eq!(msgs.len(), 1, "{first}: {frames:?}");
        assert_eq!(msgs[0]["type"], "error");
        assert_eq!(msgs[0]["fatal"], true);
        assert!(
            msgs[0]["data"].as_str().unwrap().contains(needle),
            "{first}: {}",
            msgs[0]
        );
        assert!(
            matches!(frames.last(), Some(Frame::Close)),
            "{first}: {frames:?}"
        );
    }
    assert_eq!(env.agent.calls_for(theirs) + env.agent.calls_for(paused), 0);

    // A bad control message mid-session is a non-fatal error; the terminal carries on.
    let mut ws = Ws::connect(&env.authority(), &pty_path(id), &[("Authorization", &auth)])
        .await
        .unwrap();
    ws.send_json(&json!({"type": "auth", "token": u.token}))
        .await;
    ws.send_json(&json!({"type": "start", "cmd": "/bin/sh"}))
        .await;
    assert_eq!(ws.next_json().await["type"], "started");
    ws.send_json(&json!({"type": "wiggle"})).await;
    let err = ws.next_json().await;
    assert_eq!(err["type"], "error");
    assert!(
        err.get("fatal").is_none(),
        "fatal is omitted when false: {err}"
    );
    ws.send_json(&json!({"type": "input", "data": "***"})).await;
    assert_eq!(ws.next_json().await["type"], "error");
    ws.send_binary(b"echo alive\n").await;
    output_until(&mut ws, "alive").await;
    ws.send_json(&json!({"type": "kill"})).await;
    let _ = ws.drain(10).await;
    env.stop().await;
}
