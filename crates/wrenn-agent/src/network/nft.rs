//! nftables over netlink, encoded by hand: a table with base and regular chains and
//! rules made of the few expressions the firewall needs, replaced in one atomic batch.
//!
//! The encoding follows `linux/netfilter/nf_tables.h`: every message is an `nfgenmsg`
//! (family, version, resource id) followed by attributes; numbers are big-endian
//! except register contents, which are the raw bytes of the packet field (or host-order
//! for conntrack state and interface indexes).

use std::io;

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NetlinkDeserializable,
    NetlinkHeader, NetlinkSerializable, Nla,
};

use super::netlink::{Connection, RequestError};

/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` / `NFNL_MSG_BATCH_END`.
const MSG_BATCH_BEGIN: u16 = 0x10;
const MSG_BATCH_END: u16 = 0x11;
// `enum nf_tables_msg_types`.
const MSG_NEWTABLE: u16 = 0;
const MSG_DELTABLE: u16 = 2;
const MSG_NEWCHAIN: u16 = 3;
const MSG_GETCHAIN: u16 = 4;
const MSG_NEWRULE: u16 = 6;

// Attributes (`enum nft_*_attributes`).
const TABLE_NAME: u16 = 1;
const TABLE_FLAGS: u16 = 2;
const TABLE_USERDATA: u16 = 6;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const RULE_USERDATA: u16 = 7;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
/// `NFTNL_UDATA_RULE_COMMENT`: the comment `nft list` shows.
const UDATA_RULE_COMMENT: u8 = 0;

/// `NFT_REG_VERDICT` and the first data register (`NFT_REG_1`).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;

/// Protocol families (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Family {
    /// `inet`: IPv4 and IPv6.
    Inet = 1,
}

/// Netfilter hooks (`NF_INET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    /// Before routing.
    Prerouting = 0,
    /// To this host.
    Input = 1,
    /// Routed through this host.
    Forward = 2,
    /// After routing, leaving.
    Postrouting = 4,
}

/// A base chain's hook, type and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BaseChain {
    /// The hook.
    pub hook: Hook,
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// Lower runs first.
    pub priority: i32,
}

/// A chain of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    /// Its name.
    pub name: &'static str,
    /// `Some` for a base chain (policy accept), `None` for a jump target.
    pub base: Option<BaseChain>,
}

impl Chain {
    /// A base chain `name` of type `kind` (`filter`, `nat`) on `hook` at `priority`.
    pub(crate) fn base(name: &'static str, hook: Hook, kind: &'static str, priority: i32) -> Self {
        Self {
            name,
            base: Some(BaseChain {
                hook,
                kind,
                priority,
            }),
        }
    }
}

/// Comparison operators (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    /// Equal.
    Eq = 0,
    /// Not equal.
    Neq = 1,
}

/// Where a payload load starts (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadBase {
    /// The IP header.
    Network = 1,
    /// The TCP/UDP/ICMP header.
    Transport = 2,
}

/// Packet metadata (`enum nft_meta_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaKey {
    /// Input interface name (16 bytes, NUL padded).
    IifName = 6,
    /// Output interface name.
    OifName = 7,
    /// Layer 3 protocol family (1 byte, `NFPROTO_*`).
    NfProto = 15,
    /// Layer 4 protocol (1 byte, `IPPROTO_*`).
    L4Proto = 16,
}

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `accept`: ends this table's evaluation of the packet at this hook.
    Accept,
    /// `drop`: final for the packet, whatever other tables say.
    Drop,
    /// `jump <chain>`.
    Jump(&'static str),
}

