//! The tunnel's counters, and a plain view of them for `status` and `metrics`.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use crate::mesh::identity::VerifyFailure;

/// Direction of a tunnel connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Outbound,
    Inbound,
}

impl Side {
    pub const fn name(self) -> &'static str {
        match self {
            Side::Outbound => "outbound",
            Side::Inbound => "inbound",
        }
    }
}

#[derive(Default)]
struct PerSide {
    /// TLS+HTTP/2 connections opened / open now.
    opened: AtomicU64,
    active: AtomicU64,
    /// CONNECT streams opened / open now.
    streams: AtomicU64,
    streams_active: AtomicU64,
}

/// Shared by every task of the tunnel.
#[derive(Default)]
pub struct TunnelCounters {
    out: PerSide,
    inb: PerSide,
    /// Towards the backend / back to the client, bytes (counted when a stream ends).
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    handshake_failures: Mutex<BTreeMap<(Side, String), u64>>,
    refused: Mutex<BTreeMap<String, u64>>,
    authz: Mutex<BTreeMap<(String, String, bool), u64>>,
    peers: Mutex<BTreeMap<String, u64>>,
    servers: Mutex<BTreeMap<String, u64>>,
}

/// Everything counted, as plain values.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TunnelView {
    /// Per side (`outbound`, `inbound`): connections opened, open, streams opened, open.
    pub connections: Vec<SideView>,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// (side, reason, count).
    pub handshake_failures: Vec<(String, String, u64)>,
    /// Connections refused before any tunnel (reason, count): `no_identity`, `no_origdst`,
    /// `bad_request`, `not_local`, ...
    pub refused: Vec<(String, u64)>,
    /// (policy or "", reason, allowed, count).
    pub authz: Vec<(String, String, bool, u64)>,
    /// Verified peer SPIFFE IDs seen inbound, with their stream counts.
    pub peers: Vec<(String, u64)>,
    /// Verified server SPIFFE IDs seen outbound (what the destination's agent presented),
    /// with their connection counts.
    #[serde(default)]
    pub servers: Vec<(String, u64)>,
    /// Certificate expiry per identity, seconds since the epoch (filled by the status
    /// source from the identities).
    #[serde(default)]
    pub cert_expiry: Vec<(String, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SideView {
    pub side: String,
    pub opened: u64,
    pub active: u64,
    pub streams: u64,
    pub streams_active: u64,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(k)
        .or_default() += 1;
}

/// Decrements its counter when dropped (an open connection or stream).
pub struct Open<'a>(&'a AtomicU64);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl TunnelCounters {
    fn side(&self, s: Side) -> &PerSide {
        match s {
            Side::Outbound => &self.out,
            Side::Inbound => &self.inb,
        }
    }

    pub fn connection(&self, s: Side) -> Open<'_> {
        let p = self.side(s);
        p.opened.fetch_add(1, Relaxed);
        p.active.fetch_add(1, Relaxed);
        Open(&p.active)
    }

    pub fn stream(&self, s: Side) -> Open<'_> {
        let p = self.side(s);
        p.streams.fetch_add(1, Relaxed);
        p.streams_active.fetch_add(1, Relaxed);
        Open(&p.streams_active)
    }

    pub fn bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Relaxed);
        self.bytes_down.fetch_add(down, Relaxed);
    }

    pub fn handshake_failed(&self, s: Side, reason: &str) {
        bump(&self.handshake_failures, (s, reason.to_string()));
    }

    pub fn refused(&self, reason: &str) {
        bump(&self.refused, reason.to_string());
    }

    pub fn decided(&self, policy: Option<&str>, reason: &str, allowed: bool) {
        bump(
            &self.authz,
            (
                policy.unwrap_or("").to_string(),
                reason.to_string(),
                allowed,
            ),
        );
    }

    pub fn peer(&self, id: &str) {
        bump(&self.peers, id.to_string());
    }

    pub fn server(&self, id: &str) {
        bump(&self.servers, id.to_string());
    }

    pub fn view(&self) -> TunnelView {
        let side = |s: Side| {
            let p = self.side(s);
            SideView {
                side: s.name().to_string(),
                opened: p.opened.load(Relaxed),
                active: p.active.load(Relaxed),
                streams: p.streams.load(Relaxed),
                streams_active: p.streams_active.load(Relaxed),
            }
        };
        let lock = |m: &Mutex<BTreeMap<String, u64>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect::<Vec<_>>()
        };
        TunnelView {
            connections: vec![side(Side::Outbound), side(Side::Inbound)],
            bytes_to_backend: self.bytes_up.load(Relaxed),
            bytes_to_client: self.bytes_down.load(Relaxed),
            handshake_failures: self
                .handshake_failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|((s, r), n)| (s.name().to_string(), r.clone(), *n))
                .collect(),
            refused: lock(&self.refused),
            authz: self
                .authz
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|((p, r, a), n)| (p.clone(), r.clone(), *a, *n))
                .collect(),
            peers: lock(&self.peers),
            servers: lock(&self.servers),
            cert_expiry: Vec::new(),
        }
    }
}

/// Label for a failed TLS handshake: rustls' alert or error kind, short.
pub fn handshake_reason(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error as TlsError};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof".into(),
            std::io::ErrorKind::TimedOut => "timeout".into(),
            _ => "io".into(),
        };
    };
    match tls {
        TlsError::InvalidCertificate(CertificateError::Expired) => "cert_expired".into(),
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_issuer".into(),
        TlsError::InvalidCertificate(CertificateError::BadSignature) => "bad_signature".into(),
        TlsError::InvalidCertificate(CertificateError::Other(_)) => verify_failure(e)
            .map_or("bad_certificate", VerifyFailure::reason)
            .into(),
        TlsError::InvalidCertificate(_) => "bad_certificate".into(),
        TlsError::NoCertificatesPresented => "no_client_cert".into(),
        TlsError::AlertReceived(a) => format!("alert_{a:?}").to_lowercase(),
        TlsError::NoApplicationProtocol => "no_alpn".into(),
        TlsError::PeerIncompatible(_) => "incompatible".into(),
        _ => "tls".into(),
    }
}

/// The SPIFFE-specific reason this side refused the peer's certificate, if that is why `e`
/// (a failed handshake) failed.
pub fn verify_failure(e: &std::io::Error) -> Option<&VerifyFailure> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
            o.0.downcast_ref::<VerifyFailure>()
        }
        _ => None,
    }
}

/// What `status` reads of the running tunnel: its counters and the identities' expiries.
#[derive(Clone)]
pub struct MeshView {
    pub counters: std::sync::Arc<TunnelCounters>,
    pub auth: std::sync::Arc<dyn super::MeshAuth>,
}

impl std::fmt::Debug for MeshView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshView").finish_non_exhaustive()
    }
}

impl MeshView {
    pub fn view(&self) -> TunnelView {
        let mut v = self.counters.view();
        v.cert_expiry = self.auth.expiry();
        v
    }
}
