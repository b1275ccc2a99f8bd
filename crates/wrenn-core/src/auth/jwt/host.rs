//! Host tokens (`typ: "host"`, 7 d): [`HostClaims`] and signing and verifying them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{check_times, now_unix, secs};
use super::{JwtError, JwtKeys};
use crate::id::HostId;

/// Lifetime of a host token.
pub const HOST_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// `aud` claim of host tokens.
pub const HOST_AUDIENCE: &str = "wrenn:host";

const HOST_TYP: &str = "host";

/// Claims of a host token (`typ: "host"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostClaims {
    /// The host (also serialised as `host_id`).
    pub sub: HostId,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

impl HostClaims {
    /// Claims issued now, expiring after [`HOST_TOKEN_LIFETIME`].
    pub fn new(host_id: HostId) -> Self {
        Self::issued_at(host_id, now_unix())
    }

    /// Claims issued at `now` (unix seconds), expiring after [`HOST_TOKEN_LIFETIME`].
    pub fn issued_at(host_id: HostId, now: i64) -> Self {
        Self {
            sub: host_id,
            iat: now,
            exp: now.saturating_add(secs(HOST_TOKEN_LIFETIME)),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct HostWire {
    typ: String,
    aud: String,
    sub: HostId,
    host_id: HostId,
    iat: i64,
    exp: i64,
}

impl JwtKeys {
    /// Signs a host token.
    pub fn sign_host(&self, claims: &HostClaims) -> Result<String, JwtError> {
        let wire = HostWire {
            typ: HOST_TYP.to_owned(),
            aud: HOST_AUDIENCE.to_owned(),
            sub: claims.sub,
            host_id: claims.sub,
            iat: claims.iat,
            exp: claims.exp,
        };
        self.sign(&wire)
    }

    /// Verifies a host token against the current time.
    pub fn verify_host(&self, token: &str) -> Result<HostClaims, JwtError> {
        self.verify_host_at(token, now_unix())
    }

    /// Verifies a host token as of `now` (unix seconds).
    pub fn verify_host_at(&self, token: &str, now: i64) -> Result<HostClaims, JwtError> {
        let map = self.decode(token, HOST_TYP, HOST_AUDIENCE)?;
        let w: HostWire =
            serde_json::from_value(Value::Object(map)).map_err(|_| JwtError::Invalid {
                reason: "malformed claims",
            })?;
        if w.sub != w.host_id {
            return Err(JwtError::Invalid {
                reason: "sub and host_id differ",
            });
        }
        check_times(w.iat, w.exp, now)?;
        Ok(HostClaims {
            sub: w.sub,
            iat: w.iat,
            exp: w.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;
    use crate::auth::jwt::test_support::{NOW, SECRET, keys, user_claims};

    #[test]
    fn host_round_trip_and_wire_format() {
        let k = keys();
        let host = HostId::new();
        let claims = HostClaims::issued_at(host, NOW);
        assert_eq!(claims.exp - claims.iat, 7 * 24 * 3600);
        let token = k.sign_host(&claims).unwrap();
        assert_eq!(k.verify_host_at(&token, NOW).unwrap(), claims);
        assert_eq!(
            k.verify_host(&k.sign_host(&HostClaims::new(host)).unwrap())
                .unwrap()
                .sub,
            host
        );
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(SECRET), &v)
            .unwrap()
            .claims;
        assert_eq!(data["typ"], "host");
        assert_eq!(data["aud"], HOST_AUDIENCE);
        assert_eq!(data["host_id"], host.to_string());
        assert_eq!(data["sub"], host.to_string());
    }

    #[test]
    fn kinds_cannot_be_confused() {
        let k = keys();
        let user = k.sign_user(&user_claims(NOW)).unwrap();
        let host = k
            .sign_host(&HostClaims::issued_at(HostId::new(), NOW))
            .unwrap();
        assert_eq!(
            k.verify_host_at(&user, NOW),
            Err(JwtError::WrongKind { expected: "host" })
        );
        assert_eq!(
            k.verify_user_at(&host, NOW),
            Err(JwtError::WrongKind { expected: "user" })
        );
    }
}
