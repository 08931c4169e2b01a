//! Real TLS 1.3 handshakes between two agents, and the peers they refuse.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::super::{Ca, Identities, SpiffeId, TrustStore, VerifyFailure, failure_reason};
use super::{TempDir, handshake, load_ca, two_nodes, web, write_ca};
use crate::config::TrustBundle;

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn the_ca_issues_a_cert_whose_san_is_the_id_and_it_verifies() {
    let dir = TempDir::new();
    write_ca(&dir.0, "cluster.local");
    let ca = load_ca(&dir.0);
    let now = SystemTime::now();
    let issued = ca.issue(&web(), now, now + HOUR).unwrap();
    assert_eq!(SpiffeId::from_cert(&issued.cert), Some(web()));
    let mut trust = TrustStore::default();
    trust.add("cluster.local", &ca.file_certs).unwrap();
    let at = rustls::pki_types::UnixTime::now();
    assert_eq!(
        trust.verify(&issued.cert, &[], at, webpki::KeyUsage::client_auth()),
        Ok(web())
    );
    assert_eq!(
        trust.verify(&issued.cert, &[], at, webpki::KeyUsage::server_auth()),
        Ok(web())
    );
    // Another CA's bundle does not vouch for it.
    let other = TempDir::new();
    write_ca(&other.0, "cluster.local");
    let mut foreign = TrustStore::default();
    foreign
        .add("cluster.local", &load_ca(&other.0).file_certs)
        .unwrap();
    assert_eq!(
        foreign.verify(&issued.cert, &[], at, webpki::KeyUsage::client_auth()),
        Err(VerifyFailure::UnknownIssuer)
    );
}

#[test]
fn a_ca_key_must_match_its_certificate() {
    let (a, b) = (TempDir::new(), TempDir::new());
    write_ca(&a.0, "cluster.local");
    write_ca(&b.0, "cluster.local");
    let cert = std::fs::read_to_string(a.0.join("ca.pem")).unwrap();
    let key = std::fs::read_to_string(b.0.join("ca-key.pem")).unwrap();
    assert!(matches!(
        Ca::from_pem(&cert, &key),
        Err(super::super::IssueError::KeyMismatch)
    ));
}

#[tokio::test]
async fn two_agents_complete_a_tls13_h2_handshake_and_see_each_others_ids() {
    let dir = TempDir::new();
    write_ca(&dir.0, "cluster.local");
    let (a, b) = two_nodes(&dir.0, HOUR).await;
    let mut pair = handshake(a.client_config(&web()).unwrap(), b.server_config())
        .await
        .unwrap();
    let (_, server) = pair.server.get_ref();
    assert_eq!(Identities::peer_id(server), Some(web()));
    assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let (_, client) = pair.client.get_ref();
    assert_eq!(Identities::peer_id(client), Some(b.node_id()));
    assert_eq!(
        b.node_id().to_string(),
        "spiffe://cluster.local/ns/lb-system/sa/lb"
    );
    pair.exchange(b"hello").await;
    // An identity not configured is issued on demand.
    let other: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let pair = handshake(a.client_config(&other).unwrap(), b.server_config())
        .await
        .unwrap();
    assert_eq!(Identities::peer_id(pair.server.get_ref().1), Some(other));
    // The expiry metric's view: every held certificate, expiring within the TTL.
    let expiry = a.expiry();
    assert_eq!(expiry.len(), 3, "{expiry:?}");
    assert!(
        expiry
            .iter()
            .all(|(_, t)| *t > SystemTime::now() && *t <= SystemTime::now() + HOUR)
    );
    // Not for another trust domain.
    assert!(
        a.client_config(&"spiffe://other.org/ns/a/sa/b".parse().unwrap())
            .is_err()
    );
}

