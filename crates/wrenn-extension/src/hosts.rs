//! Connections to host agents, as handlers and extensions see them: the
//! [`HostConnections`] of [`ServerContext::hosts`](crate::ServerContext::hosts).
//! `wrenn-cpserver` implements it with one lazily connected, cached gRPC channel per
//! host (mutual TLS for hosts registered with the control plane's CA). The control
//! plane's lifecycle calls and its data-plane routes (exec, files, PTY — which stream,
//! so they use the generated client directly) share it.

use async_trait::async_trait;
use tonic::transport::Channel;
use wrenn_core::agents::HostCallError;
use wrenn_core::id::HostId;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;

/// Largest `hostagent.v1` message either side of a [`HostConnections::client`] sends.
pub const MAX_AGENT_MESSAGE: usize = 64 * 1024 * 1024;

/// One cached gRPC channel per host agent.
///
/// Only hosts that are `online` or `draining` and have an address are connected;
/// anything else fails with [`HostCallError::Unavailable`] naming the reason. A
/// channel is dropped when the host's address changes, when a call on it fails with
/// `UNAVAILABLE` ([`evict_if`](Self::evict_if)), or on [`evict`](Self::evict).
#[async_trait]
pub trait HostConnections: Send + Sync + std::fmt::Debug {
    /// The channel to `host` and the address it was built for.
    async fn channel(&self, host: HostId) -> Result<(String, Channel), HostCallError>;

    /// Drops the cached channel of `host` (if any); the next call reconnects. Call it
    /// when a host is deleted, re-registered or gets a new certificate.
    fn evict(&self, host: HostId);

    /// Evicts `host` only if its channel is still the one built for `address` (a newer
    /// channel for a changed address is kept).
    fn evict_if(&self, host: HostId, address: &str);

    /// A `hostagent.v1` client for `host`.
    async fn client(&self, host: HostId) -> Result<HostAgentServiceClient<Channel>, HostCallError> {
        let (_, channel) = self.channel(host).await?;
        Ok(HostAgentServiceClient::new(channel)
            .max_decoding_message_size(MAX_AGENT_MESSAGE)
            .max_encoding_message_size(MAX_AGENT_MESSAGE))
    }
}