/// The expressions the firewall uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// Load packet metadata into register 1.
    Meta(MetaKey),
    /// Load `len` bytes at `offset` from `base` into register 1.
    Payload {
        /// Header.
        base: PayloadBase,
        /// Byte offset.
        offset: u32,
        /// Byte count.
        len: u32,
    },
    /// Register 1 = (register 1 & mask) ^ 0, over `mask.len()` bytes.
    And(Vec<u8>),
    /// Compare register 1 with `data`; a mismatch ends the rule.
    Cmp(CmpOp, Vec<u8>),
    /// Load the conntrack state bits (host-order u32) into register 1.
    CtState,
    /// Look up the route back to the source through the input interface; load its
    /// output interface index (0 = none) into register 1 (`fib saddr . iif oif`).
    FibSaddrIifOif,
    /// Count packets and bytes.
    Counter,
    /// Reject: ICMP(v6) administratively prohibited (`reject with icmpx admin-prohibited`).
    RejectAdminProhibited,
    /// Source NAT to the output interface's address.
    Masquerade,
    /// Load an IPv4 address into register 1 (`immediate`).
    LoadIpv4(std::net::Ipv4Addr),
    /// Destination NAT (IPv4) to the address in register 1.
    Dnat4,
    /// Set the verdict.
    Verdict(Verdict),
}

/// A rule: expressions in order, with a comment `nft list` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// The chain it is appended to.
    pub chain: &'static str,
    /// What it does.
    pub exprs: Vec<Expr>,
    /// Why (shown by `nft list ruleset`).
    pub comment: String,
}

/// A whole table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    /// Family.
    pub family: Family,
    /// Name.
    pub name: String,
    /// Chains, created in order.
    pub chains: Vec<Chain>,
    /// Rules, appended in order.
    pub rules: Vec<Rule>,
    /// Opaque data stored with the table (a description of what manages it).
    pub userdata: Vec<u8>,
}

/// Why a batch was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NftError {
    /// The kernel has no nf_tables netlink interface.
    #[error("cannot open an nf_tables netlink socket")]
    Socket(#[source] io::Error),
    /// A message of the batch was refused; `what` describes it.
    #[error("nf_tables refused {what}")]
    Refused {
        /// The message (table, chain or rule with its comment).
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// A netlink attribute: bytes or nested attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    /// A leaf.
    Bytes(u16, Vec<u8>),
    /// Nested attributes.
    Nested(u16, Vec<Attr>),
}

impl Attr {
    fn str(kind: u16, s: &str) -> Self {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        Self::Bytes(kind, bytes)
    }

    fn u32(kind: u16, v: u32) -> Self {
        Self::Bytes(kind, v.to_be_bytes().to_vec())
    }

    fn i32(kind: u16, v: i32) -> Self {
        Self::Bytes(kind, v.to_be_bytes().to_vec())
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes(_, v) => v.len(),
            Attr::Nested(_, attrs) => attrs.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Bytes(k, _) | Attr::Nested(k, _) => *k,
        }
    }

    fn is_nested(&self) -> bool {
        matches!(self, Attr::Nested(..))
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes(_, v) => buffer[..v.len()].copy_from_slice(v),
            Attr::Nested(_, attrs) => attrs.as_slice().emit(buffer),
        }
    }
}

/// One nfnetlink message: `nfgenmsg` + attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NftMessage {
    /// Full netlink message type.
    pub message_type: u16,
    /// `nfgen_family`.
    pub family: u8,
    /// `res_id` (the subsystem for batch delimiters).
    pub res_id: u16,
    /// Attributes.
    pub attrs: Vec<Attr>,
}

impl NftMessage {
    fn nft(kind: u16, family: Family, attrs: Vec<Attr>) -> Self {
        Self {
            message_type: (SUBSYS_NFTABLES << 8) | kind,
            family: family as u8,
            res_id: 0,
            attrs,
        }
    }

    fn batch(kind: u16) -> Self {
        Self {
            message_type: kind,
            family: 0,
            res_id: SUBSYS_NFTABLES,
            attrs: Vec::new(),
        }
    }
}

impl NetlinkSerializable for NftMessage {
    fn message_type(&self) -> u16 {
        self.message_type
    }

