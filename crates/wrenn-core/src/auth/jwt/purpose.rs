//! Single-purpose tokens (account activation, password reset): [`TokenPurpose`],
//! [`PurposeClaims`], the [`binding_digest`] that makes them single-use, and signing
//! and verifying them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{check_times, now_unix, secs};
use super::{JwtError, JwtKeys};
use crate::id::UserId;

/// Lifetime of an account-activation token.
pub const ACTIVATION_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Lifetime of a password-reset token.
pub const PASSWORD_RESET_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Maximum length of a purpose token's `binding`, in bytes.
pub const MAX_BINDING_LEN: usize = 256;

/// What a single-purpose token may be used for. Each purpose has its own `typ` and
/// audience, so a token of one purpose is rejected for every other purpose and as a
/// user or host token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenPurpose {
    /// Activates a newly signed-up account (emailed at sign-up).
    Activation,
    /// Sets a new password without the old one (emailed on request).
    PasswordReset,
}

impl TokenPurpose {
    /// The `typ` claim: `activation` or `password_reset`.
    pub const fn typ(self) -> &'static str {
        match self {
            Self::Activation => "activation",
            Self::PasswordReset => "password_reset",
        }
    }

    /// The `aud` claim: `wrenn:activation` or `wrenn:password_reset`.
    pub const fn audience(self) -> &'static str {
        match self {
            Self::Activation => "wrenn:activation",
            Self::PasswordReset => "wrenn:password_reset",
        }
    }

    /// The standard lifetime: [`ACTIVATION_TOKEN_LIFETIME`] or
    /// [`PASSWORD_RESET_TOKEN_LIFETIME`].
    pub const fn lifetime(self) -> Duration {
        match self {
            Self::Activation => ACTIVATION_TOKEN_LIFETIME,
            Self::PasswordReset => PASSWORD_RESET_TOKEN_LIFETIME,
        }
    }
}

impl fmt::Display for TokenPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.typ())
    }
}

/// A short, stable fingerprint of a piece of account state, for a purpose token's
/// `binding`: the first 16 bytes of its SHA-256, as 32 lowercase hex characters.
///
/// Bind a password-reset token to `binding_digest(current password hash)`: once the
/// password changes, the token no longer matches. The digest reveals nothing useful
/// about its input (which is itself a salted hash).
pub fn binding_digest(state: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(state.as_bytes());
    hex::encode(&digest[..16])
}

/// Claims of a purpose token, as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposeClaims {
    /// What the token is for.
    pub purpose: TokenPurpose,
    /// The user it acts on.
    pub sub: UserId,
    /// The account state it was issued against (compare before acting).
    pub binding: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

#[derive(Serialize, Deserialize)]
struct PurposeWire {
    typ: String,
    aud: String,
    sub: UserId,
    binding: String,
    iat: i64,
    exp: i64,
}

impl JwtKeys {
    /// Signs a purpose token for `user`, valid for `ttl` from now, carrying `binding`
    /// (at most [`MAX_BINDING_LEN`] bytes; see [`binding_digest`]).
    pub fn sign_purpose(
        &self,
        purpose: TokenPurpose,
        user: UserId,
        binding: &str,
        ttl: Duration,
    ) -> Result<String, JwtError> {
        self.sign_purpose_at(purpose, user, binding, ttl, now_unix())
    }

