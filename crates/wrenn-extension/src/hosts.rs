//! Connections to host agents: one lazily connected gRPC [`Channel`] per host,
//! resolved through the store. The control plane's lifecycle calls
//! (`wrenn-cpserver`'s host pool) and its data-plane routes (exec, files, PTY —
//! which stream, so they use the generated client directly) share this cache.
//!
//! Only hosts that are `online` or `draining` (a draining host takes no new
//! sandboxes, but the ones it runs must still be reached) and that have an address
//! are connected; anything else fails with [`AgentError::Unavailable`] naming the
//! reason. A channel is dropped when the host's address changes, when a call fails
//! with `UNAVAILABLE` ([`HostChannels::evict_if`]), or on [`HostChannels::evict`].
//!
//! **Transport security.** Channels are plain HTTP/2 for now. The control plane's
//! [host CA](crate::ca) already signs each agent's server certificate at
//! registration and refresh (its fingerprint is kept in `hosts.cert_fingerprint`),
//! but the agent does not serve TLS with it yet: run agents on a trusted network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use wrenn_core::agents::AgentError;
use wrenn_core::id::HostId;
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::repo::{RepoError, Store};
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;

/// How long establishing the TCP + HTTP/2 connection to an agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive ping interval: detects a vanished host on an idle channel.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keep-alive ping may go unanswered before the connection is dropped.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cached channel and the address it was built for.
struct Cached {
    address: String,
    channel: Channel,
}

/// The per-host channel cache.
pub struct HostChannels {
    store: Arc<dyn Store>,
    channels: Mutex<HashMap<HostId, Cached>>,
}

impl std::fmt::Debug for HostChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostChannels")
            .field("cached_hosts", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl HostChannels {
    /// A cache resolving host addresses through `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A `hostagent.v1` client for `host`.
    pub async fn client(
        &self,
        host: HostId,
    ) -> Result<HostAgentServiceClient<Channel>, AgentError> {
        let (_, channel) = self.channel(host).await?;
        Ok(HostAgentServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
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
    pub fn evict_if(&self, host: HostId, address: &str) {
        let mut channels = self.lock();
        if channels.get(&host).is_some_and(|c| c.address == address) {
            channels.remove(&host);
            tracing::debug!(host_id = %host, address, "evicted host channel after UNAVAILABLE");
        }
    }

    /// The channel for `host`, resolving its address through the store.
    pub async fn channel(&self, host: HostId) -> Result<(String, Channel), AgentError> {
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
