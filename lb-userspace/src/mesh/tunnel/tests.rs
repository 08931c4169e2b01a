//! The tunnel end to end on loopback: outbound and inbound listeners of one process, a CA
//! made here, identities and policy from a test [`MeshAuth`].

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use super::*;

const CLIENT_ID: &str = "spiffe://test.local/ns/app/sa/client";
const NODE_ID: &str = "spiffe://test.local/ns/lb/sa/node-b";

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca() -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A leaf for `id` (URI SAN; 127.0.0.1 too so the stock server verifier accepts it).
fn leaf(ca: &Ca, id: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![
        SanType::URI(id.try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn roots(ca: &Ca) -> Arc<rustls::RootCertStore> {
    let mut r = rustls::RootCertStore::empty();
    r.add(ca.cert.der().clone()).unwrap();
    Arc::new(r)
}

/// Identities by certificate (the real `Identities` reads the URI SAN).
struct TestAuth {
    server: Arc<rustls::ServerConfig>,
    clients: HashMap<u64, (String, Arc<rustls::ClientConfig>)>,
    ids: HashMap<Vec<u8>, String>,
    deny: Mutex<bool>,
}

impl TestAuth {
    fn new(ca: &Ca) -> Self {
        let (scert, skey) = leaf(ca, NODE_ID);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
                .build()
                .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![scert], skey)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let (ccert, ckey) = leaf(ca, CLIENT_ID);
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(ca))
            .with_client_auth_cert(vec![ccert.clone()], ckey)
            .unwrap();
        c.alpn_protocols = vec![b"h2".to_vec()];
        TestAuth {
            server: Arc::new(server),
            clients: HashMap::from([(7, (CLIENT_ID.to_string(), Arc::new(c)))]),
            ids: HashMap::from([(ccert.to_vec(), CLIENT_ID.to_string())]),
            deny: Mutex::new(false),
        }
    }
}

impl MeshAuth for TestAuth {
    fn client_for(
        &self,
        cgroup_id: u64,
        _source: std::net::IpAddr,
        _expected_server: Option<&str>,
    ) -> Option<(String, Arc<rustls::ClientConfig>)> {
        self.clients.get(&cgroup_id).cloned()
    }
    fn expected_server(
        &self,
        _backend: std::net::IpAddr,
        _configured: Option<&str>,
    ) -> Option<String> {
        None
    }
    fn server_for(
        &self,
        _local: std::net::IpAddr,
        _configured: Option<&str>,
    ) -> (String, Arc<rustls::ServerConfig>) {
        (NODE_ID.into(), self.server.clone())
    }
    fn peer_id(&self, conn: &rustls::CommonState) -> Option<String> {
        let leaf = conn.peer_certificates()?.first()?;
        self.ids.get(leaf.as_ref()).cloned()
    }
    fn authorize(&self, _service: &str, _port: u16, _peer: &str) -> Verdict {
        let deny = *self.deny.lock().unwrap();
        Verdict {
            allowed: !deny,
            policy: deny.then(|| "no-clients".to_string()),
            reason: if deny { "deny_policy" } else { "no_policy" }.to_string(),
        }
    }
    fn node_id(&self) -> String {
        NODE_ID.into()
    }
    fn expiry(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// Every steered client goes to `backend`, from cgroup `cgroup`.
struct FixedOrig {
    backend: SocketAddr,
    cgroup: u64,
}

impl OrigDstSource for FixedOrig {
    fn take(&self, _peer: SocketAddrV4) -> Option<OrigDst> {
        Some(OrigDst {
            service: "10.96.0.1:80".parse().unwrap(),
            backend: self.backend,
            cgroup_id: self.cgroup,
        })
    }
}

struct OneService(SocketAddr);

impl LocalServices for OneService {
    fn mtls_backend(&self, backend: SocketAddr) -> Option<(String, u16)> {
        (backend == self.0).then(|| ("echo".to_string(), 80))
    }
}

/// An echo server: reads to EOF, writes it all back, closes.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

struct Mesh {
    outbound: SocketAddr,
    inbound: SocketAddr,
    auth: Arc<TestAuth>,
    counters: Arc<TunnelCounters>,
    stop: CancellationToken,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn mesh(ca: &Ca, backend: SocketAddr, cgroup: u64) -> Mesh {
    let auth = Arc::new(TestAuth::new(ca));
    let counters = Arc::new(TunnelCounters::default());
    let stop = CancellationToken::new();
    let inl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (inbound, outbound) = (inl.local_addr().unwrap(), outl.local_addr().unwrap());
    let settings = TunnelSettings {
        peer_port: inbound.port(),
        ..TunnelSettings::default()
    };
    tokio::spawn(serve_inbound(
        inl,
        auth.clone(),
        Arc::new(OneService(backend)),
        settings.clone(),
        counters.clone(),
        stop.clone(),
    ));
    tokio::spawn(serve_outbound(
        outl,
        auth.clone(),
        Arc::new(FixedOrig { backend, cgroup }),
        Arc::new(OneService(backend)),
        settings,
        counters.clone(),
        stop.clone(),
    ));
    Mesh {
        outbound,
        inbound,
        auth,
        counters,
        stop,
    }
}

/// Sends `msg` through the outbound listener, half-closes, returns what came back.
async fn round_trip(m: &Mesh, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(m.outbound).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("echo within 5 s")
        .unwrap_or_default();
    got
}

#[tokio::test]
async fn bytes_cross_the_tunnel_both_ways_on_one_pooled_connection() {
    let ca = ca();
    let m = mesh(&ca, echo().await, 7).await;
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    assert_eq!(round_trip(&m, b"hello").await, b"hello");
    assert_eq!(round_trip(&m, &big).await, big);
    let v = m.counters.view();
    let out = &v.connections[0];
    assert_eq!(
        (out.side.as_str(), out.opened, out.streams),
        ("outbound", 1, 2)
    );
    assert_eq!(v.connections[1].streams, 2);
    assert_eq!(v.peers, vec![(CLIENT_ID.to_string(), 2)]);
    assert_eq!(v.authz, vec![(String::new(), "no_policy".into(), true, 2)]);
    // Both directions of both streams (counted once each, on either side).
    assert_eq!(v.bytes_to_backend, 2 * (5 + big.len() as u64));
}

/// More than a whole connection's flow-control window each way: windows are given back as
/// the bytes are written out, so the transfer neither stalls nor loses or reorders a byte.
#[tokio::test]
async fn a_transfer_larger_than_the_windows_crosses_whole() {
    let ca = ca();
    let m = mesh(&ca, echo().await, 7).await;
    let len = transport::CONNECTION_WINDOW as usize + (4 << 20);
    let big: Vec<u8> = (0..len as u32).map(|i| (i ^ (i >> 13)) as u8).collect();
    let (mut r, mut w) = TcpStream::connect(m.outbound).await.unwrap().into_split();
    let data = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(len);
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got))
        .await
        .expect("echoed within 60 s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), len);
    assert!(got == big, "the echoed bytes differ");
    assert_eq!(m.counters.view().bytes_to_backend, 2 * len as u64);
}

#[tokio::test]
async fn a_deny_policy_refuses_and_is_counted() {
    let ca = ca();
    let m = mesh(&ca, echo().await, 7).await;
    *m.auth.deny.lock().unwrap() = true;
    assert_eq!(round_trip(&m, b"secret").await, b"");
    let v = m.counters.view();
    assert_eq!(
        v.authz,
        vec![("no-clients".into(), "deny_policy".into(), false, 1)]
    );
    assert!(v.peers.is_empty());
}

#[tokio::test]
async fn a_workload_without_identity_is_refused() {
    let ca = ca();
    let m = mesh(&ca, echo().await, 99).await;
    assert_eq!(round_trip(&m, b"x").await, b"");
    assert_eq!(m.counters.view().refused, vec![("no_identity".into(), 1)]);
}

/// An h2 client to the inbound listener with `tls`; the status of `method target`.
async fn ask(
    inbound: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    target: &str,
) -> Result<StatusCode, String> {
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(inbound.ip().into());
    let s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(target)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(r.status())
}

#[tokio::test]
async fn inbound_accepts_only_connect_to_local_mtls_backends() {
    let ca = ca();
    let backend = echo().await;
    let m = mesh(&ca, backend, 7).await;
    let tls = m.auth.clients[&7].1.clone();
    let get = ask(
        m.inbound,
        tls.clone(),
        Method::GET,
        &format!("http://{backend}/"),
    )
    .await;
    assert_eq!(get, Ok(StatusCode::METHOD_NOT_ALLOWED));
    // Not a backend of an mtls service here: no open relay.
    let other = ask(m.inbound, tls.clone(), Method::CONNECT, "127.0.0.1:1").await;
    assert_eq!(other, Ok(StatusCode::NOT_FOUND));
    let ok = ask(m.inbound, tls, Method::CONNECT, &backend.to_string()).await;
    assert_eq!(ok, Ok(StatusCode::OK));
}

#[tokio::test]
async fn a_peer_of_another_ca_fails_the_handshake_and_is_counted() {
    let ca = ca();
    let m = mesh(&ca, echo().await, 7).await;
    let stranger = ca_client_trusting(&ca, &self::ca());
    let r = ask(m.inbound, stranger, Method::CONNECT, "127.0.0.1:1").await;
    assert!(r.is_err(), "{r:?}");
    // The server counts after the handshake; give it a moment.
    let mut failures = Vec::new();
    for _ in 0..50 {
        failures = m.counters.view().handshake_failures;
        if !failures.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "inbound");
    // Same (empty) issuer name, other key: webpki says bad signature.
    assert!(
        ["unknown_issuer", "bad_signature"].contains(&failures[0].1.as_str()),
        "{failures:?}"
    );
}

/// A client that trusts `server_ca` but presents a certificate of `own_ca`.
fn ca_client_trusting(server_ca: &Ca, own_ca: &Ca) -> Arc<rustls::ClientConfig> {
    let (cert, key) = leaf(own_ca, CLIENT_ID);
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(server_ca))
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}
