//! [`SmtpConfig`]: outgoing email settings (`SMTP_*`) of the control plane.

use super::source::{Vars, invalid};
use super::{ConfigError, Secret, vars};

/// Default SMTP port (submission).
pub const DEFAULT_SMTP_PORT: u16 = 587;
/// Default sender address.
pub const DEFAULT_SMTP_FROM_EMAIL: &str = "noreply@wrenn.dev";

/// Outgoing email settings; present when `SMTP_HOST` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// `SMTP_HOST` (required for email to be sent).
    pub host: String,
    /// `SMTP_PORT`, default 587.
    pub port: u16,
    /// `SMTP_USERNAME`, optional.
    pub username: Option<String>,
    /// `SMTP_PASSWORD`, optional.
    pub password: Option<Secret>,
    /// `SMTP_FROM_EMAIL`, default `noreply@wrenn.dev`.
    pub from_email: String,
}

impl SmtpConfig {
    /// Reads the `SMTP_*` variables; `None` when `SMTP_HOST` is unset (the others are
    /// then not read at all).
    pub(super) fn from_vars(v: &Vars<'_>) -> Result<Option<Self>, ConfigError> {
        let Some(host) = v.get(vars::SMTP_HOST) else {
            return Ok(None);
        };
        Ok(Some(Self {
            host,
            port: v.parse_with(vars::SMTP_PORT, DEFAULT_SMTP_PORT, |s| match s.parse() {
                Ok(0) | Err(_) => Err("expected a port number between 1 and 65535".into()),
                Ok(p) => Ok(p),
            })?,
            username: v.get(vars::SMTP_USERNAME),
            password: v.get(vars::SMTP_PASSWORD).map(Secret::new),
            from_email: match v.get(vars::SMTP_FROM_EMAIL) {
                None => DEFAULT_SMTP_FROM_EMAIL.to_owned(),
                Some(e) => crate::validate::email(&e)
                    .map_err(|err| invalid(vars::SMTP_FROM_EMAIL, &e, err.to_string()))?,
            },
        }))
    }
}
