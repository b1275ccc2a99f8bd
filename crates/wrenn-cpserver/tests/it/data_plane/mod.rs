//! Fixtures for the capsule data-plane tests: an in-process control plane (its
//! config adjustable), a `hostagent.v1` server that runs REAL processes and REAL
//! files under a temp dir (one directory tree per sandbox), registered as an online
//! host, capsules put straight into `running`, and small WebSocket and SSE clients.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use wrenn_core::auth::{Role, UserClaims, hash_password};
use wrenn_core::config::Config;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::{HostKind, NewSandbox, UserStatus};
use wrenn_core::repo::{HostSpec, NewHost, NewTeam, NewUser, Store};
use wrenn_core::testing::FakeAgents;
use wrenn_cpserver::Builder;
use wrenn_cpserver::extension::ServerContext;
use wrenn_db::testing::{TestStore, TestStores};
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_server::{
    HostAgentService, HostAgentServiceServer,
};

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
        let svc = HostAgentServiceServer::new(AgentService(agent.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let stop_agent = agent_stop.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(agent_listener),
                    stop_agent.cancelled(),
                )
                .await;
        });
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
    /// (known to the lifecycle double as running or paused too).
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
                vcpus: 1,
                memory_mb: 512,
                timeout_sec: 0,
                disk_size_mb: 20480,
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
// The fake host agent
// =====================================================================================

/// One output event of a process.
#[derive(Clone, Debug)]
enum Out {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

struct ProcState {
    replay: Vec<Out>,
    exit: Option<i32>,
}

/// A background or PTY process.
struct Proc {
    pid: u32,
    tag: String,
    cmd: String,
    args: Vec<String>,
    pty: bool,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    state: Mutex<ProcState>,
    live: broadcast::Sender<Out>,
}

impl Proc {
    fn record(&self, out: Out) {
        let mut st = self.state.lock().unwrap();
        if let Out::Exit(code) = out {
            st.exit = Some(code);
        }
        st.replay.push(out.clone());
        let _ = self.live.send(out);
    }

    /// The replay buffer and a live subscription, consistently.
    fn subscribe(&self) -> (Vec<Out>, broadcast::Receiver<Out>) {
        let st = self.state.lock().unwrap();
        (st.replay.clone(), self.live.subscribe())
    }
}

/// A host agent double backed by real processes and files. Sandbox paths map onto
/// `root/<sandbox id>/…`; the default user's home is `/root`.
pub struct FakeAgent {
    root: PathBuf,
    procs: Mutex<HashMap<String, Vec<Arc<Proc>>>>,
    /// Every RPC, as `name sandbox_id`.
    pub calls: Mutex<Vec<String>>,
    /// PTY resizes: (tag, cols, rows).
    pub resizes: Mutex<Vec<(String, u32, u32)>>,
    /// Largest upload chunk seen.
    pub max_chunk: Mutex<usize>,
}

impl FakeAgent {
    fn new(root: PathBuf) -> Arc<Self> {
        std::fs::create_dir_all(&root).expect("agent root");
        Arc::new(Self {
            root,
            procs: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            resizes: Mutex::new(Vec::new()),
            max_chunk: Mutex::new(0),
        })
    }

    fn call(&self, name: &str, sandbox: &str) {
        self.calls.lock().unwrap().push(format!("{name} {sandbox}"));
    }

    /// How many RPCs were made for `sandbox`.
    pub fn calls_for(&self, sandbox: SandboxId) -> usize {
        let s = sandbox.to_string();
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.ends_with(&s))
            .count()
    }

    /// The host directory holding a sandbox's file system.
    pub fn sandbox_root(&self, sandbox: SandboxId) -> PathBuf {
        self.root.join(sandbox.to_string())
    }

