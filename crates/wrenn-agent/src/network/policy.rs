//! The capsules' egress policy: which destinations a capsule's packets may be routed to.
//!
//! Checked in this order, first match decides:
//! 1. the capsule address range itself: always refused (capsule ↔ capsule);
//! 2. the deployment's entries ([`EgressConfig`]: `WRENN_EGRESS_ALLOW`,
//!    `WRENN_EGRESS_DENY`), most specific first, a deny winning a tie;
//! 3. the default deny list ([`DEFAULT_DENY`]): private (RFC 1918, ULA), link-local
//!    (cloud metadata at 169.254.169.254 included), CGNAT, loopback, "this network",
//!    multicast and reserved ranges — plus this host's own addresses and directly
//!    connected networks, read from the kernel;
//! 4. everything else — the public internet, documentation and benchmarking ranges
//!    included (package mirrors may sit there) — is allowed.

use std::net::IpAddr;

use wrenn_core::config::{Cidr, EgressConfig};

/// Ranges no capsule reaches unless the deployment allows them, with why.
pub const DEFAULT_DENY: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this\" network"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local and cloud metadata"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

/// What happens to a packet for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Routed on.
    Allow,
    /// Refused (the capsule gets an ICMP "administratively prohibited").
    Deny,
}

/// One line of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The destination network.
    pub network: Cidr,
    /// What happens.
    pub action: Action,
    /// Why (for rule comments and logs).
    pub reason: String,
}

/// The ordered egress policy for one capsule address range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    entries: Vec<Entry>,
}

impl EgressPolicy {
    /// The policy for capsules in `capsules`, with the deployment's `config` and the
    /// host's own `host_networks` (addresses and connected networks).
    pub fn new(capsules: Cidr, config: &EgressConfig, host_networks: &[Cidr]) -> Self {
        let mut entries = vec![Entry {
            network: capsules,
            action: Action::Deny,
            reason: "capsule to capsule".into(),
        }];
        let mut explicit: Vec<Entry> = config
            .deny
            .iter()
            .map(|n| (n, Action::Deny, "WRENN_EGRESS_DENY"))
            .chain(
                config
                    .allow
                    .iter()
                    .map(|n| (n, Action::Allow, "WRENN_EGRESS_ALLOW")),
            )
            .map(|(network, action, var)| Entry {
                network: *network,
                action,
                reason: var.into(),
            })
            .collect();
        // Most specific first; on a tie the deny (listed first) stays first.
        explicit.sort_by_key(|e| std::cmp::Reverse(e.network.prefix()));
        explicit.dedup_by(|b, a| a.network == b.network);
        entries.extend(explicit);
        let defaults: Vec<Entry> = DEFAULT_DENY
            .iter()
            .filter_map(|(net, why)| {
                Some(Entry {
                    network: net.parse().ok()?,
                    action: Action::Deny,
                    reason: format!("default: {why}"),
                })
            })
            .collect();
        let mut host: Vec<Entry> = Vec::new();
        for network in host_networks {
            let covered = defaults
                .iter()
                .chain(&host)
                .any(|e| e.network.covers(network))
                || capsules.covers(network);
            if !covered {
                host.retain(|e| !network.covers(&e.network));
                host.push(Entry {
                    network: *network,
                    action: Action::Deny,
                    reason: "default: this host's network".into(),
                });
            }
        }
        entries.extend(defaults);
        entries.extend(host);
        Self { entries }
    }

    /// The entries in the order they are checked.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// What happens to a packet from a capsule to `destination`.
    pub fn action(&self, destination: IpAddr) -> Action {
        self.entries
            .iter()
            .find(|e| e.network.contains(destination))
            .map_or(Action::Allow, |e| e.action)
    }
}

