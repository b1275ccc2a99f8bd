//! [`JwtKeys`]: the HS256 keys built from the shared secret, and the signing and
//! verification steps every token kind shares (algorithm, audience, `typ` and time
//! checks); plus [`generate_jwt_secret`].

use std::fmt;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};

use super::JwtError;

/// Clock skew tolerated when checking `exp` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 30;
/// Minimum length of the signing secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The HS256 signing and verification keys, built from the shared secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKeys([redacted])")
    }
}

impl JwtKeys {
    /// Builds the keys from a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, JwtError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(JwtError::SecretTooShort {
                min: MIN_SECRET_LEN,
                actual: secret.len(),
            });
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// Signs `wire` as the claims of an HS256 token.
    pub(super) fn sign<T: Serialize>(&self, wire: &T) -> Result<String, JwtError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), wire, &self.encoding)
            .map_err(|e| JwtError::Signing(e.to_string()))
    }

    /// Checks signature, algorithm, audience and `typ`; returns the raw claims.
    pub(super) fn decode(
        &self,
        token: &str,
        typ: &'static str,
        audience: &str,
    ) -> Result<Map<String, Value>, JwtError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.validate_exp = false; // checked by `check_times` against `now`
        validation.validate_nbf = false;
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &validation)
            .map_err(|e| map_decode_error(e.kind(), typ))?;
        if data.header.alg != Algorithm::HS256 {
            return Err(JwtError::Invalid {
                reason: "algorithm not allowed (only HS256)",
            });
        }
        match data.claims.get("typ").and_then(Value::as_str) {
            Some(t) if t == typ => Ok(data.claims),
            _ => Err(JwtError::WrongKind { expected: typ }),
        }
    }
}

/// The [`JwtError`] for a failed decode of a token of kind `typ`.
fn map_decode_error(kind: &ErrorKind, typ: &'static str) -> JwtError {
    match kind {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::InvalidAudience => JwtError::WrongKind { expected: typ },
        ErrorKind::InvalidSignature => JwtError::Invalid {
            reason: "bad signature",
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => JwtError::Invalid {
            reason: "algorithm not allowed (only HS256)",
        },
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            JwtError::Invalid {
                reason: "missing or malformed claims",
            }
        }
        _ => JwtError::Invalid {
            reason: "malformed token",
        },
    }
}

/// Checks `exp` and `iat` against `now`, with [`LEEWAY_SECS`] of clock skew.
pub(super) fn check_times(iat: i64, exp: i64, now: i64) -> Result<(), JwtError> {
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(JwtError::Expired);
    }
    if iat > now.saturating_add(LEEWAY_SECS) {
        return Err(JwtError::Invalid {
            reason: "issued in the future",
        });
    }
    Ok(())
}

/// The current time, unix seconds.
pub(super) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `d` in whole seconds, saturating at `i64::MAX`.
pub(super) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A fresh random signing secret: 64 hex characters (32 random bytes), suitable for
/// `JWT_SECRET` or the server's generated secret file.
pub fn generate_jwt_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::test_support::{NOW, SECRET, b64, keys, user_claims};
    use crate::auth::jwt::{HostClaims, USER_AUDIENCE};
    use crate::id::{HostId, TeamId, UserId};

    #[test]
    fn short_secret_is_rejected() {
        let err = JwtKeys::new(b"too short").unwrap_err();
        assert_eq!(err, JwtError::SecretTooShort { min: 32, actual: 9 });
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }

    #[test]
    fn expiry_with_leeway() {
        let k = keys();
        let claims = user_claims(NOW);
        let token = k.sign_user(&claims).unwrap();
        assert!(k.verify_user_at(&token, claims.exp).is_ok());
        assert!(k.verify_user_at(&token, claims.exp + LEEWAY_SECS).is_ok());
        assert_eq!(
            k.verify_user_at(&token, claims.exp + LEEWAY_SECS + 1),
            Err(JwtError::Expired)
        );
        let host = HostClaims::issued_at(HostId::new(), NOW);
        let token = k.sign_host(&host).unwrap();
        assert_eq!(
            k.verify_host_at(&token, host.exp + 3600),
            Err(JwtError::Expired)
        );
        assert_eq!(JwtError::Expired.to_string(), "token has expired");
    }

    #[test]
    fn future_tokens_are_rejected() {
        let k = keys();
        let token = k.sign_user(&user_claims(NOW + 3600)).unwrap();
        assert!(matches!(
            k.verify_user_at(&token, NOW),
            Err(JwtError::Invalid { .. })
        ));
        let token = k.sign_user(&user_claims(NOW + LEEWAY_SECS)).unwrap();
        assert!(k.verify_user_at(&token, NOW).is_ok());
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let token = keys().sign_user(&user_claims(NOW)).unwrap();
        let other = JwtKeys::new([7u8; 32]).unwrap();
        assert_eq!(
            other.verify_user_at(&token, NOW),
            Err(JwtError::Invalid {
                reason: "bad signature"
            })
        );
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let token = keys().sign_user(&user_claims(NOW)).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&format!(
            r#"{{"typ":"user","aud":"{USER_AUDIENCE}","sub":"{}","team_id":"{}","role":"owner","email":"e","name":"n","is_admin":true,"iat":{NOW},"exp":{}}}"#,
            UserId::new(),
            TeamId::new(),
            NOW + 60
        ));
        parts[1] = &forged;
        let token = parts.join(".");
        assert!(matches!(
            keys().verify_user_at(&token, NOW),
            Err(JwtError::Invalid { .. })
        ));
    }

    #[test]
    fn other_algorithms_and_none_are_rejected() {
        let claims = serde_json::json!({
            "typ": "user", "aud": USER_AUDIENCE, "sub": UserId::new(), "team_id": TeamId::new(),
            "role": "owner", "email": "e", "name": "n", "iat": NOW, "exp": NOW + 60,
        });
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = jsonwebtoken::encode(
                &Header::new(alg),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            assert_eq!(
                keys().verify_user_at(&token, NOW),
                Err(JwtError::Invalid {
                    reason: "algorithm not allowed (only HS256)"
                }),
                "{alg:?}"
            );
        }
        // alg "none" with an empty signature.
        let token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&claims.to_string())
        );
        assert!(matches!(
            keys().verify_user_at(&token, NOW),
            Err(JwtError::Invalid { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let k = keys();
        for bad in [
            "",
            ".",
            "..",
            "a.b.c",
            "not a token",
            "e30.e30.",
            "\u{0}\u{1}",
        ] {
            assert!(
                matches!(k.verify_user_at(bad, NOW), Err(JwtError::Invalid { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(k.verify_host_at(bad, NOW), Err(JwtError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_is_redacted_and_secret_generation() {
        assert_eq!(format!("{:?}", keys()), "JwtKeys([redacted])");
        let s = generate_jwt_secret();
        assert_eq!(s.len(), 64);
        assert!(JwtKeys::new(&s).is_ok());
        assert_ne!(s, generate_jwt_secret());
    }
}
