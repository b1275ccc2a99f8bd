//! The fake host agent: `envd.v1`'s `Process` and `Filesystem` services over REAL
//! processes and REAL files under a temp dir (one tree per sandbox), routed by the
//! `wrenn-capsule-id` metadata entry as the real agent routes them, next to a
//! `hostagent.v1` service that answers `GetSandboxMetrics` (its lifecycle RPCs are
//! `UNIMPLEMENTED`: the control plane under test drives lifecycle through
//! `FakeAgents`).
//!
//! - [`process`] — `Process`: Start, Connect (with replay), List, SendSignal,
//!   SendInput, StreamInput, CloseStdin, Update. A "terminal" is a pipe-backed process
//!   (stderr merged into stdout, its size in `COLUMNS`/`LINES`), not a real PTY.
//! - [`files`] — `Filesystem`: Stat, ListDir, MakeDir, Move, Remove, ReadFile, WriteFile.
//!
//! Status codes follow envd's (see its `.proto` files) and the agent's routing errors:
//! a missing or malformed `wrenn-capsule-id` is INVALID_ARGUMENT, an unknown sandbox
//! NOT_FOUND, a sandbox that is not running FAILED_PRECONDITION.

mod files;
mod process;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use wrenn_core::id::SandboxId;
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_proto::envd::v1::filesystem_server::FilesystemServer;
use wrenn_proto::envd::v1::process_server::ProcessServer;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_server::{
    HostAgentService, HostAgentServiceServer,
};
use wrenn_proto::routing::{self, CAPSULE_ID_METADATA};

use self::files::FilesService;
use self::process::{Proc, ProcessService};

/// Largest gRPC message either side of the fake agent accepts.
const MAX_MESSAGE: usize = 64 << 20;

/// A host agent double backed by real processes and files. Sandbox paths map onto
/// `root/<sandbox id>/…`; the default user is root, whose home is `/root`.
pub struct FakeAgent {
    root: PathBuf,
    /// The sandboxes this agent knows, with their status.
    sandboxes: Mutex<HashMap<String, SandboxStatus>>,
    /// Every process started, per sandbox, oldest first (exited ones stay).
    procs: Mutex<HashMap<String, Vec<Arc<Proc>>>>,
    /// Every RPC that named a well-formed sandbox id, as `Service.Method sandbox_id`.
    pub calls: Mutex<Vec<String>>,
    /// Terminal resizes (`Process.Update`): (tag, cols, rows).
    pub resizes: Mutex<Vec<(String, u32, u32)>>,
    /// Largest `WriteFile` chunk seen.
    pub max_chunk: Mutex<usize>,
}

impl FakeAgent {
    pub(super) fn new(root: PathBuf) -> Arc<Self> {
        std::fs::create_dir_all(&root).expect("agent root");
        Arc::new(Self {
            root,
            sandboxes: Mutex::new(HashMap::new()),
            procs: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
            resizes: Mutex::new(Vec::new()),
            max_chunk: Mutex::new(0),
        })
    }

