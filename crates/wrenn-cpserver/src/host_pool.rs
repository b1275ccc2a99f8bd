//! The gRPC host pool: [`HostAgents`] over tonic clients of `hostagent.v1`.
//!
//! Every call resolves the host through the store (`Store::get_host`): only hosts that
//! are `online` or `draining` (a draining host takes no new sandboxes, but the ones it
//! runs must still be paused, resumed and destroyed) and that have an address are
//! called; anything else fails with [`HostCallError::Unavailable`] naming the reason. The
//! pool keeps one lazily connected [`Channel`] per host (HTTP/2 multiplexes every call
//! over it) and drops it when the host's address changes, when a call fails with
//! `UNAVAILABLE`, or on [`HostChannels::evict`].
//!
//! **Transport security.** A host registered through the API is called over mutual
//! TLS (its certificate must chain to the control plane's CA and name its address; the
//! control plane presents its `wrenn-cp` client certificate); a host without a
//! certificate (`wrenn dev`'s in-process host) over cleartext HTTP/2. See
//! [`HostChannels`].
//!
//! gRPC status codes map onto [`HostCallError`]: `NOT_FOUND` → `NotFound`,
//! `FAILED_PRECONDITION` and `ALREADY_EXISTS` → `FailedPrecondition`,
//! `INVALID_ARGUMENT` → `InvalidArgument`, `UNAVAILABLE` → `Unavailable`,
//! `DEADLINE_EXCEEDED` → `Timeout`, anything else → `Internal`. Each call also has a
//! client-side deadline (sent as `grpc-timeout` and enforced locally, so a silent host
//! cannot hang a caller); its expiry is [`HostCallError::Timeout`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use crate::host_channels::{CONNECT_TIMEOUT, HostChannels};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use wrenn_core::agents::{
    AgentInventory, AgentSandbox, HostAgents, HostCallError, SandboxSpec, StartedSandbox,
};
use wrenn_core::id::{HostId, SandboxId, TeamId, TemplateId};
use wrenn_core::lifecycle::SandboxStatus;
use wrenn_core::model::MetricHistory;
use wrenn_extension::HostConnections;
use wrenn_proto::domain::{
    create_request, host_call_error, metric_history, resume_request, status_from_proto,
};
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;

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

/// [`HostAgents`] reached over gRPC, one cached channel per host.
pub struct GrpcHostAgents {
    hosts: Arc<HostChannels>,
}

impl std::fmt::Debug for GrpcHostAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcHostAgents")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl GrpcHostAgents {
    /// A pool over `hosts` (shared with the data-plane routes).
    pub fn new(hosts: Arc<HostChannels>) -> Self {
        Self { hosts }
    }

    /// The shared channel cache.
    pub fn channels(&self) -> &Arc<HostChannels> {
        &self.hosts
    }

    /// Runs one RPC on `host` with a deadline, mapping failures.
    async fn call<T, F, Fut>(
        &self,
        host: HostId,
        op: &'static str,
        timeout: Duration,
        rpc: F,
    ) -> Result<T, HostCallError>
    where
        F: FnOnce(HostAgentServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let (address, channel) = self.hosts.channel(host).await?;
        let client = HostAgentServiceClient::new(channel);
        match tokio::time::timeout(timeout, rpc(client)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => {
                if status.code() == Code::Unavailable {
                    self.hosts.evict_if(host, &address);
                }
                tracing::debug!(host_id = %host, op, code = ?status.code(), message = status.message(), "agent call failed");
                Err(host_call_error(op, &status))
            }
            Err(_) => {
                tracing::debug!(host_id = %host, op, "agent call timed out");
                Err(HostCallError::Timeout(format!(
                    "{op} did not finish within {}s",
                    timeout.as_secs()
                )))
            }
        }
    }
}

/// A request carrying `timeout` as its `grpc-timeout`.
fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(timeout);
    req
}

fn hyphenated(uuid: uuid::Uuid) -> String {
    uuid.hyphenated().to_string()
}

