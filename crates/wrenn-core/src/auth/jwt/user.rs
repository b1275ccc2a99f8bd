//! User tokens (`typ: "user"`, 6 h): [`UserClaims`] and signing and verifying them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{check_times, now_unix, secs};
use super::{JwtError, JwtKeys};
use crate::auth::role::Role;
use crate::id::{TeamId, UserId};

/// Lifetime of a user token.
pub const USER_TOKEN_LIFETIME: Duration = Duration::from_secs(6 * 60 * 60);
/// `aud` claim of user tokens.
pub const USER_AUDIENCE: &str = "wrenn:user";

const USER_TYP: &str = "user";

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

impl JwtKeys {
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
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

    use super::*;
    use crate::auth::jwt::test_support::{NOW, SECRET, keys, user_claims};

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
}