    fn buffer_len(&self) -> usize {
        4 + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.family;
        buffer[1] = 0; // NFNETLINK_V0
        buffer[2..4].copy_from_slice(&self.res_id.to_be_bytes());
        self.attrs.as_slice().emit(&mut buffer[4..]);
    }
}

impl NetlinkDeserializable for NftMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        // Top-level attributes only, values kept as bytes (nested ones unparsed).
        let mut attrs = Vec::new();
        for nla in netlink_packet_core::NlasIterator::new(payload.get(4..).unwrap_or_default()) {
            let nla = nla?;
            attrs.push(Attr::Bytes(nla.kind(), nla.value().to_vec()));
        }
        Ok(Self {
            message_type: header.message_type,
            family: payload.first().copied().unwrap_or(0),
            res_id: 0,
            attrs,
        })
    }
}

fn expr(name: &str, data: Vec<Attr>) -> Attr {
    let mut attrs = vec![Attr::str(EXPR_NAME, name)];
    if !data.is_empty() {
        attrs.push(Attr::Nested(EXPR_DATA, data));
    }
    Attr::Nested(LIST_ELEM, attrs)
}

fn data_value(kind: u16, bytes: &[u8]) -> Attr {
    Attr::Nested(kind, vec![Attr::Bytes(DATA_VALUE, bytes.to_vec())])
}

impl Expr {
    /// The `NFTA_LIST_ELEM` attribute of this expression.
    pub(crate) fn encode(&self) -> Attr {
        match self {
            Expr::Meta(key) => expr(
                "meta",
                vec![Attr::u32(2, *key as u32), Attr::u32(1, REG_1)], // KEY, DREG
            ),
            Expr::Payload { base, offset, len } => expr(
                "payload",
                vec![
                    Attr::u32(1, REG_1),        // DREG
                    Attr::u32(2, *base as u32), // BASE
                    Attr::u32(3, *offset),      // OFFSET
                    Attr::u32(4, *len),         // LEN
                ],
            ),
            Expr::And(mask) => expr(
                "bitwise",
                vec![
                    Attr::u32(1, REG_1),                 // SREG
                    Attr::u32(2, REG_1),                 // DREG
                    Attr::u32(3, mask.len() as u32),     // LEN
                    data_value(4, mask),                 // MASK
                    data_value(5, &vec![0; mask.len()]), // XOR
                ],
            ),
            Expr::Cmp(op, data) => expr(
                "cmp",
                vec![
                    Attr::u32(1, REG_1),      // SREG
                    Attr::u32(2, *op as u32), // OP
                    data_value(3, data),      // DATA
                ],
            ),
            // KEY = NFT_CT_STATE (0), DREG.
            Expr::CtState => expr("ct", vec![Attr::u32(1, REG_1), Attr::u32(2, 0)]),
            Expr::FibSaddrIifOif => expr(
                "fib",
                vec![
                    Attr::u32(1, REG_1), // DREG
                    Attr::u32(2, 1),     // RESULT = NFT_FIB_RESULT_OIF
                    Attr::u32(3, 1 | 8), // FLAGS = NFTA_FIB_F_SADDR | NFTA_FIB_F_IIF
                ],
            ),
            Expr::Counter => expr("counter", Vec::new()),
            Expr::RejectAdminProhibited => expr(
                "reject",
                vec![
                    Attr::u32(1, 2),         // TYPE = NFT_REJECT_ICMPX_UNREACH
                    Attr::Bytes(2, vec![3]), // ICMP_CODE = NFT_REJECT_ICMPX_ADMIN_PROHIBITED
                ],
            ),
            Expr::Masquerade => expr("masq", Vec::new()),
            Expr::LoadIpv4(address) => expr(
                "immediate",
                vec![
                    Attr::u32(1, REG_1),              // DREG
                    data_value(2, &address.octets()), // DATA
                ],
            ),
            Expr::Dnat4 => expr(
                "nat",
                vec![
                    Attr::u32(1, 1),     // TYPE = NFT_NAT_DNAT
                    Attr::u32(2, 2),     // FAMILY = NFPROTO_IPV4
                    Attr::u32(3, REG_1), // REG_ADDR_MIN
                ],
            ),
            Expr::Verdict(v) => {
                let verdict = match v {
                    Verdict::Accept => vec![Attr::i32(VERDICT_CODE, 1)], // NF_ACCEPT
                    Verdict::Drop => vec![Attr::i32(VERDICT_CODE, 0)],   // NF_DROP
                    Verdict::Jump(chain) => vec![
                        Attr::i32(VERDICT_CODE, -3), // NFT_JUMP
                        Attr::str(VERDICT_CHAIN, chain),
                    ],
                };
                expr(
                    "immediate",
                    vec![
                        Attr::u32(1, REG_VERDICT),                                  // DREG
                        Attr::Nested(2, vec![Attr::Nested(DATA_VERDICT, verdict)]), // DATA
                    ],
                )
            }
        }
    }
}

