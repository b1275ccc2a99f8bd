//! A VM's way into its capsule network: a TAP device in the capsule's network
//! namespace, and NAT inside that namespace that gives every guest the **same**
//! address, so a guest's memory snapshot restores into any capsule's namespace.
//!
//! ```text
//! guest eth0 169.254.0.21/30 ── tap0 169.254.0.22/30 ─┐ namespace wrenn-{id}
//!                                   eth0 10.200.x.y/30 ─┴── veth ── host (gateway 10.200.x.y-1)
//! ```
//!
//! - towards the guest: everything the host sends to the capsule's address (envd's
//!   port, proxied ports) is DNAT-ed to [`GUEST_ADDR`];
//! - from the guest: what leaves through `eth0` is masqueraded to the capsule's
//!   address, so the host's firewall sees exactly what a process capsule sends (its
//!   rules apply unchanged: no path to other capsules, the host or private ranges);
//! - DNS: the guest's `resolv.conf` names [`TAP_ADDR`], which is DNAT-ed to the
//!   capsule's DNS forwarder on its gateway.
//!
//! Nothing here is reachable from outside the namespace except through those rules;
//! the guest never sees the host's addresses other than its gateway. The guest may
//! send only from its own address (the host's firewall also drops any source not
//! routed back through the capsule's interface), no IPv6, and nothing in the
//! namespace itself answers it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use super::firewall::{iface, l4proto, nfproto, rule};
use super::link::Links;
use super::nft::{self, Chain, CmpOp, Expr, Family, Hook, PayloadBase, Table};
use super::{CAPSULE_INTERFACE, netns};

/// The guest's address, the same in every capsule.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// The namespace's end of the TAP device: the guest's gateway and DNS server.
pub const TAP_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
/// Prefix length of the guest's link.
pub const TAP_PREFIX: u8 = 30;
/// The TAP device's name in the capsule's namespace.
pub const TAP_NAME: &str = "tap0";
/// The guest's MAC address, the same in every capsule (locally administered).
pub const GUEST_MAC: &str = "02:77:72:6e:00:15";
/// The nftables table (family `inet`) in the capsule's namespace.
const NAT_TABLE: &str = "wrenn-vm";

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const DNS_PORT: u16 = 53;

/// Adds the TAP device and the NAT to the namespace `netns` (blocking) of a capsule
/// whose address is `sandbox_addr` and whose gateway (DNS forwarder) is `gateway`.
/// An `owner` (uid, gid) may attach to the device without privileges (a jailed VMM).
pub fn add(
    netns: &str,
    sandbox_addr: Ipv4Addr,
    gateway: Ipv4Addr,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let ns = std::fs::File::open(netns::path(netns))?;
    in_namespace(&ns, move || {
        create_persistent_tap(TAP_NAME, owner)?;
        let mut links = Links::open()?;
        let index = links.index(TAP_NAME)?;
        links.configure(index, TAP_ADDR, TAP_PREFIX, None, false)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")?;
        nft::commit(nft::replace_batch(&nat_table(sandbox_addr, gateway))).map_err(io::Error::other)
    })
}

