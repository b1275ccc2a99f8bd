//! Channel configs at rest: every value encrypted separately with AES-256-GCM and
//! stored as `base64(nonce ‖ ciphertext)` (standard alphabet, padded; a fresh random
//! 96-bit nonce per value). The format is the original control plane's, so configs
//! it stored decrypt here with the same key.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Length of the nonce in front of each ciphertext.
const NONCE_LEN: usize = 12;

/// Why a stored value could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The stored value is not base64 of at least a nonce and a tag.
    #[error("config value {key:?} is not an encrypted value")]
    Malformed {
        /// The config key.
        key: String,
    },
    /// Authentication failed: another key encrypted it, or it was altered.
    #[error(
        "config value {key:?} cannot be decrypted (was it encrypted with another WRENN_ENCRYPTION_KEY?)"
    )]
    Decrypt {
        /// The config key.
        key: String,
    },
}

/// Encrypts and decrypts channel config values with one key.
#[derive(Clone)]
pub struct ConfigCipher {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for ConfigCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigCipher([redacted])")
    }
}

impl ConfigCipher {
    /// A cipher for the 32-byte `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// `base64(nonce ‖ ciphertext)` of `plain`.
    pub fn encrypt(&self, plain: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        // Encryption with a valid key and nonce only fails for inputs beyond
        // AES-GCM's 64 GiB limit, which no config value reaches.
        let sealed = self
            .cipher
            .encrypt(&nonce, plain.as_bytes())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    /// The plaintext of a value stored under `key`.
    pub fn decrypt(&self, key: &str, stored: &str) -> Result<String, CryptoError> {
        let malformed = || CryptoError::Malformed {
            key: key.to_owned(),
        };
        let raw = STANDARD.decode(stored).map_err(|_| malformed())?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(malformed());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce_bytes), sealed)
            .map_err(|_| CryptoError::Decrypt {
                key: key.to_owned(),
            })?;
        String::from_utf8(plain).map_err(|_| malformed())
    }

    /// Every value of `config` encrypted.
    pub fn encrypt_config(&self, config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        config
            .iter()
            .map(|(k, v)| (k.clone(), self.encrypt(v)))
            .collect()
    }

    /// Every value of a stored config decrypted.
    pub fn decrypt_config(
        &self,
        stored: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, CryptoError> {
        stored
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.decrypt(k, v)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_a_fresh_nonce_each() {
        let c = ConfigCipher::new(&[7; 32]);
        let a = c.encrypt("https://hooks.example.com/T0/B0/secret");
        let b = c.encrypt("https://hooks.example.com/T0/B0/secret");
        assert_ne!(a, b, "a fresh nonce per value");
        assert!(!a.contains("hooks"));
        assert_eq!(
            c.decrypt("url", &a).unwrap(),
            "https://hooks.example.com/T0/B0/secret"
        );
        let raw = STANDARD.decode(&a).unwrap();
        assert_eq!(
            raw.len(),
            NONCE_LEN + "https://hooks.example.com/T0/B0/secret".len() + 16
        );
    }

    #[test]
    fn configs_round_trip_key_by_key() {
        let c = ConfigCipher::new(&[1; 32]);
        let plain = BTreeMap::from([
            ("bot_token".to_owned(), "123:abc".to_owned()),
            ("chat_id".to_owned(), "-100".to_owned()),
        ]);
        let stored = c.encrypt_config(&plain);
        assert_eq!(stored.keys().collect::<Vec<_>>(), ["bot_token", "chat_id"]);
        assert!(stored.values().all(|v| !v.contains("abc") && v != "-100"));
        assert_eq!(c.decrypt_config(&stored).unwrap(), plain);
    }

    #[test]
    fn another_key_tampering_and_garbage_are_errors() {
        let c = ConfigCipher::new(&[1; 32]);
        let other = ConfigCipher::new(&[2; 32]);
        let v = c.encrypt("secret");
        assert_eq!(
            other.decrypt("secret", &v),
            Err(CryptoError::Decrypt {
                key: "secret".into()
            })
        );
        let mut raw = STANDARD.decode(&v).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(matches!(
            c.decrypt("k", &STANDARD.encode(raw)),
            Err(CryptoError::Decrypt { .. })
        ));
        assert!(matches!(
            c.decrypt("k", "not base64!"),
            Err(CryptoError::Malformed { .. })
        ));
        assert!(matches!(
            c.decrypt("k", &STANDARD.encode([0u8; 20])),
            Err(CryptoError::Malformed { .. })
        ));
    }
}