/// The messages that replace `table` atomically: create it if missing (so the delete
/// cannot fail), delete it with everything in it, create it again, its chains and rules.
/// Between `BATCH_BEGIN` and `BATCH_END` nothing is visible to packets until the commit.
pub(crate) fn replace_batch(table: &Table) -> Vec<(u16, NftMessage, String)> {
    let family = table.family;
    let name = || Attr::str(TABLE_NAME, &table.name);
    let what_table = format!("table {} {}", family_name(family), table.name);
    let mut out = vec![(0, NftMessage::batch(MSG_BATCH_BEGIN), "batch start".into())];
    let create = NLM_F_CREATE | NLM_F_ACK;
    out.push((
        create,
        NftMessage::nft(MSG_NEWTABLE, family, vec![name()]),
        what_table.clone(),
    ));
    out.push((
        NLM_F_ACK,
        NftMessage::nft(MSG_DELTABLE, family, vec![name()]),
        format!("deleting {what_table}"),
    ));
    out.push((
        create,
        NftMessage::nft(
            MSG_NEWTABLE,
            family,
            vec![
                name(),
                Attr::u32(TABLE_FLAGS, 0),
                Attr::Bytes(TABLE_USERDATA, table.userdata.clone()),
            ],
        ),
        what_table.clone(),
    ));
    for chain in &table.chains {
        let mut attrs = vec![
            Attr::str(CHAIN_TABLE, &table.name),
            Attr::str(CHAIN_NAME, chain.name),
        ];
        if let Some(base) = chain.base {
            attrs.push(Attr::Nested(
                CHAIN_HOOK,
                vec![
                    Attr::u32(HOOK_HOOKNUM, base.hook as u32),
                    Attr::i32(HOOK_PRIORITY, base.priority),
                ],
            ));
            attrs.push(Attr::u32(CHAIN_POLICY, 1)); // NF_ACCEPT
            attrs.push(Attr::str(CHAIN_TYPE, base.kind));
        }
        out.push((
            create,
            NftMessage::nft(MSG_NEWCHAIN, family, attrs),
            format!("chain {} of {what_table}", chain.name),
        ));
    }
    for rule in &table.rules {
        let mut attrs = vec![
            Attr::str(RULE_TABLE, &table.name),
            Attr::str(RULE_CHAIN, rule.chain),
            Attr::Nested(
                RULE_EXPRESSIONS,
                rule.exprs.iter().map(Expr::encode).collect(),
            ),
        ];
        if !rule.comment.is_empty() {
            attrs.push(Attr::Bytes(RULE_USERDATA, comment_udata(&rule.comment)));
        }
        out.push((
            create | NLM_F_APPEND,
            NftMessage::nft(MSG_NEWRULE, family, attrs),
            format!("rule \"{}\" in chain {}", rule.comment, rule.chain),
        ));
    }
    out.push((0, NftMessage::batch(MSG_BATCH_END), "batch end".into()));
    out
}

