//! The gRPC host pool against a real tonic server on loopback: an in-memory test agent
//! implementing `HostAgentService` (lifecycle RPCs behave; every other RPC is
//! `UNIMPLEMENTED`; it serves no `envd.v1` data plane), with hosts registered in a real
//! store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use wrenn_core::agents::{HostAgents, HostCallError, SandboxSpec};
use wrenn_core::id::{
    BUILTIN_TEMPLATE_ID, HostId, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId,
};
use wrenn_core::lifecycle::{HostStatus, SandboxStatus};
use wrenn_core::model::{HostKind, Resources};
use wrenn_core::repo::{HostSpec, NewHost, Store};
use wrenn_cpserver::ca::CertificateAuthority;
use wrenn_cpserver::extension::HostConnections;
use wrenn_cpserver::host_pool::{GrpcHostAgents, HostChannels};
use wrenn_db::testing::TestStores;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_server::{
    HostAgentService, HostAgentServiceServer,
};

// ---------------------------------------------------------------------------------------
// The test agent
// ---------------------------------------------------------------------------------------

struct Sb {
    status: pb::SandboxStatus,
    host_ip: String,
}

#[derive(Default)]
struct AgentState {
    sandboxes: BTreeMap<String, Sb>,
    templates: HashSet<(String, String)>,
    /// Template archives held, by (team, template).
    archives: HashMap<(String, String), Vec<u8>>,
    /// ExportTemplate sends its first chunk, then fails.
    export_breaks: bool,
    auto_paused: Vec<String>,
    hibernated_on_disk: Vec<String>,
    /// Returned (once) by the next RPC instead of its normal answer.
    fail_next: Option<Status>,
    last_create: Option<pb::CreateSandboxRequest>,
    last_resume: Option<pb::ResumeSandboxRequest>,
    last_snapshot: Option<pb::CreateSnapshotRequest>,
    last_delete_snapshot: Option<pb::DeleteSnapshotRequest>,
    /// RPC names in the order they arrived.
    calls: Vec<&'static str>,
    /// `grpc-timeout` header of the last request.
    last_grpc_timeout: Option<String>,
}

#[derive(Clone, Default)]
struct TestAgent(Arc<Mutex<AgentState>>);

impl TestAgent {
    fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.0.lock().expect("agent state")
    }

    /// Records the call and returns the injected failure, if any.
    fn enter<T>(
        &self,
        name: &'static str,
        req: &Request<T>,
    ) -> Result<std::sync::MutexGuard<'_, AgentState>, Status> {
        let mut st = self.state();
        st.calls.push(name);
        st.last_grpc_timeout = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match st.fail_next.take() {
            Some(status) => Err(status),
            None => Ok(st),
        }
    }

    fn fail_next(&self, status: Status) {
        self.state().fail_next = Some(status);
    }

    fn calls(&self) -> Vec<&'static str> {
        self.state().calls.clone()
    }
}

fn unknown(id: &str) -> Status {
    Status::not_found(format!("sandbox {id} not found"))
}

fn wrong_state(id: &str, status: pb::SandboxStatus) -> Status {
    Status::failed_precondition(format!("sandbox {id} is {}", status.as_str_name()))
}

/// Expands to the `HostAgentService` impl: the hand-written lifecycle RPCs plus an
/// `UNIMPLEMENTED` body for every other unary RPC.
macro_rules! agent_impl {
    ({ $($handwritten:tt)* } $($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl HostAgentService for TestAgent {
            $($handwritten)*
            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(concat!(stringify!($name), " is not implemented by the test agent")))
                }
            )*
        }
    };
}

