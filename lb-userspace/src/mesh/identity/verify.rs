//! rustls verifiers for both ends of the tunnel: the chain and SPIFFE checks of
//! [`TrustStore::verify`] (never host names: the peer is named by its SPIFFE ID), signatures
//! by the crypto provider. The trust store is read per handshake, so a reloaded bundle counts
//! from the next one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use webpki::KeyUsage;

use super::SpiffeId;
use super::trust::{TrustStore, VerifyFailure};

#[derive(Debug)]
pub(super) struct SpiffeVerifier {
    pub trust: Arc<ArcSwap<TrustStore>>,
    pub algs: WebPkiSupportedAlgorithms,
    /// Client side: the only SPIFFE ID the server may present (the destination's expected
    /// identity); `None`: any ID of a trusted domain.
    pub expected_server: Option<SpiffeId>,
}

impl SpiffeVerifier {
    pub fn new(trust: Arc<ArcSwap<TrustStore>>) -> Self {
        Self {
            trust,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            expected_server: None,
        }
    }

    /// A client-side verifier that also requires the server to be `expected`.
    pub fn expecting(trust: Arc<ArcSwap<TrustStore>>, expected: Option<SpiffeId>) -> Self {
        Self {
            expected_server: expected,
            ..Self::new(trust)
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, Error> {
        self.trust
            .load()
            .verify(end_entity, intermediates, now, usage)
            .map_err(to_rustls)
    }
}

/// Expired and unknown-issuer map onto rustls' own variants (so the peer gets the right
/// alert); the SPIFFE-specific failures ride in `Other`, see [`failure_reason`].
fn to_rustls(f: VerifyFailure) -> Error {
    Error::InvalidCertificate(match f {
        VerifyFailure::Expired => CertificateError::Expired,
        VerifyFailure::UnknownIssuer => CertificateError::UnknownIssuer,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

/// The client's check of a verified server: it must be `expected`, when one is known.
fn check_expected(expected: Option<&SpiffeId>, presented: SpiffeId) -> Result<(), Error> {
    match expected {
        Some(e) if *e != presented => Err(to_rustls(VerifyFailure::WrongServerIdentity {
            expected: Box::new(e.clone()),
            presented: Box::new(presented),
        })),
        _ => Ok(()),
    }
}

/// A short label for why a handshake failed, for counters: the [`VerifyFailure`] reasons when
/// this side refused the peer's certificate, `peer_refused` when the peer sent an alert,
/// `other` else.
pub fn failure_reason(e: &Error) -> &'static str {
    match e {
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        | Error::InvalidCertificate(CertificateError::NotValidYet)
        | Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => "expired",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_issuer",
        Error::InvalidCertificate(CertificateError::Other(OtherError(o))) => o
            .downcast_ref::<VerifyFailure>()
            .map_or("bad_certificate", VerifyFailure::reason),
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::NoCertificatesPresented => "no_certificate",
        Error::AlertReceived(_) => "peer_refused",
        Error::NoApplicationProtocol => "no_alpn",
        Error::PeerIncompatible(_) => "incompatible",
        _ => "other",
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented = self.check(end_entity, intermediates, now, KeyUsage::server_auth())?;
        check_expected(self.expected_server.as_ref(), presented)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity, intermediates, now, KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
