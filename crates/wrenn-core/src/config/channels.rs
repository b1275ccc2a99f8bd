//! [`ChannelsConfig`]: how notification channels deliver (`WRENN_CHANNELS_*`): which
//! target addresses they may reach, and how deliveries are retried.

use std::time::Duration;

use super::source::Vars;
use super::{Cidr, ConfigError, vars};

/// Default [`ChannelsConfig::max_attempts`].
pub const DEFAULT_CHANNEL_MAX_ATTEMPTS: u32 = 5;
/// Largest [`ChannelsConfig::max_attempts`].
pub const MAX_CHANNEL_MAX_ATTEMPTS: u32 = 20;
/// Default [`ChannelsConfig::retry_base`].
pub const DEFAULT_CHANNEL_RETRY_BASE: Duration = Duration::from_secs(10);
/// Default [`ChannelsConfig::retry_max`].
pub const DEFAULT_CHANNEL_RETRY_MAX: Duration = Duration::from_secs(300);
/// Default [`ChannelsConfig::delivery_timeout`] (the webhook contract's 10 s).
pub const DEFAULT_CHANNEL_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ChannelsConfig::claim_after`].
pub const DEFAULT_CHANNEL_CLAIM_AFTER: Duration = Duration::from_secs(600);
/// Default [`ChannelsConfig::concurrency`].
pub const DEFAULT_CHANNEL_CONCURRENCY: usize = 16;
/// Longest duration any `WRENN_CHANNELS_*_MS` variable accepts (one day).
pub const MAX_CHANNEL_DURATION: Duration = Duration::from_secs(86_400);

/// Notification-channel delivery settings.
///
/// **Target addresses.** A channel's target (webhook URL, provider URL, Matrix
/// homeserver) must resolve to public addresses only: private (RFC 1918, ULA),
/// loopback, link-local (cloud metadata included), CGNAT, multicast, unspecified,
/// reserved and documentation ranges are refused — IPv4, IPv6 and IPv4-mapped IPv6
/// alike — when the channel is created or its config replaced (400) and again at
/// every delivery, on the very addresses the connection then uses (so a DNS answer
/// that changes in between cannot bypass the check). `allow_private` lifts the whole
/// restriction; `allow` opens single networks. `wrenn dev` allows loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelsConfig {
    /// `WRENN_CHANNELS_ALLOW_PRIVATE` (`true`/`false`, default `false`): every
    /// address is allowed, non-public ones included.
    pub allow_private: bool,
    /// `WRENN_CHANNELS_ALLOW`: comma- or space-separated CIDRs (or single addresses)
    /// that targets may resolve to although they are not public. Unset = none (`wrenn
    /// dev` defaults it to `127.0.0.0/8,::1`).
    pub allow: Vec<Cidr>,
    /// `WRENN_CHANNELS_MAX_ATTEMPTS`, default 5 (1 to 20): attempts of one delivery
    /// before it is dead-lettered.
    pub max_attempts: u32,
    /// `WRENN_CHANNELS_RETRY_BASE_MS`, default 10000 (1 to 86400000): the wait before
    /// the second attempt; it doubles after each further failure.
    pub retry_base: Duration,
    /// `WRENN_CHANNELS_RETRY_MAX_MS`, default 300000 (1 to 86400000): the longest wait
    /// between two attempts.
    pub retry_max: Duration,
    /// `WRENN_CHANNELS_TIMEOUT_MS`, default 10000 (1 to 86400000): how long one attempt
    /// (connect, request, response headers and body) may take.
    pub delivery_timeout: Duration,
    /// `WRENN_CHANNELS_CLAIM_AFTER_MS`, default 600000 (1 to 86400000): how long an event
    /// may stay unacknowledged on a dispatcher before another dispatcher takes it over
    /// (a dispatcher that died mid-delivery). Keep it above the longest time one event
    /// can take (`max_attempts` × `delivery_timeout` + the backoffs), or a slow event
    /// is delivered twice.
    pub claim_after: Duration,
    /// `WRENN_CHANNELS_CONCURRENCY`, default 16 (1 to 1024): attempts in flight at
    /// once per control plane. A delivery waiting for its retry holds no slot.
    pub concurrency: usize,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            allow: Vec::new(),
            max_attempts: DEFAULT_CHANNEL_MAX_ATTEMPTS,
            retry_base: DEFAULT_CHANNEL_RETRY_BASE,
            retry_max: DEFAULT_CHANNEL_RETRY_MAX,
            delivery_timeout: DEFAULT_CHANNEL_DELIVERY_TIMEOUT,
            claim_after: DEFAULT_CHANNEL_CLAIM_AFTER,
            concurrency: DEFAULT_CHANNEL_CONCURRENCY,
        }
    }
}

