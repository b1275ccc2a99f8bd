//! The host certificate authority: the control plane's CA, which signs every host
//! agent's TLS server certificate at registration and on each credential refresh
//! (the agent serves its gRPC API with it; the control plane verifies it against
//! this CA). Keys are ECDSA P-256.
//!
//! The CA is generated once into `$WRENN_DIR/secrets/` or loaded from
//! `WRENN_CA_CERT`/`WRENN_CA_KEY` (`wrenn-cpserver` does either at startup);
//! [`CertificateAuthority::from_pem`] checks that the key belongs to the
//! certificate, so a mismatched pair is a startup error rather than a host
//! certificate nobody can verify.

use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use wrenn_core::id::HostId;

/// How long a host certificate is valid: as long as the host JWT it is issued
/// with (the agent renews both on refresh).
pub const HOST_CERT_LIFETIME: Duration = Duration::days(7);

/// How far back a new certificate's validity starts, so a host whose clock runs a
/// little behind the control plane's accepts it at once.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);

/// How long the control plane's client certificate is valid (it is renewed well
/// before, see [`CLIENT_CERT_RENEW_AFTER`]).
pub const CLIENT_CERT_LIFETIME: Duration = Duration::hours(24);

/// Age after which the control plane renews its client certificate.
pub const CLIENT_CERT_RENEW_AFTER: Duration = Duration::hours(12);

/// Common name of the control plane's client certificate.
pub const CLIENT_CERT_CN: &str = "wrenn-cp";

/// Lifetime of a generated CA.
pub const CA_LIFETIME: Duration = Duration::days(3650);

/// Why the CA could not be loaded or could not sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CA certificate is not a PEM X.509 certificate.
    #[error("CA certificate is not a valid PEM certificate: {0}")]
    Certificate(String),
    /// The CA key is not a PEM private key of a supported kind.
    #[error("CA key is not a valid PEM private key: {0}")]
    Key(String),
    /// The key does not belong to the certificate.
    #[error("CA key does not match the CA certificate's public key")]
    KeyMismatch,
    /// The host address has no host part to name in the certificate.
    #[error("host address {0:?} has no host name or IP address")]
    Address(String),
    /// Signing failed.
    #[error("could not sign a certificate: {0}")]
    Sign(String),
}

/// A certificate the CA issued, with its key.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM (PKCS#8) of the certificate's private key.
    pub key_pem: String,
    /// SHA-256 of the certificate's DER, lowercase hex (`hosts.cert_fingerprint`).
    pub fingerprint: String,
    /// End of validity.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("fingerprint", &self.fingerprint)
            .field("expires_at", &self.expires_at)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// The host CA: its certificate, its key, and a signer built from both.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads a CA from its PEM certificate and PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))?;
        let der = pem_der(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Generates a new self-signed CA (CN "Wrenn host CA", valid [`CA_LIFETIME`]).
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Wrenn host CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = Utc::now();
        params.not_before = to_time(now - CLOCK_SKEW_ALLOWANCE)?;
        params.not_after = to_time(now + CA_LIFETIME)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// PEM of the CA certificate (what agents and the control plane trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// PEM of the CA private key.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a TLS server certificate for `host`, reachable at `address`
    /// (`host:port`, `[v6]:port` or `http://host:port`): CN is the host id, the
    /// subject alternative name is the address's IP or DNS name, the extended key
    /// usage is server authentication, and it is valid from a few minutes before
    /// `now` for [`HOST_CERT_LIFETIME`].
    pub fn issue_host_cert(
        &self,
        host: HostId,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedCertificate, CaError> {
        let san = address_san(address)?;
        self.issue(
            &host.to_string(),
            vec![san],
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            HOST_CERT_LIFETIME,
        )
    }

    /// Issues the control plane's TLS client certificate (CN [`CLIENT_CERT_CN`],
    /// client authentication only, valid [`CLIENT_CERT_LIFETIME`]), which agents
    /// require on every connection.
    pub fn issue_client_cert(&self, now: DateTime<Utc>) -> Result<IssuedCertificate, CaError> {
        self.issue(
            CLIENT_CERT_CN,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
            CLIENT_CERT_LIFETIME,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        now: DateTime<Utc>,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let expires_at = now + lifetime;
        params.not_before = to_time(now - CLOCK_SKEW_ALLOWANCE)?;
        params.not_after = to_time(expires_at)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(IssuedCertificate {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            // X.509 validity has second precision.
            expires_at: DateTime::from_timestamp(expires_at.timestamp(), 0).unwrap_or(expires_at),
        })
    }
}

/// The DER inside the first PEM block of `pem`.
fn pem_der(pem: &str) -> Result<Vec<u8>, CaError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CaError::Certificate(e.to_string()))?;
    if block.label != "CERTIFICATE" {
        return Err(CaError::Certificate(format!(
            "expected a CERTIFICATE block, found {}",
            block.label
        )));
    }
    Ok(block.contents)
}