#[tokio::test]
async fn a_peer_with_a_cert_from_another_ca_is_refused() {
    let (d1, d2) = (TempDir::new(), TempDir::new());
    write_ca(&d1.0, "cluster.local");
    write_ca(&d2.0, "cluster.local");
    let (a, b) = two_nodes(&d1.0, HOUR).await;
    let (stranger, _) = two_nodes(&d2.0, HOUR).await;
    // `a` trusts `b`'s server certificate but presents one from the other CA: `b` refuses.
    let now = SystemTime::now();
    let foreign = load_ca(&d2.0).issue(&web(), now, now + HOUR).unwrap();
    let alias: SpiffeId = "spiffe://cluster.local/ns/default/sa/foreign"
        .parse()
        .unwrap();
    a.store
        .put(
            alias.clone(),
            vec![foreign.cert],
            &foreign.key,
            now + HOUR,
            now + HOUR,
        )
        .unwrap();
    let f = handshake(a.client_config(&alias).unwrap(), b.server_config())
        .await
        .err()
        .expect("the server must refuse a foreign CA");
    assert_eq!(failure_reason(f.server.as_ref().unwrap()), "unknown_issuer");
    // A client refuses a server of another CA (before showing its own certificate).
    let f = handshake(b.client_config(&web()).unwrap(), stranger.server_config())
        .await
        .err()
        .expect("the client must refuse a foreign CA");
    assert_eq!(failure_reason(f.client.as_ref().unwrap()), "unknown_issuer");
    assert_eq!(failure_reason(f.server.as_ref().unwrap()), "peer_refused");
}

/// Puts `cert` (with `key`) into `node`'s store as `id`'s, never rotated.
fn plant(
    node: &Identities,
    id: &SpiffeId,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: &KeyPair,
) {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let far = SystemTime::now() + HOUR;
    node.store
        .put(id.clone(), vec![cert], &key, far, far)
        .unwrap();
}

#[tokio::test]
async fn an_expired_cert_is_refused() {
    let dir = TempDir::new();
    write_ca(&dir.0, "cluster.local");
    let (a, b) = two_nodes(&dir.0, HOUR).await;
    let ca = load_ca(&dir.0);
    let old: SpiffeId = "spiffe://cluster.local/ns/default/sa/old".parse().unwrap();
    let past = SystemTime::now() - 2 * HOUR;
    let issued = ca.issue(&old, past, past + HOUR).unwrap();
    let far = SystemTime::now() + HOUR;
    a.store
        .put(old.clone(), vec![issued.cert], &issued.key, far, far)
        .unwrap();
    let f = handshake(a.client_config(&old).unwrap(), b.server_config())
        .await
        .err()
        .expect("an expired certificate must be refused");
    assert_eq!(failure_reason(f.server.as_ref().unwrap()), "expired");
}

