//! HS256 JSON Web Tokens for users (6 h) and hosts (7 d), and short-lived purpose
//! tokens (account activation, password reset).
//!
//! Every kind is signed with the same secret, so they are kept apart twice: a `typ`
//! claim (`"user"` / `"host"` / `"activation"` / `"password_reset"`) that is checked
//! explicitly, and distinct audiences ([`USER_AUDIENCE`] / [`HOST_AUDIENCE`] /
//! [`TokenPurpose::audience`]). Only HS256 is accepted; `none` and every other
//! algorithm are rejected. Expiry is checked by this module with a [`LEEWAY_SECS`]
//! leeway against a `now` that the `*_at` functions take explicitly.
//!
//! Purpose tokens are stateless: nothing is stored. They are single-use by
//! construction because they carry a `binding` — a fingerprint of the account state
//! they act on (see [`binding_digest`]) — that the server compares with the current
//! state before acting; acting changes that state, so the token no longer matches.

mod error;
mod host;
mod keys;
mod purpose;
#[cfg(test)]
mod test_support;
mod user;

pub use error::JwtError;
pub use host::{HOST_AUDIENCE, HOST_TOKEN_LIFETIME, HostClaims};
pub use keys::{JwtKeys, LEEWAY_SECS, MIN_SECRET_LEN, generate_jwt_secret};
pub use purpose::{
    ACTIVATION_TOKEN_LIFETIME, MAX_BINDING_LEN, PASSWORD_RESET_TOKEN_LIFETIME, PurposeClaims,
    TokenPurpose, binding_digest,
};
pub use user::{USER_AUDIENCE, USER_TOKEN_LIFETIME, UserClaims};
