//! The capsules' firewall: one nftables table of ours (`inet <table>`, default `wrenn`)
//! per capsule address range, replaced atomically in one batch at start and re-asserted
//! periodically.
//!
//! Why a table of our own rather than iptables chains: in nftables every base chain
//! sees the packet, and a `drop` in any of them is final — an `accept` elsewhere (Docker,
//! firewalld, `iptables -I FORWARD 1 -j ACCEPT`) cannot undo it. So nothing inserted
//! into FORWARD or INPUT can open what this table refuses. (The converse also holds: a
//! host whose own rules drop forwarded traffic also drops capsule egress.)
//!
//! Capsule packets are recognised by the host end of their veth (`iifname
//! "<prefix>*"`) *and* their source address in the range, so several agents (or test
//! runtimes) with different ranges can share a host without their tables interfering;
//! source addresses cannot be forged (the `prerouting` rule drops a packet whose source
//! does not route back through the interface it came in on).
//!
//! ```text
//! table inet wrenn {
//!   chain prerouting  (filter, prerouting, -150): from a capsule, source not routed back there → drop
//!   chain input       (filter, input, -5): IPv6 from capsules → drop
//!                     from a capsule (iifname + saddr) → jump capsule_to_host
//!   chain capsule_to_host: replies to connections the host opened → accept
//!                     DNS (udp/tcp 53) and ICMP echo to a gateway → accept
//!                     anything else → reject (counted)
//!   chain forward     (filter, forward, -5): from a capsule → jump egress
//!                     to a capsule: replies → accept, anything else → drop
//!   chain egress:     the ordered policy of [`super::policy`], then accept
//!   chain postrouting (nat, srcnat 100): from the range to outside it → masquerade
//! }
//! ```

use std::net::IpAddr;

use wrenn_core::config::Cidr;

use super::nft::{
    self, BaseChain, Chain, CmpOp, Expr, Family, Hook, MetaKey, NftError, PayloadBase, Rule, Table,
    Verdict,
};
use super::policy::{Action, EgressPolicy};

/// `NFPROTO_IPV4` / `NFPROTO_IPV6` as `meta nfproto` values.
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// Conntrack state bits: established | related.
const CT_ESTABLISHED_RELATED: u32 = 2 | 4;

/// What the table is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Table name (`inet <name>`).
    pub table: String,
    /// Prefix of the host ends of capsule veths.
    pub interface_prefix: String,
    /// The capsule address range.
    pub capsules: Cidr,
    /// Where capsules may send traffic.
    pub policy: EgressPolicy,
}

