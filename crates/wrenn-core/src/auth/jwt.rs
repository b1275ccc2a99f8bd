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

use std::fmt;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::role::Role;
use crate::id::{HostId, TeamId, UserId};

/// Lifetime of a user token.
pub const USER_TOKEN_LIFETIME: Duration = Duration::from_secs(6 * 60 * 60);
/// Lifetime of a host token.
pub const HOST_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Clock skew tolerated when checking `exp` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 30;
/// Minimum length of the signing secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// `aud` claim of user tokens.
pub const USER_AUDIENCE: &str = "wrenn:user";
/// `aud` claim of host tokens.
pub const HOST_AUDIENCE: &str = "wrenn:host";

/// Lifetime of an account-activation token.
pub const ACTIVATION_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Lifetime of a password-reset token.
pub const PASSWORD_RESET_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Maximum length of a purpose token's `binding`, in bytes.
pub const MAX_BINDING_LEN: usize = 256;

const USER_TYP: &str = "user";
const HOST_TYP: &str = "host";

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

/// Why a token could not be signed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The signing secret is shorter than [`MIN_SECRET_LEN`] bytes.
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

/// Claims of a user token (`typ: "user"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaims {
    /// The user.
    pub sub: UserId,
    /// The team the token acts in.
    pub team_id: TeamId,
    /// The user's role in that team when the token was issued (re-read it from the
    /// database before authorising anything).
    pub role: Role,
    /// The user's email.
    pub email: String,
    /// The user's display name.
    pub name: String,
    /// Platform admin flag, for the UI only (re-read from the database before use).
    pub is_admin: bool,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

impl UserClaims {
    /// Claims issued now, expiring after [`USER_TOKEN_LIFETIME`].
    pub fn new(
        sub: UserId,
        team_id: TeamId,
        role: Role,
        email: impl Into<String>,
        name: impl Into<String>,
        is_admin: bool,
    ) -> Self {
        Self::issued_at(sub, team_id, role, email, name, is_admin, now_unix())
    }

    /// Claims issued at `now` (unix seconds), expiring after [`USER_TOKEN_LIFETIME`].
    pub fn issued_at(
        sub: UserId,
        team_id: TeamId,
        role: Role,
        email: impl Into<String>,
        name: impl Into<String>,
        is_admin: bool,
        now: i64,
    ) -> Self {
        Self {
            sub,
            team_id,
            role,
            email: email.into(),
            name: name.into(),
            is_admin,
            iat: now,
            exp: now.saturating_add(secs(USER_TOKEN_LIFETIME)),
        }
    }
}

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
struct UserWire {
    typ: String,
    aud: String,
    sub: UserId,
    team_id: TeamId,
    role: Role,
    email: String,
    name: String,
    #[serde(default)]
    is_admin: bool,
    iat: i64,
    exp: i64,
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

#[derive(Serialize, Deserialize)]
struct HostWire {
    typ: String,
    aud: String,
    sub: HostId,
    host_id: HostId,
    iat: i64,
    exp: i64,
}

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

    /// Signs a user token.
    pub fn sign_user(&self, claims: &UserClaims) -> Result<String, JwtError> {
        let wire = UserWire {
            typ: USER_TYP.to_owned(),
            aud: USER_AUDIENCE.to_owned(),
            sub: claims.sub,
            team_id: claims.team_id,
            role: claims.role,
            email: claims.email.clone(),
            name: claims.name.clone(),
            is_admin: claims.is_admin,
            iat: claims.iat,
            exp: claims.exp,
        };
        self.sign(&wire)
    }

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

    /// Verifies a user token against the current time.
    pub fn verify_user(&self, token: &str) -> Result<UserClaims, JwtError> {
        self.verify_user_at(token, now_unix())
    }

    /// Verifies a user token as of `now` (unix seconds).
    pub fn verify_user_at(&self, token: &str, now: i64) -> Result<UserClaims, JwtError> {
        let map = self.decode(token, USER_TYP, USER_AUDIENCE)?;
        let w: UserWire =
            serde_json::from_value(Value::Object(map)).map_err(|_| JwtError::Invalid {
                reason: "malformed claims",
            })?;
        check_times(w.iat, w.exp, now)?;
        Ok(UserClaims {
            sub: w.sub,
            team_id: w.team_id,
            role: w.role,
            email: w.email,
            name: w.name,
            is_admin: w.is_admin,
            iat: w.iat,
            exp: w.exp,
        })
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

    fn sign<T: Serialize>(&self, wire: &T) -> Result<String, JwtError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), wire, &self.encoding)
            .map_err(|e| JwtError::Signing(e.to_string()))
    }

    /// Checks signature, algorithm, audience and `typ`; returns the raw claims.
    fn decode(
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

fn check_times(iat: i64, exp: i64, now: i64) -> Result<(), JwtError> {
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

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

fn secs(d: Duration) -> i64 {
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

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_750_000_000;

    fn keys() -> JwtKeys {
        JwtKeys::new(SECRET).unwrap()
    }

    fn user_claims(now: i64) -> UserClaims {
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

    fn b64(s: &str) -> String {
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

    #[test]
    fn short_secret_is_rejected() {
        let err = JwtKeys::new(b"too short").unwrap_err();
        assert_eq!(err, JwtError::SecretTooShort { min: 32, actual: 9 });
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }

    #[test]
    fn user_round_trip() {
        let k = keys();
        let claims = user_claims(NOW);
        assert_eq!(claims.exp - claims.iat, 6 * 3600);
        let token = k.sign_user(&claims).unwrap();
        assert_eq!(k.verify_user_at(&token, NOW + 10).unwrap(), claims);
        // And against the real clock.
        let fresh = UserClaims::new(UserId::new(), TeamId::new(), Role::Member, "e", "n", false);
        let token = k.sign_user(&fresh).unwrap();
        assert_eq!(k.verify_user(&token).unwrap(), fresh);
    }

    #[test]
    fn user_wire_format() {
        let claims = user_claims(NOW);
        let token = keys().sign_user(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(SECRET), &v)
            .unwrap()
            .claims;
        assert_eq!(data["typ"], "user");
        assert_eq!(data["aud"], USER_AUDIENCE);
        assert_eq!(data["sub"], claims.sub.to_string());
        assert_eq!(data["team_id"], claims.team_id.to_string());
        assert_eq!(data["role"], "admin");
        assert_eq!(data["is_admin"], true);
    }

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

    #[test]
    fn typ_is_checked_even_with_the_right_audience() {
        // A token with the user audience but typ "host" (or no typ) is not a user token.
        for typ in [Some("host"), None] {
            let mut claims = serde_json::to_value(UserWire {
                typ: String::new(),
                aud: USER_AUDIENCE.into(),
                sub: UserId::new(),
                team_id: TeamId::new(),
                role: Role::Member,
                email: "e".into(),
                name: "n".into(),
                is_admin: false,
                iat: NOW,
                exp: NOW + 60,
            })
            .unwrap();
            match typ {
                Some(t) => claims["typ"] = Value::from(t),
                None => {
                    claims.as_object_mut().unwrap().remove("typ");
                }
            }
            let token = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            assert_eq!(
                keys().verify_user_at(&token, NOW),
                Err(JwtError::WrongKind { expected: "user" })
            );
        }
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

    #[test]
    fn debug_is_redacted_and_secret_generation() {
        assert_eq!(format!("{:?}", keys()), "JwtKeys([redacted])");
        let s = generate_jwt_secret();
        assert_eq!(s.len(), 64);
        assert!(JwtKeys::new(&s).is_ok());
        assert_ne!(s, generate_jwt_secret());
    }
}