impl ChannelsConfig {
    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based)
    /// failed: `retry_base × 2^(attempt-1)`, at most `retry_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.retry_base
            .checked_mul(factor)
            .unwrap_or(self.retry_max)
            .min(self.retry_max)
    }

    /// Reads the `WRENN_CHANNELS_*` variables.
    pub(super) fn from_vars(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let millis = |var: &'static str, default: Duration| {
            v.parse_with(var, default, |s| match s.parse::<u64>() {
                Ok(n) if n > 0 && Duration::from_millis(n) <= MAX_CHANNEL_DURATION => {
                    Ok(Duration::from_millis(n))
                }
                _ => Err(format!(
                    "expected a whole number of milliseconds from 1 to {}",
                    MAX_CHANNEL_DURATION.as_millis()
                )),
            })
        };
        Ok(Self {
            allow_private: v.parse_with(
                vars::WRENN_CHANNELS_ALLOW_PRIVATE,
                d.allow_private,
                |s| match s.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => Ok(true),
                    "false" | "0" | "no" | "off" => Ok(false),
                    _ => Err("expected true or false".to_owned()),
                },
            )?,
            allow: v.cidrs(vars::WRENN_CHANNELS_ALLOW)?,
            max_attempts: v.parse_with(vars::WRENN_CHANNELS_MAX_ATTEMPTS, d.max_attempts, |s| {
                match s.parse::<u32>() {
                    Ok(n) if (1..=MAX_CHANNEL_MAX_ATTEMPTS).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "expected a whole number from 1 to {MAX_CHANNEL_MAX_ATTEMPTS}"
                    )),
                }
            })?,
            retry_base: millis(vars::WRENN_CHANNELS_RETRY_BASE_MS, d.retry_base)?,
            retry_max: millis(vars::WRENN_CHANNELS_RETRY_MAX_MS, d.retry_max)?,
            delivery_timeout: millis(vars::WRENN_CHANNELS_TIMEOUT_MS, d.delivery_timeout)?,
            claim_after: millis(vars::WRENN_CHANNELS_CLAIM_AFTER_MS, d.claim_after)?,
            concurrency: v.parse_with(vars::WRENN_CHANNELS_CONCURRENCY, d.concurrency, |s| {
                match s.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => Ok(n),
                    _ => Err("expected a whole number from 1 to 1024".to_owned()),
                }
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{cfg, err_var};

    #[test]
    fn channel_defaults_and_overrides() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.channels, ChannelsConfig::default());
        let c = cfg(&[
            ("WRENN_CHANNELS_ALLOW_PRIVATE", "yes"),
            ("WRENN_CHANNELS_ALLOW", "127.0.0.0/8, ::1"),
            ("WRENN_CHANNELS_MAX_ATTEMPTS", "3"),
            ("WRENN_CHANNELS_RETRY_BASE_MS", "20"),
            ("WRENN_CHANNELS_RETRY_MAX_MS", "50"),
            ("WRENN_CHANNELS_TIMEOUT_MS", "2000"),
            ("WRENN_CHANNELS_CLAIM_AFTER_MS", "300"),
            ("WRENN_CHANNELS_CONCURRENCY", "4"),
        ])
        .unwrap()
        .channels;
        assert!(c.allow_private);
        assert_eq!(c.allow.len(), 2);
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.retry_base, Duration::from_millis(20));
        assert_eq!(c.delivery_timeout, Duration::from_secs(2));
        assert_eq!(c.claim_after, Duration::from_millis(300));
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.backoff(1), Duration::from_millis(20));
        assert_eq!(c.backoff(2), Duration::from_millis(40));
        assert_eq!(c.backoff(3), Duration::from_millis(50));
        assert_eq!(c.backoff(40), Duration::from_millis(50));
    }

    #[test]
    fn bad_channel_settings_name_the_variable() {
        for (var, value) in [
            ("WRENN_CHANNELS_ALLOW_PRIVATE", "maybe"),
            ("WRENN_CHANNELS_ALLOW", "10.0.0.1/8"),
            ("WRENN_CHANNELS_MAX_ATTEMPTS", "0"),
            ("WRENN_CHANNELS_MAX_ATTEMPTS", "21"),
            ("WRENN_CHANNELS_RETRY_BASE_MS", "0"),
            ("WRENN_CHANNELS_RETRY_MAX_MS", "x"),
            ("WRENN_CHANNELS_TIMEOUT_MS", "-5"),
            ("WRENN_CHANNELS_CLAIM_AFTER_MS", "86400001"),
            ("WRENN_CHANNELS_CONCURRENCY", "0"),
        ] {
            let e = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err_var(&e), var, "{value}");
        }
    }
}
