//! Mutual TLS on the agent's listener, for an agent registered with a control plane.
//!
//! - The agent presents the certificate from its [`Credentials`] (signed by the
//!   control plane's host CA for the host's address). The certificate is read at each
//!   handshake, so one renewed by a credentials refresh is served from the next
//!   connection on, without a restart.
//! - Every client must present a certificate that chains to the same CA and is meant
//!   for client authentication (the control plane's `wrenn-cp` certificate; host
//!   certificates are server-only, so one host cannot pose as the control plane).
//! - TLS 1.3 only; ALPN `h2` (gRPC) and `http/1.1` (the port proxy).
//!
//! Handshakes run on their own tasks (at most [`MAX_PENDING_HANDSHAKES`] at once,
//! each bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up
//! the accept loop.

use crate::runtime::error_chain;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::registration::Credentials;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; further connections wait to be accepted.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The credentials hold no certificate, key or CA.
    #[error("the host credentials hold no TLS certificate (register the agent again)")]
    NoCertificate,
    /// A PEM could not be used.
    #[error("invalid {what}: {reason}")]
    Pem {
        /// Which PEM.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn pem_err(what: &'static str) -> impl FnOnce(String) -> TlsError {
    move |reason| TlsError::Pem { what, reason }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate and key of `cert_pem`/`key_pem` for rustls.
fn certified_key(
    provider: &CryptoProvider,
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("certificate")(error_chain(&e)))?;
    if certs.is_empty() {
        return Err(pem_err("certificate")("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| pem_err("private key")(error_chain(&e)))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| pem_err("private key")(error_chain(&e)))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// Serves the certificate currently in the credentials, re-parsing it only when it
/// changed.
struct CredentialsCert {
    credentials: Credentials,
    provider: Arc<CryptoProvider>,
    current: Mutex<(String, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for CredentialsCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsCert")
            .field("host_id", &self.credentials.host_id())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CredentialsCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let changed = self.credentials.read(|c| {
            (!c.cert_pem.is_empty() && c.cert_pem != current.0)
                .then(|| (c.cert_pem.clone(), c.key_pem.clone()))
        });
        let Some((cert_pem, key_pem)) = changed else {
            return Some(Arc::clone(&current.1));
        };
        match certified_key(&self.provider, &cert_pem, &key_pem) {
            Ok(key) => {
                tracing::info!("serving the renewed host certificate");
                *current = (cert_pem, Arc::new(key));
            }
            // Keep serving the previous certificate rather than none.
            Err(e) => tracing::error!("renewed host certificate unusable: {}", error_chain(&e)),
        }
        Some(Arc::clone(&current.1))
    }
}

/// The server configuration for `credentials` (see the module docs).
pub fn server_config(credentials: &Credentials) -> Result<Arc<ServerConfig>, TlsError> {
    let creds = credentials.get();
    if creds.cert_pem.is_empty() || creds.key_pem.is_empty() || creds.ca_cert_pem.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(creds.ca_cert_pem.as_bytes()) {
        let ca = ca.map_err(|e| pem_err("CA certificate")(error_chain(&e)))?;
        roots
            .add(ca)
            .map_err(|e| pem_err("CA certificate")(error_chain(&e)))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Config(error_chain(&e)))?;
    let key = certified_key(&provider, &creds.cert_pem, &creds.key_pem)?;
    let resolver = CredentialsCert {
        credentials: credentials.clone(),
        provider: Arc::clone(&provider),
        current: Mutex::new((creds.cert_pem, Arc::new(key))),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(error_chain(&e)))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener handing out connections that completed the mutual-TLS handshake.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_loop: JoinHandle<()>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Accepts on `listener` and performs handshakes with `config`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let accept_loop = tokio::spawn(async move {
            let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
            loop {
                let Ok(permit) = Arc::clone(&pending).acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept failed: {}", error_chain(&e));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake refused: {}", error_chain(&e))
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local_addr,
            ready,
            accept_loop,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ended (the runtime is shutting down): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
