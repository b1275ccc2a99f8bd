//! Typed entity ids.
//!
//! Every entity is keyed by a random UUID v4 in the database. On the wire an id is
//! `prefix + base36(uuid)`, where the base36 body is exactly [`BODY_LEN`] characters of
//! `0-9a-z`, big-endian and left-padded with `0` (the all-zero UUID is 25 zeros).
//! Each entity has its own type, so a `UserId` can never be passed where a `TeamId`
//! is expected, and parsing checks the prefix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Length of the base36 body of every wire id.
pub const BODY_LEN: usize = 25;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Why a wire id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string does not start with the entity's prefix.
    #[error("invalid {kind} id {input:?}: expected it to start with {prefix:?}")]
    Prefix {
        /// Entity kind, e.g. `capsule`.
        kind: &'static str,
        /// Expected prefix, e.g. `cl-`.
        prefix: &'static str,
        /// The offending input (truncated to 64 chars).
        input: String,
    },
    /// The body after the prefix is not 25 base36 characters encoding a 128-bit value.
    #[error("invalid {kind} id {input:?}: expected {prefix:?} followed by 25 characters of 0-9a-z")]
    Body {
        /// Entity kind.
        kind: &'static str,
        /// Expected prefix.
        prefix: &'static str,
        /// The offending input (truncated to 64 chars).
        input: String,
    },
}

/// Encodes a UUID as the 25-character base36 body.
pub fn encode_base36(uuid: Uuid) -> String {
    let buf = encode_base36_bytes(uuid);
    buf.iter().map(|&b| b as char).collect()
}

/// 36^12: the largest power of 36 whose digits fit comfortably in `u64` arithmetic.
const CHUNK: u128 = 36u128.pow(12);

/// The 25-character base36 body as ASCII bytes, without allocating. The 128-bit
/// value is split into three `u64` chunks (12 + 12 + 1 digits) so that each digit
/// costs a `u64` division rather than a 128-bit one.
fn encode_base36_bytes(uuid: Uuid) -> [u8; BODY_LEN] {
    let n = uuid.as_u128();
    let low = (n % CHUNK) as u64;
    let rest = n / CHUNK;
    let mid = (rest % CHUNK) as u64;
    // 36^25 > 2^128, so what is left is a single digit.
    let high = (rest / CHUNK) as u64;
    let mut buf = [b'0'; BODY_LEN];
    for (end, mut chunk, digits) in [(BODY_LEN, low, 12), (BODY_LEN - 12, mid, 12), (1, high, 1)] {
        for i in (end - digits..end).rev() {
            buf[i] = ALPHABET[(chunk % 36) as usize];
            chunk /= 36;
        }
    }
    buf
}

/// Longest id prefix (`team-`, `host-`, …).
const MAX_PREFIX_LEN: usize = 8;

/// Writes `prefix` + body into `buf` and returns it as a string slice.
fn render<'a>(buf: &'a mut [u8; MAX_PREFIX_LEN + BODY_LEN], prefix: &str, uuid: Uuid) -> &'a str {
    let p = prefix.len().min(MAX_PREFIX_LEN);
    buf[..p].copy_from_slice(&prefix.as_bytes()[..p]);
    buf[p..p + BODY_LEN].copy_from_slice(&encode_base36_bytes(uuid));
    // Both parts are ASCII.
    std::str::from_utf8(&buf[..p + BODY_LEN]).unwrap_or_default()
}

/// Decodes a 25-character base36 body; `None` if it is malformed or overflows 128 bits.
pub fn decode_base36(body: &str) -> Option<Uuid> {
    if body.len() != BODY_LEN {
        return None;
    }
    let mut n: u128 = 0;
    for b in body.bytes() {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(u128::from(digit))?;
    }
    Some(Uuid::from_u128(n))
}

fn truncated(input: &str) -> String {
    input.chars().take(64).collect()
}

