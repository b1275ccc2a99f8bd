//! Team API keys: `wrn_` + 32 lowercase hex characters (16 random bytes).
//!
//! Only the SHA-256 hex of a key ([`hash_api_key`]) and its first
//! [`KEY_PREFIX_LEN`] characters ([`key_prefix`]) are stored; the plaintext is shown
//! once, at creation.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Prefix of every API key.
pub const API_KEY_PREFIX: &str = "wrn_";
/// Number of hex characters after the prefix.
pub const API_KEY_HEX_LEN: usize = 32;
/// Total length of an API key.
pub const API_KEY_LEN: usize = API_KEY_PREFIX.len() + API_KEY_HEX_LEN;
/// Number of leading characters stored and displayed as the key's prefix.
pub const KEY_PREFIX_LEN: usize = 10;
/// Name given to a key created without one.
pub const DEFAULT_API_KEY_NAME: &str = "Unnamed API Key";

/// Why a string is not an API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Not `wrn_` followed by 32 lowercase hex characters.
    #[error("malformed API key: expected \"wrn_\" followed by 32 lowercase hex characters")]
    Malformed,
}

/// A plaintext API key. Its `Debug` shows only the stored prefix, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let bytes: [u8; 16] = rand::random();
        Self(format!("{API_KEY_PREFIX}{}", hex::encode(bytes)))
    }

    /// Parses a key presented by a client, checking its format.
    pub fn parse(s: &str) -> Result<Self, ApiKeyError> {
        if looks_like_api_key(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ApiKeyError::Malformed)
        }
    }

    /// The plaintext, to show the user once or to send in `X-API-Key`.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The SHA-256 hex digest stored as `key_hash`.
    pub fn hash(&self) -> String {
        hash_api_key(&self.0)
    }

    /// The first [`KEY_PREFIX_LEN`] characters, stored as `key_prefix`.
    pub fn prefix(&self) -> &str {
        key_prefix(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…[redacted])", self.prefix())
    }
}

impl FromStr for ApiKey {
    type Err = ApiKeyError;

    fn from_str(s: &str) -> Result<Self, ApiKeyError> {
        Self::parse(s)
    }
}

/// SHA-256 of the key, as 64 lowercase hex characters (the `key_hash` column).
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The first [`KEY_PREFIX_LEN`] characters of a key (fewer if it is shorter).
pub fn key_prefix(key: &str) -> &str {
    match key.char_indices().nth(KEY_PREFIX_LEN) {
        Some((i, _)) => &key[..i],
        None => key,
    }
}

/// Whether `s` has the API key format: `wrn_` + 32 lowercase hex characters.
pub fn looks_like_api_key(s: &str) -> bool {
    s.len() == API_KEY_LEN
        && s.strip_prefix(API_KEY_PREFIX).is_some_and(|hex| {
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_have_the_format() {
        let k = ApiKey::generate();
        let s = k.expose_secret();
        assert_eq!(s.len(), 36);
        assert!(s.starts_with("wrn_"));
        assert!(looks_like_api_key(s));
        assert_eq!(k.prefix(), &s[..10]);
        assert_eq!(k.hash(), hash_api_key(s));
        assert_ne!(ApiKey::generate(), k);
        assert_eq!(ApiKey::parse(s).unwrap(), k);
        assert_eq!(s.parse::<ApiKey>().unwrap(), k);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let k = ApiKey::generate();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(k.expose_secret()), "{dbg}");
        assert!(!dbg.contains(&k.expose_secret()[10..]), "{dbg}");
        assert!(dbg.contains(k.prefix()));
    }

    #[test]
    fn format_check() {
        let good = format!("wrn_{}", "0123456789abcdef".repeat(2));
        assert!(looks_like_api_key(&good));
        for bad in [
            String::new(),
            "wrn_".into(),
            format!("wrn_{}", "0123456789ABCDEF".repeat(2)),
            format!("wrx_{}", "0123456789abcdef".repeat(2)),
            format!("wrn_{}0", "0123456789abcdef".repeat(2)),
            format!("wrn_{}", "0123456789abcdeg".repeat(2)),
        ] {
            assert!(!looks_like_api_key(&bad), "{bad}");
            let err = ApiKey::parse(&bad).unwrap_err();
            assert!(err.to_string().contains("wrn_"), "{err}");
        }
    }

    #[test]
    fn prefix_of_short_and_unicode_strings() {
        assert_eq!(key_prefix("wrn_"), "wrn_");
        assert_eq!(key_prefix("ééééééééééé"), "éééééééééé");
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in ".{0,64}") {
            let _ = looks_like_api_key(&s);
            let _ = key_prefix(&s);
            let _ = ApiKey::parse(&s);
            prop_assert_eq!(hash_api_key(&s).len(), 64);
        }
    }
}
