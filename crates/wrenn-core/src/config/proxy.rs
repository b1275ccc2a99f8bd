//! [`ProxyConfig`]: how the control plane serves capsule URLs
//! (`{port}-{capsule_id}.{domain}`, `WRENN_PROXY_*`).

use std::time::Duration;

use super::source::Vars;
use super::{ConfigError, vars};

/// Default [`ProxyConfig::upstream_timeout`].
pub const DEFAULT_PROXY_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest [`ProxyConfig::upstream_timeout`].
pub const MAX_PROXY_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3600);

/// The capsule proxy's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `WRENN_PROXY_DOMAIN`: the host suffix (with an optional `:port`) of capsule URLs,
    /// as the SDK reads it. When set, only `Host`s under it are proxied; unset, any
    /// `Host` of the form `{port}-{capsule_id}.…` is.
    pub domain: Option<String>,
    /// `WRENN_PROXY_RESUME_PAUSED`, default `true`: a request to a paused (or
    /// hibernated) capsule resumes it and is then forwarded; `false` answers 409.
    pub resume_paused: bool,
    /// `WRENN_PROXY_UPSTREAM_TIMEOUT_SECS`, default 120 (1 to 3600): how long the proxy
    /// waits for the capsule's server to start answering (its response headers) before
    /// answering 504. Streaming bodies and WebSockets are not limited by it.
    pub upstream_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            domain: None,
            resume_paused: true,
            upstream_timeout: DEFAULT_PROXY_UPSTREAM_TIMEOUT,
        }
    }
}

impl ProxyConfig {
    /// Reads the `WRENN_PROXY_*` variables.
    pub(super) fn from_vars(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            domain: v
                .get(vars::WRENN_PROXY_DOMAIN)
                .map(|d| {
                    proxy_domain(&d).map_err(|reason| {
                        super::source::invalid(vars::WRENN_PROXY_DOMAIN, &d, reason)
                    })
                })
                .transpose()?,
            resume_paused: v.parse_with(
                vars::WRENN_PROXY_RESUME_PAUSED,
                defaults.resume_paused,
                |s| match s.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => Ok(true),
                    "false" | "0" | "no" | "off" => Ok(false),
                    _ => Err("expected true or false".to_owned()),
                },
            )?,
            upstream_timeout: v.parse_with(
                vars::WRENN_PROXY_UPSTREAM_TIMEOUT_SECS,
                defaults.upstream_timeout,
                |s| match s.parse::<u64>().map(Duration::from_secs) {
                    Ok(d) if !d.is_zero() && d <= MAX_PROXY_UPSTREAM_TIMEOUT => Ok(d),
                    _ => Err(format!(
                        "expected a whole number of seconds from 1 to {}",
                        MAX_PROXY_UPSTREAM_TIMEOUT.as_secs()
                    )),
                },
            )?,
        })
    }
}

/// A domain with an optional port, lower-cased, without scheme or trailing dot.
fn proxy_domain(raw: &str) -> Result<String, String> {
    let d = raw.trim_end_matches('.').to_ascii_lowercase();
    let (name, port) = match d.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (d.as_str(), None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("expected a domain such as sandbox.example.com or localhost:8000".into());
    }
    if let Some(port) = port
        && !matches!(port.parse::<u16>(), Ok(p) if p > 0)
    {
        return Err("the port must be a number from 1 to 65535".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<ProxyConfig, ConfigError> {
        let lookup = |k: &str| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        };
        ProxyConfig::from_vars(&Vars(&lookup))
    }

    #[test]
    fn defaults_resume_and_accept_any_domain() {
        assert_eq!(read(&[]).unwrap(), ProxyConfig::default());
        assert!(ProxyConfig::default().resume_paused);
    }

    #[test]
    fn a_domain_is_normalised_and_checked() {
        let c = read(&[("WRENN_PROXY_DOMAIN", "Sandbox.Example.com.")]).unwrap();
        assert_eq!(c.domain.as_deref(), Some("sandbox.example.com"));
        let c = read(&[("WRENN_PROXY_DOMAIN", "localhost:8000")]).unwrap();
        assert_eq!(c.domain.as_deref(), Some("localhost:8000"));
        for bad in ["http://x.com", "a..b", "x.com:0", "x.com:99999", "x y"] {
            assert!(read(&[("WRENN_PROXY_DOMAIN", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn resume_and_timeout_are_parsed() {
        let c = read(&[
            ("WRENN_PROXY_RESUME_PAUSED", "false"),
            ("WRENN_PROXY_UPSTREAM_TIMEOUT_SECS", "5"),
        ])
        .unwrap();
        assert!(!c.resume_paused);
        assert_eq!(c.upstream_timeout, Duration::from_secs(5));
        assert!(read(&[("WRENN_PROXY_RESUME_PAUSED", "maybe")]).is_err());
        assert!(read(&[("WRENN_PROXY_UPSTREAM_TIMEOUT_SECS", "0")]).is_err());
    }
}
