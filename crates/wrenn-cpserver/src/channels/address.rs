//! Which addresses channel deliveries may connect to (SSRF protection).
//!
//! A target must be public: [`classify`] names why an address is not (private,
//! loopback, link-local, CGNAT, multicast, unspecified, reserved, documentation, …),
//! for IPv4, IPv6, and IPv4 carried inside IPv6 (mapped, NAT64, 6to4). An
//! [`AddressPolicy`] applies it, minus what the deployment allows
//! (`WRENN_CHANNELS_ALLOW_PRIVATE`, `WRENN_CHANNELS_ALLOW`).
//!
//! The policy is enforced where the connection is made: [`GuardedResolver`] is the
//! HTTP client's DNS resolver, and hands the client only addresses the policy
//! allows, so the checked address is the connected one (a DNS answer that changes
//! between a check and the connection — DNS rebinding — cannot slip through). Literal
//! IP addresses in URLs never reach a resolver and are checked by the caller.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use wrenn_core::config::{ChannelsConfig, Cidr};

/// How long resolving a target's name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A target address the policy refuses, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is a {reason} address, which channels may not reach")]
pub struct Refused {
    /// The address.
    pub ip: IpAddr,
    /// Its kind (`loopback`, `private`, …).
    pub reason: &'static str,
}

/// Why a target's name could not be turned into an allowed address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// An address the name resolves to is refused.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The name does not resolve (or resolving failed or timed out).
    #[error("cannot resolve {host:?}: {reason}")]
    Unresolvable {
        /// The name.
        host: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why `ip` is not a public unicast address; `None` when it is.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "reserved (IETF protocol assignments)"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "reserved (6to4 relay)"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let seg = ip.segments();
    let in_v6 = |net: u128, prefix: u32| bits >> (128 - prefix) == net >> (128 - prefix);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4 carried in IPv6: judged as the IPv4 address it reaches.
    if in_v6(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        let embedded = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
        return classify_v4(embedded);
    }
    if seg[0] == 0x2002 {
        let embedded = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return classify_v4(embedded);
    }
    const RANGES: &[(u128, u32, &str)] = &[
        // ::/96, IPv4-compatible (deprecated), and everything else under ::/8.
        (0, 8, "reserved"),
        (0x0064_ff9b_0001 << 80, 48, "local-use NAT64"),
        (0x0100 << 112, 64, "discard-only"),
        (0x2001 << 112, 32, "Teredo"),
        (0x2001_0db8 << 96, 32, "documentation"),
        (0x2001_0002 << 96, 48, "benchmarking"),
        (0x3fff << 112, 20, "documentation"),
        (0xfc00 << 112, 7, "private (unique local)"),
        (0xfe80 << 112, 10, "link-local"),
        (0xfec0 << 112, 10, "site-local"),
        (0xff00 << 112, 8, "multicast"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v6(*net, *prefix))
        .map(|(_, _, why)| *why)
}

/// Which target addresses deliveries may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow_private: bool,
    allow: Vec<Cidr>,
}

impl AddressPolicy {
    /// The policy of the deployment's [`ChannelsConfig`].
    pub fn from_config(config: &ChannelsConfig) -> Self {
        Self {
            allow_private: config.allow_private,
            allow: config.allow.clone(),
        }
    }

    /// Public addresses only.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Whether `ip` may be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = ip.to_canonical();
        if self.allow_private || self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match classify(ip) {
            None => Ok(()),
            Some(reason) => Err(Refused { ip, reason }),
        }
    }

    /// Resolves `host` and returns the addresses (with `port`) the policy allows.
    /// Fails when the name does not resolve, or when any address it resolves to is
    /// refused (`strict`) or all are (`!strict`).
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        strict: bool,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let unresolvable = |reason: String| ResolveError::Unresolvable {
            host: host.to_owned(),
            reason,
        };
        // A bracketed IPv6 literal or a plain address needs no lookup.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| unresolvable("timed out".into()))?
            .map_err(|e| unresolvable(e.to_string()))?;
        let mut allowed = Vec::new();
        let mut refused = None;
        for addr in found {
            match self.check(addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(r) => refused = Some(r),
            }
        }
        match refused {
            Some(r) if strict || allowed.is_empty() => Err(r.into()),
            _ if allowed.is_empty() => Err(unresolvable("no addresses".into())),
            _ => Ok(allowed),
        }
    }
}

/// The delivery client's DNS resolver: only addresses the policy allows come out of
/// it, so the client connects to nothing else.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs = policy
                .resolve(name.as_str(), 0, false)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_classified() {
        for (addr, why) in [
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("10.1.2.3", "private"),
            ("172.31.255.255", "private"),
            ("192.168.0.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "reserved"),
            ("192.0.2.1", "documentation"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private (unique local)"),
            ("fc00::1", "private (unique local)"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            // IPv4 inside IPv6 is judged as the IPv4 address.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:c0a8:0101::1", "private"),
            ("::127.0.0.1", "reserved"),
        ] {
            assert_eq!(classify(ip(addr)), Some(why), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert_eq!(classify(ip(addr)), None, "{addr}");
            assert_eq!(AddressPolicy::public_only().check(ip(addr)), Ok(()));
        }
    }

    #[test]
    fn the_policy_allows_what_the_deployment_opens() {
        let strict = AddressPolicy::public_only();
        assert_eq!(
            strict.check(ip("127.0.0.1")),
            Err(Refused {
                ip: ip("127.0.0.1"),
                reason: "loopback"
            })
        );
        let loopback = AddressPolicy::from_config(&ChannelsConfig {
            allow: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            ..ChannelsConfig::default()
        });
        assert_eq!(loopback.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(loopback.check(ip("::ffff:127.0.0.1")), Ok(()), "mapped");
        assert_eq!(loopback.check(ip("::1")), Ok(()));
        assert!(loopback.check(ip("10.0.0.1")).is_err());
        let open = AddressPolicy::from_config(&ChannelsConfig {
            allow_private: true,
            ..ChannelsConfig::default()
        });
        assert_eq!(open.check(ip("169.254.169.254")), Ok(()));
    }

    #[tokio::test]
    async fn names_resolve_to_checked_addresses_only() {
        let strict = AddressPolicy::public_only();
        assert!(matches!(
            strict.resolve("localhost", 80, false).await,
            Err(ResolveError::Refused(_))
        ));
        assert!(matches!(
            strict.resolve("127.0.0.1", 80, true).await,
            Err(ResolveError::Refused(_))
        ));
        assert!(matches!(
            strict.resolve("[::1]", 80, true).await,
            Err(ResolveError::Refused(_))
        ));
        assert!(matches!(
            strict.resolve("no-such-host.invalid", 80, true).await,
            Err(ResolveError::Unresolvable { .. })
        ));
        let loopback = AddressPolicy::from_config(&ChannelsConfig {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..ChannelsConfig::default()
        });
        let got = loopback.resolve("127.0.0.1", 8080, true).await.unwrap();
        assert_eq!(got, [SocketAddr::from(([127, 0, 0, 1], 8080))]);
    }
}
