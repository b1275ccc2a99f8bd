//! Server secrets: the JWT signing secret, the channel-config encryption key and the
//! host CA.
//!
//! When not configured, each is generated once into `$WRENN_DIR/secrets/` (mode
//! 0600) and read back on later starts, so tokens and host certificates survive
//! restarts.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::ca::CertificateAuthority;
use wrenn_core::auth::generate_jwt_secret;
use wrenn_core::config::Config;

use crate::error::ServerError;

/// Loaded secrets.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// HS256 secret for user and host JWTs.
    pub jwt_secret: String,
    /// AES-256-GCM key of channel configs (`WRENN_ENCRYPTION_KEY`, else generated).
    pub encryption_key: EncryptionKey,
    /// The host CA.
    pub ca: Arc<CertificateAuthority>,
}

/// A 32-byte key whose `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EncryptionKey(pub [u8; 32]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

/// The configured encryption key, else the one in `secrets/encryption_key`, else a
/// new random one written there.
fn encryption_key(config: &Config) -> Result<EncryptionKey, ServerError> {
    if let Some(key) = config.encryption_key {
        return Ok(EncryptionKey(key));
    }
    let path = config.layout().encryption_key_file();
    match read(&path)? {
        Some(s) => {
            let mut key = [0u8; 32];
            let s = s.trim();
            if s.len() != 64 || hex::decode_to_slice(s, &mut key).is_err() {
                return Err(ServerError::Secrets(format!(
                    "{} must hold 64 hex characters (32 bytes); restore it, or set WRENN_ENCRYPTION_KEY",
                    path.display()
                )));
            }
            Ok(EncryptionKey(key))
        }
        None => {
            let key: [u8; 32] = rand::random();
            write_private(&path, &hex::encode(key))?;
            tracing::info!(path = %path.display(), "generated channel encryption key");
            Ok(EncryptionKey(key))
        }
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ServerError::io(dir, e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| ServerError::io(path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| ServerError::io(path, e))
}

fn read(path: &Path) -> Result<Option<String>, ServerError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ServerError::io(path, e)),
    }
}

