//! Opaque bearer tokens: host registration tokens, host refresh tokens and user
//! refresh tokens. Each is 64 lowercase hex characters (32 random bytes); only its
//! SHA-256 hex ([`hash_token`]) is stored.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// Length of a token in hex characters.
pub const TOKEN_HEX_LEN: usize = TOKEN_BYTES * 2;

/// Lifetime of a host refresh token (60 days).
pub const HOST_REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 24 * 60 * 60);
/// Lifetime of a one-time host registration token (1 hour).
pub const REGISTRATION_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Lifetime of a user refresh token (30 days).
pub const USER_REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Why a string is not an opaque token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not 64 lowercase hex characters.
    #[error("malformed token: expected 64 lowercase hex characters")]
    Malformed,
}

/// A plaintext opaque token. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OpaqueToken(String);

impl OpaqueToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let bytes: [u8; TOKEN_BYTES] = rand::random();
        Self(hex::encode(bytes))
    }

    /// Parses a token presented by a client, checking its format.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        if looks_like_token(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(TokenError::Malformed)
        }
    }

    /// The plaintext, to hand to the client once.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The SHA-256 hex digest to store.
    pub fn hash(&self) -> String {
        hash_token(&self.0)
    }
}

impl fmt::Debug for OpaqueToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpaqueToken([redacted])")
    }
}

impl FromStr for OpaqueToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        Self::parse(s)
    }
}

/// SHA-256 of a token, as 64 lowercase hex characters.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `s` has the token format: 64 lowercase hex characters.
pub fn looks_like_token(s: &str) -> bool {
    s.len() == TOKEN_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Compares two byte strings in time independent of where they differ (the length
/// is not secret). Use it when comparing a presented secret with an expected one.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_have_the_format() {
        let t = OpaqueToken::generate();
        assert_eq!(t.expose_secret().len(), 64);
        assert!(looks_like_token(t.expose_secret()));
        assert_ne!(OpaqueToken::generate(), t);
        assert_eq!(OpaqueToken::parse(t.expose_secret()).unwrap(), t);
        assert_eq!(t.hash(), hash_token(t.expose_secret()));
        assert_ne!(t.hash(), t.expose_secret());
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for bad in [
            String::new(),
            "a".repeat(63),
            "a".repeat(65),
            "A".repeat(64),
            "g".repeat(64),
        ] {
            assert_eq!(
                OpaqueToken::parse(&bad),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        assert!(
            TokenError::Malformed
                .to_string()
                .contains("64 lowercase hex")
        );
    }

    #[test]
    fn debug_is_redacted() {
        let t = OpaqueToken::generate();
        let dbg = format!("{t:?}");
        assert_eq!(dbg, "OpaqueToken([redacted])");
    }

    #[test]
    fn lifetimes() {
        assert_eq!(HOST_REFRESH_TOKEN_LIFETIME.as_secs(), 60 * 86_400);
        assert_eq!(REGISTRATION_TOKEN_LIFETIME.as_secs(), 3_600);
        assert_eq!(USER_REFRESH_TOKEN_LIFETIME.as_secs(), 30 * 86_400);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    proptest! {
        #[test]
        fn comparison_matches_eq(a in proptest::collection::vec(any::<u8>(), 0..8),
                                 b in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
        }

        #[test]
        fn arbitrary_input_never_panics(s in ".{0,80}") {
            let _ = OpaqueToken::parse(&s);
            prop_assert_eq!(hash_token(&s).len(), 64);
        }
    }
}
