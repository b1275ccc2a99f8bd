//! Helpers shared by the JWT unit tests: a fixed secret and clock, ready-made keys and
//! user claims, and a base64url encoder for hand-made tokens.

use super::{JwtKeys, UserClaims};
use crate::auth::role::Role;
use crate::id::{TeamId, UserId};

pub(super) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
pub(super) const NOW: i64 = 1_750_000_000;

pub(super) fn keys() -> JwtKeys {
    JwtKeys::new(SECRET).unwrap()
}

pub(super) fn user_claims(now: i64) -> UserClaims {
    UserClaims::issued_at(
        UserId::new(),
        TeamId::new(),
        Role::Admin,
        "a@example.com",
        "Ada",
        true,
        now,
    )
}

pub(super) fn b64(s: &str) -> String {
    // base64url without padding, enough for hand-made test tokens.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
