//! The gRPC host pool: [`HostAgents`] over tonic clients of `hostagent.v1`.
//!
//! Every call resolves the host through the store (`Store::get_host`): only hosts that
//! are `online` or `draining` (a draining host takes no new sandboxes, but the ones it
//! runs must still be paused, resumed and destroyed) and that have an address are
//! called; anything else fails with [`AgentError::Unavailable`] naming the reason. The
//! pool keeps one lazily connected [`Channel`] per host (HTTP/2 multiplexes every call
//! over it) and drops it when the host's address changes, when a call fails with
//! `UNAVAILABLE`, or on [`GrpcHostAgents::evict`].
//!
//! **Transport security.** Channels are plain HTTP/2 for now. mTLS (the control plane's
//! CA signs each agent's certificate at registration, and the pool pins it through
//! `hosts.cert_fingerprint`) arrives with host registration; until then, run agents on
//! a trusted network only.
//!
//! gRPC status codes map onto [`AgentError`]: `NOT_FOUND` → `NotFound`,
//! `FAILED_PRECONDITION` and `ALREADY_EXISTS` → `FailedPrecondition`,
//! `INVALID_ARGUMENT` → `InvalidArgument`, `UNAVAILABLE` → `Unavailable`,
//! `DEADLINE_EXCEEDED` → `Timeout`, anything else → `Internal`. Each call also has a
//! client-side deadline (sent as `grpc-timeout` and enforced locally, so a silent host
//! cannot hang a caller); its expiry is [`AgentError::Timeout`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use wrenn_core::agents::{
    AgentError, AgentInventory, AgentSandbox, HostAgents, SandboxSpec, StartedSandbox,
};
use wrenn_core::id::{HostId, SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::{HostStatus, SandboxStatus};
use wrenn_core::repo::{RepoError, Store};
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;

/// How long establishing the TCP + HTTP/2 connection to an agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of `PingSandbox` (a liveness probe: short).
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of quick bookkeeping calls (`ListSandboxes`, `DeleteSnapshot`): the original
/// control plane's response-header timeout.
pub const QUICK_CALL_TIMEOUT: Duration = Duration::from_secs(45);
/// Deadline of lifecycle calls (`CreateSandbox`, `PauseSandbox`, `ResumeSandbox`,
/// `DestroySandbox`), which may boot, drain or write memory to disk: the later
/// original's raised response-header timeout.
pub const LIFECYCLE_CALL_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Deadline of `CreateSnapshot` (copies a whole disk and memory image): the original
/// control plane's total client timeout.
pub const SNAPSHOT_CALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// HTTP/2 keep-alive ping interval: detects a vanished host on an idle channel.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keep-alive ping may go unanswered before the connection is dropped.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cached channel and the address it was built for.
struct Cached {
    address: String,
    channel: Channel,
}

/// [`HostAgents`] reached over gRPC, one cached channel per host.
pub struct GrpcHostAgents {
    store: Arc<dyn Store>,
    channels: Mutex<HashMap<HostId, Cached>>,
}

impl std::fmt::Debug for GrpcHostAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcHostAgents")
            .field("cached_hosts", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl GrpcHostAgents {
    /// A pool resolving host addresses through `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Cached>> {
        // The map holds only cheap handles; a panic elsewhere cannot corrupt it.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the cached channel of `host` (if any); the next call reconnects. Call it
    /// when a host is deleted, re-registered or gets a new certificate.
    pub fn evict(&self, host: HostId) {
        if self.lock().remove(&host).is_some() {
            tracing::debug!(host_id = %host, "evicted host channel");
        }
    }

    /// The address the pool currently holds a channel for, if any (diagnostics).
    pub fn cached_address(&self, host: HostId) -> Option<String> {
        self.lock().get(&host).map(|c| c.address.clone())
    }

    /// Evicts `host` only if its channel is still the one built for `address` (a newer
    /// channel for a changed address is kept).
    fn evict_if(&self, host: HostId, address: &str) {
        let mut channels = self.lock();
        if channels.get(&host).is_some_and(|c| c.address == address) {
            channels.remove(&host);
            tracing::debug!(host_id = %host, address, "evicted host channel after UNAVAILABLE");
        }
    }

    /// The channel for `host`, resolving its address through the store.
    async fn channel(&self, host: HostId) -> Result<(String, Channel), AgentError> {
        let row = self.store.get_host(host).await.map_err(|e| match e {
            RepoError::NotFound { .. } => {
                AgentError::Unavailable(format!("host {host} does not exist"))
            }
            other => AgentError::Unavailable(format!("cannot look up host {host}: {other}")),
        })?;
        if !matches!(row.status, HostStatus::Online | HostStatus::Draining) {
            self.evict(host);
            return Err(AgentError::Unavailable(format!(
                "host {host} is {}; only online and draining hosts are called",
                row.status.as_str()
            )));
        }
        let address = row.address.trim();
        if address.is_empty() {
            self.evict(host);
            return Err(AgentError::Unavailable(format!(
                "host {host} has no address (its agent has not registered)"
            )));
        }
        let mut channels = self.lock();
        if let Some(cached) = channels.get(&host)
            && cached.address == address
        {
            return Ok((cached.address.clone(), cached.channel.clone()));
        }
        let channel = endpoint(address)
            .map_err(|e| {
                AgentError::Unavailable(format!(
                    "host {host} has an invalid address {address:?}: {e}"
                ))
            })?
            .connect_lazy();
        if let Some(old) = channels.insert(
            host,
            Cached {
                address: address.to_owned(),
                channel: channel.clone(),
            },
        ) {
            tracing::info!(host_id = %host, old = %old.address, new = %address, "host address changed; reconnecting");
        }
        Ok((address.to_owned(), channel))
    }

    /// Runs one RPC on `host` with a deadline, mapping failures.
    async fn call<T, F, Fut>(
        &self,
        host: HostId,
        op: &'static str,
        timeout: Duration,
        rpc: F,
    ) -> Result<T, AgentError>
    where
        F: FnOnce(HostAgentServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let (address, channel) = self.channel(host).await?;
        let client = HostAgentServiceClient::new(channel);
        match tokio::time::timeout(timeout, rpc(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                if status.code() == Code::Unavailable {
                    self.evict_if(host, &address);
                }
                tracing::debug!(host_id = %host, op, code = ?status.code(), message = status.message(), "agent call failed");
                Err(map_status(op, host, &status))
            }
            Err(_) => Err(AgentError::Timeout(format!(
                "{op} on host {host} did not finish within {}s",
                timeout.as_secs()
            ))),
        }
    }
}

/// The endpoint for an agent address (`host:port`, or a full `http://` URL).
fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if address.starts_with("http://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// A request carrying `timeout` as its `grpc-timeout`.
fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(timeout);
    req
}

/// Maps a gRPC status onto an [`AgentError`], keeping the agent's message.
pub fn map_status(op: &str, host: HostId, status: &Status) -> AgentError {
    let message = format!("{op} on host {host}: {}", status.message());
    match status.code() {
        Code::NotFound => AgentError::NotFound(message),
        Code::FailedPrecondition | Code::AlreadyExists => AgentError::FailedPrecondition(message),
        Code::InvalidArgument => AgentError::InvalidArgument(message),
        Code::Unavailable => AgentError::Unavailable(message),
        Code::DeadlineExceeded => AgentError::Timeout(message),
        code => AgentError::Internal(format!("{message} ({code:?})")),
    }
}

/// Converts a non-negative resource value for the wire.
fn unsigned(field: &str, value: i32) -> Result<u32, AgentError> {
    u32::try_from(value).map_err(|_| {
        AgentError::InvalidArgument(format!("{field} must not be negative (got {value})"))
    })
}

fn hyphenated(uuid: uuid::Uuid) -> String {
    uuid.hyphenated().to_string()
}

fn map_of(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn started(host_ip: String, metadata: HashMap<String, String>) -> StartedSandbox {
    StartedSandbox {
        host_ip,
        metadata: metadata.into_iter().collect(),
    }
}

/// The `CreateSandbox` request for `spec`: `team_id` is the sandbox's owner,
/// `template_team_id` the team owning the template (the agent finds the template
/// under `images/teams/{template_team_id}/{template_id}`).
pub fn create_request(spec: &SandboxSpec) -> Result<pb::CreateSandboxRequest, AgentError> {
    Ok(pb::CreateSandboxRequest {
        sandbox_id: spec.sandbox_id.to_string(),
        template: spec.template.clone(),
        team_id: hyphenated(spec.team_id.uuid()),
        template_id: hyphenated(spec.template_id.uuid()),
        template_team_id: hyphenated(spec.template_team_id.uuid()),
        vcpus: unsigned("vcpus", spec.vcpus)?,
        memory_mb: unsigned("memory_mb", spec.memory_mb)?,
        disk_size_mb: unsigned("disk_size_mb", spec.disk_size_mb)?,
        timeout_sec: unsigned("timeout_sec", spec.timeout_sec)?,
        default_user: spec.default_user.clone(),
        default_env: map_of(&spec.default_env),
        metadata: map_of(&spec.metadata),
    })
}

/// The `ResumeSandbox` request for `spec` (timeout and process defaults are replaced).
pub fn resume_request(spec: &SandboxSpec) -> Result<pb::ResumeSandboxRequest, AgentError> {
    Ok(pb::ResumeSandboxRequest {
        sandbox_id: spec.sandbox_id.to_string(),
        timeout_sec: unsigned("timeout_sec", spec.timeout_sec)?,
        default_user: spec.default_user.clone(),
        default_env: map_of(&spec.default_env),
    })
}

/// The core status of a sandbox as the agent reports it. `UNSPECIFIED` (never sent by
/// a correct agent) and unknown values are reported as `error`.
pub fn status_from_proto(status: i32) -> SandboxStatus {
    use pb::SandboxStatus as P;
    match P::try_from(status) {
        Ok(P::Starting) => SandboxStatus::Starting,
        Ok(P::Running) => SandboxStatus::Running,
        Ok(P::Pausing) => SandboxStatus::Pausing,
        Ok(P::Paused) => SandboxStatus::Paused,
        Ok(P::Hibernated) => SandboxStatus::Hibernated,
        Ok(P::Resuming) => SandboxStatus::Resuming,
        Ok(P::Stopping) => SandboxStatus::Stopping,
        Ok(P::Stopped) => SandboxStatus::Stopped,
        Ok(P::Error) => SandboxStatus::Error,
        Ok(P::Snapshotting) => SandboxStatus::Snapshotting,
        Ok(P::Unspecified) | Err(_) => SandboxStatus::Error,
    }
}

/// The inventory in a `ListSandboxes` response. Entries with an unparseable id are
/// skipped (and logged); hibernated ids missing from the sandbox list are added.
pub fn inventory(host: HostId, resp: pb::ListSandboxesResponse) -> AgentInventory {
    let parse = |raw: &str| -> Option<SandboxId> {
        match raw.parse() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(host_id = %host, sandbox_id = raw, error = %e, "agent listed a malformed sandbox id; ignored");
                None
            }
        }
    };
    let mut sandboxes: Vec<AgentSandbox> = resp
        .sandboxes
        .iter()
        .filter_map(|info| {
            parse(&info.sandbox_id).map(|sandbox_id| AgentSandbox {
                sandbox_id,
                status: status_from_proto(info.status),
            })
        })
        .collect();
    let listed: HashSet<SandboxId> = sandboxes.iter().map(|s| s.sandbox_id).collect();
    for id in resp
        .hibernated_sandbox_ids
        .iter()
        .filter_map(|raw| parse(raw))
    {
        if !listed.contains(&id) {
            sandboxes.push(AgentSandbox {
                sandbox_id: id,
                status: SandboxStatus::Hibernated,
            });
        }
    }
    AgentInventory {
        sandboxes,
        auto_paused: resp
            .auto_paused_sandbox_ids
            .iter()
            .filter_map(|raw| parse(raw))
            .collect(),
    }
}

#[async_trait::async_trait]
impl HostAgents for GrpcHostAgents {
    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, sandbox_id = %spec.sandbox_id, team_id = %spec.team_id))]
    async fn create_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, AgentError> {
        let req = create_request(spec)?;
        let t = LIFECYCLE_CALL_TIMEOUT;
        let resp = self
            .call(host, "CreateSandbox", t, |mut c| async move {
                c.create_sandbox(request(req, t)).await
            })
            .await?;
        Ok(started(resp.host_ip, resp.metadata))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, sandbox_id = %id))]
    async fn pause_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), AgentError> {
        let req = pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        };
        let t = LIFECYCLE_CALL_TIMEOUT;
        self.call(host, "PauseSandbox", t, |mut c| async move {
            c.pause_sandbox(request(req, t)).await
        })
        .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, sandbox_id = %spec.sandbox_id, team_id = %spec.team_id))]
    async fn resume_sandbox(
        &self,
        host: HostId,
        spec: &SandboxSpec,
    ) -> Result<StartedSandbox, AgentError> {
        let req = resume_request(spec)?;
        let t = LIFECYCLE_CALL_TIMEOUT;
        let resp = self
            .call(host, "ResumeSandbox", t, |mut c| async move {
                c.resume_sandbox(request(req, t)).await
            })
            .await?;
        Ok(started(resp.host_ip, resp.metadata))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, sandbox_id = %id))]
    async fn destroy_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), AgentError> {
        let req = pb::DestroySandboxRequest {
            sandbox_id: id.to_string(),
        };
        let t = LIFECYCLE_CALL_TIMEOUT;
        self.call(host, "DestroySandbox", t, |mut c| async move {
            c.destroy_sandbox(request(req, t)).await
        })
        .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, sandbox_id = %id))]
    async fn ping_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), AgentError> {
        let req = pb::PingSandboxRequest {
            sandbox_id: id.to_string(),
        };
        let t = PING_TIMEOUT;
        self.call(host, "PingSandbox", t, |mut c| async move {
            c.ping_sandbox(request(req, t)).await
        })
        .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, sandbox_id = %id, team_id = %team))]
    async fn create_snapshot(
        &self,
        host: HostId,
        id: SandboxId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, AgentError> {
        let req = pb::CreateSnapshotRequest {
            sandbox_id: id.to_string(),
            team_id: hyphenated(team.uuid()),
            template_id: hyphenated(template.uuid()),
        };
        let t = SNAPSHOT_CALL_TIMEOUT;
        let resp = self
            .call(host, "CreateSnapshot", t, |mut c| async move {
                c.create_snapshot(request(req, t)).await
            })
            .await?;
        Ok(resp.size_bytes)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, team_id = %team, template_id = %template))]
    async fn delete_snapshot(
        &self,
        host: HostId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<(), AgentError> {
        let req = pb::DeleteSnapshotRequest {
            team_id: hyphenated(team.uuid()),
            template_id: hyphenated(template.uuid()),
        };
        let t = QUICK_CALL_TIMEOUT;
        self.call(host, "DeleteSnapshot", t, |mut c| async move {
            c.delete_snapshot(request(req, t)).await
        })
        .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host))]
    async fn list_sandboxes(&self, host: HostId) -> Result<AgentInventory, AgentError> {
        let t = QUICK_CALL_TIMEOUT;
        let resp = self
            .call(host, "ListSandboxes", t, |mut c| async move {
                c.list_sandboxes(request(pb::ListSandboxesRequest {}, t))
                    .await
            })
            .await?;
        Ok(inventory(host, resp))
    }
}
