//! A TCP connection to a port on a sandbox's loopback, through its guest agent:
//! one `envd.v1.Tunnel.Connect` call on the sandbox's cached envd channel (so it
//! carries the access token and shares the one HTTP/2 connection), seen as an
//! [`AsyncRead`] + [`AsyncWrite`] byte stream.
//!
//! Writes become request messages of at most [`wrenn_proto::TUNNEL_CHUNK_SIZE`] bytes
//! (the channel's bounded buffer and HTTP/2 flow control push back on a fast writer);
//! shutdown ends the request stream, which envd turns into a half close; reads take the
//! response messages in order, and the end of the responses is EOF. Dropping the
//! stream cancels the call, and envd closes the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;
use tonic::Streaming;
use wrenn_proto::envd::v1::tunnel_client::TunnelClient;
use wrenn_proto::envd::v1::tunnel_request::Frame;
use wrenn_proto::envd::v1::{TunnelRequest, TunnelResponse, TunnelTarget};

use crate::envd::EnvdChannel;

/// How long opening a tunnel may take (reaching envd, and envd's dial).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Request messages buffered ahead of the call.
const SEND_BUFFER: usize = 8;

/// Why a tunnel did not open.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// envd answered the call with an error: nothing listens there (`Unavailable`),
    /// the destination is refused, or envd could not be reached.
    #[error("{message} ({code})")]
    Rejected {
        /// The call's status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// Neither envd nor its dial answered in time.
    #[error("opening the tunnel timed out after {0:?}")]
    Timeout(Duration),
}

impl From<tonic::Status> for TunnelError {
    fn from(status: tonic::Status) -> Self {
        Self::Rejected {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// An open tunnel: a byte stream to a port on the sandbox's loopback.
pub struct TunnelStream {
    send: PollSender<TunnelRequest>,
    recv: Streaming<TunnelResponse>,
    /// Received bytes not read yet.
    pending: Bytes,
    /// The responses ended (EOF) or failed.
    done: bool,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl TunnelStream {
    /// Asks envd to connect to `port` on the sandbox's loopback (`localhost`: 127.0.0.1,
    /// then ::1); returns once the connection is up.
    pub async fn open(
        mut client: TunnelClient<EnvdChannel>,
        port: u16,
    ) -> Result<Self, TunnelError> {
        let target = TunnelRequest {
            frame: Some(Frame::Target(TunnelTarget {
                host: "localhost".to_owned(),
                port: port.into(),
            })),
        };
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let requests = futures::stream::iter([target]).chain(ReceiverStream::new(rx));
        let call = client.connect(requests);
        let recv = tokio::time::timeout(OPEN_TIMEOUT, call)
            .await
            .map_err(|_| TunnelError::Timeout(OPEN_TIMEOUT))??
            .into_inner();
        Ok(Self {
            send: PollSender::new(tx),
            recv,
            pending: Bytes::new(),
            done: false,
        })
    }
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("tunnel closed: {what}"))
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_next_unpin(cx)) {
                Some(Ok(message)) => self.pending = message.data,
                Some(Err(status)) => {
                    self.done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("tunnel failed: {}", status.message()),
                    )));
                }
                None => self.done = true,
            }
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.send.poll_reserve(cx)).map_err(|_| broken("the call ended"))?;
        let n = buf.len().min(wrenn_proto::TUNNEL_CHUNK_SIZE);
        let data = TunnelRequest {
            frame: Some(Frame::Data(Bytes::copy_from_slice(&buf[..n]))),
        };
        self.send
            .send_item(data)
            .map_err(|_| broken("the call ended"))?;
        Poll::Ready(Ok(n))
    }

    /// Messages go to the call as they are written: nothing to flush.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the request stream: envd shuts down the connection's write side.
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send.close();
        Poll::Ready(Ok(()))
    }
}
