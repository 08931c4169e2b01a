//! Trust bundles per trust domain, and the one chain check both TLS sides use: the peer's
//! certificate has exactly one SPIFFE ID, and chains (not expired) to the bundle of the trust
//! domain that ID names, so a CA of one trust domain cannot vouch for another's workloads.

use std::collections::HashMap;

use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::SpiffeId;

/// Why a peer certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    #[error("the certificate has no (single, valid) SPIFFE ID")]
    NoSpiffeId,
    #[error("no trust bundle for trust domain `{0}`")]
    UntrustedDomain(String),
    #[error("the certificate has expired (or is not yet valid)")]
    Expired,
    #[error("the certificate does not chain to its trust domain's CA")]
    UnknownIssuer,
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// The server proved an identity of a trusted domain, but not the one the client expects
    /// for the destination it dialled. (Boxed: keeps the error small.)
    #[error("the server presented {presented}, expected {expected}")]
    WrongServerIdentity {
        expected: Box<SpiffeId>,
        presented: Box<SpiffeId>,
    },
}

impl VerifyFailure {
    /// A short label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyFailure::NoSpiffeId => "no_spiffe_id",
            VerifyFailure::UntrustedDomain(_) => "untrusted_domain",
            VerifyFailure::Expired => "expired",
            VerifyFailure::UnknownIssuer => "unknown_issuer",
            VerifyFailure::BadCertificate(_) => "bad_certificate",
            VerifyFailure::WrongServerIdentity { .. } => "wrong_server_identity",
        }
    }
}

/// CA certificates (as trust anchors) per trust domain.
#[derive(Debug, Default, Clone)]
pub struct TrustStore {
    domains: HashMap<String, Vec<TrustAnchor<'static>>>,
}

impl TrustStore {
    /// Adds `certs` as anchors of `trust_domain`.
    pub fn add(
        &mut self,
        trust_domain: &str,
        certs: &[CertificateDer<'_>],
    ) -> Result<(), VerifyFailure> {
        let anchors = self.domains.entry(trust_domain.to_owned()).or_default();
        for c in certs {
            let a = webpki::anchor_from_trusted_cert(c)
                .map_err(|e| VerifyFailure::BadCertificate(e.to_string()))?;
            anchors.push(a.to_owned());
        }
        Ok(())
    }

    /// Checks a peer's chain for `usage` at `now` and returns its ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, VerifyFailure> {
        let id = SpiffeId::from_cert(end_entity).ok_or(VerifyFailure::NoSpiffeId)?;
        let anchors = self
            .domains
            .get(&id.trust_domain)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| VerifyFailure::UntrustedDomain(id.trust_domain.clone()))?;
        let cert = EndEntityCert::try_from(end_entity)
            .map_err(|e| VerifyFailure::BadCertificate(e.to_string()))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                VerifyFailure::Expired
            }
            // A CA of the same name but another key signed it: still not our CA.
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                VerifyFailure::UnknownIssuer
            }
            other => VerifyFailure::BadCertificate(other.to_string()),
        })?;
        Ok(id)
    }
}
