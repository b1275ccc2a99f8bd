//! Where the proxy's connections go: [`UpstreamConnector`], the connector of the
//! proxy's pooled hyper-util client.
//!
//! Upstream URIs name the sandbox and the port, `http://{sandbox_id}:{port}/…`
//! ([`upstream_uri`]), so the pool keeps connections per sandbox and port and a new
//! sandbox on a reused address never gets an old one's connection. A new connection is
//!
//! 1. **direct**: TCP to `{host_ip}:{port}`, which reaches servers bound to `0.0.0.0` or
//!    the sandbox's address, as before; or, only when that is refused,
//! 2. **through the guest agent**: a [`TunnelStream`] to `localhost:{port}` inside the
//!    sandbox, which reaches servers bound to 127.0.0.1, ::1 or `localhost` — what users
//!    of E2B expect. envd dials only the sandbox's loopback, never its own port.
//!
//! Both kinds are pooled alike, and both carry plain HTTP/1.1 and upgrades.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::ServiceExt;
use wrenn_core::id::SandboxId;

use super::tunnel::{TunnelError, TunnelStream};
use crate::error::AgentError;
use crate::manager::SandboxManager;

/// The error type of hyper-util's [`HttpConnector`] (not nameable otherwise).
type BoxError = Box<dyn StdError + Send + Sync>;

/// Why the proxy could not connect to a sandbox's port.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URI is not one [`upstream_uri`] made (a bug, not input).
    #[error("upstream {0} does not name a sandbox and a port")]
    Target(String),
    /// The sandbox is gone, not running, or its guest agent has no client.
    #[error("the sandbox cannot be reached")]
    Sandbox(#[from] AgentError),
    /// The direct connection failed other than by a refusal (a timeout, say).
    #[error("cannot connect to {addr}")]
    Direct {
        /// `{host_ip}:{port}`.
        addr: String,
        /// The connector's error.
        #[source]
        source: BoxError,
    },
    /// The direct connection was refused, and so was the tunnel.
    #[error(
        "nothing accepts connections on port {port} of sandbox {id} (refused at {addr}, \
         and on its loopback through the guest agent)"
    )]
    Unreachable {
        /// The sandbox.
        id: SandboxId,
        /// The port.
        port: u16,
        /// The direct address that refused.
        addr: String,
        /// Why the tunnel did not open.
        #[source]
        source: TunnelError,
    },
}

/// The upstream URI of `path_and_query` on `port` of sandbox `id`.
pub fn upstream_uri(id: SandboxId, port: u16, path_and_query: &str) -> Result<Uri, http::Error> {
    Uri::builder()
        .scheme("http")
        .authority(format!("{id}:{port}"))
        .path_and_query(path_and_query)
        .build()
}

/// `host:port`, with an IPv6 host in brackets.
pub fn socket_authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The proxy client's connector: direct first, the envd tunnel when refused.
#[derive(Clone)]
pub struct UpstreamConnector {
    manager: Arc<SandboxManager>,
    direct: HttpConnector,
}

impl UpstreamConnector {
    /// A connector for the sandboxes of `manager`.
    pub fn new(manager: Arc<SandboxManager>) -> Self {
        let mut direct = HttpConnector::new();
        direct.set_connect_timeout(Some(Duration::from_secs(30)));
        direct.set_keepalive(Some(Duration::from_secs(20)));
        direct.set_nodelay(true);
        Self { manager, direct }
    }

    async fn connect(self, uri: Uri) -> Result<Upstream, UpstreamError> {
        let target = || UpstreamError::Target(uri.to_string());
        let id: SandboxId = uri
            .host()
            .ok_or_else(target)?
            .parse()
            .map_err(|_| target())?;
        let port = uri.port_u16().ok_or_else(target)?;
        let sb = self.manager.get(id)?;
        let host_ip = sb.running_host_ip().ok_or_else(|| AgentError::WrongState {
            id,
            status: sb.status(),
            what: "the proxy needs a running sandbox".to_owned(),
        })?;
        let addr = socket_authority(&host_ip, port);
        let direct_uri: Uri = format!("http://{addr}").parse().map_err(|_| target())?;
        let refused = match self.direct.oneshot(direct_uri).await {
            Ok(io) => return Ok(Upstream::Direct(io)),
            Err(err) => {
                let err: BoxError = err.into();
                if !is_refused(&*err) {
                    return Err(UpstreamError::Direct { addr, source: err });
                }
                err
            }
        };
        tracing::debug!(sandbox_id = %id, port, "direct connection refused ({refused}): tunnelling through envd");
        let (_, envd) = self
            .manager
            .envd_for(id, "the proxy needs a running sandbox")?;
        match TunnelStream::open(envd.tunnel, port).await {
            Ok(stream) => Ok(Upstream::Tunnel(Box::new(TokioIo::new(stream)))),
            Err(source) => Err(UpstreamError::Unreachable {
                id,
                port,
                addr,
                source,
            }),
        }
    }
}

/// Whether a connect error was a refusal (nothing listens at the address).
fn is_refused(err: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = Upstream;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Upstream, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// One upstream connection, direct or tunnelled.
#[derive(Debug)]
pub enum Upstream {
    /// TCP to the sandbox's address.
    Direct(TokioIo<TcpStream>),
    /// A tunnel through envd to the sandbox's loopback (boxed: it is the larger one).
    Tunnel(Box<TokioIo<TunnelStream>>),
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        match self {
            Upstream::Direct(io) => io.connected(),
            Upstream::Tunnel(_) => Connected::new(),
        }
    }
}

impl hyper::rt::Read for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(io) => Pin::new(io).poll_read(cx, buf),
            Upstream::Tunnel(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Direct(io) => Pin::new(io).poll_write(cx, buf),
            Upstream::Tunnel(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(io) => Pin::new(io).poll_flush(cx),
            Upstream::Tunnel(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(io) => Pin::new(io).poll_shutdown(cx),
            Upstream::Tunnel(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Direct(io) => io.is_write_vectored(),
            Upstream::Tunnel(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Direct(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Upstream::Tunnel(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uris_name_the_sandbox_and_port() {
        let id = SandboxId::new();
        let uri = upstream_uri(id, 8080, "/a?b=1").unwrap();
        assert_eq!(uri.host(), Some(id.to_string().as_str()));
        assert_eq!(uri.port_u16(), Some(8080));
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(socket_authority("10.0.0.2", 80), "10.0.0.2:80");
        assert_eq!(socket_authority("fd00::2", 80), "[fd00::2]:80");
    }

    #[test]
    fn only_a_refusal_counts_as_refused() {
        let refused: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(is_refused(&*refused));
        let timeout: BoxError = Box::new(io::Error::from(io::ErrorKind::TimedOut));
        assert!(!is_refused(&*timeout));
        let wrapped = UpstreamError::Direct {
            addr: "x".into(),
            source: refused,
        };
        assert!(is_refused(&wrapped));
    }
}
