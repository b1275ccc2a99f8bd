//! Egress settings of the agent: [`EgressConfig`] (`WRENN_EGRESS_ALLOW`,
//! `WRENN_EGRESS_DENY`) and the [`Cidr`] networks they list.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::ConfigError;
use super::source::{Vars, invalid};

/// Where capsules may send traffic, on top of the agent's default egress policy (which
/// blocks private, link-local, CGNAT, loopback, multicast and reserved ranges and the
/// host's own networks, and allows the rest of the internet).
///
/// Entries of both lists are matched most specific first (a deny wins a tie) and take
/// precedence over the defaults: `WRENN_EGRESS_ALLOW=10.1.0.0/16` opens one private
/// network, `WRENN_EGRESS_DENY=0.0.0.0/0` with `WRENN_EGRESS_ALLOW=1.2.3.0/24` allows
/// only that network. Capsules never reach each other, whatever the lists say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// `WRENN_EGRESS_ALLOW`: comma- or space-separated CIDRs (or single addresses).
    pub allow: Vec<Cidr>,
    /// `WRENN_EGRESS_DENY`: comma- or space-separated CIDRs (or single addresses).
    pub deny: Vec<Cidr>,
}

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `2001:db8::/32`, or a single address (a /32
/// or /128). Host bits must be zero (`10.0.0.1/8` is refused), so a typo cannot widen or
/// shift a rule silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`; `None` if the prefix is longer than the address or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let cidr = Self { addr, prefix };
        (prefix <= cidr.max_prefix() && cidr.network_bits() == cidr.host_bits_cleared())
            .then_some(cidr)
    }

    /// The network `addr/prefix` containing `addr` (host bits cleared); `None` if the
    /// prefix is longer than the address.
    pub fn containing(addr: IpAddr, prefix: u8) -> Option<Self> {
        let wide = Self { addr, prefix };
        if prefix > wide.max_prefix() {
            return None;
        }
        let bits = wide.host_bits_cleared();
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(((bits >> 96) as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        };
        Some(Self { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies in this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && Self {
                addr: ip,
                prefix: self.prefix,
            }
            .host_bits_cleared()
                == self.network_bits()
    }

    /// Whether `other` lies entirely in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// The network mask as bytes (4 for IPv4, 16 for IPv6).
    pub fn mask_bytes(&self) -> Vec<u8> {
        let bits = self.max_prefix();
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        mask.to_be_bytes()[..usize::from(bits / 8)].to_vec()
    }

    fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// The address as a left-aligned 128-bit number.
    fn network_bits(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// [`network_bits`](Self::network_bits) with the host part zeroed.
    fn host_bits_cleared(&self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            self.network_bits() & (u128::MAX << (128 - u32::from(self.prefix)))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Cidr::new(addr, prefix).ok_or_else(|| {
            let network = Cidr::containing(addr, prefix).map(|c| c.to_string());
            format!(
                "{s:?} has host bits set; did you mean {}?",
                network.unwrap_or_default()
            )
        })
    }
}

impl Vars<'_> {
    /// A comma- or whitespace-separated list of [`Cidr`]s; unset = empty.
    pub(super) fn cidrs(&self, var: &'static str) -> Result<Vec<Cidr>, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(Vec::new());
        };
        raw.split([',', ' ', '\t', '\n'])
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|reason| invalid(var, &raw, reason)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{agent, err_var};

    #[test]
    fn egress_lists_parse_cidrs_and_single_addresses() {
        let a = agent(&[]).unwrap();
        assert_eq!(a.egress, EgressConfig::default());
        let a = agent(&[
            ("WRENN_EGRESS_ALLOW", "10.1.0.0/16, 192.168.7.9 fd12::/16"),
            ("WRENN_EGRESS_DENY", "0.0.0.0/0,\t::/0"),
        ])
        .unwrap();
        let shown: Vec<String> = a.egress.allow.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.1.0.0/16", "192.168.7.9/32", "fd12::/16"]);
        let shown: Vec<String> = a.egress.deny.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["0.0.0.0/0", "::/0"]);
    }

    #[test]
    fn bad_egress_entries_are_refused_naming_the_variable() {
        for (var, value, reason) in [
            (
                "WRENN_EGRESS_ALLOW",
                "10.0.0.1/8",
                "did you mean 10.0.0.0/8?",
            ),
            (
                "WRENN_EGRESS_ALLOW",
                "10.0.0.0/33",
                "prefix length must be 0 to 32",
            ),
            ("WRENN_EGRESS_DENY", "fd00::1/8", "did you mean fd00::/8?"),
            ("WRENN_EGRESS_DENY", "example.com", "is not an IP address"),
            ("WRENN_EGRESS_DENY", "10.0.0.0/-1", "prefix length"),
            ("WRENN_EGRESS_DENY", "10.0.0.0/+8", "prefix length"),
            ("WRENN_EGRESS_DENY", "10.0.0.0/", "prefix length"),
        ] {
            let err = agent(&[(var, value)]).unwrap_err();
            assert_eq!(err_var(&err), var, "{var}={value}: {err}");
            assert!(err.to_string().contains(reason), "{var}={value}: {err}");
        }
    }

    #[test]
    fn cidrs_contain_what_they_cover() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.255.255.53".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            !net.contains("::a00:1".parse().unwrap()),
            "never across families"
        );
        assert!(net.covers(&"10.200.0.0/16".parse().unwrap()));
        assert!(!net.covers(&"0.0.0.0/0".parse().unwrap()));
        assert_eq!(net.mask_bytes(), [255, 0, 0, 0]);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.80".parse().unwrap()));
        assert_eq!(all.mask_bytes(), [0, 0, 0, 0]);
        let ula: Cidr = "fc00::/7".parse().unwrap();
        assert!(ula.contains("fd00::2".parse().unwrap()));
        assert!(!ula.contains("fe80::1".parse().unwrap()));
        assert_eq!(ula.mask_bytes()[..2], [0xfe, 0]);
        assert_eq!(
            Cidr::containing("192.0.2.2".parse().unwrap(), 24).map(|c| c.to_string()),
            Some("192.0.2.0/24".to_owned())
        );
        assert_eq!(Cidr::containing("192.0.2.2".parse().unwrap(), 33), None);
        assert_eq!(Cidr::new("192.0.2.2".parse().unwrap(), 24), None);
    }
}
