//! The `envd.v1.Tunnel` service: TCP connections to the sandbox's own loopback, for the
//! host agent's port proxy.
//!
//! A server that listens on 127.0.0.1, ::1 or `localhost` only is not reachable at the
//! sandbox's address; envd runs inside the sandbox (its network namespace, or its VM),
//! so it can dial that server for the proxy. [`Destination`] is the only way to a dial:
//! it admits the loopback and nothing else, and never envd's own port, so a tunnel
//! reaches nothing the sandbox could not reach itself. The access token is checked by
//! the interceptor every authenticated service shares (see `server`).
//!
//! Each tunnel is one bidirectional call: the first request names the target, the
//! response headers mean the connection is up, request data is written to it (the end
//! of the request stream shuts its write side), and what it sends comes back in
//! responses of at most [`wrenn_proto::TUNNEL_CHUNK_SIZE`] bytes until it closes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use prost::bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::envd::v1::tunnel_request::Frame;
use wrenn_proto::envd::v1::{TunnelRequest, TunnelResponse, TunnelTarget, tunnel_server};

use crate::error::{EnvdError, Result};

/// How long a dial may take before the tunnel fails with `UNAVAILABLE`.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Tunnel` service.
#[derive(Debug, Clone)]
pub(crate) struct TunnelService {
    /// Ports never dialled: envd's own ([`wrenn_proto::ENVD_PORT`], and the TCP port it
    /// listens on when that is another).
    own_ports: Vec<u16>,
}

impl TunnelService {
    /// A service that refuses `own_port` besides [`wrenn_proto::ENVD_PORT`].
    pub(crate) fn new(own_port: Option<u16>) -> Self {
        let mut own_ports = vec![wrenn_proto::ENVD_PORT];
        own_ports.extend(own_port.filter(|p| *p != wrenn_proto::ENVD_PORT));
        Self { own_ports }
    }
}

/// A place a tunnel may lead: a port other than envd's on one or more loopback
/// addresses, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Destination {
    addrs: Vec<SocketAddr>,
}

impl Destination {
    /// Checks `target`: a loopback address or `localhost` (127.0.0.1, then ::1), and a
    /// port from 1 to 65535 that is not one of `own_ports`.
    fn admit(target: &TunnelTarget, own_ports: &[u16]) -> Result<Self> {
        let port = u16::try_from(target.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                EnvdError::invalid(format!(
                    "invalid tunnel port {}: expected 1 to 65535",
                    target.port
                ))
            })?;
        let host = target.host.trim();
        let ips = if host.is_empty() {
            return Err(EnvdError::invalid("a tunnel target needs a host"));
        } else if host.eq_ignore_ascii_case("localhost") {
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]
        } else {
            let ip = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
                .filter(IpAddr::is_loopback)
                .ok_or_else(|| {
                    EnvdError::PermissionDenied(format!(
                        "tunnels lead to the sandbox's loopback only, not to {host:?}"
                    ))
                })?;
            vec![ip]
        };
        if own_ports.contains(&port) {
            return Err(EnvdError::PermissionDenied(format!(
                "port {port} is envd's own and is not tunnelled"
            )));
        }
        Ok(Self {
            addrs: ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        })
    }

    /// Connects to the first address that accepts, each within [`DIAL_TIMEOUT`].
    async fn dial(&self) -> Result<TcpStream> {
        let mut failures = Vec::with_capacity(self.addrs.len());
        for addr in &self.addrs {
            let attempt = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await;
            match attempt {
                Ok(Ok(stream)) => {
                    // Latency over throughput: proxied requests are small and interactive.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(err)) => failures.push(format!("{addr}: {err}")),
                Err(_) => failures.push(format!("{addr}: timed out after {DIAL_TIMEOUT:?}")),
            }
        }
        Err(EnvdError::Unavailable(format!(
            "cannot connect inside the sandbox ({})",
            failures.join("; ")
        )))
    }
}

/// The stream of a tunnel's responses.
type Download = Pin<Box<dyn Stream<Item = Result<TunnelResponse, Status>> + Send>>;

#[tonic::async_trait]
impl tunnel_server::Tunnel for TunnelService {
    type ConnectStream = Download;