agent_impl!({
    async fn create_sandbox(
        &self,
        req: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::CreateSandboxResponse>, Status> {
        let mut st = self.enter("CreateSandbox", &req)?;
        let r = req.into_inner();
        if st.sandboxes.contains_key(&r.sandbox_id) {
            return Err(Status::already_exists(format!("sandbox {} already exists", r.sandbox_id)));
        }
        let host_ip = format!("10.11.0.{}", st.sandboxes.len() + 2);
        st.sandboxes.insert(
            r.sandbox_id.clone(),
            Sb {
                status: pb::SandboxStatus::Running,
                host_ip: host_ip.clone(),
            },
        );
        let mut metadata = r.metadata.clone();
        metadata.insert("runtime".into(), "test".into());
        st.last_create = Some(r.clone());
        Ok(Response::new(pb::CreateSandboxResponse {
            sandbox_id: r.sandbox_id,
            status: pb::SandboxStatus::Running as i32,
            host_ip,
            metadata,
        }))
    }

    async fn destroy_sandbox(
        &self,
        req: Request<pb::DestroySandboxRequest>,
    ) -> Result<Response<pb::DestroySandboxResponse>, Status> {
        let mut st = self.enter("DestroySandbox", &req)?;
        let id = req.into_inner().sandbox_id;
        st.sandboxes.remove(&id).ok_or_else(|| unknown(&id))?;
        Ok(Response::new(pb::DestroySandboxResponse {}))
    }

    async fn pause_sandbox(
        &self,
        req: Request<pb::PauseSandboxRequest>,
    ) -> Result<Response<pb::PauseSandboxResponse>, Status> {
        let mut st = self.enter("PauseSandbox", &req)?;
        let id = req.into_inner().sandbox_id;
        let sb = st.sandboxes.get_mut(&id).ok_or_else(|| unknown(&id))?;
        if sb.status != pb::SandboxStatus::Running {
            return Err(wrong_state(&id, sb.status));
        }
        sb.status = pb::SandboxStatus::Paused;
        Ok(Response::new(pb::PauseSandboxResponse {}))
    }

    async fn resume_sandbox(
        &self,
        req: Request<pb::ResumeSandboxRequest>,
    ) -> Result<Response<pb::ResumeSandboxResponse>, Status> {
        let mut st = self.enter("ResumeSandbox", &req)?;
        let r = req.into_inner();
        let sb = st.sandboxes.get_mut(&r.sandbox_id).ok_or_else(|| unknown(&r.sandbox_id))?;
        if !matches!(sb.status, pb::SandboxStatus::Paused | pb::SandboxStatus::Hibernated) {
            return Err(wrong_state(&r.sandbox_id, sb.status));
        }
        sb.status = pb::SandboxStatus::Running;
        sb.host_ip = "10.11.0.99".into();
        let host_ip = sb.host_ip.clone();
        st.last_resume = Some(r.clone());
        Ok(Response::new(pb::ResumeSandboxResponse {
            sandbox_id: r.sandbox_id,
            status: pb::SandboxStatus::Running as i32,
            host_ip,
            metadata: HashMap::from([("runtime".to_owned(), "test".to_owned())]),
        }))
    }

    async fn ping_sandbox(
        &self,
        req: Request<pb::PingSandboxRequest>,
    ) -> Result<Response<pb::PingSandboxResponse>, Status> {
        let st = self.enter("PingSandbox", &req)?;
        let id = req.into_inner().sandbox_id;
        let sb = st.sandboxes.get(&id).ok_or_else(|| unknown(&id))?;
        if sb.status != pb::SandboxStatus::Running {
            return Err(wrong_state(&id, sb.status));
        }
        Ok(Response::new(pb::PingSandboxResponse {}))
    }

    async fn list_sandboxes(
        &self,
        req: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesResponse>, Status> {
        let st = self.enter("ListSandboxes", &req)?;
        Ok(Response::new(pb::ListSandboxesResponse {
            sandboxes: st
                .sandboxes
                .iter()
                .map(|(id, sb)| pb::SandboxInfo {
                    sandbox_id: id.clone(),
                    status: sb.status as i32,
                    host_ip: sb.host_ip.clone(),
                    ..Default::default()
                })
                .collect(),
            auto_paused_sandbox_ids: st.auto_paused.clone(),
            hibernated_sandbox_ids: st.hibernated_on_disk.clone(),
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let mut st = self.enter("CreateSnapshot", &req)?;
        let r = req.into_inner();
        let sb = st.sandboxes.get_mut(&r.sandbox_id).ok_or_else(|| unknown(&r.sandbox_id))?;
        match sb.status {
            pb::SandboxStatus::Running => sb.status = pb::SandboxStatus::Paused,
            pb::SandboxStatus::Paused | pb::SandboxStatus::Hibernated => {}
            other => return Err(wrong_state(&r.sandbox_id, other)),
        }
        if !st.templates.insert((r.team_id.clone(), r.template_id.clone())) {
            return Err(Status::already_exists("template directory already exists"));
        }
        st.last_snapshot = Some(r);
        Ok(Response::new(pb::CreateSnapshotResponse { size_bytes: 123_456_789 }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let mut st = self.enter("DeleteSnapshot", &req)?;
        let r = req.into_inner();
        let deleted = st.templates.remove(&(r.team_id.clone(), r.template_id.clone()));
        st.last_delete_snapshot = Some(r);
        Ok(Response::new(pb::DeleteSnapshotResponse { deleted }))
    }

    type ExportTemplateStream = futures::stream::BoxStream<'static, Result<pb::TemplateArchiveChunk, Status>>;

    async fn export_template(
        &self,
        req: Request<pb::ExportTemplateRequest>,
    ) -> Result<Response<Self::ExportTemplateStream>, Status> {
        let st = self.enter("ExportTemplate", &req)?;
        let r = req.into_inner();
        let archive = st
            .archives
            .get(&(r.team_id, r.template_id))
            .cloned()
            .ok_or_else(|| Status::not_found("template not on this host"))?;
        let mut chunks: Vec<Result<pb::TemplateArchiveChunk, Status>> = archive
            .chunks(3)
            .map(|c| Ok(pb::TemplateArchiveChunk { data: c.to_vec() }))
            .collect();
        if st.export_breaks {
            chunks.truncate(1);
            chunks.push(Err(Status::internal("disk read error")));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn import_template(
        &self,
        req: Request<tonic::Streaming<pb::ImportTemplateRequest>>,
    ) -> Result<Response<pb::ImportTemplateResponse>, Status> {
        drop(self.enter("ImportTemplate", &req)?);
        let mut stream = req.into_inner();
        let mut key = None;
        let mut archive = Vec::new();
        // Any broken message fails the import: nothing is kept.
        while let Some(m) = stream.message().await? {
            key.get_or_insert((m.team_id, m.template_id));
            archive.extend_from_slice(&m.data);
        }
        let key = key.ok_or_else(|| Status::invalid_argument("no message"))?;
        let size_bytes = archive.len() as u64;
        self.state().archives.insert(key, archive);
        Ok(Response::new(pb::ImportTemplateResponse { size_bytes }))
    }
}
    hibernate_sandbox(pb::HibernateSandboxRequest) -> pb::HibernateSandboxResponse;
    pause_all(pb::PauseAllRequest) -> pb::PauseAllResponse;
    terminate(pb::TerminateRequest) -> pb::TerminateResponse;
    flatten_rootfs(pb::FlattenRootfsRequest) -> pb::FlattenRootfsResponse;
    get_sandbox_metrics(pb::GetSandboxMetricsRequest) -> pb::GetSandboxMetricsResponse;
    flush_sandbox_metrics(pb::FlushSandboxMetricsRequest) -> pb::FlushSandboxMetricsResponse;
    get_host_metrics(pb::GetHostMetricsRequest) -> pb::GetHostMetricsResponse;
);

/// A test agent serving on `listener` until the returned sender fires (or is dropped).
fn serve(agent: TestAgent, listener: TcpListener) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HostAgentServiceServer::new(agent))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    stop
}

/// A running test agent on a fresh loopback port.
struct RunningAgent {
    agent: TestAgent,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningAgent {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let agent = TestAgent::default();
        let stop = serve(agent.clone(), listener);
        Self {
            agent,
            addr,
            stop: Some(stop),
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Give the server a moment to close its listener and connections.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

struct Fixture {
    _db: wrenn_db::testing::TestStore,
    store: Arc<dyn Store>,
    pool: GrpcHostAgents,
}

impl Fixture {
    async fn sqlite() -> Self {
        Self::with(TestStores::sqlite().await)
    }

    fn with(db: wrenn_db::testing::TestStore) -> Self {
        let store = db.store();
        let pool = GrpcHostAgents::new(Arc::new(HostChannels::new(
            store.clone(),
            Arc::new(CertificateAuthority::generate().unwrap()),
        )));
        Self {
            _db: db,
            store,
            pool,
        }
    }

    /// A `pending` host (created, its agent never registered).
    async fn pending_host(&self) -> HostId {
        self.store
            .create_host(NewHost {
                id: HostId::new(),
                kind: HostKind::Regular,
                team_id: None,
                provider: "test".into(),
                availability_zone: "local".into(),
                created_by: None,
            })
            .await
            .expect("create host")
            .id
    }

    /// An `online` host whose agent listens at `address`.
    async fn host_at(&self, address: &str) -> HostId {
        let id = self.pending_host().await;
        assert!(
            self.store
                .register_host(id, &spec_at(address))
                .await
                .expect("register")
        );
        id
    }

    async fn move_host(&self, host: HostId, address: &str) {
        self.store
            .heartbeat(host, &spec_at(address))
            .await
            .expect("heartbeat");
    }
}

fn spec_at(address: &str) -> HostSpec {
    HostSpec {
        address: address.to_owned(),
        arch: "x86_64".into(),
        cpu_cores: 2,
        memory_mb: 4096,
        disk_gb: 50,
    }
}

fn sandbox_spec() -> SandboxSpec {
    SandboxSpec {
        sandbox_id: SandboxId::new(),
        team_id: TeamId::new(),
        template: "minimal".into(),
        template_id: BUILTIN_TEMPLATE_ID,
        template_team_id: PLATFORM_TEAM_ID,
        resources: Resources {
            vcpus: 2,
            memory_mb: 1024,
            disk_size_mb: 4096,
        },
        timeout_sec: 300,
        default_user: "user".into(),
        default_env: BTreeMap::from([("LANG".to_owned(), "C.UTF-8".to_owned())]),
        metadata: BTreeMap::from([("purpose".to_owned(), "test".to_owned())]),
    }
}

fn assert_unavailable<T: std::fmt::Debug>(got: Result<T, HostCallError>, mentions: &str) {
    match got {
        Err(HostCallError::Unavailable(msg)) => assert!(
            msg.contains(mentions),
            "{msg:?} should mention {mentions:?}"
        ),
        other => panic!("expected Unavailable mentioning {mentions:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Create → ping → pause → list → resume → snapshot → delete snapshot → destroy.
async fn every_lifecycle_call_round_trips(f: Fixture) {
    let agent = RunningAgent::start().await;
    let host = f.host_at(&agent.address()).await;
    let spec = sandbox_spec();

    let started = f.pool.create_sandbox(host, &spec).await.expect("create");
    assert_eq!(started.host_ip, "10.11.0.2");
    assert_eq!(
        started.metadata.get("runtime").map(String::as_str),
        Some("test")
    );
    assert_eq!(
        started.metadata.get("purpose").map(String::as_str),
        Some("test")
    );
    let sent = agent
        .agent
        .state()
        .last_create
        .clone()
        .expect("create request");
    assert_eq!(sent.sandbox_id, spec.sandbox_id.to_string());
    assert_eq!(sent.template, "minimal");
    assert_eq!(
        sent.team_id,
        spec.team_id.uuid().hyphenated().to_string(),
        "the owner travels as team_id"
    );
    assert_eq!(
        sent.template_team_id, "00000000-0000-0000-0000-000000000000",
        "the template's team locates it"
    );
    assert_eq!(sent.template_id, "00000000-0000-0000-0000-000000000000");
    assert_eq!(
        (
            sent.vcpus,
            sent.memory_mb,
            sent.disk_size_mb,
            sent.timeout_sec
        ),
        (2, 1024, 4096, 300)
    );
    assert_eq!(sent.default_user, "user");
    assert_eq!(
        sent.default_env.get("LANG").map(String::as_str),
        Some("C.UTF-8")
    );
    assert_eq!(
        sent.metadata.get("purpose").map(String::as_str),
        Some("test")
    );
    let grpc_timeout = agent.agent.state().last_grpc_timeout.clone();
    assert!(grpc_timeout.is_some(), "calls carry a deadline");

    f.pool
        .ping_sandbox(host, spec.sandbox_id)
        .await
        .expect("ping");
    f.pool
        .pause_sandbox(host, spec.sandbox_id)
        .await
        .expect("pause");
    agent
        .agent
        .state()
        .auto_paused
        .push(spec.sandbox_id.to_string());
    let inv = f.pool.list_sandboxes(host).await.expect("list");
    assert_eq!(inv.sandboxes.len(), 1);
    assert_eq!(inv.sandboxes[0].sandbox_id, spec.sandbox_id);
    assert_eq!(inv.sandboxes[0].status, SandboxStatus::Paused);
    assert_eq!(inv.auto_paused, vec![spec.sandbox_id]);

    let mut resumed_spec = spec.clone();
    resumed_spec.timeout_sec = 60;
    resumed_spec.default_env.insert("EXTRA".into(), "1".into());
    let resumed = f
        .pool
        .resume_sandbox(host, &resumed_spec)
        .await
        .expect("resume");
    assert_eq!(resumed.host_ip, "10.11.0.99");
    assert_eq!(
        resumed.metadata.get("runtime").map(String::as_str),
        Some("test")
    );
    let sent = agent
        .agent
        .state()
        .last_resume
        .clone()
        .expect("resume request");
    assert_eq!(sent.sandbox_id, spec.sandbox_id.to_string());
    assert_eq!(sent.timeout_sec, 60);
    assert_eq!(sent.default_user, "user");
    assert_eq!(sent.default_env.get("EXTRA").map(String::as_str), Some("1"));

    let (team, template) = (TeamId::new(), TemplateId::new());
    let size = f
        .pool
        .create_snapshot(host, spec.sandbox_id, team, template)
        .await
        .expect("snapshot");
    assert_eq!(size, 123_456_789);
    let sent = agent
        .agent
        .state()
        .last_snapshot
        .clone()
        .expect("snapshot request");
    assert_eq!(sent.team_id, team.uuid().hyphenated().to_string());
    assert_eq!(sent.template_id, template.uuid().hyphenated().to_string());
    assert_eq!(
        f.pool.list_sandboxes(host).await.expect("list").sandboxes[0].status,
        SandboxStatus::Paused,
        "a running sandbox stays paused after a snapshot"
    );
    f.pool
        .delete_snapshot(host, team, template)
        .await
        .expect("delete snapshot");
    assert!(agent.agent.state().templates.is_empty());
    f.pool
        .delete_snapshot(host, team, template)
        .await
        .expect("deleting an absent template is fine");

    f.pool
        .destroy_sandbox(host, spec.sandbox_id)
        .await
        .expect("destroy");
    assert!(
        f.pool
            .list_sandboxes(host)
            .await
            .expect("list")
            .sandboxes
            .is_empty()
    );
    assert_eq!(
        f.pool.channels().cached_address(host),
        Some(agent.address())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_call_round_trips_on_sqlite() {
    every_lifecycle_call_round_trips(Fixture::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_call_round_trips_on_postgres() {
    let Some(db) = TestStores::postgres().await else {
        return;
    };
    every_lifecycle_call_round_trips(Fixture::with(db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_codes_map_onto_agent_errors() {
    let f = Fixture::sqlite().await;
    let agent = RunningAgent::start().await;
    let host = f.host_at(&agent.address()).await;
    let spec = sandbox_spec();

    let got = f.pool.pause_sandbox(host, SandboxId::new()).await;
    assert!(
        matches!(got, Err(HostCallError::NotFound(ref m)) if m.contains("not found")),
        "{got:?}"
    );
    let got = f.pool.destroy_sandbox(host, SandboxId::new()).await;
    assert!(matches!(got, Err(HostCallError::NotFound(_))), "{got:?}");

    f.pool.create_sandbox(host, &spec).await.expect("create");
    let got = f.pool.create_sandbox(host, &spec).await;
    assert!(
        matches!(got, Err(HostCallError::FailedPrecondition(ref m)) if m.contains("already exists")),
        "ALREADY_EXISTS is a failed precondition: {got:?}"
    );
    f.pool
        .pause_sandbox(host, spec.sandbox_id)
        .await
        .expect("pause");
    let got = f.pool.ping_sandbox(host, spec.sandbox_id).await;
    assert!(
        matches!(got, Err(HostCallError::FailedPrecondition(ref m)) if m.contains("PAUSED")),
        "{got:?}"
    );
    let got = f.pool.pause_sandbox(host, spec.sandbox_id).await;
    assert!(
        matches!(got, Err(HostCallError::FailedPrecondition(_))),
        "{got:?}"
    );

    let injected = [
        (Status::invalid_argument("bad id"), "invalid_argument"),
        (Status::deadline_exceeded("too slow"), "timeout"),
        (Status::internal("disk on fire"), "internal"),
        (Status::resource_exhausted("no slots"), "resource_exhausted"),
        (Status::unimplemented("nope"), "internal"),
        (Status::unavailable("envd did not answer"), "unavailable"),
    ];
    for (status, want) in injected {
        let message = status.message().to_owned();
        agent.agent.fail_next(status);
        let err = f
            .pool
            .resume_sandbox(host, &spec)
            .await
            .expect_err("injected failure");
        let kind = match &err {
            HostCallError::InvalidArgument(_) => "invalid_argument",
            HostCallError::Timeout(_) => "timeout",
            HostCallError::Internal(_) => "internal",
            HostCallError::Unavailable(_) => "unavailable",
            HostCallError::NotFound(_) => "not_found",
            HostCallError::FailedPrecondition(_) => "failed_precondition",
            HostCallError::ResourceExhausted(_) => "resource_exhausted",
        };
        assert_eq!(kind, want, "{err:?}");
        assert!(
            err.to_string().contains(&message),
            "the agent's message is kept: {err}"
        );
    }
    // The sandbox was untouched by the failures and still resumes.
    f.pool.resume_sandbox(host, &spec).await.expect("resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_maps_every_agent_status() {
    let f = Fixture::sqlite().await;
    let agent = RunningAgent::start().await;
    let host = f.host_at(&agent.address()).await;
    let cases = [
        (pb::SandboxStatus::Starting, SandboxStatus::Starting),
        (pb::SandboxStatus::Running, SandboxStatus::Running),
        (pb::SandboxStatus::Pausing, SandboxStatus::Pausing),
        (pb::SandboxStatus::Paused, SandboxStatus::Paused),
        (pb::SandboxStatus::Hibernated, SandboxStatus::Hibernated),
        (pb::SandboxStatus::Resuming, SandboxStatus::Resuming),
        (pb::SandboxStatus::Stopping, SandboxStatus::Stopping),
        (pb::SandboxStatus::Stopped, SandboxStatus::Stopped),
        (pb::SandboxStatus::Error, SandboxStatus::Error),
        (pb::SandboxStatus::Snapshotting, SandboxStatus::Snapshotting),
        (pb::SandboxStatus::Unspecified, SandboxStatus::Error),
    ];
    let mut want = HashMap::new();
    let on_disk = SandboxId::new();
    {
        let mut st = agent.agent.state();
        for (proto, core) in cases {
            let id = SandboxId::new();
            st.sandboxes.insert(
                id.to_string(),
                Sb {
                    status: proto,
                    host_ip: String::new(),
                },
            );
            want.insert(id, core);
        }
        st.sandboxes.insert(
            "not-a-sandbox-id".into(),
            Sb {
                status: pb::SandboxStatus::Running,
                host_ip: String::new(),
            },
        );
        st.hibernated_on_disk.push(on_disk.to_string());
        st.auto_paused.push("garbage".into());
    }
    want.insert(on_disk, SandboxStatus::Hibernated);
    let inv = f.pool.list_sandboxes(host).await.expect("list");
    let got: HashMap<_, _> = inv
        .sandboxes
        .iter()
        .map(|s| (s.sandbox_id, s.status))
        .collect();
    assert_eq!(
        got, want,
        "malformed ids are skipped, hibernated-on-disk ones added"
    );
    assert!(inv.auto_paused.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_cannot_be_called_are_unavailable() {
    let f = Fixture::sqlite().await;
    let agent = RunningAgent::start().await;

    let unknown = HostId::new();
    assert_unavailable(f.pool.list_sandboxes(unknown).await, "does not exist");

    let pending = f.pending_host().await;
    assert_unavailable(f.pool.list_sandboxes(pending).await, "pending");

    let addressless = f.host_at("").await;
    assert_unavailable(f.pool.list_sandboxes(addressless).await, "no address");

    let offline = f.host_at(&agent.address()).await;
    f.pool
        .list_sandboxes(offline)
        .await
        .expect("online host answers");
    assert!(
        f.store
            .set_host_status_if(offline, HostStatus::Online, HostStatus::Offline)
            .await
            .expect("take offline")
    );
    assert_unavailable(f.pool.list_sandboxes(offline).await, "offline");
    assert_eq!(
        f.pool.channels().cached_address(offline),
        None,
        "an offline host's channel is dropped"
    );

    let unreachable = f.host_at(&agent.address()).await;
    assert!(
        f.store
            .set_host_status_if(unreachable, HostStatus::Online, HostStatus::Unreachable)
            .await
            .expect("mark unreachable")
    );
    assert_unavailable(
        f.pool.ping_sandbox(unreachable, SandboxId::new()).await,
        "unreachable",
    );

    // A draining host takes no new sandboxes but its existing ones are still managed.
    let draining = f.host_at(&agent.address()).await;
    assert!(
        f.store
            .set_host_status_if(draining, HostStatus::Online, HostStatus::Draining)
            .await
            .expect("drain")
    );
    f.pool
        .list_sandboxes(draining)
        .await
        .expect("a draining host is called");

    let garbage = f.host_at("not a host:port").await;
    assert_unavailable(f.pool.list_sandboxes(garbage).await, "invalid address");

    assert_eq!(
        agent.agent.calls(),
        vec!["ListSandboxes", "ListSandboxes"],
        "only the online and the draining host reached the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_is_unavailable_quickly() {
    let f = Fixture::sqlite().await;
    // Nothing listens on port 1.
    let host = f.host_at("127.0.0.1:1").await;
    let started = Instant::now();
    let got = f.pool.ping_sandbox(host, SandboxId::new()).await;
    assert!(matches!(got, Err(HostCallError::Unavailable(_))), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        f.pool.channels().cached_address(host),
        None,
        "the failed channel is evicted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_address_moves_the_channel_to_the_new_agent() {
    let f = Fixture::sqlite().await;
    let old = RunningAgent::start().await;
    let new = RunningAgent::start().await;
    let host = f.host_at(&old.address()).await;
    let spec = sandbox_spec();
    f.pool
        .create_sandbox(host, &spec)
        .await
        .expect("create on the old agent");
    assert_eq!(f.pool.channels().cached_address(host), Some(old.address()));

    f.move_host(host, &new.address()).await;
    let inv = f
        .pool
        .list_sandboxes(host)
        .await
        .expect("list on the new agent");
    assert!(
        inv.sandboxes.is_empty(),
        "the new agent answered, not the old one"
    );
    assert_eq!(f.pool.channels().cached_address(host), Some(new.address()));
    assert_eq!(old.agent.calls(), vec!["CreateSandbox"]);
    assert_eq!(new.agent.calls(), vec!["ListSandboxes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_goes_away_is_evicted_and_reconnected_when_back() {
    let f = Fixture::sqlite().await;
    let mut agent = RunningAgent::start().await;
    let addr = agent.addr;
    let host = f.host_at(&agent.address()).await;
    f.pool.list_sandboxes(host).await.expect("list");
    assert_eq!(
        f.pool.channels().cached_address(host),
        Some(agent.address())
    );

    agent.stop().await;
    let got = f.pool.list_sandboxes(host).await;
    assert!(matches!(got, Err(HostCallError::Unavailable(_))), "{got:?}");
    assert_eq!(
        f.pool.channels().cached_address(host),
        None,
        "UNAVAILABLE evicts the channel"
    );

    // The agent restarts on the same address: the next call reconnects.
    let listener = TcpListener::bind(addr)
        .await
        .expect("rebind the agent's port");
    let back = TestAgent::default();
    let _stop = serve(back.clone(), listener);
    f.pool
        .list_sandboxes(host)
        .await
        .expect("list after restart");
    assert_eq!(back.calls(), vec!["ListSandboxes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_drops_the_cached_channel() {
    let f = Fixture::sqlite().await;
    let agent = RunningAgent::start().await;
    let host = f.host_at(&agent.address()).await;
    f.pool.list_sandboxes(host).await.expect("list");
    assert!(f.pool.channels().cached_address(host).is_some());
    f.pool.channels().evict(host);
    assert_eq!(f.pool.channels().cached_address(host), None);
    f.pool.channels().evict(host); // idempotent
    f.pool.list_sandboxes(host).await.expect("list reconnects");
    assert_eq!(
        f.pool.channels().cached_address(host),
        Some(agent.address())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_resources_are_rejected_before_calling_the_agent() {
    let f = Fixture::sqlite().await;
    let agent = RunningAgent::start().await;
    let host = f.host_at(&agent.address()).await;
    let mut spec = sandbox_spec();
    spec.resources.memory_mb = -1;
    let got = f.pool.create_sandbox(host, &spec).await;
    assert!(
        matches!(got, Err(HostCallError::InvalidArgument(ref m)) if m.contains("memory_mb")),
        "{got:?}"
    );
    let mut spec = sandbox_spec();
    spec.timeout_sec = -5;
    let got = f.pool.resume_sandbox(host, &spec).await;
    assert!(
        matches!(got, Err(HostCallError::InvalidArgument(ref m)) if m.contains("timeout_sec")),
        "{got:?}"
    );
    assert!(agent.agent.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_relayed_between_two_agents_and_a_broken_export_is_never_imported() {
    let f = Fixture::sqlite().await;
    let (a, b) = (RunningAgent::start().await, RunningAgent::start().await);
    let (host_a, host_b) = (f.host_at(&a.address()).await, f.host_at(&b.address()).await);
    let (team, template) = (TeamId::new(), TemplateId::new());
    let key = (
        team.uuid().hyphenated().to_string(),
        template.uuid().hyphenated().to_string(),
    );
    let archive: Vec<u8> = (0..100u8).collect();
    a.agent
        .state()
        .archives
        .insert(key.clone(), archive.clone());

    let size = f
        .pool
        .copy_template(host_a, host_b, team, template)
        .await
        .expect("copy");
    assert_eq!(size, 100);
    assert_eq!(b.agent.state().archives.get(&key), Some(&archive));

    // The source fails after its first chunk: the target is left without the template.
    b.agent.state().archives.clear();
    a.agent.state().export_breaks = true;
    let err = f
        .pool
        .copy_template(host_a, host_b, team, template)
        .await
        .expect_err("a broken export fails the copy");
    assert!(matches!(err, HostCallError::Internal(_)), "{err:?}");
    assert!(b.agent.state().archives.is_empty(), "nothing imported");

    // A template the source does not have.
    let missing = f
        .pool
        .copy_template(host_a, host_b, team, TemplateId::new())
        .await;
    assert!(
        matches!(missing, Err(HostCallError::NotFound(_))),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_rpcs_of_the_test_agent_are_unimplemented() {
    // Guards the test agent itself: only the lifecycle RPCs behave.
    let agent = RunningAgent::start().await;
    let mut client = pb::host_agent_service_client::HostAgentServiceClient::connect(format!(
        "http://{}",
        agent.address()
    ))
    .await
    .expect("connect");
    let err = client
        .hibernate_sandbox(pb::HibernateSandboxRequest {
            sandbox_id: SandboxId::new().to_string(),
        })
        .await
        .expect_err("unimplemented");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}
