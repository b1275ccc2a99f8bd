//! [`MetricsConfig`]: who may read the control plane's Prometheus metrics
//! (`GET /metrics`, `WRENN_METRICS_*`).
//!
//! The metrics name hosts, routes and capsule counts: they must not reach the
//! internet by default. Out of the box `/metrics` on the API listener answers 404.
//! It is served when one of these is set:
//!
//! - `WRENN_METRICS_TOKEN`: `/metrics` on the API listener (and on the metrics
//!   listener, if any) requires `Authorization: Bearer <token>` (401 otherwise);
//! - `WRENN_METRICS_ADDR`: a separate listener (bind it to a private interface) serves
//!   `/metrics` and nothing else;
//! - `WRENN_METRICS_OPEN=true`: `/metrics` on the API listener answers anyone (for
//!   loopback-only setups such as `wrenn dev`; never behind a public reverse proxy).

use std::net::SocketAddr;

use super::source::Vars;
use super::{ConfigError, Secret, vars};

/// Minimum length of `WRENN_METRICS_TOKEN`, in characters.
pub const MIN_METRICS_TOKEN_LEN: usize = 16;

/// Exposure of the control plane's `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// `WRENN_METRICS_TOKEN` (at least 16 characters): when set, every `/metrics`
    /// request must carry `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// `WRENN_METRICS_ADDR` (`ip:port`, `:port` means `0.0.0.0:port`): a separate
    /// listener serving only `/metrics`. Unset: none.
    pub listen_addr: Option<SocketAddr>,
    /// `WRENN_METRICS_OPEN`, default `false`: serve `/metrics` on the API listener
    /// without a token (when no token is set).
    pub open: bool,
}

impl MetricsConfig {
    /// Reads the `WRENN_METRICS_*` variables.
    pub(super) fn from_vars(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let token = match v.get(vars::WRENN_METRICS_TOKEN) {
            Some(s) if s.chars().count() < MIN_METRICS_TOKEN_LEN => {
                return Err(ConfigError::InvalidSecret {
                    var: vars::WRENN_METRICS_TOKEN,
                    reason: format!("must be at least {MIN_METRICS_TOKEN_LEN} characters long"),
                });
            }
            s => s.map(Secret::new),
        };
        let listen_addr = match v.get(vars::WRENN_METRICS_ADDR) {
            Some(_) => Some(v.socket_addr(vars::WRENN_METRICS_ADDR, "")?),
            None => None,
        };
        let open = v.parse_with(vars::WRENN_METRICS_OPEN, false, |s| {
            match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err("expected true or false".to_owned()),
            }
        })?;
        Ok(Self {
            token,
            listen_addr,
            open,
        })
    }

    /// Whether the API listener serves `/metrics` at all (token or open).
    pub fn served_on_api(&self) -> bool {
        self.token.is_some() || self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{cfg, err_var};

    #[test]
    fn metrics_are_closed_by_default() {
        let m = cfg(&[]).unwrap().metrics;
        assert_eq!(m, MetricsConfig::default());
        assert!(!m.served_on_api());
    }

    #[test]
    fn metrics_values_are_read() {
        let m = cfg(&[
            ("WRENN_METRICS_TOKEN", "0123456789abcdef-token"),
            ("WRENN_METRICS_ADDR", ":9100"),
            ("WRENN_METRICS_OPEN", "yes"),
        ])
        .unwrap()
        .metrics;
        assert_eq!(
            m.token.as_ref().map(Secret::expose_secret),
            Some("0123456789abcdef-token")
        );
        assert_eq!(m.listen_addr, Some("0.0.0.0:9100".parse().unwrap()));
        assert!(m.open && m.served_on_api());
        assert!(
            cfg(&[("WRENN_METRICS_TOKEN", "0123456789abcdef")])
                .unwrap()
                .metrics
                .served_on_api()
        );
    }

    #[test]
    fn bad_metrics_values_name_their_variable_and_hide_the_token() {
        for (var, value) in [
            ("WRENN_METRICS_TOKEN", "short"),
            ("WRENN_METRICS_ADDR", "localhost"),
            ("WRENN_METRICS_OPEN", "maybe"),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err_var(&err), var, "{err}");
        }
        let err = cfg(&[("WRENN_METRICS_TOKEN", "tiny-secret")]).unwrap_err();
        assert!(!err.to_string().contains("tiny-secret"), "{err}");
        let c = cfg(&[("WRENN_METRICS_TOKEN", "0123456789abcdef-token")]).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef-token"));
    }
}
