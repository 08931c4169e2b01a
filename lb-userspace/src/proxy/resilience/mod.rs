//! Failure handling state that outlives config snapshots, by upstream service name:
//! circuit breaker, retry budget and each backend's outlier record ([`ServiceGuard`]).
//! The immutable state holds `Arc`s into it, so the request path touches only atomics;
//! the registry's locks are taken on snapshot builds, sweeps and status reads.
//!
//! Parts: [`backoff`], [`budget`], [`breaker`], [`outlier`], [`fault`].

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod fault;
pub mod outlier;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use self::{
    breaker::Breaker,
    budget::Budget,
    outlier::{BackendOutlier, EjectionSlots, Outcome},
};
use crate::config::UpstreamPolicy;

/// One upstream service's failure handling state.
#[derive(Debug)]
pub struct ServiceGuard {
    pub name: Arc<str>,
    pub breaker: Arc<Breaker>,
    pub budget: Arc<Budget>,
    pub slots: EjectionSlots,
    /// Serving backends in the current state (the ejection cap's base).
    serving: AtomicUsize,
    backends: Mutex<HashMap<SocketAddr, Arc<BackendOutlier>>>,
}

impl ServiceGuard {
    /// Counts an exchange with `b`; ejects it when it failed enough and a slot is free.
    pub fn record(&self, policy: &UpstreamPolicy, b: &BackendOutlier, o: Outcome) {
        let now = outlier::now_ms();
        if b.record(&policy.outlier, o, now)
            && let Some(until) = self.slots.try_eject(
                b,
                &policy.outlier,
                self.serving.load(Ordering::Relaxed),
                now,
            )
        {
            warn!(
                service = %self.name,
                backend = %b.addr,
                for_ms = until - now,
                ejections = b.ejections.load(Ordering::Relaxed),
                "gateway: backend ejected (outlier)"
            );
        }
    }

    /// Returns backends whose ejection ended.
    fn sweep(&self, now: u64) {
        let backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        for b in backends.values() {
            if self.slots.return_if_due(b, now) {
                info!(service = %self.name, backend = %b.addr, "gateway: ejected backend returns");
            }
        }
    }
}

/// What `lb status` shows of one upstream service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardStats {
    pub service: String,
    pub requests: u32,
    pub pending: u32,
    pub connections: u32,
    /// Refusals: max_requests, max_pending, max_connections.
    pub overflows: [u64; 3],
    pub retries: u64,
    pub retries_refused: u64,
    pub ejections: u64,
    /// Backends out now.
    pub ejected: Vec<SocketAddr>,
}

/// Every upstream service's [`ServiceGuard`], kept across snapshots.
#[derive(Debug, Default)]
pub struct Guards {
    services: Mutex<HashMap<Arc<str>, Arc<ServiceGuard>>>,
    /// Each backend's breaker, for the connector (a backend in two services: either).
    by_backend: ArcSwap<HashMap<SocketAddr, Arc<Breaker>>>,
}

