//! `Tunnel.Connect`: a real envd dials listeners on this machine's loopback for the
//! caller, relays bytes both ways with half closes, refuses every other destination
//! and its own port, and serves only holders of the access token.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Envd, within};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, Streaming};
use wrenn_proto::envd::v1::tunnel_request::Frame;
use wrenn_proto::envd::v1::{InitRequest, TunnelRequest, TunnelResponse, TunnelTarget};

const TOKEN: &str = "tunnel-token";

/// envd on TCP with an access token set.
async fn envd() -> Envd {
    let mut envd = Envd::tcp().await;
    envd.system
        .init(InitRequest {
            access_token: Some(TOKEN.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    envd
}

/// An open tunnel: where to send data, and what comes back.
struct Tunnel {
    send: Option<mpsc::Sender<TunnelRequest>>,
    recv: Streaming<TunnelResponse>,
}

impl Tunnel {
    /// Opens a tunnel to `host:port` with `token` (none = no token).
    async fn open(envd: &Envd, host: &str, port: u16, token: Option<&str>) -> Result<Self, Status> {
        Self::open_with(envd, first(host, port), token).await
    }

    /// Opens a tunnel whose first message is `first`.
    async fn open_with(
        envd: &Envd,
        first: TunnelRequest,
        token: Option<&str>,
    ) -> Result<Self, Status> {
        let (send, rx) = mpsc::channel(4);
        send.send(first).await.unwrap();
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request.metadata_mut().insert(
                wrenn_proto::ENVD_ACCESS_TOKEN_METADATA,
                token.parse().unwrap(),
            );
        }
        let recv = within(envd.tunnel.clone().connect(request))
            .await?
            .into_inner();
        Ok(Self {
            send: Some(send),
            recv,
        })
    }

    async fn write(&self, data: &[u8]) {
        let data = TunnelRequest {
            frame: Some(Frame::Data(data.to_vec().into())),
        };
        self.send.as_ref().unwrap().send(data).await.unwrap();
    }

    /// Ends the request stream: a half close.
    fn close_write(&mut self) {
        self.send = None;
    }

    /// Reads exactly `n` bytes, checking that no message exceeds the chunk size.
    async fn read(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(n);
        within(async {
            while got.len() < n {
                let chunk = self.recv.next().await.expect("tunnel open").unwrap();
                assert!(
                    !chunk.data.is_empty() && chunk.data.len() <= wrenn_proto::TUNNEL_CHUNK_SIZE
                );
                got.extend_from_slice(&chunk.data);
            }
        })
        .await;
        got
    }

    /// Reads until the response stream ends; fails on an error.
    async fn read_to_end(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        within(async {
            while let Some(chunk) = self.recv.next().await {
                got.extend_from_slice(&chunk.unwrap().data);
            }
        })
        .await;
        got
    }
}

fn first(host: &str, port: u16) -> TunnelRequest {
    TunnelRequest {
        frame: Some(Frame::Target(TunnelTarget {
            host: host.to_owned(),
            port: port.into(),
        })),
    }
}

/// A server on `addr` that echoes every connection and, when the client half-closes,
/// says "bye" and closes. Returns its address.
async fn echo_server(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.write_all(b"bye").await;
                }
            });
        }
    });
    addr
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_tunnel_relays_bytes_to_a_loopback_listener_until_it_closes() {
    let envd = envd().await;
    let echo = echo_server("127.0.0.1:0").await;

    let mut tunnel = Tunnel::open(&envd, "127.0.0.1", echo.port(), Some(TOKEN))
        .await
        .unwrap();
    tunnel.write(b"hello through envd").await;
    assert_eq!(tunnel.read(18).await, b"hello through envd");

    // Much more than one chunk, both ways.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let send = tunnel.send.clone().unwrap();
        let big = big.clone();
        tokio::spawn(async move {
            for part in big.chunks(40_000) {
                let data = TunnelRequest {
                    frame: Some(Frame::Data(part.to_vec().into())),
                };
                send.send(data).await.unwrap();
            }
        })
    };
    assert!(tunnel.read(big.len()).await == big, "the echo matches");
    writer.await.unwrap();

    // A half close reaches the server, whose answer and close come back.
    tunnel.close_write();
    assert_eq!(tunnel.read_to_end().await, b"bye");
}