/// The nftables table for `spec`.
pub(crate) fn table(spec: &FirewallSpec) -> Table {
    let p = spec.interface_prefix.as_bytes();
    let caps = spec.capsules;
    let from_capsule = |rest: Vec<Expr>| -> Vec<Expr> {
        let mut e = nfproto(NFPROTO_IPV4);
        e.extend(iface(MetaKey::IifName, p));
        e.extend(ip_addr(Dir::Source, &caps, CmpOp::Eq));
        e.extend(rest);
        e
    };
    let to_capsule = |rest: Vec<Expr>| -> Vec<Expr> {
        let mut e = nfproto(NFPROTO_IPV4);
        e.extend(iface(MetaKey::OifName, p));
        e.extend(ip_addr(Dir::Destination, &caps, CmpOp::Eq));
        e.extend(rest);
        e
    };
    let mut rules = vec![
        rule(
            "prerouting",
            [
                iface(MetaKey::IifName, p),
                vec![Expr::FibSaddrIifOif, Expr::Cmp(CmpOp::Eq, vec![0; 4])],
                drop_counted(),
            ]
            .concat(),
            "capsule source address not routed back through its interface",
        ),
        rule(
            "input",
            [
                nfproto(NFPROTO_IPV6),
                iface(MetaKey::IifName, p),
                drop_counted(),
            ]
            .concat(),
            "capsules have no IPv6 to this host",
        ),
        rule(
            "input",
            from_capsule(vec![Expr::Verdict(Verdict::Jump("capsule_to_host"))]),
            "capsule to this host",
        ),
        rule(
            "capsule_to_host",
            [
                established_or_related(),
                vec![Expr::Verdict(Verdict::Accept)],
            ]
            .concat(),
            "replies to connections the host opened",
        ),
    ];
    for (proto, name) in [(17u8, "udp"), (6u8, "tcp")] {
        rules.push(rule(
            "capsule_to_host",
            [
                nfproto(NFPROTO_IPV4),
                ip_addr(Dir::Destination, &caps, CmpOp::Eq),
                l4proto(proto),
                vec![
                    Expr::Payload {
                        base: PayloadBase::Transport,
                        offset: 2,
                        len: 2,
                    },
                    Expr::Cmp(CmpOp::Eq, 53u16.to_be_bytes().to_vec()),
                    Expr::Verdict(Verdict::Accept),
                ],
            ]
            .concat(),
            &format!("DNS ({name}) to the forwarder on the gateway"),
        ));
    }
    rules.push(rule(
        "capsule_to_host",
        [
            nfproto(NFPROTO_IPV4),
            ip_addr(Dir::Destination, &caps, CmpOp::Eq),
            l4proto(1),
            vec![
                Expr::Payload {
                    base: PayloadBase::Transport,
                    offset: 0,
                    len: 1,
                },
                Expr::Cmp(CmpOp::Eq, vec![8]),
                Expr::Verdict(Verdict::Accept),
            ],
        ]
        .concat(),
        "ping the gateway",
    ));
    rules.push(rule(
        "capsule_to_host",
        reject_counted(),
        "nothing else of this host",
    ));
    rules.push(rule(
        "forward",
        from_capsule(vec![Expr::Verdict(Verdict::Jump("egress"))]),
        "capsule egress",
    ));
    rules.push(rule(
        "forward",
        [
            nfproto(NFPROTO_IPV6),
            iface(MetaKey::IifName, p),
            vec![Expr::Verdict(Verdict::Jump("egress"))],
        ]
        .concat(),
        "capsule egress (IPv6)",
    ));
    rules.push(rule(
        "forward",
        to_capsule(
            [
                established_or_related(),
                vec![Expr::Verdict(Verdict::Accept)],
            ]
            .concat(),
        ),
        "replies to capsule connections",
    ));
    rules.push(rule(
        "forward",
        to_capsule(drop_counted()),
        "no connections into capsules",
    ));
    for entry in spec.policy.entries() {
        let family = if entry.network.is_ipv4() {
            NFPROTO_IPV4
        } else {
            NFPROTO_IPV6
        };
        let verdict = match entry.action {
            Action::Allow => vec![Expr::Verdict(Verdict::Accept)],
            Action::Deny => reject_counted(),
        };
        rules.push(rule(
            "egress",
            [
                nfproto(family),
                ip_addr(Dir::Destination, &entry.network, CmpOp::Eq),
                verdict,
            ]
            .concat(),
            &format!("{} {}", entry.network, entry.reason),
        ));
    }
    rules.push(rule(
        "egress",
        vec![Expr::Verdict(Verdict::Accept)],
        "the public internet",
    ));
    rules.push(rule(
        "postrouting",
        [
            nfproto(NFPROTO_IPV4),
            ip_addr(Dir::Source, &caps, CmpOp::Eq),
            ip_addr(Dir::Destination, &caps, CmpOp::Neq),
            vec![Expr::Masquerade],
        ]
        .concat(),
        "capsule egress NAT",
    ));
    let filter = |hook, priority| {
        Some(BaseChain {
            hook,
            kind: "filter",
            priority,
        })
    };
    Table {
        family: Family::Inet,
        name: spec.table.clone(),
        chains: vec![
            Chain {
                name: "prerouting",
                base: filter(Hook::Prerouting, -150),
            },
            Chain {
                name: "input",
                base: filter(Hook::Input, -5),
            },
            Chain {
                name: "capsule_to_host",
                base: None,
            },
            Chain {
                name: "forward",
                base: filter(Hook::Forward, -5),
            },
            Chain {
                name: "egress",
                base: None,
            },
            Chain::base("postrouting", Hook::Postrouting, "nat", 100),
        ],
        rules,
        userdata: format!("wrenn capsules {}", spec.capsules).into_bytes(),
    }
}

