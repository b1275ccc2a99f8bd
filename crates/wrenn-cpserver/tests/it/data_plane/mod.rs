//! Fixtures for the capsule data-plane tests: an in-process control plane (its
//! config adjustable), a fake host agent serving `envd.v1`'s `Process` and `Filesystem`
//! over REAL processes and REAL files under a temp dir (one directory tree per
//! sandbox, see [`agent`]), registered as an online host, capsules put straight into
//! `running`, and small WebSocket and SSE clients.

mod agent;

pub use agent::{FakeAgent, alive};

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wrenn_core::auth::{Role, UserClaims, hash_password};
use wrenn_core::config::Config;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{HostKind, NewSandbox, Resources, UserStatus};
use wrenn_core::repo::{HostSpec, NewHost, NewTeam, NewUser, Store};
use wrenn_core::testing::FakeAgents;
use wrenn_cpserver::Builder;
use wrenn_cpserver::extension::ServerContext;
use wrenn_db::testing::{TestStore, TestStores};

// =====================================================================================
// The control plane
// =====================================================================================

/// How to start an [`Env`].
#[derive(Default, Clone)]
pub struct Opts {
    /// Postgres when configured (else the env is `None`).
    pub postgres: bool,
    /// `WRENN_MAX_BODY_BYTES`.
    pub max_body_bytes: Option<u64>,
}

/// A control plane plus a fake host agent registered as its only online host.
pub struct Env {
    pub base: String,
    pub ctx: ServerContext,
    pub http: Client,
    pub agents: Arc<FakeAgents>,
    pub agent: Arc<FakeAgent>,
    pub host: HostId,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), wrenn_cpserver::ServerError>>,
    agent_stop: CancellationToken,
    _db: TestStore,
    _dir: tempfile::TempDir,
}

/// A user with a token for their own team.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: UserId,
    pub team: TeamId,
    pub token: String,
}

impl Env {
    /// SQLite, default config.
    pub async fn start() -> Self {
        Self::start_with(Opts::default())
            .await
            .expect("sqlite is always available")
    }

