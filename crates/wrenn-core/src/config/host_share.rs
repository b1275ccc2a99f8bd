//! [`HostShare`]: the parts of its host an agent owns, so that several agents can run
//! capsules on one host without touching each other's (`WRENN_CGROUP_PARENT`,
//! `WRENN_CAPSULE_NETWORK`, `WRENN_FIREWALL_TABLE`, `WRENN_VETH_PREFIX`,
//! `WRENN_CAPSULE_ID_BASE`, `WRENN_CAPSULE_ID_RANGES`).

use std::net::IpAddr;

use super::egress::Cidr;
use super::source::{Vars, invalid};
use super::{ConfigError, vars};

/// Default [`HostShare::cgroup_parent`].
pub const DEFAULT_CGROUP_PARENT: &str = "wrenn-sandboxes";
/// Default [`HostShare::capsule_network`].
pub const DEFAULT_CAPSULE_NETWORK: &str = "10.200.0.0/16";
/// Default [`HostShare::firewall_table`].
pub const DEFAULT_FIREWALL_TABLE: &str = "wrenn";
/// Default [`HostShare::veth_prefix`].
pub const DEFAULT_VETH_PREFIX: &str = "wrenn-v";
/// Ids in one capsule's uid/gid range (capsule ids `0..65536`).
pub const CAPSULE_ID_RANGE_SIZE: u32 = 65536;
/// Default [`HostShare::id_base`]: 2³¹, far above host users and `/etc/subuid` ranges.
pub const DEFAULT_CAPSULE_ID_BASE: u32 = 1 << 31;
/// Default [`HostShare::id_ranges`].
pub const DEFAULT_CAPSULE_ID_RANGES: u32 = 16384;
/// Longest veth prefix: the slot number (up to 7 digits) follows within the kernel's
/// 15-character interface names.
pub const MAX_VETH_PREFIX_LEN: usize = 8;

/// What of the host this agent's capsules use. The defaults suit one agent per host;
/// agents sharing a host each need their own cgroup parent and uid ranges, and, when
/// they use different address ranges, their own firewall table and veth prefix (the
/// table of one range would otherwise replace the other's). Agents that share a range
/// and table never collide on addresses: a slot is claimed host-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShare {
    /// `WRENN_CGROUP_PARENT`, default `wrenn-sandboxes`: the cgroup directory, under
    /// each hierarchy's root, holding this agent's capsule cgroups (a relative path).
    pub cgroup_parent: String,
    /// `WRENN_CAPSULE_NETWORK`, default `10.200.0.0/16`: the IPv4 range capsule
    /// addresses come from (a private /8 to /29).
    pub capsule_network: Cidr,
    /// `WRENN_FIREWALL_TABLE`, default `wrenn`: the agent's nftables table (`inet`).
    pub firewall_table: String,
    /// `WRENN_VETH_PREFIX`, default `wrenn-v`: prefix of the host ends of capsule veth
    /// pairs (at most 8 characters).
    pub veth_prefix: String,
    /// `WRENN_CAPSULE_ID_BASE`, default 2³¹: the first host uid/gid of capsule id
    /// ranges (a multiple of 65536).
    pub id_base: u32,
    /// `WRENN_CAPSULE_ID_RANGES`, default 16384: how many ranges of 65536 ids (live
    /// capsules) there are.
    pub id_ranges: u32,
}

impl Default for HostShare {
    fn default() -> Self {
        Self {
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_owned(),
            capsule_network: DEFAULT_CAPSULE_NETWORK
                .parse()
                .unwrap_or_else(|e| unreachable!("the default network parses: {e}")),
            firewall_table: DEFAULT_FIREWALL_TABLE.to_owned(),
            veth_prefix: DEFAULT_VETH_PREFIX.to_owned(),
            id_base: DEFAULT_CAPSULE_ID_BASE,
            id_ranges: DEFAULT_CAPSULE_ID_RANGES,
        }
    }
}