/// Common behaviour of every typed id.
pub trait EntityId: Copy + Eq + fmt::Display + FromStr<Err = IdError> {
    /// Wire prefix including the dash, e.g. `cl-`.
    const PREFIX: &'static str;
    /// Human name of the entity, used in error messages.
    const KIND: &'static str;
    /// Wraps a UUID.
    fn from_uuid(uuid: Uuid) -> Self;
    /// The underlying UUID (the database key).
    fn uuid(&self) -> Uuid;
    /// A fresh random id.
    fn generate() -> Self {
        Self::from_uuid(Uuid::new_v4())
    }
    /// Parses the wire form, checking prefix and body.
    fn parse_wire(s: &str) -> Result<Self, IdError> {
        let body = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| IdError::Prefix {
                kind: Self::KIND,
                prefix: Self::PREFIX,
                input: truncated(s),
            })?;
        decode_base36(body)
            .map(Self::from_uuid)
            .ok_or_else(|| IdError::Body {
                kind: Self::KIND,
                prefix: Self::PREFIX,
                input: truncated(s),
            })
    }
}

macro_rules! entity_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                <Self as EntityId>::generate()
            }
            /// Wraps a UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
            /// The underlying UUID.
            pub const fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl EntityId for $name {
            const PREFIX: &'static str = $prefix;
            const KIND: &'static str = $kind;
            fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
            fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(render(&mut [0; MAX_PREFIX_LEN + BODY_LEN], $prefix, self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                <Self as EntityId>::parse_wire(s)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        const _: () = assert!($prefix.len() <= MAX_PREFIX_LEN, "id prefix too long");

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(render(&mut [0; MAX_PREFIX_LEN + BODY_LEN], $prefix, self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

entity_id!(
    /// A sandbox ("capsule" on the wire), `cl-…`.
    SandboxId, "cl-", "capsule"
);
entity_id!(
    /// A user, `usr-…`.
    UserId, "usr-", "user"
);
entity_id!(
    /// A team, `team-…`.
    TeamId, "team-", "team"
);
entity_id!(
    /// A team API key, `key-…`.
    ApiKeyId, "key-", "api key"
);
entity_id!(
    /// A host (machine running a host agent), `host-…`.
    HostId, "host-", "host"
);
entity_id!(
    /// A one-time host registration token record, `htok-…`.
    HostTokenId, "htok-", "host token"
);
entity_id!(
    /// A host refresh-token record, `hrt-…`.
    HostRefreshTokenId, "hrt-", "host refresh token"
);
entity_id!(
    /// An audit log entry, `log-…`.
    AuditLogId, "log-", "audit log"
);
entity_id!(
    /// A template build, `bld-…`.
    BuildId, "bld-", "build"
);
entity_id!(
    /// A notification channel, `ch-…`.
    ChannelId, "ch-", "channel"
);
entity_id!(
    /// An admin permission grant, `perm-…`.
    PermissionId, "perm-", "permission"
);

/// A template. Templates have no wire prefix: they are addressed by name on the
/// public API and by hyphenated UUID on the agent RPCs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TemplateId(pub Uuid);

impl TemplateId {
    /// A fresh random template id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
    /// The underlying UUID.
    pub const fn uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TemplateId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TemplateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// The platform team: owner of shared resources (platform templates, regular hosts).
pub const PLATFORM_TEAM_ID: TeamId = TeamId::from_uuid(Uuid::nil());

/// The built-in template (`minimal`), owned by the platform team.
pub const BUILTIN_TEMPLATE_ID: TemplateId = TemplateId(Uuid::nil());

/// Name of the built-in template.
pub const BUILTIN_TEMPLATE_NAME: &str = "minimal";

/// A new immutable team slug: `hex(3 bytes)-hex(3 bytes)`, 13 characters.
pub fn new_team_slug() -> String {
    let b: [u8; 6] = rand::random();
    format!("{}-{}", hex::encode(&b[..3]), hex::encode(&b[3..]))
}

/// A new snapshot template name: `template-` + 8 hex characters.
pub fn new_snapshot_name() -> String {
    let b: [u8; 4] = rand::random();
    format!("template-{}", hex::encode(b))
}

/// A new PTY tag: 8 hex characters.
pub fn new_pty_tag() -> String {
    let b: [u8; 4] = rand::random();
    hex::encode(b)
}

#[cfg(test)]
mod tests {

    /// The digit-by-digit 128-bit division the chunked encoder replaces.
    fn reference_base36(n: u128) -> String {
        let mut n = n;
        let mut out = vec![b'0'; BODY_LEN];
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(n % 36) as usize];
            n /= 36;
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn chunked_encoding_matches_plain_division_at_the_edges() {
        let edges = [
            0,
            1,
            35,
            36,
            36u128.pow(12) - 1,
            36u128.pow(12),
            36u128.pow(24) - 1,
            36u128.pow(24),
            u128::MAX - 1,
            u128::MAX,
        ];
        for n in edges {
            let uuid = Uuid::from_u128(n);
            assert_eq!(encode_base36(uuid), reference_base36(n), "{n}");
            assert_eq!(decode_base36(&encode_base36(uuid)), Some(uuid));
        }
        let id = TeamId::from_uuid(Uuid::from_u128(u128::MAX));
        assert_eq!(
            id.to_string(),
            format!("team-{}", reference_base36(u128::MAX))
        );
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            format!("\"team-{}\"", reference_base36(u128::MAX))
        );
    }
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nil_uuid_is_25_zeros() {
        assert_eq!(encode_base36(Uuid::nil()), "0".repeat(25));
        assert_eq!(
            PLATFORM_TEAM_ID.to_string(),
            format!("team-{}", "0".repeat(25))
        );
    }

    #[test]
    fn max_uuid_fits_in_25_chars() {
        let s = encode_base36(Uuid::max());
        assert_eq!(s.len(), BODY_LEN);
        assert_eq!(decode_base36(&s), Some(Uuid::max()));
    }

    #[test]
    fn body_overflowing_128_bits_is_rejected() {
        assert_eq!(decode_base36(&"z".repeat(25)), None);
    }

    #[test]
    fn wrong_prefix_names_the_expected_one() {
        let user = UserId::new().to_string();
        let err = user.parse::<TeamId>().unwrap_err();
        assert!(matches!(
            err,
            IdError::Prefix {
                prefix: "team-",
                ..
            }
        ));
        assert!(err.to_string().contains("\"team-\""), "{err}");
    }

    #[test]
    fn bad_bodies_are_rejected() {
        for bad in [
            "cl-",
            "cl-abc",
            "cl-ABCDEFGHIJKLMNOPQRSTUVWXY",
            "cl-000000000000000000000000-",
            "cl-00000000000000000000000000",
        ] {
            let err = bad.parse::<SandboxId>().unwrap_err();
            assert!(matches!(err, IdError::Body { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("25 characters"), "{err}");
        }
    }

    #[test]
    fn serde_uses_the_wire_string() {
        let id = SandboxId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<SandboxId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SandboxId>("\"usr-0000000000000000000000000\"").is_err());
    }

    #[test]
    fn slugs_and_names_have_their_shapes() {
        let slug = new_team_slug();
        assert_eq!(slug.len(), 13);
        assert_eq!(slug.as_bytes()[6], b'-');
        assert!(new_snapshot_name().starts_with("template-"));
        assert_eq!(new_pty_tag().len(), 8);
    }

    proptest! {
        #[test]
        fn chunked_encoding_matches_plain_division(n in any::<u128>()) {
            prop_assert_eq!(encode_base36(Uuid::from_u128(n)), reference_base36(n));
        }

        #[test]
        fn base36_round_trips(n in any::<u128>()) {
            let u = Uuid::from_u128(n);
            let s = encode_base36(u);
            prop_assert_eq!(s.len(), BODY_LEN);
            prop_assert!(s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
            prop_assert_eq!(decode_base36(&s), Some(u));
        }

        #[test]
        fn wire_ids_round_trip(n in any::<u128>()) {
            let id = HostId::from_uuid(Uuid::from_u128(n));
            let s = id.to_string();
            prop_assert_eq!(s.len(), "host-".len() + BODY_LEN);
            prop_assert_eq!(s.parse::<HostId>().unwrap(), id);
        }

        #[test]
        fn encoding_preserves_order(a in any::<u128>(), b in any::<u128>()) {
            let (sa, sb) = (encode_base36(Uuid::from_u128(a)), encode_base36(Uuid::from_u128(b)));
            prop_assert_eq!(a.cmp(&b), sa.cmp(&sb));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,40}") {
            let _ = s.parse::<SandboxId>();
        }
    }
}
