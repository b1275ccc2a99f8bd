//! The port proxy (`/proxy/{id}/{port}/…`) against real TCP servers on 127.0.0.1, and
//! its interplay with pause (connection drain).

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use common::{Setup, TestAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wrenn_core::id::SandboxId;
use wrenn_proto::hostagent::v1 as pb;

/// An HTTP app on 127.0.0.1 standing in for a server inside the sandbox.
async fn upstream() -> SocketAddr {
    let app =
        axum::Router::new()
            .route(
                "/hello",
                get(
                    |Query(q): Query<std::collections::HashMap<String, String>>,
                     headers: HeaderMap| async move {
                        format!(
                            "hello {} host={} auth={}",
                            q.get("name").cloned().unwrap_or_default(),
                            headers
                                .get("host")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or(""),
                            headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-"),
                        )
                    },
                ),
            )
            .route("/", get(|| async { "root" }))
            .route(
                "/go",
                get(|| async { Redirect::to("/target").into_response() }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    "slow done"
                }),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A raw server that accepts any `Upgrade` with 101 and then echoes bytes.
async fn upgrade_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
                    .await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn url(
    agent: &TestAgent,
    id: impl std::fmt::Display,
    port: impl std::fmt::Display,
    rest: &str,
) -> String {
    format!(
        "http://{}/proxy/{id}/{port}{rest}",
        agent.handle.local_addr()
    )
}

#[tokio::test]
async fn forwards_to_the_sandbox_port() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let up = upstream().await;
    let http = reqwest::Client::new();

    let resp = http
        .get(url(&agent, id, up.port(), "/hello?name=wrenn"))
        .header("authorization", "Bearer app-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        format!(
            "hello wrenn host=127.0.0.1:{} auth=Bearer app-token",
            up.port()
        )
    );
    let resp = http
        .get(url(&agent, id, up.port(), ""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "root");

    // Redirects stay under the proxy prefix.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url(&agent, id, up.port(), "/go"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(
        resp.headers()["location"],
        format!("/proxy/{id}/{}/target", up.port()).as_str()
    );

    // Errors.
    let st = |u: String| {
        let http = http.clone();
        async move { http.get(u).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        st(url(&agent, SandboxId::new(), up.port(), "/hello")).await,
        404
    );
    assert_eq!(st(url(&agent, "cl-bad", up.port(), "/hello")).await, 400);
    assert_eq!(st(url(&agent, id, 0, "/")).await, 400);
    assert_eq!(st(url(&agent, id, 70000, "/")).await, 400);
    assert_eq!(st(url(&agent, id, wrenn_proto::ENVD_PORT, "/")).await, 403);
    // Nothing listens there: 502.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert_eq!(st(url(&agent, id, closed, "/")).await, 502);

    // Paused: 409; resumed: served again.
    let mut c = agent.client.clone();
    c.pause_sandbox(pb::PauseSandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    assert_eq!(st(url(&agent, id, up.port(), "/hello")).await, 409);
    c.resume_sandbox(pb::ResumeSandboxRequest {
        sandbox_id: id.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(st(url(&agent, id, up.port(), "/hello")).await, 200);
}

#[tokio::test]
async fn upgrades_pass_through() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let echo = upgrade_echo().await;
    let mut s = tokio::net::TcpStream::connect(agent.handle.local_addr())
        .await
        .unwrap();
    let req = format!(
        "GET /proxy/{id}/{}/ws HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        echo.port()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping through the proxy").await.unwrap();
    let mut buf = [0u8; 22];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping through the proxy");
}

#[tokio::test]
async fn pause_drains_in_flight_requests_and_reset_reopens() {
    let mut setup = Setup::default();
    setup.settings.drain_grace = Duration::from_secs(2);
    let agent = TestAgent::start_with(setup).await;
    let id = agent.create(0).await;
    let up = upstream().await;
    let http = reqwest::Client::new();

    // A slow request in flight (1.2 s), then a pause: the pause waits for it.
    let slow = {
        let (http, u) = (http.clone(), url(&agent, id, up.port(), "/slow"));
        tokio::spawn(async move { http.get(u).send().await.unwrap().text().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sb = agent.handle.manager().get(id).unwrap();
    assert_eq!(sb.conns().active(), 1);
    let started = Instant::now();
    agent
        .client
        .clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "pause waited for the drain: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "bounded by the grace: {waited:?}"
    );
    assert_eq!(slow.await.unwrap(), "slow done");
    assert_eq!(sb.conns().active(), 0);

    // A failed pause re-enables the proxy (reset).
    agent
        .client
        .clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    agent
        .runtime
        .fail_next_pause
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = agent
        .client
        .clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(!sb.conns().is_draining());
    let resp = http
        .get(url(&agent, id, up.port(), "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn proxy_requires_the_agent_token_when_configured() {
    let agent = TestAgent::start_with(Setup {
        auth_token: Some("tok".into()),
        ..Setup::default()
    })
    .await;
    // Create through the authenticated client.
    let id = SandboxId::new();
    let mut req = tonic::Request::new(common::create_request(id, 0));
    req.metadata_mut()
        .insert("authorization", "Bearer tok".parse().unwrap());
    agent.client.clone().create_sandbox(req).await.unwrap();
    let up = upstream().await;
    let http = reqwest::Client::new();
    let resp = http
        .get(url(&agent, id, up.port(), "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .get(url(&agent, id, up.port(), "/hello?name=x"))
        .header("x-wrenn-agent-token", "tok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().starts_with("hello x"));
}
