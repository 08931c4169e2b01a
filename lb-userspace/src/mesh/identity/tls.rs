//! The rustls configurations of the tunnel: TLS 1.3 only, ALPN h2, both sides authenticated
//! by SPIFFE certificates (see `verify`), certificates looked up per handshake (see `store`).
//! Session resumption is off: every handshake proves the current certificate, so rotation
//! and expiry count at once (the tunnel keeps few, long-lived connections).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::store::CertStore;
use super::trust::TrustStore;
use super::verify::SpiffeVerifier;
use super::{IdentityError, SpiffeId};

pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug)]
struct ClientCert {
    store: Arc<CertStore>,
    id: SpiffeId,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.store.get(&self.id)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct ServerCert {
    store: Arc<CertStore>,
    id: SpiffeId,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.get(&self.id)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn client_config(
    store: Arc<CertStore>,
    trust: Arc<ArcSwap<TrustStore>>,
    me: SpiffeId,
    expected_server: Option<SpiffeId>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let verifier = SpiffeVerifier::expecting(trust, expected_server);
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientCert { store, id: me }));
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    c.resumption = Resumption::disabled();
    Ok(Arc::new(c))
}

pub(super) fn server_config(
    store: Arc<CertStore>,
    trust: Arc<ArcSwap<TrustStore>>,
    me: SpiffeId,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(SpiffeVerifier::new(trust)))
        .with_cert_resolver(Arc::new(ServerCert { store, id: me }));
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    c.session_storage = Arc::new(NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}