#[tokio::test]
async fn a_cert_without_a_spiffe_id_is_refused() {
    let dir = TempDir::new();
    write_ca(&dir.0, "cluster.local");
    let (a, b) = two_nodes(&dir.0, HOUR).await;
    let ca = load_ca(&dir.0);
    let mut p = CertificateParams::new(vec!["web.default.svc".to_owned()]).unwrap();
    p.subject_alt_names
        .push(SanType::URI("https://example.com/web".try_into().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/nosan"
        .parse()
        .unwrap();
    plant(&a, &id, cert.der().clone(), &key);
    let f = handshake(a.client_config(&id).unwrap(), b.server_config())
        .await
        .err()
        .expect("a certificate without a SPIFFE ID must be refused");
    assert_eq!(failure_reason(f.server.as_ref().unwrap()), "no_spiffe_id");
}

#[tokio::test]
async fn a_wrong_trust_domain_is_refused() {
    let (d1, d2) = (TempDir::new(), TempDir::new());
    write_ca(&d1.0, "cluster.local");
    let (a, _) = two_nodes(&d1.0, HOUR).await;
    // A cluster.local CA signs an other.org ID: without a bundle for other.org it is not
    // trusted at all; with one, the cluster.local CA still cannot vouch for other.org.
    let ca = load_ca(&d1.0);
    let id: SpiffeId = "spiffe://other.org/ns/default/sa/web".parse().unwrap();
    let now = SystemTime::now();
    let issued = ca.issue(&id, now, now + HOUR).unwrap();
    let key = KeyPair::try_from(match &issued.key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
        _ => unreachable!(),
    })
    .unwrap();
    // `a` holds it under a cluster.local name so client_config accepts to present it.
    let alias: SpiffeId = "spiffe://cluster.local/ns/default/sa/alias"
        .parse()
        .unwrap();
    plant(&a, &alias, issued.cert.clone(), &key);
    let (_, b) = two_nodes(&d1.0, HOUR).await;
    let f = handshake(a.client_config(&alias).unwrap(), b.server_config())
        .await
        .err()
        .unwrap();
    assert_eq!(
        failure_reason(f.server.as_ref().unwrap()),
        "untrusted_domain"
    );
    let (other_pem, _) = Ca::generate("other.org").unwrap();
    std::fs::write(d2.0.join("other.pem"), other_pem).unwrap();
    let mut cfg = super::ca_mesh(&d1.0, HOUR);
    cfg.trust_bundles = vec![TrustBundle {
        trust_domain: "other.org".into(),
        file: d2.0.join("other.pem"),
    }];
    let c = Identities::start(&cfg).await.unwrap();
    let f = handshake(a.client_config(&alias).unwrap(), c.server_config())
        .await
        .err()
        .unwrap();
    assert_eq!(failure_reason(f.server.as_ref().unwrap()), "unknown_issuer");
}

#[tokio::test]
async fn the_client_accepts_only_the_server_identity_it_expects() {
    let dir = TempDir::new();
    write_ca(&dir.0, "cluster.local");
    let (a, b) = two_nodes(&dir.0, HOUR).await;
    let cart: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let pay: SpiffeId = "spiffe://cluster.local/ns/shop/sa/pay".parse().unwrap();
    // B presents a workload identity, issued on demand (and then held, so it rotates).
    let cart_server = b.server_config_for(&cart).unwrap();
    assert!(b.expiry().iter().any(|(id, _)| *id == cart));
    let pair = handshake(
        a.client_config_expecting(&web(), Some(&cart)).unwrap(),
        cart_server.clone(),
    )
    .await
    .expect("the expected identity is accepted");
    assert_eq!(
        Identities::peer_id(pair.client.get_ref().1),
        Some(cart.clone())
    );
    // Another identity of the same trust domain and CA: refused by the client, with both
    // IDs in the reason.
    let f = handshake(
        a.client_config_expecting(&web(), Some(&pay)).unwrap(),
        cart_server.clone(),
    )
    .await
    .err()
    .expect("the client must refuse a server that is not the expected one");
    let client = f.client.unwrap();
    assert_eq!(failure_reason(&client), "wrong_server_identity");
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) = &client else {
        panic!("{client:?}");
    };
    assert_eq!(
        o.0.downcast_ref::<VerifyFailure>(),
        Some(&VerifyFailure::WrongServerIdentity {
            expected: Box::new(pay.clone()),
            presented: Box::new(cart.clone())
        })
    );
    assert_eq!(failure_reason(f.server.as_ref().unwrap()), "peer_refused");
    // The node identity when a workload one is expected: refused too.
    let f = handshake(
        a.client_config_expecting(&web(), Some(&cart)).unwrap(),
        b.server_config(),
    )
    .await
    .err()
    .expect("the node identity is not the workload's");
    assert_eq!(
        failure_reason(f.client.as_ref().unwrap()),
        "wrong_server_identity"
    );
    // No expectation: any identity of the trust domain, as before.
    handshake(a.client_config(&web()).unwrap(), cart_server)
        .await
        .expect("no expectation accepts any trusted identity");
    // One config per (identity, expectation).
    assert!(Arc::ptr_eq(
        &a.client_config_expecting(&web(), Some(&cart)).unwrap(),
        &a.client_config_expecting(&web(), Some(&cart)).unwrap()
    ));
    assert!(!Arc::ptr_eq(
        &a.client_config_expecting(&web(), Some(&cart)).unwrap(),
        &a.client_config(&web()).unwrap()
    ));
    // Not for another trust domain.
    assert!(
        b.server_config_for(&"spiffe://other.org/ns/a/sa/b".parse().unwrap())
            .is_err()
    );
}