    /// Makes `sandbox` known with `status` (its file tree, with `/root`, is created).
    pub fn add_sandbox(&self, sandbox: SandboxId, status: SandboxStatus) {
        std::fs::create_dir_all(self.sandbox_root(sandbox).join("root")).expect("sandbox home");
        self.sandboxes
            .lock()
            .unwrap()
            .insert(sandbox.to_string(), status);
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

    /// The running sandbox an `envd.v1` call is routed to (records the call), or the
    /// real agent's routing error.
    fn route(&self, op: &str, metadata: &MetadataMap) -> Result<String, Status> {
        let id = match routing::capsule_id(metadata) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ if metadata.contains_key(CAPSULE_ID_METADATA) => {
                return Err(Status::invalid_argument(format!(
                    "metadata entry {CAPSULE_ID_METADATA} must be a sandbox id (cl-...)"
                )));
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "the call names no sandbox: metadata entry {CAPSULE_ID_METADATA} is required"
                )));
            }
        };
        id.parse::<SandboxId>().map_err(|e| {
            Status::invalid_argument(format!("metadata entry {CAPSULE_ID_METADATA}: {e}"))
        })?;
        self.call(op, &id);
        match self.sandboxes.lock().unwrap().get(&id) {
            None => Err(Status::not_found(format!("sandbox {id} not found"))),
            Some(SandboxStatus::Running) => Ok(id),
            Some(status) => Err(Status::failed_precondition(format!(
                "{op} needs a running sandbox: sandbox {id} is {status}"
            ))),
        }
    }

    /// Maps a sandbox path onto the host as envd resolves it: absolute paths are
    /// cleaned lexically (`..` cannot climb above `/`); relative paths and `~` are
    /// under `/root` and may not climb out of it.
    fn host_path(&self, sandbox: &str, path: &str) -> Result<PathBuf, Status> {
        if path.is_empty() {
            return Err(Status::invalid_argument("path is empty"));
        }
        if path.contains('\0') {
            return Err(Status::invalid_argument("path contains a NUL byte"));
        }
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        if !path.starts_with('/') {
            let relative = match path {
                "~" => "",
                p => p.strip_prefix("~/").unwrap_or(p),
            };
            parts.push("root".as_ref());
            for c in Path::new(relative).components() {
                match c {
                    Component::Normal(n) => parts.push(n),
                    Component::ParentDir if parts.len() > 1 => {
                        parts.pop();
                    }
                    Component::ParentDir => {
                        return Err(Status::invalid_argument(format!(
                            "relative path {path:?} escapes the home directory /root"
                        )));
                    }
                    _ => {}
                }
            }
        } else {
            for c in Path::new(path).components() {
                match c {
                    Component::Normal(n) => parts.push(n),
                    Component::ParentDir => {
                        parts.pop();
                    }
                    _ => {}
                }
            }
        }
        let mut out = self.root.join(sandbox);
        out.extend(parts);
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

    /// The processes started in `sandbox`, oldest first.
    fn procs(&self, sandbox: &str) -> Vec<Arc<Proc>> {
        self.procs
            .lock()
            .unwrap()
            .get(sandbox)
            .cloned()
            .unwrap_or_default()
    }
}

/// Serves the fake agent's three services on `listener` until `stop`.
pub(super) async fn serve(agent: Arc<FakeAgent>, listener: TcpListener, stop: CancellationToken) {
    let host = HostAgentServiceServer::new(HostService(agent.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let process = ProcessServer::new(ProcessService(agent.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let files = FilesystemServer::new(FilesService(agent))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let _ = tonic::transport::Server::builder()
        .add_service(host)
        .add_service(process)
        .add_service(files)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
        .await;
}

/// An I/O error on `path` (a sandbox path) as envd reports it.
fn io_status(e: &std::io::Error, path: &str) -> Status {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => Status::not_found(format!("{path} does not exist")),
        ErrorKind::PermissionDenied => Status::permission_denied(format!("{path}: {e}")),
        ErrorKind::AlreadyExists => Status::already_exists(format!("{path} already exists")),
        ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::InvalidInput => {
            Status::invalid_argument(format!("{path}: {e}"))
        }
        ErrorKind::StorageFull => Status::resource_exhausted(format!("{path}: {e}")),
        _ => Status::internal(format!("{path}: {e}")),
    }
}

/// Sends `sig` (a `kill -s` name) to the process group `pgid`; false if no process of
/// the group was left to signal.
fn signal_group(pgid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-s", sig, "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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

/// `hostagent.v1` of the fake agent: metrics only.
#[derive(Clone)]
struct HostService(Arc<FakeAgent>);

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
impl HostAgentService for HostService {
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
        create_snapshot(CreateSnapshotRequest) -> CreateSnapshotResponse;
        delete_snapshot(DeleteSnapshotRequest) -> DeleteSnapshotResponse;
        flatten_rootfs(FlattenRootfsRequest) -> FlattenRootfsResponse;
        flush_sandbox_metrics(FlushSandboxMetricsRequest) -> FlushSandboxMetricsResponse;
        get_host_metrics(GetHostMetricsRequest) -> GetHostMetricsResponse;
    }

    type ExportTemplateStream = futures::stream::Empty<Result<pb::TemplateArchiveChunk, Status>>;

    async fn export_template(
        &self,
        _: Request<pb::ExportTemplateRequest>,
    ) -> Result<Response<Self::ExportTemplateStream>, Status> {
        Err(Status::unimplemented("export_template"))
    }

    async fn import_template(
        &self,
        _: Request<tonic::Streaming<pb::ImportTemplateRequest>>,
    ) -> Result<Response<pb::ImportTemplateResponse>, Status> {
        Err(Status::unimplemented("import_template"))
    }

    async fn get_sandbox_metrics(
        &self,
        r: Request<pb::GetSandboxMetricsRequest>,
    ) -> Result<Response<pb::GetSandboxMetricsResponse>, Status> {
        let r = r.into_inner();
        self.0
            .call("HostAgentService.GetSandboxMetrics", &r.sandbox_id);
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