/// Letters, digits, `-` and `_`, starting with a letter: safe as a cgroup name, an
/// nftables identifier and an interface name.
fn plain_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl HostShare {
    pub(super) fn from_vars(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let cgroup_parent = v.parse_with(vars::WRENN_CGROUP_PARENT, d.cgroup_parent, |s| {
            let ok = s.split('/').all(plain_name);
            ok.then(|| s.to_owned()).ok_or_else(|| {
                "expected a relative cgroup path of names made of letters, digits, '-' and '_' \
                 (e.g. wrenn-sandboxes or wrenn/agent-2)"
                    .into()
            })
        })?;
        let capsule_network =
            v.parse_with(vars::WRENN_CAPSULE_NETWORK, d.capsule_network, |s| {
                let cidr: Cidr = s.parse()?;
                match cidr.addr() {
                    IpAddr::V4(a) if a.is_private() && (8..=29).contains(&cidr.prefix()) => {
                        Ok(cidr)
                    }
                    _ => Err(
                        "expected a private IPv4 range from /8 to /29, e.g. 10.200.0.0/16".into(),
                    ),
                }
            })?;
        let firewall_table = v.parse_with(vars::WRENN_FIREWALL_TABLE, d.firewall_table, |s| {
            (plain_name(s) && s.len() <= 64)
                .then(|| s.to_owned())
                .ok_or_else(|| "expected up to 64 letters, digits, '-' or '_'".into())
        })?;
        let veth_prefix = v.parse_with(vars::WRENN_VETH_PREFIX, d.veth_prefix, |s| {
            (plain_name(s) && s.len() <= MAX_VETH_PREFIX_LEN)
                .then(|| s.to_owned())
                .ok_or_else(|| {
                    format!("expected up to {MAX_VETH_PREFIX_LEN} letters, digits, '-' or '_'")
                })
        })?;
        let id_base = v.parse_with(vars::WRENN_CAPSULE_ID_BASE, d.id_base, |s| {
            s.parse::<u32>()
                .ok()
                .filter(|b| *b >= CAPSULE_ID_RANGE_SIZE && b % CAPSULE_ID_RANGE_SIZE == 0)
                .ok_or_else(|| "expected a multiple of 65536, at least 65536".into())
        })?;
        let id_ranges = v.positive(
            vars::WRENN_CAPSULE_ID_RANGES,
            u64::from(d.id_ranges),
            "a whole number of ranges",
        )?;
        let end = u64::from(id_base) + id_ranges * u64::from(CAPSULE_ID_RANGE_SIZE);
        let id_ranges = match u32::try_from(id_ranges) {
            Ok(n) if end <= u64::from(u32::MAX) => n,
            _ => {
                return Err(invalid(
                    vars::WRENN_CAPSULE_ID_RANGES,
                    &id_ranges.to_string(),
                    format!(
                        "{id_ranges} ranges of 65536 ids from {id_base} pass the largest id, {}",
                        u32::MAX - 1
                    ),
                ));
            }
        };
        Ok(Self {
            cgroup_parent,
            capsule_network,
            firewall_table,
            veth_prefix,
            id_base,
            id_ranges,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{agent, err_var};

    #[test]
    fn one_agent_per_host_by_default() {
        let a = agent(&[]).unwrap();
        assert_eq!(a.host_share, HostShare::default());
        assert_eq!(a.host_share.capsule_network.to_string(), "10.200.0.0/16");
        assert_eq!(a.host_share.cgroup_parent, "wrenn-sandboxes");
    }

    #[test]
    fn a_second_agent_on_the_host_takes_its_own_share() {
        let a = agent(&[
            ("WRENN_CGROUP_PARENT", "wrenn/agent-2"),
            ("WRENN_CAPSULE_NETWORK", "10.202.0.0/16"),
            ("WRENN_FIREWALL_TABLE", "wrenn_2"),
            ("WRENN_VETH_PREFIX", "w2v"),
            ("WRENN_CAPSULE_ID_BASE", "3221225472"),
            ("WRENN_CAPSULE_ID_RANGES", "1024"),
        ])
        .unwrap();
        let s = a.host_share;
        assert_eq!(s.cgroup_parent, "wrenn/agent-2");
        assert_eq!(s.capsule_network.to_string(), "10.202.0.0/16");
        assert_eq!(
            (s.firewall_table.as_str(), s.veth_prefix.as_str()),
            ("wrenn_2", "w2v")
        );
        assert_eq!((s.id_base, s.id_ranges), (3 << 30, 1024));
    }

    #[test]
    fn shares_that_would_reach_outside_are_refused_naming_the_variable() {
        for (var, value) in [
            ("WRENN_CGROUP_PARENT", "../escape"),
            ("WRENN_CGROUP_PARENT", "/abs"),
            ("WRENN_CGROUP_PARENT", "a//b"),
            ("WRENN_CAPSULE_NETWORK", "8.8.0.0/16"),
            ("WRENN_CAPSULE_NETWORK", "10.0.0.0/30"),
            ("WRENN_CAPSULE_NETWORK", "10.200.0.1/16"),
            ("WRENN_CAPSULE_NETWORK", "fd00::/64"),
            ("WRENN_FIREWALL_TABLE", "bad table"),
            ("WRENN_VETH_PREFIX", "much-too-long"),
            ("WRENN_VETH_PREFIX", "v;rm"),
            ("WRENN_CAPSULE_ID_BASE", "1000"),
            ("WRENN_CAPSULE_ID_BASE", "0"),
            ("WRENN_CAPSULE_ID_RANGES", "0"),
            ("WRENN_CAPSULE_ID_RANGES", "40000"),
        ] {
            let e = agent(&[(var, value)]).expect_err(value);
            assert_eq!(err_var(&e), var, "{var}={value}: {e}");
        }
    }
}