#[tokio::test]
async fn localhost_reaches_a_listener_on_either_loopback_address() {
    let envd = envd().await;
    for bound in ["127.0.0.1:0", "[::1]:0"] {
        let echo = echo_server(bound).await;
        let mut tunnel = Tunnel::open(&envd, "localhost", echo.port(), Some(TOKEN))
            .await
            .unwrap_or_else(|e| panic!("{bound}: {e}"));
        tunnel.write(b"ping").await;
        assert_eq!(tunnel.read(4).await, b"ping", "{bound}");
    }
    let v6 = echo_server("[::1]:0").await;
    let mut tunnel = Tunnel::open(&envd, "::1", v6.port(), Some(TOKEN))
        .await
        .unwrap();
    tunnel.write(b"v6").await;
    assert_eq!(tunnel.read(2).await, b"v6");
}

#[tokio::test]
async fn destinations_off_the_loopback_and_envds_own_port_are_refused() {
    let envd = envd().await;
    let echo = echo_server("127.0.0.1:0").await;
    let code = |host: &'static str, port: u16| {
        let envd = &envd;
        async move {
            Tunnel::open(envd, host, port, Some(TOKEN))
                .await
                .err()
                .map(|e| e.code())
        }
    };

    // Addresses off the loopback, whatever listens there (the host's own addresses
    // included: 0.0.0.0 would reach this machine's listeners).
    for host in ["0.0.0.0", "::", "10.0.0.1", "192.0.2.1", "example.com"] {
        assert_eq!(
            code(host, echo.port()).await,
            Some(Code::PermissionDenied),
            "{host}"
        );
    }
    // envd itself, on its well-known port and on the one it really listens on.
    let wrenn_envd::BoundAddr::Tcp(own) = envd.server.local_addr().clone() else {
        panic!("envd listens on TCP");
    };
    assert_eq!(
        code("127.0.0.1", own.port()).await,
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code("localhost", wrenn_proto::ENVD_PORT).await,
        Some(Code::PermissionDenied)
    );
    // Malformed targets.
    assert_eq!(code("127.0.0.1", 0).await, Some(Code::InvalidArgument));
    assert_eq!(code("", echo.port()).await, Some(Code::InvalidArgument));
    let data_first = TunnelRequest {
        frame: Some(Frame::Data(b"GET / HTTP/1.1\r\n\r\n".to_vec().into())),
    };
    assert_eq!(
        Tunnel::open_with(&envd, data_first, Some(TOKEN))
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::InvalidArgument)
    );
    // Nothing listens: the dial fails, and says so.
    let err = Tunnel::open(&envd, "127.0.0.1", closed_port(), Some(TOKEN))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("refused"), "{}", err.message());
}

#[tokio::test]
async fn a_tunnel_needs_the_access_token() {
    let envd = envd().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    for token in [None, Some("guess"), Some("")] {
        let err = Tunnel::open(&envd, "127.0.0.1", port, token)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
    }
    // Nothing was dialled for them.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err(),
        "no connection reached the listener"
    );
    // The token opens it; cancelling the call closes the connection.
    let tunnel = Tunnel::open(&envd, "127.0.0.1", port, Some(TOKEN))
        .await
        .unwrap();
    let (mut conn, _) = within(listener.accept()).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), conn.read(&mut byte))
            .await
            .is_err(),
        "the connection is open and quiet"
    );
    drop(tunnel);
    assert_eq!(within(conn.read(&mut byte)).await.unwrap(), 0, "closed");
}
