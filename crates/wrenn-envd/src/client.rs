//! Channels to an envd server, for the host agent and tests.
//!
//! Build the generated clients from a channel (they have no `connect(url)`
//! constructor, because `Process.Connect` is an RPC):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wrenn_proto::envd::v1::process_client::ProcessClient;
//! let channel = wrenn_envd::client::connect_unix("/run/wrenn/envd.sock").await?;
//! let mut processes = ProcessClient::new(channel);
//! # let _ = &mut processes;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Error, Uri};

use crate::server::BoundAddr;

/// Connects to envd listening on a unix socket.
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, Error> {
    let path: PathBuf = path.as_ref().to_path_buf();
    Endpoint::from_static("http://envd.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// Connects to envd listening on TCP.
pub async fn connect_tcp(addr: SocketAddr) -> Result<Channel, Error> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
}

/// Connects to a server's [`BoundAddr`]. An unnamed unix socket cannot be connected
/// to by address; that is reported as a connection error.
pub async fn connect(addr: &BoundAddr) -> Result<Channel, Error> {
    match addr {
        BoundAddr::Tcp(addr) => connect_tcp(*addr).await,
        BoundAddr::Unix(Some(path)) => connect_unix(path).await,
        BoundAddr::Unix(None) => connect_unix("/nonexistent/unnamed-envd-socket").await,
    }
}
