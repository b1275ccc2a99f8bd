//! Host registration: how a standalone agent gets, keeps and renews its identity with
//! the control plane.
//!
//! - **Register** (`WRENN_REGISTRATION_TOKEN`): `POST {cp}/v1/hosts/register` with the
//!   one-time token from `POST /v1/hosts` and what this machine has (address, arch,
//!   CPUs, memory, disk); the answer (201) carries the host, a host JWT (7 days), a
//!   refresh token (60 days) and a TLS certificate signed by the control plane's CA.
//!   Registering always replaces stored credentials.
//! - **Credentials file** (`$WRENN_DIR/secrets/host-credentials.json`, mode 0600,
//!   written to a temporary file and renamed, so a crash never leaves half a file):
//!   `{host_id, jwt, refresh_token, cert_pem, key_pem, ca_cert_pem}`. An agent started
//!   without a registration token loads it.
//! - **Refresh**: `POST {cp}/v1/hosts/auth/refresh` trades the refresh token for new
//!   credentials (the heartbeat does this when the JWT is refused); the new refresh
//!   token is stored before it is used.
//!
//! [`Credentials`] is the shared, swappable copy the event client and the
//! [heartbeat](crate::heartbeat) read. The JSON of these routes is declared once, in
//! [`wrenn_core::host_api`], for both sides.

use crate::runtime::error_chain;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wrenn_core::host_api::{
    IssuedCredentials, MachineReport, REFRESH_PATH, REGISTER_PATH, RefreshHost, RegisterHost,
};
use wrenn_core::id::HostId;

use crate::metrics::HostSampler;

/// How long a registration request may take.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refresh request may take.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(15);

/// Why registration, refresh or the credentials file failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The control plane refused the request (its status and error message).
    #[error("the control plane answered {status}: {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The `error.message` of the answer, or its body.
        message: String,
    },
    /// The control plane could not be reached or its answer not read.
    #[error("cannot reach the control plane")]
    Transport(#[from] reqwest::Error),
    /// The answer was not the documented credentials.
    #[error("unexpected answer from the control plane: {0}")]
    Answer(String),
    /// Reading or writing the credentials file failed.
    #[error("credentials file {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl RegistrationError {
    /// True when the control plane refused the credentials presented (401/403), as
    /// opposed to being unreachable or failing.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            Self::Rejected {
                status: 401 | 403,
                ..
            }
        )
    }

    fn file(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::File {
            path: path.to_owned(),
            source,
        }
    }
}

/// What a registered agent holds: its identity, tokens and TLS material.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCredentials {
    /// This host.
    pub host_id: HostId,
    /// Host JWT, sent as `X-Host-Token`.
    pub jwt: String,
    /// Single-use refresh token.
    pub refresh_token: String,
    /// The agent's TLS server certificate (PEM).
    #[serde(default)]
    pub cert_pem: String,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_pem: String,
    /// The control plane's host CA certificate (PEM).
    #[serde(default)]
    pub ca_cert_pem: String,
}

impl std::fmt::Debug for HostCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCredentials")
            .field("host_id", &self.host_id)
            .field("jwt", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("has_certificate", &!self.cert_pem.is_empty())
            .finish()
    }
}

impl HostCredentials {
    /// Credentials holding only a host JWT (no refresh token, no certificate): for an
    /// agent whose JWT is signed by the process that embeds it (`wrenn dev`, tests).
    pub fn with_jwt(host_id: HostId, jwt: impl Into<String>) -> Self {
        Self {
            host_id,
            jwt: jwt.into(),
            refresh_token: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
            ca_cert_pem: String::new(),
        }
    }

    /// Reads a credentials file; `None` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, RegistrationError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RegistrationError::file(path)(e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            RegistrationError::file(path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a credentials file: {}", error_chain(&e)),
            ))
        })
    }

    /// Writes the credentials file atomically (temporary file, fsync, rename), mode
    /// 0600, creating its directory.
    pub fn save(&self, path: &Path) -> Result<(), RegistrationError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(RegistrationError::file(dir))?;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| RegistrationError::Answer(error_chain(&e)))?;
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            // An existing temporary file keeps its mode: force 0600.
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(RegistrationError::file(path))
    }

    /// Removes the credentials file (the host was deleted); absent is fine.
    pub fn remove(path: &Path) -> Result<(), RegistrationError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RegistrationError::file(path)(e))
            }
            _ => Ok(()),
        }
    }
}

