//! Links, addresses and routes over rtnetlink (what `ip link`, `ip addr` and `ip route`
//! do), on a [`Connection`] opened in the network namespace it configures.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{Connection, RequestError};

/// The loopback device's index in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// An rtnetlink connection in one network namespace.
#[derive(Debug)]
pub(crate) struct Links {
    conn: Connection,
}

impl Links {
    /// A connection in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            conn: Connection::open(netlink_sys::protocols::NETLINK_ROUTE)?,
        })
    }

    fn send(&mut self, messages: Vec<(u16, RouteNetlinkMessage)>) -> io::Result<()> {
        self.conn
            .send_all(messages)
            .map_err(|RequestError { error, .. }| error)
    }

    /// Creates the veth pair `host` (here, down) – `peer` (in the namespace `netns`,
    /// down). Fails with `AlreadyExists` when a link called `host` exists.
    pub fn add_veth(&mut self, host: &str, peer: &str, netns: BorrowedFd<'_>) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::NetNsFd(netns.as_raw_fd()),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(host.to_owned()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        self.send(vec![(
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            RouteNetlinkMessage::NewLink(msg),
        )])
    }

    /// The index of link `name`.
    pub fn index(&mut self, name: &str) -> io::Result<u32> {
        let mut request = LinkMessage::default();
        request.attributes = vec![LinkAttribute::IfName(name.to_owned())];
        match self.conn.get(RouteNetlinkMessage::GetLink(request))? {
            RouteNetlinkMessage::NewLink(link) => Ok(link.header.index),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected answer to a link query: {other:?}"),
            )),
        }
    }

    /// Configures link `index` in one round trip: no IPv6 addresses (no link-local
    /// path around the IPv4 rules), `address/prefix`, up; with `gateway`, the default
    /// route through it. With `loopback`, also brings `lo` up.
    pub fn configure(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        loopback: bool,
    ) -> io::Result<()> {
        let mut messages = Vec::new();
        if loopback {
            messages.push((NLM_F_ACK, RouteNetlinkMessage::SetLink(up(LOOPBACK_INDEX))));
        }
        let mut no_ipv6 = LinkMessage::default();
        no_ipv6.header.index = index;
        no_ipv6.attributes = vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )])];
        messages.push((NLM_F_ACK, RouteNetlinkMessage::SetLink(no_ipv6)));
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet;
        addr.header.prefix_len = prefix;
        addr.header.index = index;
        let broadcast = Ipv4Addr::from(u32::from(address) | (u32::MAX >> prefix));
        addr.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(address)),
            AddressAttribute::Address(IpAddr::V4(address)),
            AddressAttribute::Broadcast(broadcast),
        ];
        messages.push((
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            RouteNetlinkMessage::NewAddress(addr),
        ));
        messages.push((NLM_F_ACK, RouteNetlinkMessage::SetLink(up(index))));
        if let Some(gateway) = gateway {
            let mut route = RouteMessage::default();
            route.header.address_family = AddressFamily::Inet;
            route.header.table = RouteHeader::RT_TABLE_MAIN;
            route.header.protocol = RouteProtocol::Boot;
            route.header.scope = RouteScope::Universe;
            route.header.kind = RouteType::Unicast;
            route.attributes = vec![
                RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
                RouteAttribute::Oif(index),
            ];
            messages.push((
                NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
                RouteNetlinkMessage::NewRoute(route),
            ));
        }
        self.send(messages)
    }

    /// Deletes link `name` (a veth takes its peer with it). Missing is fine.
    pub fn delete(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![LinkAttribute::IfName(name.to_owned())];
        match self.send(vec![(NLM_F_ACK, RouteNetlinkMessage::DelLink(msg))]) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error()) => Ok(()),
            other => other,
        }
    }

    /// Every address of the namespace with its prefix length and link name, skipping
    /// links whose name starts with `skip_prefix`.
    pub fn addresses(&mut self, skip_prefix: &str) -> io::Result<Vec<(IpAddr, u8)>> {
        let mut request = LinkMessage::default();
        request.header.interface_family = AddressFamily::Unspec;
        let links = self.conn.dump(RouteNetlinkMessage::GetLink(request))?;
        let skipped: Vec<u32> = links
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l)
                    if l.attributes.iter().any(
                        |a| matches!(a, LinkAttribute::IfName(n) if n.starts_with(skip_prefix)),
                    ) =>
                {
                    Some(l.header.index)
                }
                _ => None,
            })
            .collect();
        let mut request = AddressMessage::default();
        request.header.family = AddressFamily::Unspec;
        let found = self.conn.dump(RouteNetlinkMessage::GetAddress(request))?;
        Ok(found
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if !skipped.contains(&a.header.index) => {
                    let prefix = a.header.prefix_len;
                    a.attributes
                        .iter()
                        .find_map(|attr| match attr {
                            AddressAttribute::Local(ip) => Some((*ip, prefix)),
                            _ => None,
                        })
                        .or_else(|| {
                            a.attributes.iter().find_map(|attr| match attr {
                                AddressAttribute::Address(ip) => Some((*ip, prefix)),
                                _ => None,
                            })
                        })
                }
                _ => None,
            })
            .collect())
    }
}

fn up(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg
}