fn started(host_ip: String, metadata: HashMap<String, String>) -> StartedSandbox {
    StartedSandbox {
        host_ip,
        metadata: metadata.into_iter().collect(),
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
    ) -> Result<StartedSandbox, HostCallError> {
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
    async fn pause_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
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
    ) -> Result<StartedSandbox, HostCallError> {
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
    async fn destroy_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
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
    async fn ping_sandbox(&self, host: HostId, id: SandboxId) -> Result<(), HostCallError> {
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
    ) -> Result<u64, HostCallError> {
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
    ) -> Result<(), HostCallError> {
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

    #[tracing::instrument(level = "debug", skip_all, fields(from = %from, to = %to, template_id = %template))]
    async fn copy_template(
        &self,
        from: HostId,
        to: HostId,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, HostCallError> {
        let (team_id, template_id) = (hyphenated(team.uuid()), hyphenated(template.uuid()));
        let (_, source) = self.hosts.channel(from).await?;
        let (_, target) = self.hosts.channel(to).await?;
        let t = SNAPSHOT_CALL_TIMEOUT;
        // The archive is relayed message by message: the source's stream feeds the
        // target's. If the source fails mid-way the target's call is dropped (reset),
        // so it never takes a truncated archive for a whole one.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportTemplateRequest>(4);
        let pump = async move {
            let mut archive = HostAgentServiceClient::new(source)
                .export_template(request(
                    pb::ExportTemplateRequest {
                        team_id: team_id.clone(),
                        template_id: template_id.clone(),
                    },
                    t,
                ))
                .await
                .map_err(|s| host_call_error("ExportTemplate", &s))?
                .into_inner();
            let mut head = Some((team_id, template_id));
            loop {
                let data = match archive.message().await {
                    Ok(Some(chunk)) => chunk.data,
                    Ok(None) => break,
                    Err(s) => return Err(host_call_error("ExportTemplate", &s)),
                };
                let (team_id, template_id) = head.take().unwrap_or_default();
                let sent = tx.send(pb::ImportTemplateRequest {
                    team_id,
                    template_id,
                    data,
                });
                if sent.await.is_err() {
                    // The import ended early: its own answer says why.
                    return Ok(());
                }
            }
            if let Some((team_id, template_id)) = head {
                // An empty archive still names its template.
                let _ = tx
                    .send(pb::ImportTemplateRequest {
                        team_id,
                        template_id,
                        data: Vec::new(),
                    })
                    .await;
            }
            Ok(())
        };
        let import = async move {
            HostAgentServiceClient::new(target)
                .import_template(request(tokio_stream::wrappers::ReceiverStream::new(rx), t))
                .await
                .map(|r| r.into_inner().size_bytes)
                .map_err(|s| host_call_error("ImportTemplate", &s))
        };
        match tokio::time::timeout(t, futures::future::try_join(pump, import)).await {
            Ok(Ok(((), size))) => Ok(size),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HostCallError::Timeout(format!(
                "copying the template did not finish within {}s",
                t.as_secs()
            ))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host))]
    async fn list_sandboxes(&self, host: HostId) -> Result<AgentInventory, HostCallError> {
        let t = QUICK_CALL_TIMEOUT;
        let resp = self
            .call(host, "ListSandboxes", t, |mut c| async move {
                c.list_sandboxes(request(pb::ListSandboxesRequest {}, t))
                    .await
            })
            .await?;
        Ok(inventory(host, resp))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(host_id = %host, sandbox_id = %id))]
    async fn take_metric_history(
        &self,
        host: HostId,
        id: SandboxId,
    ) -> Result<MetricHistory, HostCallError> {
        let req = pb::FlushSandboxMetricsRequest {
            sandbox_id: id.to_string(),
        };
        let t = QUICK_CALL_TIMEOUT;
        let resp = self
            .call(host, "FlushSandboxMetrics", t, |mut c| async move {
                c.flush_sandbox_metrics(request(req, t)).await
            })
            .await?;
        Ok(metric_history(
            resp.points_10m,
            resp.points_2h,
            resp.points_24h,
        ))
    }
}
