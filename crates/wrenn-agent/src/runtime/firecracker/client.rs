//! A typed client of Firecracker's API: HTTP/1.1 over the VMM's unix socket, one
//! connection per request, every request bounded by a timeout.
//!
//! Firecracker answers `204 No Content` (or `200` with a body) on success and
//! `4xx` with `{"fault_message": …}` when it refuses; a refusal is
//! [`ClientError::Rejected`] with both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::api::{
    ActionType, ApiError, BootSource, Drive, InstanceActionInfo, InstanceInfo, Logger,
    MachineConfiguration, Metrics, MmdsConfig, NetworkInterface, SnapshotCreateParams,
    SnapshotLoadParams, Vm, VmState,
};
use crate::runtime::{RuntimeError, error_chain};

/// How long an ordinary request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a snapshot create or load may take (it writes or maps all of memory).
pub const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API socket could not be connected to.
    #[error("connect to the Firecracker API socket {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the VMM closed the connection, or it is not HTTP).
    #[error("{method} {path} to Firecracker")]
    Http {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The error.
        #[source]
        source: hyper::Error,
    },
    /// Firecracker refused the request.
    #[error("Firecracker refused {method} {path} ({status}): {fault_message}")]
    Rejected {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The response status.
        status: StatusCode,
        /// Firecracker's explanation (the raw body when it sent no `fault_message`).
        fault_message: String,
    },
    /// No answer within the timeout.
    #[error("Firecracker did not answer {method} {path} within {timeout:?}")]
    Timeout {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer to {method} {path}: {detail}")]
    Protocol {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// A resource id that cannot be a URL segment (Firecracker allows alphanumerics
    /// and `_`).
    #[error("invalid Firecracker resource id {0:?}")]
    InvalidId(String),
}

impl ClientError {
    /// Firecracker's explanation of a refusal.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ClientError::Rejected { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }

    /// The status of a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<ClientError> for RuntimeError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { path, source } => RuntimeError::Io {
                context: format!("connect to the Firecracker API socket {}", path.display()),
                source,
            },
            other => RuntimeError::Other(error_chain(&other)),
        }
    }
}

/// A client of one VMM's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    snapshot_timeout: Duration,
}