/// Replaces our table with the one for `spec`, atomically (blocking; microseconds).
pub(crate) fn apply(spec: &FirewallSpec) -> Result<(), NftError> {
    nft::commit(nft::replace_batch(&table(spec)))
}

/// `NFPROTO_IPV4` as an nfgenmsg family: where iptables-nft keeps its tables.
const FAMILY_IP: u8 = 2;

/// What iptables (e.g. Docker's `FORWARD` policy `DROP`) will do to capsule traffic
/// that our table accepts: a drop in *their* chain is as final as one in ours, so the
/// operator must allow capsule traffic there. Returns the warnings (blocking).
pub(crate) fn foreign_drops(interface_prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (chain, what) in [
        ("FORWARD", "capsule egress"),
        ("INPUT", "DNS from capsules to the agent's forwarder"),
    ] {
        if let Ok(Some(0)) = nft::chain_policy(FAMILY_IP, "filter", chain) {
            out.push(format!(
                "iptables' {chain} chain has policy DROP (Docker sets this for FORWARD): {what} is \
                 dropped unless that chain accepts it, e.g. `iptables -I {chain} -i {interface_prefix}+ \
                 -j ACCEPT`{}",
                if chain == "FORWARD" {
                    format!(" and `iptables -I FORWARD -o {interface_prefix}+ -j ACCEPT` (or the same in DOCKER-USER)")
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}

/// Deletes the table `inet <name>` if it exists (blocking).
pub(crate) fn delete(name: &str) -> Result<(), NftError> {
    nft::commit(nft::delete_batch(Family::Inet, name))
}

pub(super) fn rule(chain: &'static str, exprs: Vec<Expr>, comment: &str) -> Rule {
    Rule {
        chain,
        exprs,
        comment: comment.to_owned(),
    }
}

pub(super) fn nfproto(proto: u8) -> Vec<Expr> {
    vec![
        Expr::Meta(MetaKey::NfProto),
        Expr::Cmp(CmpOp::Eq, vec![proto]),
    ]
}

pub(super) fn l4proto(proto: u8) -> Vec<Expr> {
    vec![
        Expr::Meta(MetaKey::L4Proto),
        Expr::Cmp(CmpOp::Eq, vec![proto]),
    ]
}

/// `iifname "<prefix>*"`: comparing only the prefix's bytes of the name.
pub(super) fn iface(key: MetaKey, prefix: &[u8]) -> Vec<Expr> {
    vec![Expr::Meta(key), Expr::Cmp(CmpOp::Eq, prefix.to_vec())]
}

#[derive(Clone, Copy)]
enum Dir {
    Source,
    Destination,
}

/// `ip saddr/daddr <net>` (or `ip6 …`), as nft encodes it: load the address, mask it
/// unless the prefix is full, compare with the network address. The caller checks the
/// family first. A /0 network matches any address of its family.
fn ip_addr(dir: Dir, net: &Cidr, op: CmpOp) -> Vec<Expr> {
    let (offset, len) = match (net.addr(), dir) {
        (IpAddr::V4(_), Dir::Source) => (12, 4),
        (IpAddr::V4(_), Dir::Destination) => (16, 4),
        (IpAddr::V6(_), Dir::Source) => (8, 16),
        (IpAddr::V6(_), Dir::Destination) => (24, 16),
    };
    let mut out = vec![Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len,
    }];
    let full = if net.is_ipv4() { 32 } else { 128 };
    if net.prefix() < full {
        out.push(Expr::And(net.mask_bytes()));
    }
    let bytes = match net.addr() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    out.push(Expr::Cmp(op, bytes));
    out
}

fn established_or_related() -> Vec<Expr> {
    vec![
        Expr::CtState,
        Expr::And(CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec()),
        Expr::Cmp(CmpOp::Neq, vec![0; 4]),
    ]
}

fn drop_counted() -> Vec<Expr> {
    vec![Expr::Counter, Expr::Verdict(Verdict::Drop)]
}

fn reject_counted() -> Vec<Expr> {
    vec![Expr::Counter, Expr::RejectAdminProhibited]
}

#[cfg(test)]
mod tests {
    use super::*;
    use wrenn_core::config::EgressConfig;

    #[test]
    fn the_policy_of_a_base_chain_is_read_back_from_the_kernel() {
        let mut s = spec();
        s.table = format!("network_policy_{}", std::process::id());
        apply(&s).expect("installing a table needs root (CAP_NET_ADMIN) and nf_tables");
        let input = nft::chain_policy(1, &s.table, "input");
        let regular = nft::chain_policy(1, &s.table, "egress");
        let missing = nft::chain_policy(1, &s.table, "no-such-chain");
        delete(&s.table).unwrap();
        assert_eq!(input.unwrap(), Some(1), "NF_ACCEPT");
        assert_eq!(regular.unwrap(), None, "not a base chain");
        assert_eq!(missing.unwrap(), None);
        assert_eq!(
            nft::chain_policy(1, &s.table, "input").unwrap(),
            None,
            "table gone"
        );
    }

    fn spec() -> FirewallSpec {
        let capsules: Cidr = "10.200.0.0/16".parse().unwrap();
        FirewallSpec {
            table: "wrenn".into(),
            interface_prefix: "wrenn-v".into(),
            capsules,
            policy: EgressPolicy::new(capsules, &EgressConfig::default(), &[]),
        }
    }

    #[test]
    fn capsule_packets_are_matched_by_interface_prefix_and_source_range() {
        let t = table(&spec());
        let jump = t
            .rules
            .iter()
            .find(|r| r.chain == "input" && r.comment == "capsule to this host")
            .unwrap();
        assert_eq!(
            jump.exprs,
            vec![
                Expr::Meta(MetaKey::NfProto),
                Expr::Cmp(CmpOp::Eq, vec![2]),
                Expr::Meta(MetaKey::IifName),
                Expr::Cmp(CmpOp::Eq, b"wrenn-v".to_vec()),
                Expr::Payload {
                    base: PayloadBase::Network,
                    offset: 12,
                    len: 4
                },
                Expr::And(vec![255, 255, 0, 0]),
                Expr::Cmp(CmpOp::Eq, vec![10, 200, 0, 0]),
                Expr::Verdict(Verdict::Jump("capsule_to_host")),
            ]
        );
    }

    #[test]
    fn a_host_address_is_compared_whole_and_ipv6_at_its_offsets() {
        let host: Cidr = "192.0.2.2/32".parse().unwrap();
        assert_eq!(
            ip_addr(Dir::Destination, &host, CmpOp::Eq),
            vec![
                Expr::Payload {
                    base: PayloadBase::Network,
                    offset: 16,
                    len: 4
                },
                Expr::Cmp(CmpOp::Eq, vec![192, 0, 2, 2]),
            ]
        );
        let ula: Cidr = "fc00::/7".parse().unwrap();
        let e = ip_addr(Dir::Destination, &ula, CmpOp::Eq);
        assert_eq!(
            e[0],
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 24,
                len: 16
            }
        );
        let mut mask = vec![0xfe];
        mask.extend([0; 15]);
        assert_eq!(e[1], Expr::And(mask));
    }

    #[test]
    fn every_egress_entry_becomes_one_rule_in_policy_order_then_accept() {
        let s = spec();
        let t = table(&s);
        let egress: Vec<&Rule> = t.rules.iter().filter(|r| r.chain == "egress").collect();
        assert_eq!(egress.len(), s.policy.entries().len() + 1);
        assert!(
            egress[0]
                .comment
                .starts_with("10.200.0.0/16 capsule to capsule")
        );
        assert_eq!(
            egress.last().unwrap().exprs,
            vec![Expr::Verdict(Verdict::Accept)]
        );
        // Every chain a rule names exists, and every jump target too.
        for r in &t.rules {
            assert!(t.chains.iter().any(|c| c.name == r.chain), "{}", r.chain);
            for e in &r.exprs {
                if let Expr::Verdict(Verdict::Jump(target)) = e {
                    assert!(t.chains.iter().any(|c| &c.name == target));
                }
            }
        }
    }
}
