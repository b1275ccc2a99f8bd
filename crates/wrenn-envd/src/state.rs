//! State shared by the three services: the defaults set by `System.Init`, the access
//! token, and the snapshot flag.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::SystemTime;

use tonic::metadata::MetadataMap;

use crate::error::{EnvdError, Result};
use crate::users::{self, User};

/// The defaults processes and file operations use when a request leaves them out.
#[derive(Debug, Clone)]
pub(crate) struct Defaults {
    /// The user processes run as and file operations resolve `~` against.
    pub user: String,
    /// The working directory of processes; `None` = the default user's home.
    pub workdir: Option<PathBuf>,
    /// Environment variables every process gets (request variables win).
    pub envs: BTreeMap<String, String>,
}

/// What is shared between the services of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    /// When the agent started (wall clock, so it includes time spent paused).
    pub started_at: SystemTime,
    defaults: RwLock<Defaults>,
    token: RwLock<Option<String>>,
    last_init: RwLock<Option<SystemTime>>,
    needs_restore: AtomicBool,
    set_clock: bool,
}

impl Shared {
    /// Fresh state with `default_user` as the default user; `set_clock` lets Init set
    /// the system clock ([`ServerConfig::set_clock`](crate::ServerConfig::set_clock)).
    pub fn new(default_user: String, set_clock: bool) -> Self {
        Self {
            started_at: SystemTime::now(),
            defaults: RwLock::new(Defaults {
                user: default_user,
                workdir: None,
                envs: BTreeMap::new(),
            }),
            token: RwLock::new(None),
            last_init: RwLock::new(None),
            needs_restore: AtomicBool::new(false),
            set_clock,
        }
    }

    /// A copy of the current defaults.
    pub fn defaults(&self) -> Defaults {
        self.defaults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The user named `name`, or the default user when `name` is unset or empty.
    pub fn user(&self, name: Option<&str>) -> Result<User> {
        match name.filter(|n| !n.is_empty()) {
            Some(name) => users::lookup(name),
            None => users::lookup(&self.defaults().user),
        }
    }

    /// Checks the `x-access-token` metadata against the token set by Init, in constant
    /// time. Without a token every call is allowed.
    pub fn authorize(&self, metadata: &MetadataMap) -> Result<()> {
        let token = self.token.read().unwrap_or_else(PoisonError::into_inner);
        let Some(expected) = token.as_deref() else {
            return Ok(());
        };
        let given = metadata
            .get(wrenn_proto::ENVD_ACCESS_TOKEN_METADATA)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, expected.as_bytes()) {
            Ok(())
        } else {
            Err(EnvdError::Unauthenticated(
                "missing or wrong access token".to_owned(),
            ))
        }
    }

    /// Applies an Init request after validating every field, so a rejected Init changes
    /// nothing. Returns false if it was ignored as stale.
    pub fn apply_init(&self, init: InitChange) -> Result<bool> {
        let mut last_init = self
            .last_init
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let (Some(at), Some(last)) = (init.timestamp, *last_init) {
            if at < last {
                return Ok(false);
            }
        }
        let current = self.defaults();
        let user_name = init.default_user.clone().unwrap_or(current.user.clone());
        let user = users::lookup(&user_name)?;
        let workdir = match &init.default_workdir {
            Some(dir) if dir.is_empty() => None,
            Some(dir) => {
                let path = crate::paths::resolve(dir, &user.home)?;
                if !path.is_dir() {
                    return Err(EnvdError::invalid(format!(
                        "default workdir {} is not an existing directory",
                        path.display()
                    )));
                }
                Some(path)
            }
            None => current.workdir.clone(),
        };
        validate_env(&init.env_vars)?;
        if let Some(name) = &init.hostname {
            validate_hostname(name)?;
            rustix::system::sethostname(name.as_bytes()).map_err(|err| {
                EnvdError::FailedPrecondition(format!("cannot set the hostname: {err}"))
            })?;
        }

        let mut defaults = self
            .defaults
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        defaults.user = user.name;
        defaults.workdir = workdir;
        defaults.envs.extend(init.env_vars);
        if let Some(token) = init.access_token {
            *self.token.write().unwrap_or_else(PoisonError::into_inner) =
                (!token.is_empty()).then_some(token);
        }
        if init.timestamp.is_some() {
            *last_init = init.timestamp;
        }
        if let Some(at) = init.timestamp.filter(|_| self.set_clock) {
            set_clock_near(at);
        }
        Ok(true)
    }

