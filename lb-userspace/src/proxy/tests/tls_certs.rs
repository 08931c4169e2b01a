//! TLS: per-SNI certificates, ALPN h2, reload on file change.

use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_util::sync::CancellationToken;

use super::super::tls::{CertSpec, Tls, TlsError, TlsSettings};
use super::*;

/// A temp dir with generated certificates; removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("lb-gw-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Write a fresh self-signed cert for `names` as `<stem>.crt`/`<stem>.key`.
    fn cert(&self, stem: &str, names: &[&str]) -> (CertSpec, CertificateDer<'static>) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let spec = CertSpec {
            names: names.iter().map(|n| n.to_string()).collect(),
            cert_file: self.0.join(format!("{stem}.crt")),
            key_file: self.0.join(format!("{stem}.key")),
            default: false,
        };
        std::fs::write(&spec.cert_file, ck.cert.pem()).unwrap();
        std::fs::write(&spec.key_file, ck.key_pair.serialize_pem()).unwrap();
        (spec, ck.cert.der().clone())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(certs: Vec<CertSpec>) -> TlsSettings {
    TlsSettings {
        certs,
        reload_interval: Duration::from_millis(50),
    }
}

/// Connect with SNI `name`, trusting `roots`; returns the peer's leaf and the TLS stream.
async fn connect(
    addr: std::net::SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> (
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = tokio::time::timeout(
        LIMIT,
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    (leaf, s)
}

#[tokio::test]
async fn two_sni_names_each_get_their_certificate_and_h2() {
    let dir = Dir::new("sni");
    let (a, a_der) = dir.cert("a", &["a.test"]);
    let (b, b_der) = dir.cert("b", &["*.b.test"]);
    let tls = Tls::load(settings(vec![a, b])).unwrap();
    let backend = Backend::start().await;
    let decide = One::new(backend.addr, false);
    let last_conn = decide.last_conn.clone();
    let proxy = start_proxy(
        decide,
        Some(tls),
        ServerSettings::default(),
        UpstreamSettings::default(),
    )
    .await;
    let roots = [a_der.clone(), b_der.clone()];

    let (leaf, s) = connect(proxy.addr, "a.test", &roots, &[b"h2", b"http/1.1"]).await;
    assert_eq!(leaf, a_der);
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("https://a.test/tls")
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body, _) = body_of(send.send_request(req).await.unwrap()).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "ok");
    let seen = &backend.requests()[0];
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(
        seen.headers[http::header::FORWARDED],
        "for=127.0.0.1;proto=https;host=a.test"
    );

    let conn = last_conn.lock().unwrap().clone().unwrap();
    assert!(conn.tls && conn.alpn_h2);
    assert_eq!(conn.sni.as_deref(), Some("a.test"));

    // Wildcard name, HTTP/1.1 by ALPN.
    let (leaf, s) = connect(proxy.addr, "x.b.test", &roots, &[b"http/1.1"]).await;
    assert_eq!(leaf, b_der);
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // Unknown name: the default (first) certificate.
    let (leaf, _) = connect(proxy.addr, "a.test", &roots, &[]).await;
    assert_eq!(leaf, a_der);
}

#[test]
fn default_flag_and_lookup_rules() {
    let dir = Dir::new("lookup");
    let (a, a_der) = dir.cert("a", &["a.test"]);
    let (mut b, b_der) = dir.cert("b", &["*.b.test", "B.Test."]);
    b.default = true;
    let tls = Tls::load(settings(vec![a, b])).unwrap();
    let leaf = |sni: Option<&str>| tls.lookup(sni).cert[0].clone();
    assert_eq!(leaf(Some("a.test")), a_der);
    assert_eq!(leaf(Some("A.TEST")), a_der);
    assert_eq!(leaf(Some("b.test")), b_der);
    assert_eq!(leaf(Some("x.b.test")), b_der);
    // A wildcard covers one label only: falls back to the default (b).
    assert_eq!(leaf(Some("y.x.a.test")), b_der);
    assert_eq!(leaf(None), b_der);
}

#[test]
fn load_errors_name_the_file() {
    let dir = Dir::new("errors");
    let (a, _) = dir.cert("a", &["a.test"]);
    let (b, _) = dir.cert("b", &["b.test"]);

    let missing = CertSpec {
        cert_file: dir.0.join("nope.crt"),
        ..a.clone()
    };
    let e = Tls::load(settings(vec![missing])).unwrap_err();
    assert!(matches!(e, TlsError::Read { .. }));
    assert!(e.to_string().contains("nope.crt"), "{e}");

    let swapped = CertSpec {
        key_file: b.key_file.clone(),
        ..a.clone()
    };
    let e = Tls::load(settings(vec![swapped])).unwrap_err();
    assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    assert!(e.to_string().contains("b.key"), "{e}");

    std::fs::write(dir.0.join("junk.crt"), "not pem").unwrap();
    let junk = CertSpec {
        cert_file: dir.0.join("junk.crt"),
        ..a.clone()
    };
    let e = Tls::load(settings(vec![junk])).unwrap_err();
    assert!(e.to_string().contains("junk.crt"), "{e}");

    let bad_name = CertSpec {
        names: vec!["a.*.test".into()],
        ..a
    };
    assert!(matches!(
        Tls::load(settings(vec![bad_name])).unwrap_err(),
        TlsError::BadName { .. }
    ));
    assert!(matches!(
        Tls::load(settings(vec![])).unwrap_err(),
        TlsError::NoCertificates
    ));
}

#[tokio::test]
async fn reload_on_file_change_keeps_old_on_bad_file() {
    let dir = Dir::new("reload");
    let (a, first) = dir.cert("a", &["a.test"]);
    let tls = Tls::load(settings(vec![a.clone()])).unwrap();
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(tls.clone().watch(stop.clone()));
    assert_eq!(tls.lookup(Some("a.test")).cert[0], first);

    // Replace both files: the watcher swaps within a few polls.
    let (_, second) = dir.cert("a", &["a.test"]);
    assert_ne!(first, second);
    tokio::time::timeout(LIMIT, async {
        while tls.lookup(Some("a.test")).cert[0] != second {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("new certificate not picked up");

    // A broken key: logged, old certificate kept.
    std::fs::write(
        &a.key_file,
        "-----BEGIN PRIVATE KEY-----\nzz\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tls.lookup(Some("a.test")).cert[0], second);
    stop.cancel();
    tokio::time::timeout(LIMIT, watcher).await.unwrap().unwrap();

    // The same through the direct call: the error names the key file.
    let (_, third) = dir.cert("a", &["a.test"]);
    std::fs::write(&a.key_file, "garbage").unwrap();
    let (swapped, errors) = tls.reload();
    assert_eq!(swapped, 0);
    assert!(errors[0].to_string().contains("a.key"), "{}", errors[0]);
    assert_eq!(tls.lookup(Some("a.test")).cert[0], second);
    assert_ne!(third, second);
}
