//! The JSON contract between a host agent and the control plane's `/v1/hosts` routes:
//! registration, credential refresh and heartbeat. The agent (`wrenn-agent`'s
//! `registration` and `heartbeat`) sends these types and the control plane
//! (`wrenn-cpserver`'s `api::hosts`) receives them, so a field is declared once.
//!
//! ```
//! use wrenn_core::host_api::{MachineReport, RegisterHost};
//!
//! let body = RegisterHost {
//!     token: "one-time-token".into(),
//!     address: "10.0.0.7:50051".into(),
//!     machine: MachineReport { arch: Some("x86_64".into()), cpu_cores: Some(2), ..Default::default() },
//! };
//! let json = serde_json::to_value(&body).unwrap();
//! assert_eq!(json["cpu_cores"], 2);
//! assert_eq!(serde_json::from_value::<RegisterHost>(json).unwrap(), body);
//! ```

use serde::{Deserialize, Serialize};

/// `POST` path where an agent trades a one-time token for credentials.
pub const REGISTER_PATH: &str = "/v1/hosts/register";
/// `POST` path where an agent trades its refresh token for new credentials.
pub const REFRESH_PATH: &str = "/v1/hosts/auth/refresh";
/// `POST` path of the sandbox-event callback (body: [`crate::events::SandboxEvent`]).
pub const SANDBOX_EVENTS_PATH: &str = "/v1/hosts/sandbox-events";
/// Header carrying the host JWT on heartbeats and event callbacks.
pub const HOST_TOKEN_HEADER: &str = "X-Host-Token";

/// `POST` path of a host's heartbeat.
pub fn heartbeat_path(host_id: impl std::fmt::Display) -> String {
    format!("/v1/hosts/{host_id}/heartbeat")
}

/// What an agent reports about its machine. Every field is optional: a heartbeat that
/// omits one keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MachineReport {
    /// CPU architecture (`x86_64`, `aarch64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<i32>,
    /// Memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i32>,
    /// Size of the file system holding the agent's data, GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<i32>,
}

/// `POST /v1/hosts/register` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterHost {
    /// The one-time registration token.
    pub token: String,
    /// `host:port` (or `http://host:port`) at which the control plane reaches the agent.
    pub address: String,
    /// The machine.
    #[serde(flatten)]
    pub machine: MachineReport,
}

/// `POST /v1/hosts/auth/refresh` body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefreshHost {
    /// The host's current refresh token.
    pub refresh_token: String,
}

impl std::fmt::Debug for RefreshHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshHost").finish_non_exhaustive()
    }
}

/// `POST /v1/hosts/{id}/heartbeat` body; optional (the body may be empty), and
/// omitted fields keep their stored values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostHeartbeat {
    /// New `host:port` of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The machine.
    #[serde(flatten)]
    pub machine: MachineReport,
}

/// The credentials part of the registration and refresh answers (beside `host`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IssuedCredentials {
    /// Host JWT for [`HOST_TOKEN_HEADER`] (7 days).
    pub token: String,
    /// Refresh token (64 hex, 60 days, single use: each refresh rotates it).
    pub refresh_token: String,
    /// The agent's TLS server certificate (PEM; CN = host id, SAN = its address,
    /// 7 days), signed by the host CA. Empty: the agent keeps the one it has.
    #[serde(default)]
    pub cert_pem: String,
    /// The certificate's private key (PEM, PKCS#8). Shown only in this answer.
    #[serde(default)]
    pub key_pem: String,
    /// The certificate of the host CA that signed `cert_pem` (PEM).
    #[serde(default)]
    pub ca_cert_pem: String,
}

impl std::fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredentials")
            .field("has_certificate", &!self.cert_pem.is_empty())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn machine() -> MachineReport {
        MachineReport {
            arch: Some("x86_64".into()),
            cpu_cores: Some(2),
            memory_mb: Some(24_000),
            disk_gb: Some(250),
        }
    }

    #[test]
    fn a_registration_is_the_flat_object_the_routes_document() {
        let body = RegisterHost {
            token: "t".into(),
            address: "10.0.0.7:50051".into(),
            machine: machine(),
        };
        let wire = json!({"token": "t", "address": "10.0.0.7:50051", "arch": "x86_64",
                          "cpu_cores": 2, "memory_mb": 24000, "disk_gb": 250});
        assert_eq!(serde_json::to_value(&body).unwrap(), wire);
        assert_eq!(serde_json::from_value::<RegisterHost>(wire).unwrap(), body);
    }

    #[test]
    fn a_registration_without_machine_facts_is_accepted() {
        let body: RegisterHost =
            serde_json::from_value(json!({"token": "t", "address": "a:1"})).unwrap();
        assert_eq!(body.machine, MachineReport::default());
        assert!(serde_json::from_value::<RegisterHost>(json!({"address": "a:1"})).is_err());
    }

    #[test]
    fn a_heartbeat_round_trips_and_may_be_empty() {
        let beat = HostHeartbeat {
            address: Some("10.0.0.8:50051".into()),
            machine: MachineReport {
                cpu_cores: Some(4),
                ..MachineReport::default()
            },
        };
        let wire = serde_json::to_value(&beat).unwrap();
        assert_eq!(wire, json!({"address": "10.0.0.8:50051", "cpu_cores": 4}));
        assert_eq!(serde_json::from_value::<HostHeartbeat>(wire).unwrap(), beat);
        assert_eq!(
            serde_json::from_value::<HostHeartbeat>(json!({})).unwrap(),
            HostHeartbeat::default()
        );
    }

    #[test]
    fn issued_credentials_round_trip_and_an_answer_without_certificate_is_read() {
        let creds = IssuedCredentials {
            token: "jwt".into(),
            refresh_token: "r".repeat(64),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            ca_cert_pem: "ca".into(),
        };
        let wire = serde_json::to_value(&creds).unwrap();
        assert_eq!(
            serde_json::from_value::<IssuedCredentials>(wire).unwrap(),
            creds
        );
        let bare: IssuedCredentials =
            serde_json::from_value(json!({"token": "jwt", "refresh_token": "r"})).unwrap();
        assert!(bare.cert_pem.is_empty() && bare.key_pem.is_empty());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let creds = IssuedCredentials {
            token: "secret-jwt".into(),
            refresh_token: "secret-refresh".into(),
            cert_pem: String::new(),
            key_pem: "secret-key".into(),
            ca_cert_pem: String::new(),
        };
        let refresh = RefreshHost {
            refresh_token: "secret-refresh".into(),
        };
        let shown = format!("{creds:?} {refresh:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn the_heartbeat_path_names_the_host() {
        assert_eq!(heartbeat_path("host-1"), "/v1/hosts/host-1/heartbeat");
    }
}
