//! The agent's CA: loaded from PEM files, it issues short-lived workload certificates whose
//! only SAN is the SPIFFE ID (ECDSA P-256 keys, server and client auth). Also makes a new
//! self-signed CA, for tests and first setups.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("CA certificate: {0}")]
    CaCert(String),
    #[error("CA key: {0}")]
    CaKey(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("issuing a certificate: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A CA that can sign.
pub struct Ca {
    /// Re-made from the file's parameters and key: rcgen signs with a certificate object;
    /// subject and key are the file's, so what it signs chains to the file's certificate.
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The certificates of the CA file as written (the first is the CA), trust anchors of
    /// the own trust domain.
    pub file_certs: Vec<CertificateDer<'static>>,
}

/// A certificate just issued, with its new key.
pub struct Issued {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl Ca {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, IssueError> {
        let file_certs = super::files::certs_from_pem(cert_pem)
            .map_err(|e| IssueError::CaCert(e.to_string()))?;
        let first = file_certs
            .first()
            .ok_or_else(|| IssueError::CaCert("no certificate in the file".to_owned()))?;
        let params = CertificateParams::from_ca_cert_der(first)
            .map_err(|e| IssueError::CaCert(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| IssueError::CaKey(e.to_string()))?;
        let (_, x509) = X509Certificate::from_der(first.as_ref())
            .map_err(|e| IssueError::CaCert(e.to_string()))?;
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(IssueError::KeyMismatch);
        }
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert,
            key,
            file_certs,
        })
    }

    /// A new self-signed CA for `trust_domain`, valid for ten years: (certificate PEM, key PEM).
    pub fn generate(trust_domain: &str) -> Result<(String, String), IssueError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, format!("lb mesh CA {trust_domain}"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(3600)).into();
        p.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
        p.serial_number = Some(serial());
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A certificate for `id` valid from `not_before` to `not_after`, with a fresh key and a
    /// random serial.
    pub fn issue(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, IssueError> {
        let mut p = CertificateParams::default();
        // SPIFFE X.509-SVIDs identify by the URI SAN alone.
        p.distinguished_name = DistinguishedName::new();
        let uri = rcgen::Ia5String::try_from(id.to_string())?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = not_before.into();
        p.not_after = not_after.into();
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

/// 16 random bytes, positive (top bit clear) and never starting with a zero byte (DER).
fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    // getrandom fails only without an entropy source; the time keeps serials distinct then.
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_be_bytes();
    }
    b[0] = (b[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&b)
}
