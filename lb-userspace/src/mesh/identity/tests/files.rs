//! `cert_dir` mode: certificates written by an external issuer are loaded and reloaded.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::super::{Identities, IdentityError, SpiffeId};
use super::{TempDir, handshake, load_ca, two_nodes, web, write_ca};
use crate::config::{CertSource, MeshConfig};

const HOUR: Duration = Duration::from_secs(3600);

/// Writes a fresh certificate for `id` under `certs` (as an issuer would: new files renamed
/// into place); the certificate's DER.
fn write_identity(ca_dir: &Path, certs: &Path, id: &SpiffeId) -> Vec<u8> {
    let now = SystemTime::now();
    let issued = load_ca(ca_dir).issue(id, now, now + HOUR).unwrap();
    let d = certs.join(&id.namespace).join(&id.service_account);
    std::fs::create_dir_all(&d).unwrap();
    for (name, text) in [("key.pem", &issued.key_pem), ("cert.pem", &issued.cert_pem)] {
        std::fs::write(d.join(format!("{name}.tmp")), text).unwrap();
        std::fs::rename(d.join(format!("{name}.tmp")), d.join(name)).unwrap();
    }
    issued.cert.to_vec()
}

#[tokio::test]
async fn cert_dir_is_loaded_and_rewritten_files_are_picked_up() {
    let ca = TempDir::new();
    write_ca(&ca.0, "cluster.local");
    let certs = TempDir::new();
    std::fs::copy(ca.0.join("ca.pem"), certs.0.join("bundle.pem")).unwrap();
    let node: SpiffeId = "spiffe://cluster.local/ns/lb-system/sa/lb".parse().unwrap();
    write_identity(&ca.0, &certs.0, &node);
    let first = write_identity(&ca.0, &certs.0, &web());
    let cfg = MeshConfig {
        enabled: true,
        certs: Some(CertSource::Dir {
            dir: certs.0.clone(),
            poll: Duration::from_millis(50),
        }),
        ..MeshConfig::default()
    };
    let a = Identities::start(&cfg).await.unwrap();
    // The server side: an agent of the same mesh with its own CA-issued certificates.
    let (_, b) = two_nodes(&ca.0, HOUR).await;
    let config = a.client_config(&web()).unwrap();
    let pair = handshake(config.clone(), b.server_config()).await.unwrap();
    assert_eq!(pair.client_cert().as_ref(), first.as_slice());
    // File mode never issues: an identity without files has no certificate.
    let absent: SpiffeId = "spiffe://cluster.local/ns/default/sa/none".parse().unwrap();
    assert!(matches!(
        a.client_config(&absent),
        Err(IdentityError::NoCertificate(_))
    ));
    // The issuer rewrites web's files: the next handshakes present the new certificate.
    let second = write_identity(&ca.0, &certs.0, &web());
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pair = handshake(config.clone(), b.server_config()).await.unwrap();
        if pair.client_cert().as_ref() == second.as_slice() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rewritten certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A file for a new identity appears: it becomes usable.
    let late: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    write_identity(&ca.0, &certs.0, &late);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.client_config(&late).is_err() {
        assert!(Instant::now() < deadline, "the new identity was not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cgroups_map_to_their_configured_identity() {
    let dir = TempDir::new();
    write_ca(&dir.0, "cluster.local");
    // `ca_mesh` maps the temp dir itself as the cgroup of default/web: any directory's inode
    // stands in for a cgroup id.
    let (a, _) = two_nodes(&dir.0, HOUR).await;
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&dir.0).unwrap().ino();
    assert_eq!(a.identity_of_cgroup(ino), Some(web()));
    assert_eq!(a.identity_of_cgroup(ino + 1), None);
    // Pods (Kubernetes) by address.
    let ip = "10.1.0.7".parse().unwrap();
    assert_eq!(a.identity_of_ip(ip), None);
    a.set_pod_identities([(ip, ("default".to_owned(), "web".to_owned()))].into());
    assert_eq!(a.identity_of_ip(ip), Some(web()));
}
