//! [`Upstream`]: the control plane's HTTP/1.1 client to host agents' port proxies
//! (`/proxy/{capsule_id}/{port}/…`).
//!
//! HTTP/1.1, not the agents' HTTP/2 gRPC channels: a WebSocket (or any `Upgrade`)
//! passes through a proxy chain of HTTP/1.1 hops unchanged, and pooled keep-alive
//! connections cost nothing per request. A host with a certificate from the control
//! plane's CA is dialled over mutual TLS exactly like its gRPC channel (its certificate
//! must chain to the CA and name its address; the control plane presents a `wrenn-cp`
//! client certificate, renewed with the same cadence); a host without one (`wrenn dev`'s
//! in-process host) over cleartext.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use chrono::{DateTime, Utc};
use http::Uri;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wrenn_core::model::ProxyTarget;

use crate::ca::{CLIENT_CERT_RENEW_AFTER, CaError, CertificateAuthority};
use crate::host_channels::CONNECT_TIMEOUT;

type AgentClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Why the client to agents could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The control plane's client certificate could not be issued.
    #[error("cannot issue the control plane's client certificate")]
    ClientCertificate(#[source] CaError),
    /// A PEM block (the CA's or the client certificate's) did not parse.
    #[error("unreadable {what}")]
    Pem {
        /// Which block.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    /// The agent's address does not make a URI.
    #[error("the host's address {address:?} is not a valid authority")]
    Address {
        /// The stored address.
        address: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
}

/// The pooled client and when its client certificate was issued.
struct Current {
    client: AgentClient,
    issued_at: DateTime<Utc>,
}

/// HTTP/1.1 connections to agents, pooled per host.
pub(crate) struct Upstream {
    ca: Arc<CertificateAuthority>,
    current: Mutex<Option<Current>>,
}

impl Upstream {
    /// A client trusting `ca` and presenting a client certificate it issues.
    pub(crate) fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self {
            ca,
            current: Mutex::new(None),
        }
    }

    /// The client, rebuilt (with a new client certificate) once the certificate is
    /// older than [`CLIENT_CERT_RENEW_AFTER`].
    pub(crate) fn client(&self) -> Result<AgentClient, UpstreamError> {
        let now = Utc::now();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = current.as_ref()
            && now - c.issued_at < CLIENT_CERT_RENEW_AFTER
        {
            return Ok(c.client.clone());
        }
        let client = build_client(&self.ca, now)?;
        *current = Some(Current {
            client: client.clone(),
            issued_at: now,
        });
        Ok(client)
    }

    /// Sends `req` to its agent.
    pub(crate) async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let client = self.client().map_err(SendError::Setup)?;
        client.request(req).await.map_err(SendError::Request)
    }
}

/// Why a request did not reach an agent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The client could not be set up.
    #[error("the proxy's client to the host could not be set up")]
    Setup(#[source] UpstreamError),
    /// Connecting or exchanging the request failed.
    #[error("the host did not answer")]
    Request(#[source] hyper_util::client::legacy::Error),
}

fn build_client(
    ca: &CertificateAuthority,
    now: DateTime<Utc>,
) -> Result<AgentClient, UpstreamError> {
    let issued = ca
        .issue_client_cert(now)
        .map_err(UpstreamError::ClientCertificate)?;
    let pem = |what| move |source| UpstreamError::Pem { what, source };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots
            .add(cert.map_err(pem("CA certificate"))?)
            .map_err(UpstreamError::Tls)?;
    }
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("client certificate"))?;
    let key =
        PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(pem("client key"))?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(UpstreamError::Tls)?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(UpstreamError::Tls)?;

    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.set_keepalive(Some(Duration::from_secs(30)));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(connector))
}

/// The agent URI of `path_and_query` on `port` of the target's capsule:
/// `{http|https}://{host address}/proxy/{id}/{port}{path_and_query}`.
pub(crate) fn agent_uri(
    target: &ProxyTarget,
    port: u16,
    path_and_query: &str,
) -> Result<Uri, UpstreamError> {
    let address = target.host_address.trim();
    let authority = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address)
        .trim_end_matches('/');
    let scheme = if target.host_tls { "https" } else { "http" };
    let path_and_query = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    format!(
        "{scheme}://{authority}/proxy/{}/{port}{path_and_query}",
        target.sandbox_id
    )
    .parse()
    .map_err(|source| UpstreamError::Address {
        address: target.host_address.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use wrenn_core::id::{HostId, SandboxId, TeamId};
    use wrenn_core::lifecycle::SandboxStatus;

    use super::*;

    fn target(address: &str, tls: bool) -> ProxyTarget {
        ProxyTarget {
            sandbox_id: SandboxId::new(),
            team_id: TeamId::new(),
            status: SandboxStatus::Running,
            host_id: HostId::new(),
            host_address: address.into(),
            host_tls: tls,
            access_token_hash: None,
        }
    }

    #[test]
    fn the_agent_uri_keeps_path_and_query_under_the_proxy_prefix() {
        let t = target("10.0.0.7:50051", true);
        let uri = agent_uri(&t, 8888, "/api/kernels?x=1").unwrap();
        assert_eq!(
            uri.to_string(),
            format!(
                "https://10.0.0.7:50051/proxy/{}/8888/api/kernels?x=1",
                t.sandbox_id
            )
        );
        let t = target("http://127.0.0.1:9/", false);
        assert_eq!(
            agent_uri(&t, 80, "/").unwrap().to_string(),
            format!("http://127.0.0.1:9/proxy/{}/80/", t.sandbox_id)
        );
        assert!(agent_uri(&target("bad host", false), 80, "/").is_err());
    }

    #[test]
    fn the_client_is_built_from_the_ca_and_kept() {
        let ca = Arc::new(CertificateAuthority::generate().unwrap());
        let upstream = Upstream::new(ca);
        upstream.client().unwrap();
        let first = upstream.current.lock().unwrap().as_ref().unwrap().issued_at;
        upstream.client().unwrap();
        let second = upstream.current.lock().unwrap().as_ref().unwrap().issued_at;
        assert_eq!(first, second, "a fresh client certificate is reused");
    }
}
