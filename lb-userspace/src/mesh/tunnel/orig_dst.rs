//! The tunnel's views of the data plane and the registry: steered sockets' original
//! destinations (`MESH_ORIGDST`) and the local `mtls` services' backends (the snapshots).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
};

use lb_common::{Addr, FAMILY_V4, sock_lb::MeshOrig};
use tokio::sync::watch;

use super::{LocalServices, OrigDst, OrigDstSource};
use crate::{config::Config, dataplane::MeshOrigDst, model::Snapshot};

fn ip(a: &Addr, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(a.words[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in a.words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// A kernel record as the tunnel's type.
pub fn orig_dst(m: &MeshOrig) -> OrigDst {
    OrigDst {
        service: SocketAddr::new(ip(&m.vip, m.family), u16::from_be(m.vip_port)),
        backend: SocketAddr::new(ip(&m.backend, m.family), u16::from_be(m.backend_port)),
        cgroup_id: m.cgroup_id,
    }
}

/// `MESH_ORIGDST` behind a lock (one map fd, used by every accept).
pub struct KernelOrigDst(Mutex<MeshOrigDst>);

impl KernelOrigDst {
    pub fn new(map: MeshOrigDst) -> Self {
        Self(Mutex::new(map))
    }
}

impl OrigDstSource for KernelOrigDst {
    fn take(&self, peer: SocketAddrV4) -> Option<OrigDst> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.take(peer).map(|o| orig_dst(&o))
    }
}

/// The `mtls` services of the newest snapshot; `is_mtls` says which services are (from the
/// config the snapshot carries).
pub struct SnapshotServices {
    rx: watch::Receiver<Arc<Snapshot>>,
    is_mtls: fn(&Config, &str) -> bool,
}

impl SnapshotServices {
    pub fn new(rx: watch::Receiver<Arc<Snapshot>>, is_mtls: fn(&Config, &str) -> bool) -> Self {
        Self { rx, is_mtls }
    }
}

impl LocalServices for SnapshotServices {
    fn mtls_backend(&self, backend: SocketAddr) -> Option<(String, u16)> {
        let snap = self.rx.borrow();
        snap.services
            .iter()
            .filter(|s| (self.is_mtls)(&snap.config, &s.name))
            .find(|s| {
                s.backends
                    .iter()
                    .any(|b| b.key.addr == backend.ip() && b.key.port == backend.port())
            })
            .map(|s| {
                (
                    s.name.clone(),
                    s.frontend.map_or(backend.port(), |f| f.port()),
                )
            })
    }

    fn backend_identity(&self, backend: IpAddr) -> Option<String> {
        // A backend address runs as one workload: the first mtls service (config order)
        // with it as a backend and an `identity` names it.
        let snap = self.rx.borrow();
        snap.services
            .iter()
            .filter(|s| s.backends.iter().any(|b| b.key.addr == backend))
            .find_map(|s| self.configured_identity(&snap.config, &s.name))
    }

    fn service_identity(&self, service: SocketAddr) -> Option<String> {
        let snap = self.rx.borrow();
        snap.services
            .iter()
            .filter(|s| s.frontend == Some(service))
            .find_map(|s| self.configured_identity(&snap.config, &s.name))
    }
}

impl SnapshotServices {
    /// The SPIFFE ID of the `identity` configured for `mtls` service `name`.
    fn configured_identity(&self, config: &Config, name: &str) -> Option<String> {
        if !(self.is_mtls)(config, name) {
            return None;
        }
        let w = config
            .services
            .iter()
            .find(|s| s.name == name)?
            .identity
            .as_ref()?;
        Some(format!(
            "spiffe://{}/ns/{}/sa/{}",
            config.mesh.trust_domain, w.namespace, w.service_account
        ))
    }
}