    /// Marks that a snapshot is being taken; the next Health or Init finishes recovery.
    pub fn prepare_snapshot(&self) {
        self.needs_restore.store(true, Ordering::SeqCst);
    }

    /// Runs the post-restore recovery if a snapshot was prepared. envd keeps no
    /// connection state or port forwarders, so recovery is clearing the flag; returns
    /// whether there was anything to recover.
    pub fn recover_after_restore(&self) -> bool {
        self.needs_restore.swap(false, Ordering::SeqCst)
    }
}

/// A hostname must be 1 to 64 letters, digits, `-` and `.`, not starting with `-`.
fn validate_hostname(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(EnvdError::invalid(format!("invalid hostname {name:?}")))
    }
}

/// Sets the system clock to `at` if it is more than a second off (a VM restored from
/// a memory snapshot wakes up at the time the snapshot was taken).
fn set_clock_near(at: SystemTime) {
    let now = SystemTime::now();
    let off = now
        .duration_since(at)
        .or_else(|_| at.duration_since(now))
        .unwrap_or_default();
    if off < std::time::Duration::from_secs(1) {
        return;
    }
    let Ok(since_epoch) = at.duration_since(SystemTime::UNIX_EPOCH) else {
        return;
    };
    let time = rustix::time::Timespec {
        tv_sec: since_epoch.as_secs() as i64,
        tv_nsec: since_epoch.subsec_nanos() as _,
    };
    match rustix::time::clock_settime(rustix::time::ClockId::Realtime, time) {
        Ok(()) => tracing::info!(off_ms = off.as_millis() as u64, "set the clock from Init"),
        Err(err) => tracing::warn!("cannot set the clock: {err}"),
    }
}

/// The fields of an Init request, decoded.
#[derive(Debug, Default)]
pub(crate) struct InitChange {
    pub default_user: Option<String>,
    pub default_workdir: Option<String>,
    pub env_vars: HashMap<String, String>,
    pub access_token: Option<String>,
    pub hostname: Option<String>,
    pub timestamp: Option<SystemTime>,
}

/// Environment variable names must be non-empty and contain neither `=` nor NUL; values
/// must not contain NUL.
pub(crate) fn validate_env<'a>(
    envs: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<()> {
    for (key, value) in envs {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(EnvdError::invalid(format!(
                "invalid environment variable name {key:?}"
            )));
        }
        if value.contains('\0') {
            return Err(EnvdError::invalid(format!(
                "environment variable {key} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn env_names_are_validated() {
        let ok: HashMap<String, String> = [("A".into(), "1".into())].into();
        assert!(validate_env(&ok).is_ok());
        for bad in ["", "A=B", "A\0"] {
            let env: HashMap<String, String> = [(bad.to_owned(), "1".to_owned())].into();
            assert!(validate_env(&env).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stale_init_is_ignored_and_token_can_be_cleared() {
        let shared = Shared::new("root".into(), false);
        let now = SystemTime::now();
        let first = InitChange {
            env_vars: [("A".into(), "new".into())].into(),
            access_token: Some("t".into()),
            timestamp: Some(now),
            ..Default::default()
        };
        assert!(shared.apply_init(first).unwrap());
        let stale = InitChange {
            env_vars: [("A".into(), "old".into())].into(),
            timestamp: Some(now - std::time::Duration::from_secs(5)),
            ..Default::default()
        };
        assert!(!shared.apply_init(stale).unwrap());
        assert_eq!(shared.defaults().envs["A"], "new");
        assert!(shared.authorize(&MetadataMap::new()).is_err());
        let clear = InitChange {
            access_token: Some(String::new()),
            ..Default::default()
        };
        assert!(shared.apply_init(clear).unwrap());
        assert!(shared.authorize(&MetadataMap::new()).is_ok());
    }
}