/// Runs `f` on a thread of its own inside the network namespace `ns` (only that
/// thread changes namespace).
fn in_namespace<T: Send>(
    ns: &std::fs::File,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// The NAT of the capsule's namespace (see the [module docs](self)).
fn nat_table(sandbox_addr: Ipv4Addr, gateway: Ipv4Addr) -> Table {
    let ipv4 = || nfproto(NFPROTO_IPV4);
    let daddr = |a: Ipv4Addr| {
        vec![
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 16,
                len: 4,
            },
            Expr::Cmp(CmpOp::Eq, a.octets().to_vec()),
        ]
    };
    let saddr = |a: Ipv4Addr| {
        vec![
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 12,
                len: 4,
            },
            Expr::Cmp(CmpOp::Eq, a.octets().to_vec()),
        ]
    };
    let dport = |p: u16| {
        vec![
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
            },
            Expr::Cmp(CmpOp::Eq, p.to_be_bytes().to_vec()),
        ]
    };
    let name = |n: &str| {
        let mut bytes = n.as_bytes().to_vec();
        bytes.push(0);
        bytes
    };
    let mut rules = vec![rule(
        "prerouting",
        [
            ipv4(),
            iface(nft::MetaKey::IifName, &name(CAPSULE_INTERFACE)),
            daddr(sandbox_addr),
            vec![Expr::LoadIpv4(GUEST_ADDR), Expr::Dnat4],
        ]
        .concat(),
        "what the host sends the capsule goes to the guest",
    )];
    for proto in [IPPROTO_UDP, IPPROTO_TCP] {
        rules.push(rule(
            "prerouting",
            [
                ipv4(),
                iface(nft::MetaKey::IifName, &name(TAP_NAME)),
                daddr(TAP_ADDR),
                l4proto(proto),
                dport(DNS_PORT),
                vec![Expr::LoadIpv4(gateway), Expr::Dnat4],
            ]
            .concat(),
            "the guest's DNS goes to the capsule's forwarder",
        ));
    }
    rules.push(rule(
        "forward",
        [
            ipv4(),
            iface(nft::MetaKey::IifName, &name(TAP_NAME)),
            vec![
                Expr::Payload {
                    base: PayloadBase::Network,
                    offset: 12,
                    len: 4,
                },
                Expr::Cmp(CmpOp::Neq, GUEST_ADDR.octets().to_vec()),
                Expr::Verdict(nft::Verdict::Drop),
            ],
        ]
        .concat(),
        "the guest sends only from its own address",
    ));
    rules.push(rule(
        "forward",
        [
            nfproto(NFPROTO_IPV6),
            iface(nft::MetaKey::IifName, &name(TAP_NAME)),
            vec![Expr::Verdict(nft::Verdict::Drop)],
        ]
        .concat(),
        "no IPv6 from the guest",
    ));
    rules.push(rule(
        "input",
        [
            iface(nft::MetaKey::IifName, &name(TAP_NAME)),
            vec![Expr::Verdict(nft::Verdict::Drop)],
        ]
        .concat(),
        "nothing of the namespace itself answers the guest",
    ));
    rules.push(rule(
        "postrouting",
        [
            ipv4(),
            iface(nft::MetaKey::OifName, &name(CAPSULE_INTERFACE)),
            saddr(GUEST_ADDR),
            vec![Expr::Masquerade],
        ]
        .concat(),
        "the guest leaves as the capsule",
    ));
    Table {
        family: Family::Inet,
        name: NAT_TABLE.to_owned(),
        chains: vec![
            Chain::base("prerouting", Hook::Prerouting, "nat", -100),
            Chain::base("forward", Hook::Forward, "filter", 0),
            Chain::base("input", Hook::Input, "filter", 0),
            Chain::base("postrouting", Hook::Postrouting, "nat", 100),
        ],
        rules,
        userdata: b"wrenn: the VM of this capsule".to_vec(),
    }
}

/// `TUNSETIFF` / `TUNSETPERSIST` / `TUNSETOWNER` / `TUNSETGROUP` (`linux/if_tun.h`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Creates the persistent TAP device `name` in the calling thread's namespace (what
/// `ip tuntap add mode tap [user U group G]` does); the VMM then attaches to it by
/// name.
#[allow(unsafe_code)]
fn create_persistent_tap(name: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: the descriptor is open; `request` outlives the call and has the layout
    // the ioctl expects.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; the argument is an integer.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some((uid, gid)) = owner {
        for (request, id) in [(TUNSETOWNER, uid), (TUNSETGROUP, gid)] {
            // SAFETY: as above; the argument is an integer.
            if unsafe { libc::ioctl(tun.as_raw_fd(), request, libc::c_ulong::from(id)) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_nat_sends_the_capsules_traffic_to_the_guest_and_the_guests_out_as_the_capsule() {
        let table = nat_table(Ipv4Addr::new(10, 200, 0, 6), Ipv4Addr::new(10, 200, 0, 5));
        let comments: Vec<_> = table.rules.iter().map(|r| r.comment.as_str()).collect();
        assert_eq!(
            comments,
            [
                "what the host sends the capsule goes to the guest",
                "the guest's DNS goes to the capsule's forwarder",
                "the guest's DNS goes to the capsule's forwarder",
                "the guest sends only from its own address",
                "no IPv6 from the guest",
                "nothing of the namespace itself answers the guest",
                "the guest leaves as the capsule",
            ]
        );
        assert!(
            table.rules[0]
                .exprs
                .ends_with(&[Expr::LoadIpv4(GUEST_ADDR), Expr::Dnat4])
        );
        assert!(
            table.rules[1]
                .exprs
                .ends_with(&[Expr::LoadIpv4(Ipv4Addr::new(10, 200, 0, 5)), Expr::Dnat4])
        );
    }
}
