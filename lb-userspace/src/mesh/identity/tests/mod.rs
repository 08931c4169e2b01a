//! Tests of the identity module: SPIFFE IDs, the CA, real TLS 1.3 handshakes between two
//! `Identities` (and refused peers), rotation, `cert_dir` reloads, authorization.

mod authz;
mod files;
mod handshake;
mod rotation;
mod spiffe;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server};

use super::{Ca, Identities, SpiffeId};
use crate::config::{CertSource, MeshConfig, Workload, WorkloadName};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "lb-mesh-identity-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new CA for `td` written to `dir` as `ca.pem` / `ca-key.pem`; its paths.
pub(crate) fn write_ca(dir: &Path, td: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = Ca::generate(td).unwrap();
    let (c, k) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

pub(super) fn load_ca(dir: &Path) -> Ca {
    let read = |f| std::fs::read_to_string(dir.join(f)).unwrap();
    Ca::from_pem(&read("ca.pem"), &read("ca-key.pem")).unwrap()
}

/// An enabled mesh in `cluster.local` issuing from the CA in `dir`.
pub(crate) fn ca_mesh(dir: &Path, ttl: Duration) -> MeshConfig {
    MeshConfig {
        enabled: true,
        certs: Some(CertSource::Ca {
            cert_file: dir.join("ca.pem"),
            key_file: dir.join("ca-key.pem"),
            ttl,
            rotate_at_percent: 50,
        }),
        workloads: vec![Workload {
            cgroup: dir.to_owned(),
            name: WorkloadName {
                namespace: "default".into(),
                service_account: "web".into(),
            },
        }],
        ..MeshConfig::default()
    }
}

pub(super) fn web() -> SpiffeId {
    "spiffe://cluster.local/ns/default/sa/web".parse().unwrap()
}

/// Both ends of a finished handshake.
pub(super) struct Pair {
    pub client: client::TlsStream<DuplexStream>,
    pub server: server::TlsStream<DuplexStream>,
}

/// The rustls errors each side saw when a handshake failed.
#[derive(Debug)]
pub(super) struct Failed {
    pub client: Option<rustls::Error>,
    pub server: Option<rustls::Error>,
}

fn rustls_error(e: &std::io::Error) -> Option<rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>().cloned()
}

/// A TLS handshake over an in-memory pipe.
pub(super) async fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<Pair, Failed> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("node.mesh.invalid").unwrap();
    let (c, s) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            tokio_rustls::TlsConnector::from(client).connect(name, a),
            tokio_rustls::TlsAcceptor::from(server).accept(b)
        )
    })
    .await
    .expect("the handshake hung");
    match (c, s) {
        (Ok(client), Ok(server)) => Ok(Pair { client, server }),
        (c, s) => Err(Failed {
            client: c.err().as_ref().and_then(rustls_error),
            server: s.err().as_ref().and_then(rustls_error),
        }),
    }
}

impl Pair {
    /// The certificate the client presented, as the server saw it.
    pub fn client_cert(&self) -> CertificateDer<'static> {
        self.server.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    /// Sends `msg` each way and checks it arrives.
    pub async fn exchange(&mut self, msg: &[u8]) {
        let mut buf = vec![0; msg.len()];
        self.client.write_all(msg).await.unwrap();
        self.client.flush().await.unwrap();
        self.server.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
        self.server.write_all(msg).await.unwrap();
        self.server.flush().await.unwrap();
        self.client.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }
}

/// Two agents of one mesh (one CA in `dir`): A's client config for `web`, B's server config.
pub(super) async fn two_nodes(dir: &Path, ttl: Duration) -> (Arc<Identities>, Arc<Identities>) {
    let cfg = ca_mesh(dir, ttl);
    (
        Identities::start(&cfg).await.unwrap(),
        Identities::start(&cfg).await.unwrap(),
    )
}