/// The messages that delete `table` if it exists.
pub(crate) fn delete_batch(family: Family, table: &str) -> Vec<(u16, NftMessage, String)> {
    let name = || Attr::str(TABLE_NAME, table);
    let what = format!("deleting table {} {table}", family_name(family));
    vec![
        (0, NftMessage::batch(MSG_BATCH_BEGIN), "batch start".into()),
        (
            NLM_F_CREATE | NLM_F_ACK,
            NftMessage::nft(MSG_NEWTABLE, family, vec![name()]),
            what.clone(),
        ),
        (
            NLM_F_ACK,
            NftMessage::nft(MSG_DELTABLE, family, vec![name()]),
            what,
        ),
        (0, NftMessage::batch(MSG_BATCH_END), "batch end".into()),
    ]
}

/// Sends a batch over a fresh nfnetlink socket and waits for every acknowledgement.
pub(crate) fn commit(batch: Vec<(u16, NftMessage, String)>) -> Result<(), NftError> {
    let mut conn =
        Connection::open(netlink_sys::protocols::NETLINK_NETFILTER).map_err(NftError::Socket)?;
    let (messages, whats): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|(flags, message, what)| ((flags, message), what))
        .unzip();
    conn.send_all(messages)
        .map_err(|RequestError { index, error }| NftError::Refused {
            what: whats.get(index).cloned().unwrap_or_default(),
            source: error,
        })
}