    async fn connect(
        &self,
        request: Request<Streaming<TunnelRequest>>,
    ) -> Result<Response<Download>, Status> {
        let mut inbound = request.into_inner();
        let target = match inbound.message().await? {
            Some(TunnelRequest {
                frame: Some(Frame::Target(target)),
            }) => target,
            _ => return Err(EnvdError::invalid("a tunnel starts with its target").into()),
        };
        let destination = Destination::admit(&target, &self.own_ports)?;
        let (read, write) = destination.dial().await?.into_split();
        tokio::spawn(upload(inbound, write));
        Ok(Response::new(download(read)))
    }
}

/// Writes the request data to the connection; shuts down its write side when the
/// requests end. A broken call drops the write half (which shuts it down as well).
async fn upload(mut inbound: Streaming<TunnelRequest>, mut write: OwnedWriteHalf) {
    loop {
        match inbound.message().await {
            Ok(Some(TunnelRequest {
                frame: Some(Frame::Data(data)),
            })) => {
                if let Err(err) = write.write_all(&data).await {
                    tracing::debug!("tunnel write failed: {err}");
                    return;
                }
            }
            Ok(Some(_)) => {
                tracing::debug!("tunnel closed: a request without data after the target");
                return;
            }
            Ok(None) => {
                let _ = write.shutdown().await;
                return;
            }
            Err(status) => {
                tracing::debug!("tunnel call ended: {}", status.message());
                return;
            }
        }
    }
}

/// What the connection sends, in chunks of at most [`wrenn_proto::TUNNEL_CHUNK_SIZE`],
/// until it closes (or fails, which ends the call with `UNAVAILABLE`). Dropping the
/// stream (the call was cancelled) closes the read half.
fn download(read: OwnedReadHalf) -> Download {
    Box::pin(futures::stream::unfold(Some(read), |read| async move {
        let mut read = read?;
        let mut buf = BytesMut::with_capacity(wrenn_proto::TUNNEL_CHUNK_SIZE);
        match read
            .read_buf(&mut (&mut buf).limit(wrenn_proto::TUNNEL_CHUNK_SIZE))
            .await
        {
            Ok(0) => None,
            Ok(_) => Some((Ok(TunnelResponse { data: buf.freeze() }), Some(read))),
            Err(err) => Some((Err(read_failed(&err)), None)),
        }
    }))
}

fn read_failed(err: &io::Error) -> Status {
    EnvdError::Unavailable(format!("the tunnelled connection failed: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u32) -> TunnelTarget {
        TunnelTarget {
            host: host.to_owned(),
            port,
        }
    }

    fn admit(host: &str, port: u32) -> Result<Vec<SocketAddr>> {
        Destination::admit(&target(host, port), &[wrenn_proto::ENVD_PORT, 7000]).map(|d| d.addrs)
    }

    #[test]
    fn the_loopback_is_admitted() {
        assert_eq!(
            admit("127.0.0.1", 80).unwrap(),
            ["127.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(admit("::1", 80).unwrap(), ["[::1]:80".parse().unwrap()]);
        assert_eq!(admit("[::1]", 80).unwrap(), ["[::1]:80".parse().unwrap()]);
        assert_eq!(
            admit("127.1.2.3", 80).unwrap(),
            ["127.1.2.3:80".parse().unwrap()]
        );
        assert_eq!(
            admit("LocalHost", 8080).unwrap(),
            [
                "127.0.0.1:8080".parse().unwrap(),
                "[::1]:8080".parse().unwrap()
            ]
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let code = |host: &str, port: u32| Status::from(admit(host, port).unwrap_err()).code();
        for host in [
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "169.254.0.21",
            "::ffff:127.0.0.1",
            "example.com",
            "localhost.example.com",
        ] {
            assert_eq!(code(host, 80), tonic::Code::PermissionDenied, "{host}");
        }
        assert_eq!(
            code("127.0.0.1", u32::from(wrenn_proto::ENVD_PORT)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(code("localhost", 7000), tonic::Code::PermissionDenied);
        assert_eq!(code("127.0.0.1", 0), tonic::Code::InvalidArgument);
        assert_eq!(code("127.0.0.1", 65536), tonic::Code::InvalidArgument);
        assert_eq!(code("", 80), tonic::Code::InvalidArgument);
    }

    #[test]
    fn envd_port_is_always_its_own() {
        assert_eq!(
            TunnelService::new(Some(7000)).own_ports,
            [wrenn_proto::ENVD_PORT, 7000]
        );
        assert_eq!(
            TunnelService::new(Some(wrenn_proto::ENVD_PORT)).own_ports,
            [wrenn_proto::ENVD_PORT]
        );
        assert_eq!(TunnelService::new(None).own_ports, [wrenn_proto::ENVD_PORT]);
    }
}