/// The networks of the host's addresses: each address (/32, /128) and its connected
/// network, skipping addresses inside `capsules` (the capsules' gateways).
pub fn host_networks(addresses: &[(IpAddr, u8)], capsules: Cidr) -> Vec<Cidr> {
    let mut out = Vec::new();
    for (addr, prefix) in addresses {
        if capsules.contains(*addr) {
            continue;
        }
        let full = if addr.is_ipv4() { 32 } else { 128 };
        for cidr in [
            Cidr::containing(*addr, *prefix),
            Cidr::containing(*addr, full),
        ]
        .into_iter()
        .flatten()
        {
            if !out.contains(&cidr) {
                out.push(cidr);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(allow: &[&str], deny: &[&str], host: &[&str]) -> EgressPolicy {
        let config = EgressConfig {
            allow: allow.iter().map(|s| cidr(s)).collect(),
            deny: deny.iter().map(|s| cidr(s)).collect(),
        };
        let host: Vec<Cidr> = host.iter().map(|s| cidr(s)).collect();
        EgressPolicy::new(cidr("10.200.0.0/16"), &config, &host)
    }

    #[test]
    fn by_default_private_link_local_cgnat_and_the_host_are_denied() {
        let p = policy(&[], &[], &["192.0.2.0/24", "192.0.2.2/32"]);
        for denied in [
            "10.255.255.53",
            "172.17.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
            "10.200.3.2",
            "192.0.2.2",
            "192.0.2.1",
            "::1",
            "fd00::2",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(p.action(ip(denied)), Action::Deny, "{denied}");
        }
        for allowed in [
            "203.0.113.80",
            "198.51.100.7",
            "198.18.0.1",
            "1.1.1.1",
            "2001:db8::1",
            "2a00:1450::1",
        ] {
            assert_eq!(p.action(ip(allowed)), Action::Allow, "{allowed}");
        }
    }

    #[test]
    fn an_allow_entry_beats_the_default_deny() {
        let p = policy(&["10.9.0.0/16", "169.254.169.254"], &[], &[]);
        assert_eq!(p.action(ip("10.9.1.1")), Action::Allow);
        assert_eq!(p.action(ip("169.254.169.254")), Action::Allow);
        assert_eq!(p.action(ip("10.8.1.1")), Action::Deny);
        assert_eq!(p.action(ip("169.254.169.253")), Action::Deny);
    }

    #[test]
    fn the_most_specific_explicit_entry_wins_and_a_deny_wins_a_tie() {
        let p = policy(
            &["10.0.0.0/8", "1.2.3.0/24"],
            &["10.0.5.0/24", "0.0.0.0/0"],
            &[],
        );
        assert_eq!(p.action(ip("10.1.1.1")), Action::Allow);
        assert_eq!(p.action(ip("10.0.5.1")), Action::Deny);
        assert_eq!(p.action(ip("1.2.3.4")), Action::Allow, "allow-list mode");
        assert_eq!(p.action(ip("8.8.8.8")), Action::Deny, "allow-list mode");
        let tie = policy(&["203.0.113.0/24"], &["203.0.113.0/24"], &[]);
        assert_eq!(tie.action(ip("203.0.113.80")), Action::Deny);
    }

    #[test]
    fn capsules_never_reach_each_other_even_when_allowed() {
        let p = policy(&["10.0.0.0/8", "0.0.0.0/0"], &[], &[]);
        assert_eq!(p.action(ip("10.200.0.6")), Action::Deny);
        assert_eq!(p.action(ip("10.201.0.6")), Action::Allow);
    }

    #[test]
    fn host_networks_skip_capsule_gateways_and_what_defaults_cover() {
        let capsules = cidr("10.200.0.0/16");
        let nets = host_networks(
            &[
                (ip("192.0.2.2"), 24),
                (ip("10.200.0.5"), 30),
                (ip("127.0.0.1"), 8),
                (ip("fd00::2"), 64),
            ],
            capsules,
        );
        let shown: Vec<String> = nets.iter().map(Cidr::to_string).collect();
        assert_eq!(
            shown,
            [
                "192.0.2.0/24",
                "192.0.2.2/32",
                "127.0.0.0/8",
                "127.0.0.1/32",
                "fd00::/64",
                "fd00::2/128"
            ]
        );
        let p = EgressPolicy::new(capsules, &EgressConfig::default(), &nets);
        let host: Vec<String> = p
            .entries()
            .iter()
            .filter(|e| e.reason.contains("host"))
            .map(|e| e.network.to_string())
            .collect();
        assert_eq!(host, ["192.0.2.0/24"], "covered networks add no rules");
    }
}
