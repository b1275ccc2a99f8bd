//! Authentication and authorisation primitives: argon2id passwords, HS256 user, host
//! and single-purpose (activation, password reset) JWTs, team API keys, opaque
//! refresh/registration tokens and team roles.
//!
//! Nothing here touches storage or HTTP; the server combines these with the repos.

pub mod api_key;
pub mod jwt;
pub mod password;
pub mod role;
pub mod tokens;

pub use api_key::{ApiKey, ApiKeyError, hash_api_key, key_prefix, looks_like_api_key};
pub use jwt::{
    ACTIVATION_TOKEN_LIFETIME, HOST_TOKEN_LIFETIME, HostClaims, JwtError, JwtKeys,
    PASSWORD_RESET_TOKEN_LIFETIME, PurposeClaims, TokenPurpose, USER_TOKEN_LIFETIME, UserClaims,
    binding_digest, generate_jwt_secret,
};
pub use password::{
    PasswordError, check_password_policy, hash_password, verify_password, verify_password_dummy,
};
pub use role::{Role, RoleError, check_leave, check_remove_member, check_role_change};
pub use tokens::{
    HOST_REFRESH_TOKEN_LIFETIME, OpaqueToken, REGISTRATION_TOKEN_LIFETIME, TokenError,
    USER_REFRESH_TOKEN_LIFETIME, constant_time_eq, hash_token,
};

/// Any error from the auth module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Password policy, hashing or verification.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// JWT signing or verification.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// API key format.
    #[error(transparent)]
    ApiKey(#[from] ApiKeyError),
    /// Opaque token format.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Role parsing or a role rule.
    #[error(transparent)]
    Role(#[from] RoleError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_and_keep_their_message() {
        let e: AuthError = JwtError::Expired.into();
        assert_eq!(e.to_string(), "token has expired");
        let e: AuthError = RoleError::OwnerCannotLeave.into();
        assert!(e.to_string().contains("delete the team instead"));
        let e: AuthError = ApiKeyError::Malformed.into();
        assert!(matches!(e, AuthError::ApiKey(_)));
        let e: AuthError = TokenError::Malformed.into();
        assert!(matches!(e, AuthError::Token(_)));
        let e: AuthError = PasswordError::TooShort { min: 8 }.into();
        assert!(matches!(e, AuthError::Password(_)));
    }
}