impl Client {
    /// A client of the API socket at `socket` (a host path) with the default timeouts.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            snapshot_timeout: DEFAULT_SNAPSHOT_TIMEOUT,
        }
    }

    /// Sets the timeout of ordinary requests.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the timeout of snapshot creates and loads.
    pub fn with_snapshot_timeout(mut self, timeout: Duration) -> Self {
        self.snapshot_timeout = timeout;
        self
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /`: the instance's id, state and version.
    pub async fn describe_instance(&self) -> Result<InstanceInfo, ClientError> {
        self.get("/").await
    }

    /// `PUT /machine-config`.
    pub async fn put_machine_config(
        &self,
        config: &MachineConfiguration,
    ) -> Result<(), ClientError> {
        self.put("/machine-config", config).await
    }

    /// `GET /machine-config`.
    pub async fn machine_config(&self) -> Result<MachineConfiguration, ClientError> {
        self.get("/machine-config").await
    }

    /// `PUT /boot-source`.
    pub async fn put_boot_source(&self, boot: &BootSource) -> Result<(), ClientError> {
        self.put("/boot-source", boot).await
    }

    /// `PUT /drives/{drive_id}`.
    pub async fn put_drive(&self, drive: &Drive) -> Result<(), ClientError> {
        let path = format!("/drives/{}", segment(&drive.drive_id)?);
        self.put(&path, drive).await
    }

    /// `PUT /network-interfaces/{iface_id}`.
    pub async fn put_network_interface(&self, iface: &NetworkInterface) -> Result<(), ClientError> {
        let path = format!("/network-interfaces/{}", segment(&iface.iface_id)?);
        self.put(&path, iface).await
    }

    /// `PUT /mmds/config`.
    pub async fn put_mmds_config(&self, config: &MmdsConfig) -> Result<(), ClientError> {
        self.put("/mmds/config", config).await
    }

    /// `PUT /mmds`: replaces the metadata store's contents (any JSON object).
    pub async fn put_mmds(&self, contents: &impl Serialize) -> Result<(), ClientError> {
        self.put("/mmds", contents).await
    }

    /// `GET /mmds`: the metadata store's contents.
    pub async fn mmds(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/mmds").await
    }

    /// `PUT /logger`.
    pub async fn put_logger(&self, logger: &Logger) -> Result<(), ClientError> {
        self.put("/logger", logger).await
    }

    /// `PUT /metrics`.
    pub async fn put_metrics(&self, metrics: &Metrics) -> Result<(), ClientError> {
        self.put("/metrics", metrics).await
    }

    /// `PUT /actions` with `action`.
    pub async fn action(&self, action: ActionType) -> Result<(), ClientError> {
        self.put(
            "/actions",
            &InstanceActionInfo {
                action_type: action,
            },
        )
        .await
    }

    /// Boots the configured machine (`InstanceStart`).
    pub async fn start_instance(&self) -> Result<(), ClientError> {
        self.action(ActionType::InstanceStart).await
    }

    /// Presses Ctrl+Alt+Del in the guest.
    pub async fn send_ctrl_alt_del(&self) -> Result<(), ClientError> {
        self.action(ActionType::SendCtrlAltDel).await
    }

    /// Pauses the vCPUs (`PATCH /vm`).
    pub async fn pause(&self) -> Result<(), ClientError> {
        self.patch_vm(VmState::Paused).await
    }

    /// Resumes the vCPUs (`PATCH /vm`).
    pub async fn resume(&self) -> Result<(), ClientError> {
        self.patch_vm(VmState::Resumed).await
    }

    async fn patch_vm(&self, state: VmState) -> Result<(), ClientError> {
        let body = encode(&Method::PATCH, "/vm", &Vm { state })?;
        self.send(Method::PATCH, "/vm", Some(body), self.timeout)
            .await
            .map(drop)
    }

    /// `PUT /snapshot/create` (the VM must be paused).
    pub async fn create_snapshot(&self, params: &SnapshotCreateParams) -> Result<(), ClientError> {
        let body = encode(&Method::PUT, "/snapshot/create", params)?;
        self.send(
            Method::PUT,
            "/snapshot/create",
            Some(body),
            self.snapshot_timeout,
        )
        .await
        .map(drop)
    }

    /// `PUT /snapshot/load` (into a VMM with nothing configured). Firecracker exits
    /// when a load fails.
    pub async fn load_snapshot(&self, params: &SnapshotLoadParams) -> Result<(), ClientError> {
        let body = encode(&Method::PUT, "/snapshot/load", params)?;
        self.send(
            Method::PUT,
            "/snapshot/load",
            Some(body),
            self.snapshot_timeout,
        )
        .await
        .map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.send(Method::GET, path, None, self.timeout).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
            method: Method::GET,
            path: path.to_owned(),
            detail: format!("{}: {}", error_chain(&e), String::from_utf8_lossy(&body)),
        })
    }

    async fn put(&self, path: &str, body: &impl Serialize) -> Result<(), ClientError> {
        let body = encode(&Method::PUT, path, body)?;
        self.send(Method::PUT, path, Some(body), self.timeout)
            .await
            .map(drop)
    }

    /// Sends one request on a new connection; the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let exchange = self.exchange(method.clone(), path, body);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                method,
                path: path.to_owned(),
                timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let http_err = |source| ClientError::Http {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let protocol = |detail: String| ClientError::Protocol {
            method: method.clone(),
            path: path.to_owned(),
            detail,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        let _driver = AbortOnDrop(tokio::spawn(connection));
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| protocol(format!("build the request: {}", error_chain(&e))))?;
        let answer = async {
            let response = sender.send_request(request).await.map_err(http_err)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(http_err)?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        }
        .await;
        let (status, bytes) = answer?;
        if status.is_success() {
            return Ok(bytes);
        }
        let fault_message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Rejected {
            method,
            path: path.to_owned(),
            status,
            fault_message,
        })
    }
}

/// Ends the connection's task when the exchange ends (also when it times out).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn encode(method: &Method, path: &str, body: &impl Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body).map_err(|e| ClientError::Protocol {
        method: method.clone(),
        path: path.to_owned(),
        detail: format!("encode the request: {}", error_chain(&e)),
    })
}

/// `id` as a URL segment: alphanumerics and `_` only (what Firecracker accepts).
fn segment(id: &str) -> Result<&str, ClientError> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(ClientError::InvalidId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_must_be_url_segments() {
        assert_eq!(segment("rootfs_2").unwrap(), "rootfs_2");
        for bad in ["", "a/b", "../x", "a b", "a?b"] {
            assert!(
                matches!(segment(bad), Err(ClientError::InvalidId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_refusal_keeps_status_and_fault_message_in_the_runtime_error() {
        let e = ClientError::Rejected {
            method: Method::PUT,
            path: "/machine-config".into(),
            status: StatusCode::BAD_REQUEST,
            fault_message: "Machine config error: bad".into(),
        };
        assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
        let runtime: RuntimeError = e.into();
        assert_eq!(
            runtime.to_string(),
            "Firecracker refused PUT /machine-config (400 Bad Request): Machine config error: bad"
        );
    }
}