/// What this machine reports at registration: its architecture, logical CPUs, memory
/// and the size of the file system holding `data_dir`.
pub fn machine_report(data_dir: &Path) -> MachineReport {
    let usage = HostSampler::new().usage(data_dir);
    let clamp = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
    MachineReport {
        arch: Some(std::env::consts::ARCH.to_owned()),
        cpu_cores: Some(clamp(u64::from(usage.cpu_count))),
        memory_mb: Some(clamp(usage.memory_total_bytes / (1024 * 1024))),
        disk_gb: Some(clamp(usage.disk_total_bytes / (1024 * 1024 * 1024))),
    }
}

/// The credentials in use, shared by the event client and the heartbeat, and
/// replaced (file first, then memory) when they are refreshed.
#[derive(Clone)]
pub struct Credentials {
    current: Arc<RwLock<HostCredentials>>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("host_id", &self.host_id())
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials kept in (and replaced into) `file`.
    pub fn stored(creds: HostCredentials, file: PathBuf) -> Self {
        Self {
            current: Arc::new(RwLock::new(creds)),
            file: Some(file),
        }
    }

    /// Credentials held in memory only (embedding, tests).
    pub fn in_memory(creds: HostCredentials) -> Self {
        Self {
            current: Arc::new(RwLock::new(creds)),
            file: None,
        }
    }

    /// A copy of the current credentials.
    pub fn get(&self) -> HostCredentials {
        self.read(HostCredentials::clone)
    }