impl Guards {
    /// The guard of `service` with `policy`, and the outlier records of `backends` (kept
    /// from before for backends it already had; others forgotten).
    pub fn service(
        &self,
        service: &str,
        policy: &UpstreamPolicy,
        backends: &[SocketAddr],
    ) -> (Arc<ServiceGuard>, Vec<Arc<BackendOutlier>>) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let guard = services
            .entry(Arc::from(service))
            .or_insert_with(|| {
                Arc::new(ServiceGuard {
                    name: Arc::from(service),
                    breaker: Arc::new(Breaker::new(policy.breaker)),
                    budget: Arc::new(Budget::default()),
                    slots: EjectionSlots::default(),
                    serving: AtomicUsize::new(0),
                    backends: Mutex::new(HashMap::new()),
                })
            })
            .clone();
        drop(services);
        guard.breaker.set_limits(policy.breaker);
        guard.serving.store(backends.len(), Ordering::Relaxed);
        let mut known = guard.backends.lock().unwrap_or_else(|e| e.into_inner());
        let keep: BTreeSet<&SocketAddr> = backends.iter().collect();
        known.retain(|addr, b| {
            let k = keep.contains(addr);
            if !k {
                guard.slots.forget(b);
            }
            k
        });
        let records = backends
            .iter()
            .map(|a| {
                known
                    .entry(*a)
                    .or_insert_with(|| Arc::new(BackendOutlier::new(*a)))
                    .clone()
            })
            .collect();
        drop(known);
        (guard, records)
    }

    /// After a build: forget services not in `names`, publish the backends' breakers.
    pub fn retain(&self, names: &BTreeSet<&str>) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.retain(|n, _| names.contains(n.as_ref()));
        let mut by_backend = HashMap::new();
        for g in services.values() {
            for addr in g.backends.lock().unwrap_or_else(|e| e.into_inner()).keys() {
                by_backend.insert(*addr, g.breaker.clone());
            }
        }
        self.by_backend.store(Arc::new(by_backend));
    }

    /// The breaker guarding connections to `backend`.
    pub fn breaker_for(&self, backend: SocketAddr) -> Option<Arc<Breaker>> {
        self.by_backend.load().get(&backend).cloned()
    }

    /// Returns backends whose ejection ended (called every [`SWEEP`] or so).
    pub fn sweep(&self) {
        let now = outlier::now_ms();
        let services: Vec<Arc<ServiceGuard>> = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for g in services {
            g.sweep(now);
        }
    }

    pub fn stats(&self) -> Vec<GuardStats> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<GuardStats> = services
            .values()
            .map(|g| {
                let (requests, pending, connections) = g.breaker.load();
                let backends = g.backends.lock().unwrap_or_else(|e| e.into_inner());
                let mut ejected: Vec<SocketAddr> = backends
                    .values()
                    .filter(|b| b.is_ejected())
                    .map(|b| b.addr)
                    .collect();
                ejected.sort();
                GuardStats {
                    service: g.name.to_string(),
                    requests,
                    pending,
                    connections,
                    overflows: std::array::from_fn(|i| {
                        g.breaker.overflows[i].load(Ordering::Relaxed)
                    }),
                    retries: g.budget.sent.load(Ordering::Relaxed),
                    retries_refused: g.budget.exhausted.load(Ordering::Relaxed),
                    ejections: backends
                        .values()
                        .map(|b| b.ejections.load(Ordering::Relaxed))
                        .sum(),
                    ejected,
                }
            })
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }
}

/// How often ejections are checked for their end.
pub const SWEEP: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{config::OutlierPolicy, proxy::state::Upstream};

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    fn upstream(guards: &Guards, policy: UpstreamPolicy, n: u8) -> Upstream {
        let addrs: Vec<SocketAddr> = (1..=n).map(addr).collect();
        let (guard, outliers) = guards.service("svc", &policy, &addrs);
        guards.retain(&BTreeSet::from(["svc"]));
        Upstream {
            backends: addrs.iter().map(|a| (*a, 1)).collect(),
            total: u64::from(n),
            outliers,
            guard: Some(guard),
            policy,
        }
    }

    #[test]
    fn picks_avoid_tried_and_ejected_backends() {
        let guards = Guards::default();
        let policy = UpstreamPolicy {
            outlier: OutlierPolicy {
                consecutive_5xx: 2,
                max_ejection_percent: 50,
                ..OutlierPolicy::default()
            },
            ..UpstreamPolicy::default()
        };
        let u = upstream(&guards, policy, 3);
        // A retry never goes back to a tried backend while another is left.
        for r in 0..100 {
            let i = u.pick_index(r, &[addr(1), addr(2)]).unwrap();
            assert_eq!(u.backends[i].0, addr(3));
        }
        // Every backend tried: any may be picked again.
        assert!(u.pick_index(0, &[addr(1), addr(2), addr(3)]).is_some());
        // Two 5xx in a row eject backend 2; picks skip it, and the status shows it.
        let g = u.guard.as_ref().unwrap();
        for _ in 0..2 {
            g.record(&policy, &u.outliers[1], Outcome::Status { gateway: true });
        }
        assert!(u.outliers[1].is_ejected());
        let picked: BTreeSet<SocketAddr> = (0..300).filter_map(|r| u.pick(r)).collect();
        assert_eq!(picked, BTreeSet::from([addr(1), addr(3)]));
        let stats = guards.stats();
        assert_eq!(stats[0].ejected, vec![addr(2)]);
        assert_eq!(stats[0].ejections, 1);
        // At most 50 % of 3 = 1 out: backend 1 failing too stays in.
        for _ in 0..5 {
            g.record(&policy, &u.outliers[0], Outcome::Connect);
        }
        assert!(!u.outliers[0].is_ejected());
        // The outlier record and the breaker outlive a rebuild of the same service.
        let again = upstream(&guards, policy, 3);
        assert!(again.outliers[1].is_ejected());
        assert!(Arc::ptr_eq(
            &again.guard.as_ref().unwrap().breaker,
            &g.breaker
        ));
        assert!(guards.breaker_for(addr(2)).is_some());
        // A backend that leaves frees its ejection slot.
        let fewer = upstream(&guards, policy, 1);
        assert_eq!(fewer.guard.as_ref().unwrap().slots.ejected(), 0);
        assert!(guards.breaker_for(addr(2)).is_none());
    }
}