    /// Maps a sandbox path (absolute, or relative to `/root`) onto the host.
    fn host_path(&self, sandbox: &str, path: &str) -> Result<PathBuf, Status> {
        if path.trim().is_empty() {
            return Err(Status::invalid_argument("path is required"));
        }
        let rel = if let Some(p) = path.strip_prefix('/') {
            p.to_owned()
        } else {
            format!("root/{}", path.trim_start_matches("~/"))
        };
        let mut out = self.root.join(sandbox);
        for c in Path::new(&rel).components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::ParentDir => {
                    return Err(Status::invalid_argument("'..' is not allowed"));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Maps a host path back to the sandbox.
    fn sandbox_path(&self, sandbox: &str, host: &Path) -> String {
        let base = self.root.join(sandbox);
        format!(
            "/{}",
            host.strip_prefix(&base).unwrap_or(host).to_string_lossy()
        )
    }

    fn home(&self, sandbox: &str) -> PathBuf {
        let home = self.root.join(sandbox).join("root");
        let _ = std::fs::create_dir_all(&home);
        home
    }

    fn command(
        &self,
        sandbox: &str,
        cmd: &str,
        args: &[String],
        envs: &HashMap<String, String>,
        cwd: Option<&str>,
    ) -> Result<Command, Status> {
        if cmd.trim().is_empty() {
            return Err(Status::invalid_argument("cmd is required"));
        }
        let home = self.home(sandbox);
        let dir = match cwd {
            Some(c) if !c.is_empty() => self.host_path(sandbox, c)?,
            _ => home,
        };
        if !dir.is_dir() {
            return Err(Status::invalid_argument(format!(
                "cwd {cwd:?} does not exist"
            )));
        }
        let mut c = Command::new(cmd);
        c.args(args)
            .envs(envs)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(c)
    }

    fn find(&self, sandbox: &str, sel: Option<&pb::ProcessSelector>) -> Result<Arc<Proc>, Status> {
        use pb::process_selector::Selector;
        let procs = self.procs.lock().unwrap();
        let list = procs.get(sandbox).cloned().unwrap_or_default();
        let found = match sel.and_then(|s| s.selector.as_ref()) {
            Some(Selector::Pid(pid)) => list.iter().rev().find(|p| p.pid == *pid).cloned(),
            Some(Selector::Tag(tag)) => list.iter().rev().find(|p| &p.tag == tag).cloned(),
            None => return Err(Status::invalid_argument("no selector")),
        };
        found.ok_or_else(|| Status::not_found("no such process"))
    }

    fn find_tag(&self, sandbox: &str, tag: &str) -> Result<Arc<Proc>, Status> {
        let sel = pb::ProcessSelector {
            selector: Some(pb::process_selector::Selector::Tag(tag.into())),
        };
        self.find(sandbox, Some(&sel))
    }

    /// Starts a tracked process: its output is buffered for replay and broadcast live.
    fn track(
        &self,
        sandbox: &str,
        mut child: Child,
        tag: String,
        cmd: String,
        args: Vec<String>,
        pty: bool,
    ) -> Result<Arc<Proc>, Status> {
        let pid = child.id().ok_or_else(|| Status::internal("no pid"))?;
        let (live, _) = broadcast::channel(1024);
        let proc = Arc::new(Proc {
            pid,
            tag,
            cmd,
            args,
            pty,
            stdin: tokio::sync::Mutex::new(child.stdin.take()),
            state: Mutex::new(ProcState {
                replay: Vec::new(),
                exit: None,
            }),
            live,
        });
        self.procs
            .lock()
            .unwrap()
            .entry(sandbox.to_owned())
            .or_default()
            .push(proc.clone());
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let p = proc.clone();
        tokio::spawn(async move {
            let o = async {
                if let Some(o) = out.as_mut() {
                    let mut buf = vec![0u8; 8192];
                    while let Ok(n) = o.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        p.record(Out::Stdout(buf[..n].to_vec()));
                    }
                }
            };
            let e = async {
                if let Some(e) = err.as_mut() {
                    let mut buf = vec![0u8; 8192];
                    while let Ok(n) = e.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        p.record(Out::Stderr(buf[..n].to_vec()));
                    }
                }
            };
            tokio::join!(o, e);
            let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
            p.record(Out::Exit(code));
        });
        Ok(proc)
    }

