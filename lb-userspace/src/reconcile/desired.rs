//! The desired data-plane state: what every map should hold, derived from a model snapshot
//! (or, in tests, from the config alone). Sorted deterministically so the same inputs in any
//! order give the same tables and the same checksum.

use std::net::IpAddr;

use lb_common::{
    Addr, BackendValue, SVC_FLAG_CLUSTER, SVC_FLAG_MTLS, SVC_FLAG_NAT, SVC_FLAG_PASS,
    SVC_FLAG_SRC_HASH, ServiceKey, ServiceValue,
    addr::family_of,
    maglev::{MaglevBackend, build_table},
};

use crate::{
    config::{Config, MIN_MAGLEV_SIZE, Mode, Scope, Service},
    model::{BackendKey, Snapshot},
};

/// The kernel's backend record of `k`. Equal keys share one backend id.
pub fn backend_value(k: &BackendKey) -> BackendValue {
    BackendValue {
        addr: Addr::from(k.addr),
        port: k.port.to_be(),
        family: family_of(&k.addr),
        _pad: 0,
        _pad1: 0,
    }
}

/// Bytes that seed `k`'s Maglev permutation.
pub fn maglev_key(k: &BackendKey) -> Vec<u8> {
    format!("{}:{}", k.addr, k.port).into_bytes()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBackend {
    pub key: BackendKey,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    pub key: ServiceKey,
    pub vip: IpAddr,
    pub port: u16,
    pub table_size: u32,
    /// `SVC_FLAG_*`.
    pub flags: u32,
    pub rate_pps: u64,
    pub burst: u64,
    /// Sorted by key.
    pub backends: Vec<DesiredBackend>,
}

impl DesiredService {
    /// `None` for a service without a frontend (a backend set of gateway routes: nothing of
    /// it reaches the XDP maps).
    fn from_config(s: &Service) -> Option<Self> {
        let backends = s
            .backends
            .iter()
            .map(|b| DesiredBackend {
                key: BackendKey {
                    addr: b.address,
                    port: b.port,
                },
                weight: b.weight,
            })
            .collect();
        Self::with_backends(s, backends)
    }

    /// Service `s` with `backends` (in any order) instead of its configured ones; `None`
    /// when it has no frontend. A gateway (`mode = "http"`) service is passed to the kernel
    /// after the rate limit and checks: it has no backends and the smallest table.
    pub fn with_backends(s: &Service, mut backends: Vec<DesiredBackend>) -> Option<Self> {
        let frontend = s.frontend?;
        let (vip, port) = (frontend.ip(), frontend.port());
        backends.sort_by_key(|b| b.key);
        let pass = s.mode == Mode::Http;
        if pass {
            backends.clear();
        }
        Some(Self {
            name: s.name.clone(),
            key: ServiceKey::new(
                Addr::from(vip),
                port.to_be(),
                s.protocol.number(),
                family_of(&vip),
            ),
            vip,
            port,
            flags: if pass {
                SVC_FLAG_PASS
            } else {
                let affinity = if s.client_affinity {
                    SVC_FLAG_SRC_HASH
                } else {
                    0
                };
                let cluster = if s.scope == Scope::Cluster {
                    SVC_FLAG_CLUSTER
                } else {
                    0
                };
                // Steered to the mesh only while `[mesh]` is on (the socket LB's settings
                // hold the outbound listener then).
                let mtls = if s.mtls { SVC_FLAG_MTLS } else { 0 };
                SVC_FLAG_NAT | affinity | cluster | mtls
            },
            table_size: if pass {
                MIN_MAGLEV_SIZE
            } else {
                s.maglev_table_size
            },
            rate_pps: s.rate_limit.rate,
            burst: s.rate_limit.burst,
            backends,
        })
    }

    /// The kernel's service record for service id `id`.
    pub fn value(&self, id: u32) -> ServiceValue {
        ServiceValue {
            id,
            flags: self.flags,
            maglev_size: self.table_size,
            _pad0: 0,
            rate_pps: self.rate_pps,
            burst: self.burst,
        }
    }

    /// The Maglev table, given each backend's id.
    pub fn table(&self, id_of: impl Fn(&BackendKey) -> u32) -> Vec<u32> {
        let keys: Vec<Vec<u8>> = self.backends.iter().map(|b| maglev_key(&b.key)).collect();
        let mb: Vec<MaglevBackend> = self
            .backends
            .iter()
            .zip(&keys)
            .map(|(b, k)| MaglevBackend {
                key: k,
                id: id_of(&b.key),
                weight: b.weight,
            })
            .collect();
        build_table(&mb, self.table_size)
    }
}

/// Everything the data plane should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Sorted by service key.
    pub services: Vec<DesiredService>,
}

impl DesiredState {
    pub fn from_config(c: &Config) -> Self {
        Self::from_services(
            c.services
                .iter()
                .filter_map(DesiredService::from_config)
                .collect(),
        )
    }

    /// What the XDP data plane should hold for `snapshot`: every service with its backends
    /// at their effective weights, the table size and rate limit from the snapshot's config.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        let by_name: std::collections::BTreeMap<&str, &Service> = snapshot
            .config
            .services
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        let services = snapshot
            .services
            .iter()
            .filter_map(|m| {
                let s = by_name.get(m.name.as_str())?;
                let backends = m
                    .backends
                    .iter()
                    .map(|b| DesiredBackend {
                        key: b.key,
                        weight: b.effective_weight,
                    })
                    .collect();
                DesiredService::with_backends(s, backends)
            })
            .collect();
        Self::from_services(services)
    }

    pub fn from_services(mut services: Vec<DesiredService>) -> Self {
        services.sort_by_key(|s| sort_key(&s.key));
        Self { services }
    }
}

fn sort_key(k: &ServiceKey) -> ([u32; 4], u16, u8, u8) {
    (
        k.vip.words.map(u32::from_be),
        u16::from_be(k.port),
        k.proto,
        k.family,
    )
}