    /// Signs a purpose token issued at `now` (unix seconds).
    pub fn sign_purpose_at(
        &self,
        purpose: TokenPurpose,
        user: UserId,
        binding: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<String, JwtError> {
        if binding.len() > MAX_BINDING_LEN {
            return Err(JwtError::Signing(format!(
                "binding must be at most {MAX_BINDING_LEN} bytes"
            )));
        }
        let wire = PurposeWire {
            typ: purpose.typ().to_owned(),
            aud: purpose.audience().to_owned(),
            sub: user,
            binding: binding.to_owned(),
            iat: now,
            exp: now.saturating_add(secs(ttl)),
        };
        self.sign(&wire)
    }

    /// Verifies a token of `purpose` against the current time; returns the user and
    /// the binding it was issued with. Tokens of any other purpose or kind are
    /// [`JwtError::WrongKind`].
    pub fn verify_purpose(
        &self,
        token: &str,
        purpose: TokenPurpose,
    ) -> Result<(UserId, String), JwtError> {
        self.verify_purpose_at(token, purpose, now_unix())
            .map(|c| (c.sub, c.binding))
    }

    /// Verifies a token of `purpose` as of `now` (unix seconds).
    pub fn verify_purpose_at(
        &self,
        token: &str,
        purpose: TokenPurpose,
        now: i64,
    ) -> Result<PurposeClaims, JwtError> {
        let map = self.decode(token, purpose.typ(), purpose.audience())?;
        let w: PurposeWire =
            serde_json::from_value(Value::Object(map)).map_err(|_| JwtError::Invalid {
                reason: "malformed claims",
            })?;
        if w.binding.len() > MAX_BINDING_LEN {
            return Err(JwtError::Invalid {
                reason: "binding too long",
            });
        }
        check_times(w.iat, w.exp, now)?;
        Ok(PurposeClaims {
            purpose,
            sub: w.sub,
            binding: w.binding,
            iat: w.iat,
            exp: w.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

    use super::*;
    use crate::auth::jwt::test_support::{NOW, SECRET, keys, user_claims};
    use crate::auth::jwt::{HostClaims, LEEWAY_SECS};
    use crate::id::HostId;

    #[test]
    fn purpose_round_trip_and_wire_format() {
        let k = keys();
        let user = UserId::new();
        for purpose in [TokenPurpose::Activation, TokenPurpose::PasswordReset] {
            let token = k
                .sign_purpose_at(purpose, user, "inactive", purpose.lifetime(), NOW)
                .unwrap();
            let claims = k.verify_purpose_at(&token, purpose, NOW + 5).unwrap();
            assert_eq!(claims.purpose, purpose);
            assert_eq!(claims.sub, user);
            assert_eq!(claims.binding, "inactive");
            assert_eq!(claims.exp - claims.iat, secs(purpose.lifetime()));
            let mut v = Validation::new(Algorithm::HS256);
            v.validate_exp = false;
            v.validate_aud = false;
            let data = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(SECRET), &v)
                .unwrap()
                .claims;
            assert_eq!(data["typ"], purpose.typ());
            assert_eq!(data["aud"], purpose.audience());
            assert_eq!(data["sub"], user.to_string());
        }
        // Against the real clock.
        let token = k
            .sign_purpose(
                TokenPurpose::PasswordReset,
                user,
                "b",
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(
            k.verify_purpose(&token, TokenPurpose::PasswordReset)
                .unwrap(),
            (user, "b".to_owned())
        );
        assert_eq!(TokenPurpose::Activation.audience(), "wrenn:activation");
        assert_eq!(
            TokenPurpose::PasswordReset.audience(),
            "wrenn:password_reset"
        );
        assert_eq!(ACTIVATION_TOKEN_LIFETIME.as_secs(), 30 * 60);
        assert_eq!(PASSWORD_RESET_TOKEN_LIFETIME.as_secs(), 15 * 60);
    }

    #[test]
    fn a_token_of_one_purpose_is_rejected_for_another() {
        let k = keys();
        let activation = k
            .sign_purpose_at(
                TokenPurpose::Activation,
                UserId::new(),
                "x",
                ACTIVATION_TOKEN_LIFETIME,
                NOW,
            )
            .unwrap();
        let reset = k
            .sign_purpose_at(
                TokenPurpose::PasswordReset,
                UserId::new(),
                "x",
                PASSWORD_RESET_TOKEN_LIFETIME,
                NOW,
            )
            .unwrap();
        assert_eq!(
            k.verify_purpose_at(&activation, TokenPurpose::PasswordReset, NOW),
            Err(JwtError::WrongKind {
                expected: "password_reset"
            })
        );
        assert_eq!(
            k.verify_purpose_at(&reset, TokenPurpose::Activation, NOW),
            Err(JwtError::WrongKind {
                expected: "activation"
            })
        );
    }

    #[test]
    fn purpose_tokens_and_user_or_host_tokens_cannot_be_confused() {
        let k = keys();
        let user = k.sign_user(&user_claims(NOW)).unwrap();
        let host = k
            .sign_host(&HostClaims::issued_at(HostId::new(), NOW))
            .unwrap();
        for purpose in [TokenPurpose::Activation, TokenPurpose::PasswordReset] {
            for other in [&user, &host] {
                assert_eq!(
                    k.verify_purpose_at(other, purpose, NOW),
                    Err(JwtError::WrongKind {
                        expected: purpose.typ()
                    })
                );
            }
            let token = k
                .sign_purpose_at(purpose, UserId::new(), "x", purpose.lifetime(), NOW)
                .unwrap();
            assert_eq!(
                k.verify_user_at(&token, NOW),
                Err(JwtError::WrongKind { expected: "user" })
            );
            assert_eq!(
                k.verify_host_at(&token, NOW),
                Err(JwtError::WrongKind { expected: "host" })
            );
        }
    }

    #[test]
    fn purpose_typ_is_checked_even_with_the_right_audience() {
        let claims = serde_json::json!({
            "typ": "user", "aud": TokenPurpose::PasswordReset.audience(),
            "sub": UserId::new(), "binding": "x", "iat": NOW, "exp": NOW + 60,
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            keys().verify_purpose_at(&token, TokenPurpose::PasswordReset, NOW),
            Err(JwtError::WrongKind {
                expected: "password_reset"
            })
        );
    }

    #[test]
    fn purpose_tokens_expire() {
        let k = keys();
        let token = k
            .sign_purpose_at(
                TokenPurpose::PasswordReset,
                UserId::new(),
                "x",
                PASSWORD_RESET_TOKEN_LIFETIME,
                NOW,
            )
            .unwrap();
        let exp = NOW + 15 * 60;
        assert!(
            k.verify_purpose_at(&token, TokenPurpose::PasswordReset, exp)
                .is_ok()
        );
        assert_eq!(
            k.verify_purpose_at(&token, TokenPurpose::PasswordReset, exp + LEEWAY_SECS + 1),
            Err(JwtError::Expired)
        );
        let token = k
            .sign_purpose_at(
                TokenPurpose::Activation,
                UserId::new(),
                "x",
                ACTIVATION_TOKEN_LIFETIME,
                NOW,
            )
            .unwrap();
        assert!(
            k.verify_purpose_at(&token, TokenPurpose::Activation, NOW + 29 * 60)
                .is_ok()
        );
        assert_eq!(
            k.verify_purpose_at(
                &token,
                TokenPurpose::Activation,
                NOW + 31 * 60 + LEEWAY_SECS
            ),
            Err(JwtError::Expired)
        );
    }

    #[test]
    fn purpose_tokens_from_another_secret_or_garbage_are_rejected() {
        let token = keys()
            .sign_purpose_at(
                TokenPurpose::Activation,
                UserId::new(),
                "x",
                ACTIVATION_TOKEN_LIFETIME,
                NOW,
            )
            .unwrap();
        let other = JwtKeys::new([7u8; 32]).unwrap();
        assert_eq!(
            other.verify_purpose_at(&token, TokenPurpose::Activation, NOW),
            Err(JwtError::Invalid {
                reason: "bad signature"
            })
        );
        for bad in ["", "..", "a.b.c", "e30.e30."] {
            assert!(matches!(
                keys().verify_purpose_at(bad, TokenPurpose::Activation, NOW),
                Err(JwtError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn oversized_bindings_are_refused() {
        let long = "x".repeat(MAX_BINDING_LEN + 1);
        assert!(matches!(
            keys().sign_purpose(
                TokenPurpose::Activation,
                UserId::new(),
                &long,
                ACTIVATION_TOKEN_LIFETIME
            ),
            Err(JwtError::Signing(_))
        ));
    }

    #[test]
    fn binding_digests_are_short_stable_and_distinct() {
        let a = binding_digest("$argon2id$v=19$m=19456,t=2,p=1$aaaa$bbbb");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            a,
            binding_digest("$argon2id$v=19$m=19456,t=2,p=1$aaaa$bbbb")
        );
        assert_ne!(
            a,
            binding_digest("$argon2id$v=19$m=19456,t=2,p=1$aaaa$bbbc")
        );
        assert_ne!(binding_digest(""), a);
    }
}