impl Secrets {
    /// Loads the configured secrets, generating and persisting missing ones.
    pub fn load_or_generate(config: &Config) -> Result<Self, ServerError> {
        let layout = config.layout();
        let jwt_secret = match &config.jwt_secret {
            Some(s) => s.expose_secret().to_owned(),
            None => {
                let path = layout.jwt_secret_file();
                match read(&path)? {
                    Some(s) => s.trim().to_owned(),
                    None => {
                        let s = generate_jwt_secret();
                        write_private(&path, &s)?;
                        tracing::info!(path = %path.display(), "generated JWT secret");
                        s
                    }
                }
            }
        };
        let (cert_pem, key_pem) = match (&config.ca_cert, &config.ca_key) {
            (Some(cert), Some(key)) => (
                read(cert)?.ok_or_else(|| {
                    ServerError::Secrets(format!(
                        "CA certificate {} does not exist",
                        cert.display()
                    ))
                })?,
                read(key)?.ok_or_else(|| {
                    ServerError::Secrets(format!("CA key {} does not exist", key.display()))
                })?,
            ),
            (None, None) => {
                let (cert_path, key_path) = (layout.ca_cert_file(), layout.ca_key_file());
                match (read(&cert_path)?, read(&key_path)?) {
                    (Some(cert_pem), Some(key_pem)) => (cert_pem, key_pem),
                    (None, None) => {
                        let ca = CertificateAuthority::generate()
                            .map_err(|e| ServerError::Secrets(e.to_string()))?;
                        write_private(&key_path, ca.key_pem())?;
                        write_private(&cert_path, ca.cert_pem())?;
                        tracing::info!(path = %cert_path.display(), "generated host CA");
                        (ca.cert_pem().to_owned(), ca.key_pem().to_owned())
                    }
                    _ => {
                        return Err(ServerError::Secrets(format!(
                            "only one of {} and {} exists; restore the other or remove both to generate a new CA",
                            cert_path.display(),
                            key_path.display()
                        )));
                    }
                }
            }
            _ => {
                return Err(ServerError::Secrets(
                    "WRENN_CA_CERT and WRENN_CA_KEY must be set together".into(),
                ));
            }
        };
        let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem)
            .map_err(|e| ServerError::Secrets(e.to_string()))?;
        let ca = Arc::new(ca);
        let encryption_key = encryption_key(config)?;
        Ok(Self {
            jwt_secret,
            encryption_key,
            ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let dir = dir.to_string_lossy().into_owned();
        Config::from_lookup(|k| (k == "WRENN_DIR").then(|| dir.clone())).expect("config")
    }

    #[test]
    fn secrets_are_generated_once_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let first = Secrets::load_or_generate(&cfg).unwrap();
        let second = Secrets::load_or_generate(&cfg).unwrap();
        assert_eq!(first.jwt_secret, second.jwt_secret);
        assert_eq!(first.ca.cert_pem(), second.ca.cert_pem());
        assert_eq!(first.encryption_key, second.encryption_key);
        assert!(first.jwt_secret.len() >= 32);
        assert!(
            first
                .ca
                .cert_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(cfg.layout().jwt_secret_file())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_configured_encryption_key_wins_and_a_damaged_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_string_lossy().into_owned();
        let hex_key = "11".repeat(32);
        let cfg = Config::from_lookup(|k| match k {
            "WRENN_DIR" => Some(dir.clone()),
            "WRENN_ENCRYPTION_KEY" => Some(hex_key.clone()),
            _ => None,
        })
        .unwrap();
        let loaded = Secrets::load_or_generate(&cfg).unwrap();
        assert_eq!(loaded.encryption_key, EncryptionKey([0x11; 32]));
        assert!(!cfg.layout().encryption_key_file().exists());
        assert_eq!(
            format!("{:?}", loaded.encryption_key),
            "EncryptionKey([redacted])"
        );

        let plain = config(tmp.path());
        std::fs::create_dir_all(plain.layout().secrets_dir()).unwrap();
        std::fs::write(plain.layout().encryption_key_file(), "not hex").unwrap();
        let err = Secrets::load_or_generate(&plain).unwrap_err();
        assert!(err.to_string().contains("64 hex characters"), "{err}");
    }

    #[test]
    fn a_half_present_ca_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        Secrets::load_or_generate(&cfg).unwrap();
        std::fs::remove_file(cfg.layout().ca_key_file()).unwrap();
        let err = Secrets::load_or_generate(&cfg).unwrap_err();
        assert!(err.to_string().contains("only one of"), "{err}");
    }

    #[test]
    fn a_configured_ca_is_loaded_and_a_mismatched_key_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let a = CertificateAuthority::generate().unwrap();
        let b = CertificateAuthority::generate().unwrap();
        let (cert, key, other_key) = (
            tmp.path().join("ca.pem"),
            tmp.path().join("ca.key"),
            tmp.path().join("other.key"),
        );
        std::fs::write(&cert, a.cert_pem()).unwrap();
        std::fs::write(&key, a.key_pem()).unwrap();
        std::fs::write(&other_key, b.key_pem()).unwrap();
        let with = |key: &Path| {
            let vars = [
                ("WRENN_DIR", tmp.path().to_string_lossy().into_owned()),
                ("WRENN_CA_CERT", cert.to_string_lossy().into_owned()),
                ("WRENN_CA_KEY", key.to_string_lossy().into_owned()),
            ];
            Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
                .expect("config")
        };
        let loaded = Secrets::load_or_generate(&with(&key)).unwrap();
        assert_eq!(loaded.ca.cert_pem(), a.cert_pem());
        let err = Secrets::load_or_generate(&with(&other_key)).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        // Nothing was generated beside the configured pair.
        assert!(!with(&key).layout().ca_key_file().exists());
    }
}
