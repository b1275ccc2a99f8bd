//! Password hashing (argon2id, PHC strings) and the password policy.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Minimum password length, in characters.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Maximum password length, in characters.
pub const MAX_PASSWORD_LEN: usize = 128;

/// Argon2id memory cost in KiB (OWASP recommendation: 19 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// Argon2id iterations (OWASP recommendation).
pub const ARGON2_ITERATIONS: u32 = 2;
/// Argon2id parallelism (OWASP recommendation).
pub const ARGON2_PARALLELISM: u32 = 1;

/// Why a password could not be accepted, hashed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Shorter than [`MIN_PASSWORD_LEN`].
    #[error("password must be at least {min} characters long")]
    TooShort {
        /// The minimum length.
        min: usize,
    },
    /// Longer than [`MAX_PASSWORD_LEN`].
    #[error("password must be at most {max} characters long")]
    TooLong {
        /// The maximum length.
        max: usize,
    },
    /// The stored hash is not a valid PHC string (a server-side data problem).
    #[error("stored password hash is malformed")]
    MalformedHash,
    /// The hashing backend failed (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Checks the password policy: between [`MIN_PASSWORD_LEN`] and [`MAX_PASSWORD_LEN`]
/// characters (Unicode scalar values).
pub fn check_password_policy(password: &str) -> Result<(), PasswordError> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(PasswordError::TooShort {
            min: MIN_PASSWORD_LEN,
        });
    }
    if len > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong {
            max: MAX_PASSWORD_LEN,
        });
    }
    Ok(())
}

fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_ITERATIONS,
        ARGON2_PARALLELISM,
        None,
    )
    .map_err(|e| PasswordError::Hashing(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a new password with argon2id (m=19456 KiB, t=2, p=1) and a random 16-byte
/// salt, returning the PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
///
/// The password policy ([`check_password_policy`]) is enforced first, so a password
/// that violates it can never be stored.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    check_password_policy(password)?;
    let salt_bytes: [u8; 16] = rand::random();
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| PasswordError::Hashing(e.to_string()))?;
    hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Verifies `password` against a stored PHC string. `Ok(false)` means a wrong password;
/// an error means the stored hash is unusable. The policy is not applied, so passwords
/// stored under an older policy still verify. The parameters are read from the hash.
pub fn verify_password(password: &str, phc: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(phc).map_err(|_| PasswordError::MalformedHash)?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(PasswordError::MalformedHash);
    }
    match hasher()?.verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(_) => Err(PasswordError::MalformedHash),
    }
}

/// A valid argon2id PHC string with the standard parameters that matches no password.
const DUMMY_PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$KzggO80fnhB1x3vYMj/isw$gGcDyGy4cJ1a4KeGW12iQ5hdtWTxyt6oAMdPdS5375Q";

/// Spends the same time as [`verify_password`] against a real hash, and returns
/// `false`. Call it when the user does not exist (or has no password), so response
/// time does not reveal which emails have accounts.
pub fn verify_password_dummy(password: &str) -> bool {
    matches!(verify_password(password, DUMMY_PHC), Ok(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("correct horse battery", &phc).unwrap());
        assert!(!verify_password("correct horse batterY", &phc).unwrap());
        assert!(!verify_password("", &phc).unwrap());
    }

    #[test]
    fn dummy_verification_parses_and_never_matches() {
        assert!(PasswordHash::new(DUMMY_PHC).is_ok());
        assert_eq!(verify_password("anything", DUMMY_PHC), Ok(false));
        assert!(!verify_password_dummy("anything"));
    }

    #[test]
    fn salts_differ() {
        let a = hash_password("password123").unwrap();
        let b = hash_password("password123").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn policy_bounds() {
        assert_eq!(
            check_password_policy("1234567"),
            Err(PasswordError::TooShort { min: 8 })
        );
        assert_eq!(check_password_policy("12345678"), Ok(()));
        // Characters, not bytes: 8 multi-byte characters pass.
        assert_eq!(check_password_policy("éééééééé"), Ok(()));
        assert_eq!(check_password_policy(&"a".repeat(128)), Ok(()));
        let err = check_password_policy(&"a".repeat(129)).unwrap_err();
        assert_eq!(err, PasswordError::TooLong { max: 128 });
        assert_eq!(
            err.to_string(),
            "password must be at most 128 characters long"
        );
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort { .. })
        ));
    }

    #[test]
    fn malformed_hashes_are_errors_not_panics() {
        for bad in ["", "plain", "$argon2id$", "$2b$12$abcdefghijklmnopqrstuv"] {
            assert_eq!(
                verify_password("whatever1", bad),
                Err(PasswordError::MalformedHash),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_argon2_variants_are_rejected() {
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let phc = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::default())
            .hash_password(b"password123", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            verify_password("password123", &phc),
            Err(PasswordError::MalformedHash)
        );
    }
}