    /// `None` when Postgres was asked for and is not configured.
    pub async fn start_with(opts: Opts) -> Option<Self> {
        let db = if opts.postgres {
            TestStores::postgres().await?
        } else {
            TestStores::sqlite().await
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let wrenn_dir = dir.path().join("wrenn").to_string_lossy().into_owned();
        let max_body = opts.max_body_bytes.map(|v| v.to_string());
        let config = Config::from_lookup(|k| match k {
            "WRENN_DIR" => Some(wrenn_dir.clone()),
            "WRENN_MAX_BODY_BYTES" => max_body.clone(),
            _ => None,
        })
        .expect("config");
        let agents = FakeAgents::new();
        let server = Builder::new(config)
            .with_store(db.store())
            .with_host_agents(agents.clone())
            .build()
            .await
            .expect("build server");
        let ctx = server.context().clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let handle = tokio::spawn(server.serve(listener, async move { stop.cancelled().await }));

        // The fake host agent, on its own port.
        let agent = FakeAgent::new(dir.path().join("sandboxes"));
        let agent_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
        let agent_addr = agent_listener.local_addr().expect("agent addr");
        let agent_stop = CancellationToken::new();
        tokio::spawn(agent::serve(
            agent.clone(),
            agent_listener,
            agent_stop.clone(),
        ));
        let host = register_host(&ctx.store, &agent_addr.to_string()).await;
        Some(Self {
            base,
            ctx,
            http: Client::new(),
            agents,
            agent,
            host,
            shutdown,
            handle,
            agent_stop,
            _db: db,
            _dir: dir,
        })
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.ctx.store.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `host:port` of the control plane.
    pub fn authority(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub fn as_user(&self, user: &TestUser, method: Method, path: &str) -> RequestBuilder {
        self.req(method, path).bearer_auth(&user.token)
    }

    /// An active user owning a fresh team, with a JWT.
    pub async fn user(&self, email: &str) -> TestUser {
        let store = self.store();
        let id = UserId::new();
        store
            .create_user(NewUser {
                id,
                email: email.to_lowercase(),
                password_hash: Some(hash_password("correct horse battery").expect("hash")),
                name: email.split('@').next().unwrap_or("user").to_string(),
                status: UserStatus::Active,
                is_admin: false,
            })
            .await
            .expect("create user");
        let team = TeamId::new();
        store
            .create_team(
                NewTeam {
                    id: team,
                    name: format!("{email} team"),
                    slug: wrenn_core::id::new_team_slug(),
                    is_byoc: false,
                },
                id,
                true,
            )
            .await
            .expect("create team");
        let claims = UserClaims::new(id, team, Role::Owner, email, "user", false);
        let token = self.ctx.auth.jwt().sign_user(&claims).expect("sign");
        TestUser { id, team, token }
    }

    /// A plaintext API key for the user's team.
    pub async fn api_key(&self, user: &TestUser) -> String {
        let plain = wrenn_core::auth::ApiKey::generate();
        let record = wrenn_core::model::ApiKey {
            id: wrenn_core::id::ApiKeyId::new(),
            team_id: user.team,
            name: "test key".into(),
            key_hash: plain.hash(),
            key_prefix: plain.prefix().to_owned(),
            created_by: Some(user.id),
            created_at: chrono::Utc::now(),
            last_used: None,
        };
        self.store().create_api_key(record).await.expect("api key");
        plain.expose_secret().to_owned()
    }

    /// A capsule of `user`'s team on the fake host, put straight into `status`
    /// (known to the lifecycle double and to the fake agent as running or paused too).
    pub async fn capsule(&self, user: &TestUser, status: SandboxStatus) -> SandboxId {
        let id = SandboxId::new();
        let store = self.store();
        store
            .insert_sandbox(NewSandbox {
                id,
                team_id: user.team,
                host_id: self.host,
                template: "minimal".into(),
                template_id: BUILTIN_TEMPLATE_ID,
                template_team_id: PLATFORM_TEAM_ID,
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
            .expect("insert sandbox");
        store
            .running_if(id, SandboxStatus::Starting, "10.11.0.2", &BTreeMap::new())
            .await
            .expect("running")
            .expect("was starting");
        if status != SandboxStatus::Running {
            store
                .status_if(id, SandboxStatus::Running, status)
                .await
                .expect("status")
                .expect("was running");
        }
        if matches!(status, SandboxStatus::Running | SandboxStatus::Paused) {
            self.agents.sandboxes.lock().unwrap().insert(id, status);
            self.agent.add_sandbox(id, status);
        }
        id
    }

    /// The capsule's status in the store.
    pub async fn status(&self, id: SandboxId) -> SandboxStatus {
        self.store().get_sandbox(id).await.expect("sandbox").status
    }

    /// Stops the server and the fake agent.
    pub async fn stop(self) {
        self.agent_stop.cancel();
        self.shutdown.cancel();
        self.handle.await.expect("join").expect("clean shutdown");
    }
}

/// Registers an online regular host at `address`.
pub async fn register_host(store: &Arc<dyn Store>, address: &str) -> HostId {
    let id = HostId::new();
    store
        .create_host(NewHost {
            id,
            kind: HostKind::Regular,
            team_id: None,
            provider: "test".into(),
            availability_zone: "local".into(),
            created_by: None,
        })
        .await
        .expect("create host");
    let spec = HostSpec {
        address: address.into(),
        arch: "x86_64".into(),
        cpu_cores: 8,
        memory_mb: 16384,
        disk_gb: 100,
    };
    assert!(store.register_host(id, &spec).await.expect("register"));
    id
}

/// Response status and JSON body (Null when empty or not JSON).
pub async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Asserts an error envelope with `status` and `code`.
pub fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "body: {}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {}",
        got.1
    );
}

/// Polls `check` until it holds (or panics after `secs`).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

// =====================================================================================
// A minimal WebSocket client (RFC 6455, client side, no extensions)
// =====================================================================================

/// A frame received from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Close,
}

/// A client connection.
pub struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// The answer to a refused upgrade.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl Ws {
    /// Upgrades `GET path` on `authority` with extra `headers`.
    pub async fn connect(
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, Refused> {
        let mut stream = TcpStream::connect(authority).await.expect("connect");
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("send upgrade");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut tmp = [0u8; 4096];
            let n = stream.read(&mut tmp).await.expect("read upgrade answer");
            assert!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let rest = buf[head_end..].to_vec();
        if status != 101 {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = rest;
            while body.len() < len {
                let mut tmp = [0u8; 4096];
                let n = stream.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&tmp[..n]);
            }
            return Err(Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(Ws { stream, buf: rest })
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= 0xffff {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask: [u8; 4] = rand::random();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let _ = self.stream.write_all(&frame).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x1, text.as_bytes()).await;
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.send_frame(0x2, data).await;
    }

    pub async fn send_close(&mut self) {
        self.send_frame(0x8, &[0x03, 0xe8]).await;
    }

    async fn fill(&mut self, want: usize) -> bool {
        while self.buf.len() < want {
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
        true
    }

    /// The next data or close frame (pings are answered); `None` when the connection ends.
    pub async fn recv(&mut self) -> Option<Frame> {
        let mut message: Vec<u8> = Vec::new();
        let mut message_op = 0u8;
        loop {
            if !self.fill(2).await {
                return None;
            }
            let (b0, b1) = (self.buf[0], self.buf[1]);
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            let mut len = usize::from(b1 & 0x7f);
            let mut off = 2;
            if len == 126 {
                if !self.fill(4).await {
                    return None;
                }
                len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                off = 4;
            } else if len == 127 {
                if !self.fill(10).await {
                    return None;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                len = u64::from_be_bytes(b) as usize;
                off = 10;
            }
            if !self.fill(off + len).await {
                return None;
            }
            let payload: Vec<u8> = self.buf[off..off + len].to_vec();
            self.buf.drain(..off + len);
            match opcode {
                0x9 => self.send_frame(0xA, &payload).await,
                0xA => {}
                0x8 => {
                    self.send_frame(0x8, &payload).await;
                    return Some(Frame::Close);
                }
                0x0..=0x2 => {
                    if opcode != 0 {
                        message_op = opcode;
                    }
                    message.extend_from_slice(&payload);
                    if fin {
                        return Some(if message_op == 0x1 {
                            Frame::Text(String::from_utf8(message).expect("utf-8 text frame"))
                        } else {
                            Frame::Binary(message)
                        });
                    }
                }
                _ => {}
            }
        }
    }

    /// The next frame within `secs` seconds.
    pub async fn next(&mut self, secs: u64) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(secs), self.recv())
            .await
            .expect("timed out waiting for a frame")
    }

    /// The next frame, which must be JSON text.
    pub async fn next_json(&mut self) -> Value {
        match self.next(10).await {
            Some(Frame::Text(t)) => serde_json::from_str(&t).expect("json frame"),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Frames until the connection closes (at most `secs`).
    pub async fn drain(&mut self, secs: u64) -> Vec<Frame> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(secs), async {
            while let Some(f) = self.recv().await {
                let close = f == Frame::Close;
                out.push(f);
                if close {
                    break;
                }
            }
        })
        .await;
        out
    }
}

/// Every JSON text frame among `frames`.
pub fn json_frames(frames: &[Frame]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Text(t) => serde_json::from_str(t).ok(),
            _ => None,
        })
        .collect()
}

// =====================================================================================
// A minimal SSE reader
// =====================================================================================

/// One SSE message.
#[derive(Debug, Clone, Default)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseMessage {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("json data")
    }
}

/// Reads messages (and counts comment lines) from a streaming response.
pub struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    pub comments: usize,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            comments: 0,
        }
    }

    /// The next message within `secs` (`None` if the stream ended).
    pub async fn next(&mut self, secs: u64) -> Option<SseMessage> {
        tokio::time::timeout(Duration::from_secs(secs), self.read())
            .await
            .expect("timed out waiting for an SSE message")
    }

    async fn read(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf[..end].to_owned();
                self.buf.drain(..end + 2);
                let mut msg = SseMessage::default();
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        msg.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        msg.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if has_data {
                            msg.data.push('\n');
                        }
                        msg.data.push_str(v.trim_start());
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(msg);
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(b)) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                _ => return None,
            }
        }
    }
}
