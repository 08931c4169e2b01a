//! TLS for HTTPS checks (rustls, the stack reqwest and kube already bring).
//!
//! With `ca_file` the backend's certificate must chain to one of its certificates and name
//! the server name; without it the check encrypts but accepts any certificate, as HAProxy's
//! `check-ssl verify none` does: it then proves the backend answers HTTPS, not who it is.

use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use crate::config::{HealthTls, read_ca_file};

/// The connector of one HTTPS check, built once per checked backend.
pub fn connector(tls: &HealthTls) -> Result<TlsConnector, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match &tls.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_ca_file(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to send and verify: `server_name`, else the check's `host`, else the address.
pub fn server_name(
    tls: &HealthTls,
    host: Option<&str>,
    addr: std::net::IpAddr,
) -> Result<ServerName<'static>, String> {
    match tls.server_name.as_deref().or(host) {
        Some(name) => ServerName::try_from(name.to_owned())
            .map_err(|_| format!("`{name}` is not a valid TLS server name")),
        None => Ok(ServerName::IpAddress(addr.into())),
    }
}

/// Accepts any certificate (no `ca_file`); signatures are still checked, so the handshake
/// is a real one.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
