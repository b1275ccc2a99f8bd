//! The port proxy (`/proxy/{id}/{port}/…`) against real TCP servers on 127.0.0.1, and
//! its interplay with pause (connection drain); then against servers inside real
//! process-runtime capsules, bound to the capsule's address or to its loopback only
//! (reached through envd's tunnel), plain HTTP and upgrades (needs root).

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

/// An agent listening somewhere: the test harness's, or one started here.
trait Listening {
    fn addr(&self) -> SocketAddr;
}

impl Listening for TestAgent {
    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
}

impl Listening for wrenn_agent::AgentHandle {
    fn addr(&self) -> SocketAddr {
        self.local_addr()
    }
}

fn url(
    agent: &impl Listening,
    id: impl std::fmt::Display,
    port: impl std::fmt::Display,
    rest: &str,
) -> String {
    format!("http://{}/proxy/{id}/{port}{rest}", agent.addr())
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

// ---------------------------------------------------------------------------------------
// Servers inside real capsules (process runtime)
// ---------------------------------------------------------------------------------------

/// A server for capsules: `python3 /root/serve.py ADDRESS PORT`. HTTP/1.1 with
/// keep-alive; a GET answers `ADDRESS peer=IP:PORT host=HOST` (the connection's peer as
/// the server sees it); a GET with `Upgrade` answers 101 and echoes bytes until EOF.
const SERVE_PY: &str = r#"
import http.server, socket, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.headers.get("Upgrade"):
            self.send_response(101)
            self.send_header("Connection", "upgrade")
            self.send_header("Upgrade", self.headers["Upgrade"])
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
            return
        peer = "%s:%d" % self.client_address[:2]
        body = ("%s peer=%s host=%s" % (sys.argv[1], peer, self.headers.get("Host"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET

Server((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"#;

/// Runs `scenario` against an agent over the real process runtime in a fresh
/// `$WRENN_DIR`, then removes every capsule (processes, mounts, cgroups, network)
/// whatever happened.
async fn with_capsule_agent<F, Fut>(scenario: F)
where
    F: FnOnce(wrenn_agent::AgentHandle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use wrenn_agent::runtime::Runtime;
    use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};

    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the process runtime needs root");
        return;
    }
    // Short $WRENN_DIR: unix socket paths live under it.
    let dir = tempfile::Builder::new().prefix("wp").tempdir().unwrap();
    let layout = wrenn_core::layout::Layout::new(dir.path());
    let envd = tokio::task::spawn_blocking(common::envd_binary)
        .await
        .unwrap();
    let result = {
        let (layout, envd) = (layout.clone(), envd.clone());
        tokio::spawn(async move {
            let options = ProcessRuntimeOptions {
                init_program: Some(std::path::PathBuf::from(env!("CARGO_BIN_EXE_wrenn-agent"))),
                ..common::process_options().await
            };
            let runtime = ProcessRuntime::new(layout.clone(), envd, options)
                .await
                .expect("the process runtime starts (root, cgroups, overlayfs, nf_tables)");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let agent = wrenn_agent::Agent::start(wrenn_agent::AgentOptions::new(
                std::sync::Arc::new(runtime),
                layout,
                listener,
            ))
            .await
            .unwrap();
            scenario(agent).await;
        })
        .await
    };
    let rt = ProcessRuntime::new(layout, envd, common::process_options().await)
        .await
        .unwrap();
    let _ = rt.sweep(&[]).await;
    rt.removals_settled().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A capsule with `/root/serve.py` in it: (id, host_ip).
async fn capsule_with_server(agent: &wrenn_agent::AgentHandle) -> (SandboxId, String) {
    let channel = common::connect_channel(agent.local_addr()).await;
    let id = SandboxId::new();
    let created = common::agent_client(&channel)
        .create_sandbox(common::create_request(id, 0))
        .await
        .unwrap()
        .into_inner();
    common::Envd::of(&channel, id)
        .write_file("/root/serve.py", SERVE_PY.as_bytes())
        .await
        .expect("write the server");
    (id, created.host_ip)
}

/// Starts `cmd args…` in capsule `id` in the background.
async fn start_in(agent: &wrenn_agent::AgentHandle, id: SandboxId, cmd: &str, args: &[&str]) {
    let channel = common::connect_channel(agent.local_addr()).await;
    common::Envd::of(&channel, id)
        .spawn(common::command(cmd, args))
        .await
        .expect("start the server");
}

/// Waits until `GET url` answers 200 and returns the body.
async fn get_when_up(http: &reqwest::Client, url: &str) -> String {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        if let Ok(resp) = http.get(url).send().await {
            if resp.status() == 200 {
                return resp.text().await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The peer the server saw, from a `serve.py` answer.
fn peer(body: &str) -> &str {
    body.split(' ')
        .find_map(|w| w.strip_prefix("peer="))
        .unwrap_or_else(|| panic!("no peer in {body:?}"))
}

#[tokio::test]
async fn servers_on_the_capsule_loopback_are_reachable_like_those_on_its_address() {
    with_capsule_agent(|agent| async move {
        let (id, host_ip) = capsule_with_server(&agent).await;
        let http = reqwest::Client::new();
        let py = "/usr/bin/python3";

        // The stock `http.server`, bound to 127.0.0.1 only.
        common::Envd::of(&common::connect_channel(agent.local_addr()).await, id)
            .write_file("/root/hello.txt", b"hello from the loopback")
            .await
            .unwrap();
        start_in(
            &agent,
            id,
            py,
            &[
                "-m",
                "http.server",
                "8001",
                "--bind",
                "127.0.0.1",
                "--directory",
                "/root",
            ],
        )
        .await;
        let body = get_when_up(&http, &url(&agent, id, 8001, "/hello.txt")).await;
        assert_eq!(body, "hello from the loopback");
        // It really is out of the direct path's reach.
        let direct = tokio::net::TcpStream::connect((host_ip.as_str(), 8001)).await;
        assert_eq!(
            direct.map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );

        // Keep-alive servers on 127.0.0.1, ::1 and 0.0.0.0.
        start_in(&agent, id, py, &["/root/serve.py", "127.0.0.1", "8002"]).await;
        start_in(&agent, id, py, &["/root/serve.py", "::1", "8003"]).await;
        start_in(&agent, id, py, &["/root/serve.py", "0.0.0.0", "8004"]).await;

        let v4 = get_when_up(&http, &url(&agent, id, 8002, "/")).await;
        assert!(v4.starts_with("127.0.0.1 peer=127.0.0.1:"), "{v4}");
        assert!(v4.ends_with(&format!("host={host_ip}:8002")), "{v4}");
        // The tunnel is pooled like any connection: the next request reuses it.
        let again = get_when_up(&http, &url(&agent, id, 8002, "/")).await;
        assert_eq!(peer(&again), peer(&v4), "one pooled tunnel: {v4} / {again}");

        let v6 = get_when_up(&http, &url(&agent, id, 8003, "/")).await;
        assert!(v6.starts_with("::1 peer=::1:"), "{v6}");

        // A server on every address is reached directly, from outside the capsule.
        let all = get_when_up(&http, &url(&agent, id, 8004, "/")).await;
        assert!(all.starts_with("0.0.0.0 peer="), "{all}");
        assert!(
            !peer(&all).starts_with("127.") && !peer(&all).starts_with("::1"),
            "{all}"
        );

        // Nothing on the port at all: 502, saying what was tried.
        let resp = http.get(url(&agent, id, 8009, "/")).send().await.unwrap();
        assert_eq!(resp.status(), 502);
        let msg = resp.text().await.unwrap();
        assert!(
            msg.contains("nothing accepts connections on port 8009") && msg.contains("guest agent"),
            "{msg}"
        );
        // envd's own port stays closed, whatever the path.
        let resp = http
            .get(url(&agent, id, wrenn_proto::ENVD_PORT, "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    })
    .await;
}

#[tokio::test]
async fn upgrades_reach_a_server_on_the_capsule_loopback() {
    with_capsule_agent(|agent| async move {
        let (id, _) = capsule_with_server(&agent).await;
        start_in(
            &agent,
            id,
            "/usr/bin/python3",
            &["/root/serve.py", "127.0.0.1", "8005"],
        )
        .await;
        get_when_up(&reqwest::Client::new(), &url(&agent, id, 8005, "/")).await;

        let mut s = tokio::net::TcpStream::connect(agent.local_addr())
            .await
            .unwrap();
        let req = format!(
            "GET /proxy/{id}/8005/ws HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
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

        // Bytes both ways, more than one tunnel message.
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = s.into_split();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move { w.write_all(&sent).await.map(|()| w) })
        };
        let mut echoed = vec![0u8; sent.len()];
        tokio::time::timeout(common::PATIENCE, r.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert!(echoed == sent, "the echo matches");

        // The upgraded connection is counted until it closes.
        let sb = agent.manager().get(id).unwrap();
        assert_eq!(sb.conns().active(), 1);
        drop(writer.await.unwrap().unwrap());
        drop(r);
        common::eventually("the upgraded connection to be released", || async {
            sb.conns().active() == 0
        })
        .await;
    })
    .await;
}