/// The host part of an agent address (`host:port`, `[v6]:port`, `http(s)://host:port`):
/// what its certificate names and what the control plane verifies when it dials it.
pub fn address_host(address: &str) -> &str {
    let authority = address.trim();
    let authority = authority
        .strip_prefix("http://")
        .or_else(|| authority.strip_prefix("https://"))
        .unwrap_or(authority);
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The subject alternative name for an agent address: its IP, or else its DNS
/// name.
fn address_san(address: &str) -> Result<SanType, CaError> {
    let host = address_host(address);
    if host.is_empty() {
        return Err(CaError::Address(address.to_owned()));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = host
        .to_ascii_lowercase()
        .try_into()
        .map_err(|_| CaError::Address(address.to_owned()))?;
    Ok(SanType::DnsName(name))
}

/// A random positive 127-bit serial number (RFC 5280: at most 20 octets, positive).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero octet to strip
    SerialNumber::from_slice(&bytes)
}

fn to_time(t: DateTime<Utc>) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|e| CaError::Sign(format!("time out of range: {e}")))
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::*;

    use super::*;

    fn parse(pem: &str) -> Vec<u8> {
        pem_der(pem).expect("pem")
    }

    /// Whether the certificate `cert_pem` carries a valid signature of `ca`'s key.
    fn signed_by(cert_pem: &str, ca: &CertificateAuthority) -> bool {
        let der = parse(cert_pem);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let ca_der = parse(ca.cert_pem());
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        cert.issuer() == ca_cert.subject()
            && cert.verify_signature(Some(ca_cert.public_key())).is_ok()
    }

    #[test]
    fn a_host_certificate_names_the_host_and_is_signed_by_the_ca() {
        let ca = CertificateAuthority::generate().unwrap();
        let host = HostId::new();
        let now = Utc::now();
        let issued = ca.issue_host_cert(host, "10.1.2.3:50051", now).unwrap();

        let der = parse(&issued.cert_pem);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), host.to_string());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::IPAddress(&[10, 1, 2, 3])]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && !eku.value.client_auth);
        assert!(!cert.is_ca());

        assert!(signed_by(&issued.cert_pem, &ca), "signed by the CA");
        // Another CA's key does not verify it.
        let other = CertificateAuthority::generate().unwrap();
        assert!(!signed_by(&issued.cert_pem, &other));

        let validity = cert.validity();
        assert_eq!(
            validity.not_after.timestamp(),
            (now + HOST_CERT_LIFETIME).timestamp()
        );
        assert_eq!(
            issued.expires_at.timestamp(),
            validity.not_after.timestamp()
        );
        assert!(validity.not_before.timestamp() < now.timestamp());
        assert_eq!(issued.fingerprint, hex::encode(Sha256::digest(&der)));
        // The key is the certificate's.
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
    }

    #[test]
    fn the_san_follows_the_address_form() {
        let ca = CertificateAuthority::generate().unwrap();
        let san_of = |address: &str| {
            let issued = ca
                .issue_host_cert(HostId::new(), address, Utc::now())
                .unwrap();
            let der = parse(&issued.cert_pem);
            let (_, cert) = parse_x509_certificate(&der).unwrap();
            let names = cert
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .map(|n| format!("{n}"))
                .collect::<Vec<_>>();
            names.join(",")
        };
        assert_eq!(
            san_of("agent-7.example.com:50051"),
            "DNSName(agent-7.example.com)"
        );
        assert_eq!(
            san_of("http://Agent.Example.com:1"),
            "DNSName(agent.example.com)"
        );
        assert!(san_of("[::1]:50051").starts_with("IPAddress("));
        assert!(san_of("127.0.0.1:9").starts_with("IPAddress("));
        assert!(matches!(
            ca.issue_host_cert(HostId::new(), ":50051", Utc::now()),
            Err(CaError::Address(_))
        ));
    }

    #[test]
    fn the_client_certificate_is_for_client_authentication_only() {
        let ca = CertificateAuthority::generate().unwrap();
        let now = Utc::now();
        let issued = ca.issue_client_cert(now).unwrap();
        let der = parse(&issued.cert_pem);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), CLIENT_CERT_CN);
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert_eq!(
            cert.validity().not_after.timestamp(),
            (now + CLIENT_CERT_LIFETIME).timestamp()
        );
        assert!(signed_by(&issued.cert_pem, &ca));
    }

    #[test]
    fn each_certificate_has_its_own_key_and_serial() {
        let ca = CertificateAuthority::generate().unwrap();
        let host = HostId::new();
        let a = ca.issue_host_cert(host, "10.0.0.1:1", Utc::now()).unwrap();
        let b = ca.issue_host_cert(host, "10.0.0.1:1", Utc::now()).unwrap();
        assert_ne!(a.key_pem, b.key_pem);
        assert_ne!(a.fingerprint, b.fingerprint);
        let serial = |pem: &str| {
            let der = parse(pem);
            parse_x509_certificate(&der).unwrap().1.serial.clone()
        };
        assert_ne!(serial(&a.cert_pem), serial(&b.cert_pem));
    }

    #[test]
    fn a_loaded_ca_signs_like_the_generated_one() {
        let ca = CertificateAuthority::generate().unwrap();
        let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let issued = loaded
            .issue_host_cert(HostId::new(), "10.0.0.1:1", Utc::now())
            .unwrap();
        assert!(signed_by(&issued.cert_pem, &ca));
    }

    #[test]
    fn a_key_of_another_ca_or_garbage_is_refused() {
        let a = CertificateAuthority::generate().unwrap();
        let b = CertificateAuthority::generate().unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(a.cert_pem(), b.key_pem()),
            Err(CaError::KeyMismatch)
        ));
        assert!(matches!(
            CertificateAuthority::from_pem("not a pem", a.key_pem()),
            Err(CaError::Certificate(_))
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(a.cert_pem(), "not a key"),
            Err(CaError::Key(_))
        ));
        // A key PEM where the certificate should be.
        assert!(matches!(
            CertificateAuthority::from_pem(a.key_pem(), a.key_pem()),
            Err(CaError::Certificate(_))
        ));
    }
}
