//! Reading the environment: [`EnvSource`] (the process environment over a `.env`
//! file), the typed lookup the parsers share, and the value checks and error
//! construction common to the control plane and the agent.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ConfigError;
use super::secret::redact_url;

/// The process environment with a `.env` file underneath it: a variable set in the
/// real environment wins over the file.
#[derive(Clone, Default)]
pub struct EnvSource {
    dotenv: HashMap<String, String>,
}

impl fmt::Debug for EnvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvSource")
            .field("dotenv_vars", &self.dotenv.len())
            .finish()
    }
}

impl EnvSource {
    /// Loads the `.env` file at `path`, best-effort: a missing file is ignored, and a
    /// malformed line is logged (without its content) and ends the reading.
    pub fn load(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let mut dotenv = HashMap::new();
        match dotenvy::from_path_iter(path) {
            Ok(iter) => {
                for item in iter {
                    match item {
                        Ok((k, v)) => {
                            dotenv.insert(k, v);
                        }
                        Err(e) => {
                            let what = match e {
                                dotenvy::Error::LineParse(_, idx) => {
                                    format!("parse error at position {idx}")
                                }
                                _ => "read error".to_owned(),
                            };
                            tracing::warn!(path = %path.display(), "ignoring rest of .env file: {what}");
                            break;
                        }
                    }
                }
            }
            Err(e) if e.not_found() => {}
            Err(_) => tracing::warn!(path = %path.display(), "could not read .env file"),
        }
        Self { dotenv }
    }

    /// The value of `key`: the real environment first, then the `.env` file.
    pub fn get(&self, key: &str) -> Option<String> {
        std::env::var_os(key)
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| self.dotenv.get(key).cloned())
    }
}

/// Typed access to a lookup function.
pub(super) struct Vars<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    /// Trimmed value; empty counts as unset.
    pub(super) fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// The value of `var` as a path, else `default`.
    pub(super) fn path(&self, var: &str, default: &str) -> PathBuf {
        PathBuf::from(self.get(var).unwrap_or_else(|| default.to_owned()))
    }

    /// `parse`s the value of `var`, else `default`; a parse error names `var`.
    pub(super) fn parse_with<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(s) => parse(&s).map_err(|reason| invalid(var, &s, reason)),
        }
    }

    /// A whole number above 0 (`what` names the unit in the error), else `default`.
    pub(super) fn positive(
        &self,
        var: &'static str,
        default: u64,
        what: &str,
    ) -> Result<u64, ConfigError> {
        self.parse_with(var, default, |s| match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("expected {what} greater than 0")),
        })
    }

    /// An `ip:port` listen address (`:port` means `0.0.0.0:port`), else `default`.
    pub(super) fn socket_addr(
        &self,
        var: &'static str,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let raw = self.get(var).unwrap_or_else(|| default.to_owned());
        let full = if raw.starts_with(':') {
            format!("0.0.0.0{raw}")
        } else {
            raw.clone()
        };
        full.parse().map_err(|_| {
            invalid(
                var,
                &raw,
                "expected ip:port, e.g. 127.0.0.1:8000, [::1]:8000 or :8000".to_owned(),
            )
        })
    }
}

/// Parses whole seconds from `min` to `max`.
pub(super) fn secs_between(
    min: Duration,
    max: Duration,
) -> impl FnOnce(&str) -> Result<Duration, String> {
    move |s| match s.parse::<u64>().map(Duration::from_secs) {
        Ok(d) if (min..=max).contains(&d) => Ok(d),
        _ => Err(format!(
            "expected a whole number of seconds from {} to {}",
            min.as_secs(),
            max.as_secs()
        )),
    }
}

/// Parses whole milliseconds from 0 to `max`.
pub(super) fn millis_up_to(max: Duration) -> impl FnOnce(&str) -> Result<Duration, String> {
    move |s| match s.parse::<u64>().map(Duration::from_millis) {
        Ok(d) if d <= max => Ok(d),
        _ => Err(format!(
            "expected a whole number of milliseconds from 0 to {}",
            max.as_millis()
        )),
    }
}

/// A [`ConfigError::Invalid`] showing `value` truncated to 200 characters, with any
/// URL password redacted.
pub(super) fn invalid(var: &'static str, value: &str, reason: String) -> ConfigError {
    let mut shown: String = redact_url(value).chars().take(200).collect();
    if value.chars().count() > 200 {
        shown.push('…');
    }
    ConfigError::Invalid {
        var,
        value: shown,
        reason,
    }
}

/// `url` if it starts with one of `schemes`.
pub(super) fn check_scheme(
    var: &'static str,
    url: String,
    schemes: &[&str],
) -> Result<String, ConfigError> {
    if schemes.iter().any(|s| url.starts_with(s)) {
        Ok(url)
    } else {
        Err(invalid(
            var,
            &url,
            format!("expected a URL starting with one of {}", schemes.join(", ")),
        ))
    }
}

/// An `http://` or `https://` URL with a host, trailing `/` removed.
pub(super) fn http_url(var: &'static str, url: String) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => {
            Ok(url.trim_end_matches('/').to_owned())
        }
        _ => Err(invalid(
            var,
            &url,
            "expected an http:// or https:// URL, e.g. https://wrenn.example.com".to_owned(),
        )),
    }
}

/// `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 address, and a port
/// from 1 to 65535).
pub(super) fn host_port(var: &'static str, value: String) -> Result<String, ConfigError> {
    let bad = |value: &str| {
        invalid(
            var,
            value,
            "expected host:port, e.g. 10.0.0.5:50051 or agent-1.internal:50051".to_owned(),
        )
    };
    if let Ok(sa) = value.parse::<SocketAddr>() {
        return if sa.port() == 0 {
            Err(bad(&value))
        } else {
            Ok(value)
        };
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(bad(&value));
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(value),
        _ => Err(bad(&value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_source_reads_dotenv_under_the_real_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        // PATH is set in the real environment and must win over the file.
        std::fs::write(
            &path,
            "WRENN_TEST_ONLY_IN_DOTENV_7f3a=from-file\nPATH=/from/dotenv\n# comment\n",
        )
        .unwrap();
        let env = EnvSource::load(&path);
        assert_eq!(
            env.get("WRENN_TEST_ONLY_IN_DOTENV_7f3a").as_deref(),
            Some("from-file")
        );
        assert_ne!(env.get("PATH").as_deref(), Some("/from/dotenv"));
        assert_eq!(env.get("WRENN_TEST_NOWHERE_7f3a"), None);
        // A missing file and a malformed file are not errors.
        let missing = EnvSource::load(dir.path().join("nope"));
        assert_eq!(missing.get("WRENN_TEST_ONLY_IN_DOTENV_7f3a"), None);
        std::fs::write(&path, "GOOD_7f3a=1\nthis is not valid\nLATER_7f3a=2\n").unwrap();
        let env = EnvSource::load(&path);
        assert_eq!(env.get("GOOD_7f3a").as_deref(), Some("1"));
        assert!(!format!("{env:?}").contains("GOOD_7f3a"));
    }
}