    fn live_procs(&self, sandbox: &str) -> Vec<Arc<Proc>> {
        let procs = self.procs.lock().unwrap();
        procs
            .get(sandbox)
            .map(|l| {
                l.iter()
                    .filter(|p| p.state.lock().unwrap().exit.is_none())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn entry(&self, sandbox: &str, host: &Path) -> Result<pb::FileEntry, Status> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(host).map_err(|e| io_status(&e, host))?;
        let ft = meta.file_type();
        let (kind, ch) = if ft.is_symlink() {
            (pb::FileType::Symlink, 'l')
        } else if ft.is_dir() {
            (pb::FileType::Directory, 'd')
        } else if ft.is_file() {
            (pb::FileType::File, '-')
        } else {
            (pb::FileType::Other, 'p')
        };
        let mode = meta.permissions().mode() & 0o7777;
        let mut perms = String::from(ch);
        for shift in [6u32, 3, 0] {
            let bits = (mode >> shift) & 7;
            perms.push(if bits & 4 != 0 { 'r' } else { '-' });
            perms.push(if bits & 2 != 0 { 'w' } else { '-' });
            perms.push(if bits & 1 != 0 { 'x' } else { '-' });
        }
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        Ok(pb::FileEntry {
            name: host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: self.sandbox_path(sandbox, host),
            r#type: kind.into(),
            size: meta.len(),
            mode,
            permissions: perms,
            owner: "root".into(),
            group: "root".into(),
            modified_at_unix: modified,
            symlink_target: if ft.is_symlink() {
                std::fs::read_link(host)
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned())
            } else {
                None
            },
        })
    }

    fn list(
        &self,
        sandbox: &str,
        dir: &Path,
        depth: u32,
        out: &mut Vec<pb::FileEntry>,
    ) -> Result<(), Status> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io_status(&e, dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        names.sort();
        for p in names {
            out.push(self.entry(sandbox, &p)?);
            if depth > 1 && p.is_dir() && !p.is_symlink() {
                self.list(sandbox, &p, depth - 1, out)?;
            }
        }
        Ok(())
    }
}

fn io_status(e: &std::io::Error, path: &Path) -> Status {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            Status::not_found(format!("{} does not exist", path.display()))
        }
        std::io::ErrorKind::PermissionDenied => Status::permission_denied(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Relays a tracked process's events (optionally its replay buffer first).
fn process_events(proc: Arc<Proc>, replay: bool) -> BoxStream<pb::ExecEvent> {
    use pb::exec_event::Event;
    let (buffered, mut live) = proc.subscribe();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let conv = |o: Out| -> pb::ExecEvent {
            let event = match o {
                Out::Stdout(b) => Event::Data(pb::ExecData {
                    output: Some(pb::exec_data::Output::Stdout(b)),
                }),
                Out::Stderr(b) => Event::Data(pb::ExecData {
                    output: Some(pb::exec_data::Output::Stderr(b)),
                }),
                Out::Exit(code) => Event::End(pb::ExecEnd {
                    exit_code: code,
                    error: None,
                }),
            };
            pb::ExecEvent { event: Some(event) }
        };
        let start = pb::ExecEvent {
            event: Some(Event::Start(pb::ExecStart {
                pid: proc.pid,
                tag: proc.tag.clone(),
            })),
        };
        if tx.send(Ok(start)).await.is_err() {
            return;
        }
        let mut ended = false;
        for o in buffered {
            let is_exit = matches!(o, Out::Exit(_));
            if (replay || is_exit) && tx.send(Ok(conv(o))).await.is_err() {
                return;
            }
            ended |= is_exit;
        }
        while !ended {
            match live.recv().await {
                Ok(o) => {
                    ended = matches!(o, Out::Exit(_));
                    if tx.send(Ok(conv(o))).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The tonic service over a [`FakeAgent`].
#[derive(Clone)]
pub struct AgentService(pub Arc<FakeAgent>);

// `#[async_trait]` only rewrites `async fn`s it can see, not ones a macro expands to,
// so the macro writes the desugared signature itself.
macro_rules! unimplemented_rpcs {
    ($($name:ident($req:ident) -> $resp:ident;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _r: Request<pb::$req>,
            ) -> Pin<Box<dyn std::future::Future<Output = Result<Response<pb::$resp>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { Err(Status::unimplemented(stringify!($name))) })
            }
        )*
    };
}

#[tonic::async_trait]
impl HostAgentService for AgentService {
    unimplemented_rpcs! {
        create_sandbox(CreateSandboxRequest) -> CreateSandboxResponse;
        destroy_sandbox(DestroySandboxRequest) -> DestroySandboxResponse;
        pause_sandbox(PauseSandboxRequest) -> PauseSandboxResponse;
        resume_sandbox(ResumeSandboxRequest) -> ResumeSandboxResponse;
        hibernate_sandbox(HibernateSandboxRequest) -> HibernateSandboxResponse;
        ping_sandbox(PingSandboxRequest) -> PingSandboxResponse;
        list_sandboxes(ListSandboxesRequest) -> ListSandboxesResponse;
        pause_all(PauseAllRequest) -> PauseAllResponse;
        terminate(TerminateRequest) -> TerminateResponse;
        send_process_input(SendProcessInputRequest) -> SendProcessInputResponse;
        close_process_stdin(CloseProcessStdinRequest) -> CloseProcessStdinResponse;
        stat(StatRequest) -> StatResponse;
        r#move(MoveRequest) -> MoveResponse;
        create_snapshot(CreateSnapshotRequest) -> CreateSnapshotResponse;
        delete_snapshot(DeleteSnapshotRequest) -> DeleteSnapshotResponse;
        flatten_rootfs(FlattenRootfsRequest) -> FlattenRootfsResponse;
        flush_sandbox_metrics(FlushSandboxMetricsRequest) -> FlushSandboxMetricsResponse;
        get_host_metrics(GetHostMetricsRequest) -> GetHostMetricsResponse;
    }

    async fn exec(
        &self,
        r: Request<pb::ExecRequest>,
    ) -> Result<Response<pb::ExecResponse>, Status> {
        let r = r.into_inner();
        self.0.call("exec", &r.sandbox_id);
        let mut cmd = self
            .0
            .command(&r.sandbox_id, &r.cmd, &r.args, &r.envs, r.cwd.as_deref())?;
        let child = cmd
            .spawn()
            .map_err(|e| Status::invalid_argument(format!("cannot start {}: {e}", r.cmd)))?;
        let timeout = Duration::from_secs(u64::from(if r.timeout_sec == 0 {
            30
        } else {
            r.timeout_sec
        }));
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(Response::new(pb::ExecResponse {
                stdout: out.stdout,
                stderr: out.stderr,
                exit_code: out.status.code().unwrap_or(-1),
                truncated: false,
            })),
            Ok(Err(e)) => Err(Status::internal(e.to_string())),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "command outlived {}s and was killed",
                timeout.as_secs()
            ))),
        }
    }

    type ExecStreamStream = BoxStream<pb::ExecEvent>;

    async fn exec_stream(
        &self,
        r: Request<pb::ExecStreamRequest>,
    ) -> Result<Response<Self::ExecStreamStream>, Status> {
        let r = r.into_inner();
        self.0.call("exec_stream", &r.sandbox_id);
        let mut cmd = self
            .0
            .command(&r.sandbox_id, &r.cmd, &r.args, &r.envs, r.cwd.as_deref())?;
        let child = cmd
            .spawn()
            .map_err(|e| Status::invalid_argument(format!("cannot start {}: {e}", r.cmd)))?;
        let proc = self
            .0
            .track(&r.sandbox_id, child, String::new(), r.cmd, r.args, false)?;
        // Cancelling the stream kills the process.
        let pid = proc.pid;
        let events = process_events(proc.clone(), true);
        let guard = KillOnDrop(pid, proc);
        Ok(Response::new(Box::pin(events.map(move |e| {
            let _keep = &guard;
            e
        }))))
    }

    async fn start_background(
        &self,
        r: Request<pb::StartBackgroundRequest>,
    ) -> Result<Response<pb::StartBackgroundResponse>, Status> {
        let r = r.into_inner();
        self.0.call("start_background", &r.sandbox_id);
        if self
            .0
            .live_procs(&r.sandbox_id)
            .iter()
            .any(|p| p.tag == r.tag)
        {
            return Err(Status::already_exists(format!(
                "a process is already tagged {}",
                r.tag
            )));
        }
        let mut cmd = self
            .0
            .command(&r.sandbox_id, &r.cmd, &r.args, &r.envs, r.cwd.as_deref())?;
        cmd.kill_on_drop(false);
        let child = cmd
            .spawn()
            .map_err(|e| Status::invalid_argument(format!("cannot start {}: {e}", r.cmd)))?;
        let tag = if r.tag.is_empty() {
            "proc-00000000".to_owned()
        } else {
            r.tag
        };
        let proc = self
            .0
            .track(&r.sandbox_id, child, tag, r.cmd, r.args, false)?;
        Ok(Response::new(pb::StartBackgroundResponse {
            pid: proc.pid,
            tag: proc.tag.clone(),
        }))
    }

    async fn list_processes(
        &self,
        r: Request<pb::ListProcessesRequest>,
    ) -> Result<Response<pb::ListProcessesResponse>, Status> {
        let r = r.into_inner();
        self.0.call("list_processes", &r.sandbox_id);
        let processes = self
            .0
            .live_procs(&r.sandbox_id)
            .iter()
            .map(|p| pb::ProcessInfo {
                pid: p.pid,
                tag: p.tag.clone(),
                cmd: p.cmd.clone(),
                args: p.args.clone(),
                envs: HashMap::new(),
                cwd: "/root".into(),
                pty: p.pty,
            })
            .collect();
        Ok(Response::new(pb::ListProcessesResponse { processes }))
    }

    async fn kill_process(
        &self,
        r: Request<pb::KillProcessRequest>,
    ) -> Result<Response<pb::KillProcessResponse>, Status> {
        let r = r.into_inner();
        self.0.call("kill_process", &r.sandbox_id);
        let proc = self.0.find(&r.sandbox_id, r.process.as_ref())?;
        if proc.state.lock().unwrap().exit.is_some() {
            return Err(Status::not_found("the process has exited"));
        }
        let sig = match pb::Signal::try_from(r.signal).unwrap_or(pb::Signal::Sigkill) {
            pb::Signal::Sigterm => "TERM",
            pb::Signal::Sigint => "INT",
            pb::Signal::Sighup => "HUP",
            _ => "KILL",
        };
        signal(proc.pid, sig);
        Ok(Response::new(pb::KillProcessResponse {}))
    }

    type ConnectProcessStream = BoxStream<pb::ExecEvent>;

    async fn connect_process(
        &self,
        r: Request<pb::ConnectProcessRequest>,
    ) -> Result<Response<Self::ConnectProcessStream>, Status> {
        let r = r.into_inner();
        self.0.call("connect_process", &r.sandbox_id);
        let proc = self.0.find(&r.sandbox_id, r.process.as_ref())?;
        Ok(Response::new(process_events(proc, r.replay)))
    }

    type PtyAttachStream = BoxStream<pb::PtyEvent>;

    async fn pty_attach(
        &self,
        r: Request<pb::PtyAttachRequest>,
    ) -> Result<Response<Self::PtyAttachStream>, Status> {
        use pb::pty_event::Event;
        let r = r.into_inner();
        self.0.call("pty_attach", &r.sandbox_id);
        let proc = if r.cmd.is_empty() {
            let p = self.0.find_tag(&r.sandbox_id, &r.tag)?;
            if !p.pty {
                return Err(Status::not_found("no PTY process with that tag"));
            }
            p
        } else {
            if r.cols == 0 || r.rows == 0 {
                return Err(Status::invalid_argument("cols and rows are required"));
            }
            // No real terminal here: stdin/stdout pipes, stderr merged into stdout.
            let mut args = vec![
                "-c".to_owned(),
                "exec \"$0\" \"$@\" 2>&1".to_owned(),
                r.cmd.clone(),
            ];
            args.extend(r.args.iter().cloned());
            let mut envs = r.envs.clone();
            envs.insert("COLUMNS".into(), r.cols.to_string());
            envs.insert("LINES".into(), r.rows.to_string());
            let mut cmd =
                self.0
                    .command(&r.sandbox_id, "/bin/sh", &args, &envs, r.cwd.as_deref())?;
            cmd.stdin(Stdio::piped()).kill_on_drop(false);
            let child = cmd.spawn().map_err(|e| Status::internal(e.to_string()))?;
            self.0.track(
                &r.sandbox_id,
                child,
                r.tag.clone(),
                r.cmd.clone(),
                r.args.clone(),
                true,
            )?
        };
        let (buffered, mut live) = proc.subscribe();
        let exited = buffered
            .iter()
            .find_map(|o| if let Out::Exit(c) = o { Some(*c) } else { None });
        let (tx, rx) = mpsc::channel(64);
        let (pid, tag) = (proc.pid, proc.tag.clone());
        tokio::spawn(async move {
            let started = pb::PtyEvent {
                event: Some(Event::Started(pb::PtyStarted { pid, tag })),
            };
            if tx.send(Ok(started)).await.is_err() {
                return;
            }
            if let Some(code) = exited {
                let _ = tx
                    .send(Ok(pb::PtyEvent {
                        event: Some(Event::Exited(pb::PtyExited {
                            exit_code: code,
                            error: None,
                        })),
                    }))
                    .await;
                return;
            }
            while let Ok(o) = live.recv().await {
                let (ev, end) = match o {
                    Out::Stdout(b) | Out::Stderr(b) => {
                        (Event::Output(pb::PtyOutput { data: b }), false)
                    }
                    Out::Exit(code) => (
                        Event::Exited(pb::PtyExited {
                            exit_code: code,
                            error: None,
                        }),
                        true,
                    ),
                };
                if tx.send(Ok(pb::PtyEvent { event: Some(ev) })).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pty_send_input(
        &self,
        r: Request<pb::PtySendInputRequest>,
    ) -> Result<Response<pb::PtySendInputResponse>, Status> {
        let r = r.into_inner();
        self.0.call("pty_send_input", &r.sandbox_id);
        let proc = self.0.find_tag(&r.sandbox_id, &r.tag)?;
        let mut stdin = proc.stdin.lock().await;
        let stdin = stdin
            .as_mut()
            .ok_or_else(|| Status::failed_precondition("no stdin"))?;
        stdin
            .write_all(&r.data)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        stdin
            .flush()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::PtySendInputResponse {}))
    }

    async fn pty_resize(
        &self,
        r: Request<pb::PtyResizeRequest>,
    ) -> Result<Response<pb::PtyResizeResponse>, Status> {
        let r = r.into_inner();
        self.0.call("pty_resize", &r.sandbox_id);
        self.0.find_tag(&r.sandbox_id, &r.tag)?;
        self.0.resizes.lock().unwrap().push((r.tag, r.cols, r.rows));
        Ok(Response::new(pb::PtyResizeResponse {}))
    }

    async fn pty_kill(
        &self,
        r: Request<pb::PtyKillRequest>,
    ) -> Result<Response<pb::PtyKillResponse>, Status> {
        let r = r.into_inner();
        self.0.call("pty_kill", &r.sandbox_id);
        let proc = self.0.find_tag(&r.sandbox_id, &r.tag)?;
        signal(proc.pid, "KILL");
        Ok(Response::new(pb::PtyKillResponse {}))
    }

    async fn write_file_stream(
        &self,
        r: Request<Streaming<pb::WriteFileStreamRequest>>,
    ) -> Result<Response<pb::WriteFileStreamResponse>, Status> {
        use pb::write_file_stream_request::Msg;
        let mut stream = r.into_inner();
        let meta = match stream.message().await? {
            Some(pb::WriteFileStreamRequest {
                msg: Some(Msg::Meta(m)),
            }) => m,
            _ => return Err(Status::invalid_argument("the first message must be meta")),
        };
        self.0.call("write_file_stream", &meta.sandbox_id);
        let host = self.0.host_path(&meta.sandbox_id, &meta.path)?;
        if host.is_dir() {
            return Err(Status::invalid_argument("the path is a directory"));
        }
        if let Some(parent) = host.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let mut file = tokio::fs::File::create(&host)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut size = 0u64;
        while let Some(msg) = stream.message().await? {
            match msg.msg {
                Some(Msg::Chunk(c)) => {
                    if c.len() > wrenn_proto::FILE_CHUNK_SIZE {
                        return Err(Status::invalid_argument(
                            "chunk larger than FILE_CHUNK_SIZE",
                        ));
                    }
                    {
                        let mut max = self.0.max_chunk.lock().unwrap();
                        *max = (*max).max(c.len());
                    }
                    file.write_all(&c)
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                    size += c.len() as u64;
                }
                _ => return Err(Status::invalid_argument("a second meta")),
            }
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::WriteFileStreamResponse {
            path: meta.path,
            size,
        }))
    }

    type ReadFileStreamStream = BoxStream<pb::ReadFileStreamResponse>;

    async fn read_file_stream(
        &self,
        r: Request<pb::ReadFileStreamRequest>,
    ) -> Result<Response<Self::ReadFileStreamStream>, Status> {
        let r = r.into_inner();
        self.0.call("read_file_stream", &r.sandbox_id);
        let host = self.0.host_path(&r.sandbox_id, &r.path)?;
        let meta = tokio::fs::metadata(&host)
            .await
            .map_err(|e| io_status(&e, &host))?;
        if !meta.is_file() {
            return Err(Status::invalid_argument("not a regular file"));
        }
        let mut file = tokio::fs::File::open(&host)
            .await
            .map_err(|e| io_status(&e, &host))?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let mut buf = vec![0u8; wrenn_proto::FILE_CHUNK_SIZE];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                if n == 0 && !first {
                    return;
                }
                buf.truncate(n);
                let total_size = first.then_some(meta.len());
                first = false;
                if tx
                    .send(Ok(pb::ReadFileStreamResponse {
                        chunk: buf.into(),
                        total_size,
                    }))
                    .await
                    .is_err()
                    || n == 0
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_dir(
        &self,
        r: Request<pb::ListDirRequest>,
    ) -> Result<Response<pb::ListDirResponse>, Status> {
        let r = r.into_inner();
        self.0.call("list_dir", &r.sandbox_id);
        let host = self.0.host_path(&r.sandbox_id, &r.path)?;
        let meta = std::fs::metadata(&host).map_err(|e| io_status(&e, &host))?;
        if !meta.is_dir() {
            return Err(Status::invalid_argument("not a directory"));
        }
        let mut entries = Vec::new();
        self.0
            .list(&r.sandbox_id, &host, r.depth.max(1), &mut entries)?;
        Ok(Response::new(pb::ListDirResponse { entries }))
    }

    async fn make_dir(
        &self,
        r: Request<pb::MakeDirRequest>,
    ) -> Result<Response<pb::MakeDirResponse>, Status> {
        let r = r.into_inner();
        self.0.call("make_dir", &r.sandbox_id);
        let host = self.0.host_path(&r.sandbox_id, &r.path)?;
        if std::fs::symlink_metadata(&host).is_ok() {
            return Err(Status::already_exists(format!("{} already exists", r.path)));
        }
        std::fs::create_dir_all(&host).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::MakeDirResponse {
            entry: Some(self.0.entry(&r.sandbox_id, &host)?),
        }))
    }

    async fn remove_path(
        &self,
        r: Request<pb::RemovePathRequest>,
    ) -> Result<Response<pb::RemovePathResponse>, Status> {
        let r = r.into_inner();
        self.0.call("remove_path", &r.sandbox_id);
        let host = self.0.host_path(&r.sandbox_id, &r.path)?;
        let meta = std::fs::symlink_metadata(&host).map_err(|e| io_status(&e, &host))?;
        if meta.is_dir() {
            std::fs::remove_dir_all(&host)
        } else {
            std::fs::remove_file(&host)
        }
        .map_err(|e| io_status(&e, &host))?;
        Ok(Response::new(pb::RemovePathResponse {}))
    }

    async fn get_sandbox_metrics(
        &self,
        r: Request<pb::GetSandboxMetricsRequest>,
    ) -> Result<Response<pb::GetSandboxMetricsResponse>, Status> {
        let r = r.into_inner();
        self.0.call("get_sandbox_metrics", &r.sandbox_id);
        if !["", "5m", "10m", "1h", "2h", "6h", "12h", "24h"].contains(&r.range.as_str()) {
            return Err(Status::invalid_argument("unknown range"));
        }
        let now = chrono::Utc::now().timestamp();
        let points = (0..3)
            .map(|i| pb::MetricPoint {
                timestamp_unix: now - 2 + i,
                cpu_pct: 10.0 * i as f64,
                mem_bytes: 1 << 20,
                disk_bytes: 4096,
            })
            .collect();
        Ok(Response::new(pb::GetSandboxMetricsResponse { points }))
    }
}

/// Kills an exec-stream process when its stream is dropped.
struct KillOnDrop(u32, Arc<Proc>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.1.state.lock().unwrap().exit.is_none() {
            signal(self.0, "KILL");
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Whether a process is alive (`kill -0`).
pub fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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
