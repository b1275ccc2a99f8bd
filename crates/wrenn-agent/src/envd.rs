//! Clients of a sandbox's guest agent (envd, `envd.v1`).
//!
//! [`EnvdClient::connect`] builds lazily connected tonic clients for an
//! [`EnvdEndpoint`]: a unix socket (process runtime; tonic `Endpoint` +
//! `connect_with_connector_lazy` + hyper-util's `TokioIo`) or a TCP address (VM
//! runtimes). The [`SandboxManager`](crate::manager::SandboxManager) caches one client
//! per sandbox and drops it on pause, hibernation, resume and destroy, so a new endpoint
//! (a restored sandbox) always gets a new connection; HTTP/2 multiplexes every call
//! over the cached one.
//!
//! Every call carries the sandbox's access token in `x-access-token`
//! ([`wrenn_proto::ENVD_ACCESS_TOKEN_METADATA`]): the agent sets a random token per
//! sandbox with `System.Init` right after boot, so nothing else that can reach envd
//! (another sandbox on a shared network, Obs-N1/E1 of the original) can drive it.

use crate::runtime::error_chain;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use wrenn_proto::envd::v1::filesystem_client::FilesystemClient;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::system_client::SystemClient;
use wrenn_proto::envd::v1::tunnel_client::TunnelClient;
use wrenn_proto::envd::v1::{HealthRequest, HealthResponse};

use crate::error::{AgentError, AgentResult};
use crate::runtime::EnvdEndpoint;

/// Largest message accepted from envd (its own messages are at most 64 KiB of data).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Largest tunnel message accepted from envd: its data is at most
/// [`wrenn_proto::TUNNEL_CHUNK_SIZE`], so a guest cannot make the agent buffer more per
/// message than that (plus framing).
const MAX_TUNNEL_MESSAGE: usize = wrenn_proto::TUNNEL_CHUNK_SIZE + 1024;
/// Connection establishment budget.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds the sandbox's access token to every envd call.
#[derive(Debug, Clone, Default)]
pub struct AccessToken(Option<AsciiMetadataValue>);

impl AccessToken {
    /// A token (`None` or empty = send none).
    pub fn new(token: Option<&str>) -> Self {
        Self(
            token
                .filter(|t| !t.is_empty())
                .and_then(|t| MetadataValue::try_from(t).ok()),
        )
    }
}

impl Interceptor for AccessToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut()
                .insert(wrenn_proto::ENVD_ACCESS_TOKEN_METADATA, token.clone());
        }
        // envd logs the caller's trace id.
        wrenn_proto::telemetry::inject_metadata(req.metadata_mut());
        Ok(req)
    }
}

/// The channel type of every envd client.
pub type EnvdChannel = InterceptedService<Channel, AccessToken>;

/// Clients of one sandbox's envd, sharing one connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EnvdClient {
    /// `envd.v1.Process`.
    pub process: ProcessClient<EnvdChannel>,
    /// `envd.v1.Filesystem`.
    pub fs: FilesystemClient<EnvdChannel>,
    /// `envd.v1.System`.
    pub system: SystemClient<EnvdChannel>,
    /// `envd.v1.Tunnel` (the port proxy's way to servers on the sandbox's loopback).
    pub tunnel: TunnelClient<EnvdChannel>,
}

impl EnvdClient {
    /// Clients for `endpoint`, connecting lazily (on the first call; reconnecting after
    /// a broken connection).
    pub fn connect(endpoint: &EnvdEndpoint, token: Option<&str>) -> AgentResult<Self> {
        let channel = match endpoint {
            EnvdEndpoint::Unix(path) => {
                let path = path.clone();
                Endpoint::from_static("http://envd.local")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .initial_stream_window_size(wrenn_proto::transport::STREAM_WINDOW)
                    .initial_connection_window_size(wrenn_proto::transport::CONNECTION_WINDOW)
                    .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
            }
            EnvdEndpoint::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| {
                    AgentError::internal(format!("envd endpoint {addr}: {}", error_chain(&e)))
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .initial_stream_window_size(wrenn_proto::transport::STREAM_WINDOW)
                .initial_connection_window_size(wrenn_proto::transport::CONNECTION_WINDOW)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .connect_lazy(),
        };
        Ok(Self::from_channel(channel, AccessToken::new(token)))
    }

    /// Clients over an existing channel.
    pub fn from_channel(channel: Channel, token: AccessToken) -> Self {
        let ch = InterceptedService::new(channel, token);
        Self {
            process: ProcessClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE),
            fs: FilesystemClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE),
            system: SystemClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE),
            tunnel: TunnelClient::new(ch).max_decoding_message_size(MAX_TUNNEL_MESSAGE),
        }
    }

    /// Polls `System.Health` every 50 ms until envd answers or `budget` passes.
    pub async fn wait_ready(&self, budget: Duration) -> AgentResult<HealthResponse> {
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let mut system = self.system.clone();
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), system.health(HealthRequest {})).await;
            let last_err = match attempt {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => status.message().to_owned(),
                Err(_) => "health check timed out".to_owned(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::Unavailable(format!(
                    "guest agent did not answer within {budget:?}: {last_err}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
