//! Rotation: a short TTL yields a new certificate (new serial, new key); a connection made
//! before keeps working, new handshakes present the new certificate.

use std::time::Duration;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{TempDir, handshake, two_nodes, web, write_ca};

fn serial(cert: &[u8]) -> Vec<u8> {
    X509Certificate::from_der(cert)
        .unwrap()
        .1
        .raw_serial()
        .to_vec()
}

#[tokio::test]
async fn a_short_ttl_rotates_without_dropping_connections() {
    let dir = TempDir::new();
    write_ca(&dir.0, "cluster.local");
    // 2 s lifetime, replaced after 1 s.
    let (a, b) = two_nodes(&dir.0, Duration::from_secs(2)).await;
    let config = a.client_config(&web()).unwrap();
    let mut before = handshake(config.clone(), b.server_config()).await.unwrap();
    let first = before.client_cert();
    let first_expiry = a.expiry();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut after = handshake(config, b.server_config()).await.unwrap();
    let second = after.client_cert();
    assert_ne!(first, second, "the certificate was not rotated");
    assert_ne!(serial(&first), serial(&second));
    assert_ne!(a.expiry(), first_expiry);
    // The server's certificate rotated too, and both connections still carry data.
    assert_ne!(
        before.client.get_ref().1.peer_certificates().unwrap()[0],
        after.client.get_ref().1.peer_certificates().unwrap()[0]
    );
    before.exchange(b"still here").await;
    after.exchange(b"new one").await;
    // Past the first certificate's end the old connection still works: TLS checks at
    // handshake time only.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    before.exchange(b"after expiry").await;
}
