//! [`JwtError`]: why a token could not be signed or verified.

/// Why a token could not be signed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The signing secret is shorter than [`MIN_SECRET_LEN`](super::MIN_SECRET_LEN) bytes.
    #[error("JWT secret must be at least {min} bytes long (got {actual})")]
    SecretTooShort {
        /// Required minimum.
        min: usize,
        /// Actual length.
        actual: usize,
    },
    /// The token was valid but its `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// The token is of the other kind (a host token used as a user token or vice versa).
    #[error("invalid token: not a {expected} token")]
    WrongKind {
        /// The kind that was expected: `user` or `host`.
        expected: &'static str,
    },
    /// The token is malformed, badly signed, uses another algorithm or has bad claims.
    #[error("invalid token: {reason}")]
    Invalid {
        /// What was wrong.
        reason: &'static str,
    },
    /// Signing failed (should not happen with a valid key).
    #[error("could not sign token: {0}")]
    Signing(String),
}