    /// `f` of the current credentials, without copying them.
    pub fn read<R>(&self, f: impl FnOnce(&HostCredentials) -> R) -> R {
        match self.current.read() {
            Ok(c) => f(&c),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// True when the credentials carry a TLS certificate, its key and the CA.
    pub fn has_certificate(&self) -> bool {
        self.read(|c| !c.cert_pem.is_empty() && !c.key_pem.is_empty() && !c.ca_cert_pem.is_empty())
    }

    /// This host's id.
    pub fn host_id(&self) -> HostId {
        self.get().host_id
    }

    /// The current host JWT.
    pub fn jwt(&self) -> String {
        self.get().jwt
    }

    /// The file the credentials live in, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Replaces the credentials: the file first (so a crash never leaves the agent
    /// with a refresh token it did not keep), then the copy in memory. When the file
    /// cannot be written, memory is still updated (the old refresh token is already
    /// spent) and the error is returned for logging.
    pub async fn replace(&self, new: HostCredentials) -> Result<(), RegistrationError> {
        let saved = match self.file.clone() {
            Some(path) => {
                let creds = new.clone();
                tokio::task::spawn_blocking(move || creds.save(&path))
                    .await
                    .map_err(|e| {
                        RegistrationError::Answer(format!("save task failed: {}", error_chain(&e)))
                    })?
            }
            None => Ok(()),
        };
        match self.current.write() {
            Ok(mut c) => *c = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        saved
    }
}

/// The registration and refresh answer, as far as the agent reads it: the host's id
/// and what was issued.
#[derive(Deserialize)]
struct Answer {
    host: AnswerHost,
    #[serde(flatten)]
    issued: IssuedCredentials,
}

#[derive(Deserialize)]
struct AnswerHost {
    id: HostId,
}

/// The agent's client of the control plane's host routes.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
}

impl ControlPlane {
    /// A client of the control plane at `base` (`http(s)://host:port`).
    pub fn new(base: &str) -> Result<Self, RegistrationError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Trades a one-time registration token for credentials, reporting that the agent
    /// is reached at `address` (`host:port`) and what its machine has.
    pub async fn register(
        &self,
        token: &str,
        address: &str,
        machine: MachineReport,
    ) -> Result<HostCredentials, RegistrationError> {
        let body = RegisterHost {
            token: token.to_owned(),
            address: address.to_owned(),
            machine,
        };
        let resp = self
            .http
            .post(self.url(REGISTER_PATH))
            .timeout(REGISTER_TIMEOUT)
            .json(&body)
            .send()
            .await?;
        Self::credentials(resp, 201, None).await
    }

    /// Trades the refresh token of `current` for new credentials. An answer without
    /// certificate material keeps the current one.
    pub async fn refresh(
        &self,
        current: &HostCredentials,
    ) -> Result<HostCredentials, RegistrationError> {
        let resp = self
            .http
            .post(self.url(REFRESH_PATH))
            .timeout(REFRESH_TIMEOUT)
            .json(&RefreshHost {
                refresh_token: current.refresh_token.clone(),
            })
            .send()
            .await?;
        let new = Self::credentials(resp, 200, Some(current)).await?;
        if new.host_id != current.host_id {
            return Err(RegistrationError::Answer(format!(
                "refresh answered for {} instead of {}",
                new.host_id, current.host_id
            )));
        }
        Ok(new)
    }

    async fn credentials(
        resp: reqwest::Response,
        expected: u16,
        current: Option<&HostCredentials>,
    ) -> Result<HostCredentials, RegistrationError> {
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        if status != expected {
            return Err(RegistrationError::Rejected {
                status,
                message: error_message(&bytes),
            });
        }
        let a: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| RegistrationError::Answer(error_chain(&e)))?;
        let IssuedCredentials {
            token,
            refresh_token,
            cert_pem,
            key_pem,
            ca_cert_pem,
        } = a.issued;
        // An answer without certificate material keeps the current one.
        let (cert_pem, key_pem, ca_cert_pem) = match current {
            Some(c) if cert_pem.is_empty() => {
                (c.cert_pem.clone(), c.key_pem.clone(), c.ca_cert_pem.clone())
            }
            _ => (cert_pem, key_pem, ca_cert_pem),
        };
        Ok(HostCredentials {
            host_id: a.host.id,
            jwt: token,
            refresh_token,
            cert_pem,
            key_pem,
            ca_cert_pem,
        })
    }
}

/// `error.message` of an error envelope, else the (shortened) body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn creds(jwt: &str) -> HostCredentials {
        HostCredentials {
            host_id: HostId::new(),
            jwt: jwt.into(),
            refresh_token: "r".repeat(64),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            ca_cert_pem: "ca".into(),
        }
    }

    #[test]
    fn the_credentials_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets").join("host-credentials.json");
        assert_eq!(HostCredentials::load(&path).unwrap(), None);
        let c = creds("jwt-1");
        c.save(&path).unwrap();
        assert_eq!(HostCredentials::load(&path).unwrap(), Some(c.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Overwriting leaves no temporary file behind.
        creds("jwt-2").save(&path).unwrap();
        assert_eq!(HostCredentials::load(&path).unwrap().unwrap().jwt, "jwt-2");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("host-credentials.json")]
        );
        HostCredentials::remove(&path).unwrap();
        HostCredentials::remove(&path).unwrap();
        assert_eq!(HostCredentials::load(&path).unwrap(), None);
    }

    #[test]
    fn a_damaged_credentials_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host-credentials.json");
        std::fs::write(&path, "{\"host_id\":").unwrap();
        let err = HostCredentials::load(&path).unwrap_err();
        let chain = error_chain(&err);
        assert!(chain.contains("host-credentials.json"), "{chain}");
        assert!(chain.contains("not a credentials file"), "{chain}");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = creds("very-secret-jwt");
        let shown = format!("{c:?} {:?}", Credentials::in_memory(c.clone()));
        assert!(
            !shown.contains("very-secret-jwt") && !shown.contains("rrrr"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn replacing_writes_the_file_then_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host-credentials.json");
        let first = creds("jwt-1");
        first.save(&path).unwrap();
        let shared = Credentials::stored(first.clone(), path.clone());
        let clone = shared.clone();
        let second = HostCredentials {
            jwt: "jwt-2".into(),
            ..first
        };
        shared.replace(second.clone()).await.unwrap();
        assert_eq!(clone.jwt(), "jwt-2");
        assert_eq!(HostCredentials::load(&path).unwrap(), Some(second));
    }

    #[test]
    fn this_machine_reports_its_resources() {
        let dir = tempfile::tempdir().unwrap();
        let r = machine_report(dir.path());
        assert_eq!(r.arch.as_deref(), Some(std::env::consts::ARCH));
        assert!(
            r.cpu_cores >= Some(1) && r.memory_mb > Some(0) && r.disk_gb >= Some(0),
            "{r:?}"
        );
    }

    #[test]
    fn error_messages_come_from_the_envelope() {
        assert_eq!(
            error_message(br#"{"error":{"code":"unauthorized","message":"invalid or expired"}}"#),
            "invalid or expired"
        );
        assert_eq!(error_message(b"plain"), "plain");
    }
}