/// The policy of base chain `chain` in table `table` of family `family` (`NF_DROP` = 0,
/// `NF_ACCEPT` = 1); `None` if there is no such chain or it is not a base chain.
pub(crate) fn chain_policy(family: u8, table: &str, chain: &str) -> io::Result<Option<u32>> {
    let mut conn = Connection::open(netlink_sys::protocols::NETLINK_NETFILTER)?;
    let request = NftMessage {
        message_type: (SUBSYS_NFTABLES << 8) | MSG_GETCHAIN,
        family,
        res_id: 0,
        attrs: vec![Attr::str(CHAIN_TABLE, table), Attr::str(CHAIN_NAME, chain)],
    };
    match conn.get(request) {
        Ok(reply) => Ok(reply.attrs.iter().find_map(|a| match a {
            Attr::Bytes(CHAIN_POLICY, v) => v.as_slice().try_into().ok().map(u32::from_be_bytes),
            _ => None,
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A rule comment in nftables' user data format (type, length, NUL-terminated text).
fn comment_udata(comment: &str) -> Vec<u8> {
    // nft limits comments to 128 bytes including the NUL.
    let text: String = comment.chars().take(120).collect();
    let mut out = vec![UDATA_RULE_COMMENT, (text.len() + 1) as u8];
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    out
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Inet => "inet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLA_F_NESTED;

    /// Walks attributes: (type without flags, nested?, value).
    fn attrs(mut buf: &[u8]) -> Vec<(u16, bool, Vec<u8>)> {
        let mut out = Vec::new();
        while buf.len() >= 4 {
            let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
            let kind = u16::from_ne_bytes([buf[2], buf[3]]);
            out.push((
                kind & !NLA_F_NESTED,
                kind & NLA_F_NESTED != 0,
                buf[4..len].to_vec(),
            ));
            buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        }
        out
    }

    fn emit(a: &Attr) -> Vec<u8> {
        let mut buf = vec![0; a.buffer_len()];
        a.emit(&mut buf);
        buf
    }

    #[test]
    fn a_cmp_expression_encodes_register_operator_and_data_big_endian() {
        let bytes = emit(&Expr::Cmp(CmpOp::Neq, vec![10, 200]).encode());
        let top = attrs(&bytes);
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].0, top[0].1), (LIST_ELEM, true));
        let elem = attrs(&top[0].2);
        assert_eq!(elem[0], (EXPR_NAME, false, b"cmp\0".to_vec()));
        assert_eq!((elem[1].0, elem[1].1), (EXPR_DATA, true));
        let data = attrs(&elem[1].2);
        assert_eq!(data[0], (1, false, vec![0, 0, 0, 1]), "sreg = NFT_REG_1");
        assert_eq!(data[1], (2, false, vec![0, 0, 0, 1]), "op = NFT_CMP_NEQ");
        assert_eq!((data[2].0, data[2].1), (3, true));
        // Two data bytes padded to four in the attribute stream, length says 2.
        assert_eq!(attrs(&data[2].2), vec![(DATA_VALUE, false, vec![10, 200])]);
    }

    #[test]
    fn a_jump_is_an_immediate_verdict_naming_the_chain() {
        let bytes = emit(&Expr::Verdict(Verdict::Jump("egress")).encode());
        let elem = attrs(&attrs(&bytes)[0].2);
        assert_eq!(elem[0].2, b"immediate\0");
        let data = attrs(&elem[1].2);
        assert_eq!(data[0], (1, false, vec![0; 4]), "dreg = NFT_REG_VERDICT");
        let verdict = attrs(&attrs(&data[1].2)[0].2);
        assert_eq!(
            verdict[0],
            (VERDICT_CODE, false, (-3i32).to_be_bytes().to_vec())
        );
        assert_eq!(verdict[1], (VERDICT_CHAIN, false, b"egress\0".to_vec()));
    }

    #[test]
    fn the_replace_batch_creates_deletes_and_recreates_the_table_atomically() {
        let table = Table {
            family: Family::Inet,
            name: "t".into(),
            chains: vec![Chain {
                name: "input",
                base: Some(BaseChain {
                    hook: Hook::Input,
                    kind: "filter",
                    priority: -5,
                }),
            }],
            rules: vec![Rule {
                chain: "input",
                exprs: vec![Expr::Counter, Expr::Verdict(Verdict::Drop)],
                comment: "why".into(),
            }],
            userdata: b"v1".to_vec(),
        };
        let batch = replace_batch(&table);
        let types: Vec<u16> = batch.iter().map(|(_, m, _)| m.message_type).collect();
        let nft = |k: u16| (SUBSYS_NFTABLES << 8) | k;
        assert_eq!(
            types,
            [
                MSG_BATCH_BEGIN,
                nft(MSG_NEWTABLE),
                nft(MSG_DELTABLE),
                nft(MSG_NEWTABLE),
                nft(MSG_NEWCHAIN),
                nft(MSG_NEWRULE),
                MSG_BATCH_END
            ]
        );
        assert_eq!(
            batch[0].1.res_id, SUBSYS_NFTABLES,
            "batch delimiters name the subsystem"
        );
        assert!(batch[1..6].iter().all(|(f, _, _)| f & NLM_F_ACK != 0));
        assert!(
            batch[5].0 & NLM_F_APPEND != 0,
            "rules are appended in order"
        );

        let chain = &batch[4].1;
        let mut buf = vec![0; chain.buffer_len()];
        chain.serialize(&mut buf);
        assert_eq!(&buf[..4], &[1, 0, 0, 0], "nfgenmsg: inet, v0");
        let chain_attrs = attrs(&buf[4..]);
        let hook = chain_attrs.iter().find(|a| a.0 == CHAIN_HOOK).unwrap();
        assert_eq!(
            attrs(&hook.2),
            vec![
                (HOOK_HOOKNUM, false, 1u32.to_be_bytes().to_vec()),
                (HOOK_PRIORITY, false, (-5i32).to_be_bytes().to_vec()),
            ]
        );
        let rule = &batch[5].1;
        let udata = rule
            .attrs
            .iter()
            .find(|a| a.kind() == RULE_USERDATA)
            .unwrap();
        assert_eq!(
            udata,
            &Attr::Bytes(RULE_USERDATA, b"\x00\x04why\x00".to_vec())
        );
    }
}
