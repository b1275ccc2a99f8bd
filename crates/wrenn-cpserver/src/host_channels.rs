//! [`HostChannels`], the control plane's [`HostConnections`]: one lazily connected gRPC
//! [`Channel`] per host, resolved through the store. The host pool's lifecycle calls
//! and the data-plane routes (exec, files, PTY) share this cache.
//!
//! Only hosts that are `online` or `draining` (a draining host takes no new
//! sandboxes, but the ones it runs must still be reached) and that have an address
//! are connected; anything else fails with [`HostCallError::Unavailable`] naming the
//! reason. A channel is dropped when the host's address changes, when a call fails
//! with `UNAVAILABLE` ([`HostChannels::evict_if`]), or on [`HostChannels::evict`].
//!
//! **Transport security.** A host registered through the API has a certificate from
//! the control plane's [host CA](crate::ca) (`hosts.cert_fingerprint` is set): its
//! channel is mutual TLS — the agent's certificate must chain to the CA and name the
//! host's address, and the control plane presents its own client certificate (CN
//! `wrenn-cp`, 24 h, renewed after 12 h, when every TLS channel is rebuilt). A host
//! without a certificate (the in-process host of `wrenn dev`, hosts inserted by
//! embedders) is reached over plain HTTP/2.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use wrenn_core::agents::HostCallError;
use wrenn_core::id::HostId;
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::repo::{RepoError, Store};
use wrenn_core::report::error_chain;
use wrenn_extension::hosts::HostConnections;

use crate::ca::{CLIENT_CERT_RENEW_AFTER, CertificateAuthority, address_host};

/// How long establishing the TCP + HTTP/2 connection to an agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive ping interval: detects a vanished host on an idle channel.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keep-alive ping may go unanswered before the connection is dropped.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cached channel and what it was built for.
struct Cached {
    address: String,
    tls: bool,
    channel: Channel,
}

/// The control plane's current client certificate.
struct ClientCert {
    identity: Identity,
    issued_at: DateTime<Utc>,
}

/// The per-host channel cache.
pub struct HostChannels {
    store: Arc<dyn Store>,
    ca: Arc<CertificateAuthority>,
    client_cert: Mutex<Option<ClientCert>>,
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
    /// A cache resolving host addresses through `store`; TLS channels trust `ca` and
    /// present a client certificate it issues.
    pub fn new(store: Arc<dyn Store>, ca: Arc<CertificateAuthority>) -> Self {
        Self {
            store,
            ca,
            client_cert: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Cached>> {
        // The map holds only cheap handles; a panic elsewhere cannot corrupt it.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address the pool currently holds a channel for, if any (diagnostics).
    pub fn cached_address(&self, host: HostId) -> Option<String> {
        self.lock().get(&host).map(|c| c.address.clone())
    }
}

#[async_trait]
impl HostConnections for HostChannels {
    /// The channel for `host`, resolving its address through the store.
    async fn channel(&self, host: HostId) -> Result<(String, Channel), HostCallError> {
        // The messages reach tenants (a capsule's host is unavailable): they do not
        // name the host; the log does.
        let row = self.store.get_host(host).await.map_err(|e| {
            tracing::debug!(host_id = %host, "host lookup failed: {}", error_chain(&e));
            match e {
                RepoError::NotFound { .. } => {
                    HostCallError::Unavailable("the host does not exist".into())
                }
                _ => HostCallError::Unavailable("the host cannot be looked up".into()),
            }
        })?;
        if !matches!(row.status, HostStatus::Online | HostStatus::Draining) {
            self.evict(host);
            tracing::debug!(host_id = %host, status = row.status.as_str(), "host not called");
            return Err(HostCallError::Unavailable(format!(
                "the host is {}; only online and draining hosts are called",
                row.status.as_str()
            )));
        }
        let address = row.address.trim();
        if address.is_empty() {
            self.evict(host);
            tracing::debug!(host_id = %host, "host has no address");
            return Err(HostCallError::Unavailable(
                "the host has no address (its agent has not registered)".into(),
            ));
        }
        let tls = !row.cert_fingerprint.is_empty();
        let identity = if tls {
            Some(self.client_identity()?)
        } else {
            None
        };
        let mut channels = self.lock();
        if let Some(cached) = channels.get(&host)
            && cached.address == address
            && cached.tls == tls
        {
            return Ok((cached.address.clone(), cached.channel.clone()));
        }
        let endpoint = match identity {
            Some(identity) => tls_endpoint(address, self.ca.cert_pem(), identity),
            None => endpoint(address),
        };
        let channel = endpoint
            .map_err(|e| {
                HostCallError::Unavailable(format!(
                    "host {host} has an invalid address {address:?}: {e}"
                ))
            })?
            .connect_lazy();
        if let Some(old) = channels.insert(
            host,
            Cached {
                address: address.to_owned(),
                tls,
                channel: channel.clone(),
            },
        ) {
            tracing::info!(host_id = %host, old = %old.address, new = %address, "host address changed; reconnecting");
        }
        Ok((address.to_owned(), channel))
    }

    /// Drops the cached channel of `host` (if any); the next call reconnects. Call it
    /// when a host is deleted, re-registered or gets a new certificate.
    fn evict(&self, host: HostId) {
        if self.lock().remove(&host).is_some() {
            tracing::debug!(host_id = %host, "evicted host channel");
        }
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
}

impl HostChannels {
    /// The client certificate, issued on first use and renewed once older than
    /// [`CLIENT_CERT_RENEW_AFTER`] (every TLS channel is then rebuilt with the new one).
    fn client_identity(&self) -> Result<Identity, HostCallError> {
        let now = Utc::now();
        let mut current = self.client_cert.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = current.as_ref()
            && now - c.issued_at < CLIENT_CERT_RENEW_AFTER
        {
            return Ok(c.identity.clone());
        }
        let issued = self.ca.issue_client_cert(now).map_err(|e| {
            HostCallError::Unavailable(format!(
                "cannot issue the control plane's client certificate: {e}"
            ))
        })?;
        let identity = Identity::from_pem(issued.cert_pem, issued.key_pem);
        let renewed = current.replace(ClientCert {
            identity: identity.clone(),
            issued_at: now,
        });
        drop(current);
        if renewed.is_some() {
            self.lock().retain(|_, c| !c.tls);
            tracing::info!("control-plane client certificate renewed; TLS channels rebuilt");
        }
        Ok(identity)
    }
}

/// A mutual-TLS endpoint for an agent address: the agent's certificate must chain to
/// `ca_pem` and name the address's host; the control plane presents `identity`.
fn tls_endpoint(
    address: &str,
    ca_pem: &str,
    identity: Identity,
) -> Result<Endpoint, tonic::transport::Error> {
    let authority = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(identity)
        .domain_name(address_host(authority));
    let endpoint = Endpoint::from_shared(format!("https://{authority}"))?.tls_config(tls)?;
    Ok(tune(endpoint))
}

/// The endpoint for an agent address (`host:port`, or a full `http://` URL).
fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if address.starts_with("http://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    Ok(tune(Endpoint::from_shared(uri)?))
}

/// Timeouts and keep-alive of every agent channel.
fn tune(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(wrenn_proto::transport::STREAM_WINDOW)
        .initial_connection_window_size(wrenn_proto::transport::CONNECTION_WINDOW)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}
