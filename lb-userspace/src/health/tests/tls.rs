//! HTTPS checks against a real TLS server on 127.0.0.1 (a self-signed certificate made for
//! the test): with and without a CA file, with the right and a wrong server name, against
//! another CA and against a plain-HTTP server.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

use super::{
    bounded,
    servers::{HttpServer, Reply},
};
use crate::{
    config::{HealthKind, HealthTls},
    health::{ProbeError, probe, tls},
};

const LIMIT: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_millis(1000);

/// A certificate for `name` and its PEM in a temp file (removed on drop).
pub(super) struct Cert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pub(super) pem_file: PathBuf,
}

impl Cert {
    pub(super) fn new(name: &str, tag: &str) -> Cert {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let pem_file = std::env::temp_dir().join(format!(
            "lb-health-{tag}-{}-{}.pem",
            std::process::id(),
            name
        ));
        std::fs::write(&pem_file, ck.cert.pem()).unwrap();
        Cert {
            der: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()).into(),
            pem_file,
        }
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pem_file);
    }
}

/// A TLS server answering every request with `HTTP/1.1 200 OK`; stops when dropped.
pub(super) struct TlsServer {
    pub(super) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsServer {
    pub(super) async fn start(cert: &Cert) -> TlsServer {
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der.clone()], cert.key.clone_key())
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsServer { addr, task }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn https(ca_file: Option<&Cert>, server_name: Option<&str>) -> HealthKind {
    HealthKind::Http {
        path: "/".into(),
        host: None,
        expect_status: 200,
        tls: Some(HealthTls {
            ca_file: ca_file.map(|c| c.pem_file.clone()),
            server_name: server_name.map(str::to_owned),
        }),
    }
}

async fn check(addr: SocketAddr, kind: &HealthKind) -> Result<(), ProbeError> {
    let HealthKind::Http { tls: Some(t), .. } = kind else {
        unreachable!("an HTTPS kind");
    };
    let connector = tls::connector(t);
    probe(addr, kind, TIMEOUT, Some(&connector)).await
}

#[tokio::test]
async fn https_without_a_ca_file_passes_on_any_certificate() {
    bounded(LIMIT, async {
        let cert = Cert::new("web.internal", "any");
        let server = TlsServer::start(&cert).await;
        check(server.addr, &https(None, None)).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn https_with_the_ca_file_verifies_the_server_name() {
    bounded(LIMIT, async {
        let cert = Cert::new("web.internal", "ca");
        let server = TlsServer::start(&cert).await;
        check(server.addr, &https(Some(&cert), Some("web.internal")))
            .await
            .unwrap();
        let err = check(server.addr, &https(Some(&cert), Some("other.internal")))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Tls(_)), "{err}");
        // No name configured: the backend's address is verified, and the certificate
        // does not name 127.0.0.1.
        let err = check(server.addr, &https(Some(&cert), None))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Tls(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn https_against_another_ca_or_plain_http_fails() {
    bounded(LIMIT, async {
        let cert = Cert::new("web.internal", "served");
        let other = Cert::new("web.internal", "other");
        let server = TlsServer::start(&cert).await;
        let err = check(server.addr, &https(Some(&other), Some("web.internal")))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Tls(_)), "{err}");

        // A plain-HTTP server waits for a request head that never comes: the check fails
        // by its timeout (never passes).
        let plain = HttpServer::start(Reply::Status(200));
        let err = check(plain.addr, &https(None, None)).await.unwrap_err();
        assert!(
            matches!(
                err,
                ProbeError::Tls(_) | ProbeError::Io(_) | ProbeError::Timeout(_)
            ),
            "{err}"
        );
    })
    .await;
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let path = std::env::temp_dir().join(format!("lb-health-empty-{}.pem", std::process::id()));
    std::fs::write(&path, "not a certificate\n").unwrap();
    let err = crate::config::read_ca_file(&path).unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(err.contains("no PEM certificate"), "{err}");
    let err = crate::config::read_ca_file(std::path::Path::new("/nonexistent/ca.pem")).unwrap_err();
    assert!(err.contains("cannot read /nonexistent/ca.pem"), "{err}");
}
