//! Keeps the next hops toward backends resolved.
//!
//! XDP forwards without the kernel's help, so nothing would ever resolve a backend's MAC:
//! `bpf_fib_lookup` would report "no neighbour" and new flows would be dropped. For each
//! backend the agent adds a *managed* neighbour entry on the route's next hop (kernel 5.16+):
//! the kernel resolves it and keeps it fresh. Entries are removed on shutdown.
//!
//! It also remembers each next hop's link-layer address, so a change the kernel reports
//! (see `netlink::events`) can be told apart from a refresh: established flows carry the
//! MAC they started with, and the L4 part points them at the new one.
//!
//! May depend on: `netlink`. Part of the L4 data plane (`l4`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::netlink::{self, Neighbour, NetlinkError, Rtnl, neigh, route};

#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    #[error("`{op}` failed: {source}")]
    Netlink {
        op: String,
        #[source]
        source: NetlinkError,
    },
    #[error("no route to {0}")]
    NoRoute(IpAddr),
}

/// A next hop on a device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub addr: IpAddr,
    pub dev: String,
    pub ifindex: u32,
}

/// How a backend is reached: its next hop and the source address the kernel picks (the
/// data plane's SNAT address toward it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRoute {
    pub hop: NextHop,
    pub src: Option<IpAddr>,
}

#[derive(Default)]
pub struct Neighbours {
    managed: BTreeSet<NextHop>,
    /// Each backend's route, looked up once (until [`Neighbours::forget_routes`]).
    routes: BTreeMap<IpAddr, BackendRoute>,
    /// The link-layer address last seen for each managed next hop.
    lladdrs: BTreeMap<NextHop, [u8; 6]>,
}

/// How long [`Neighbours::wait_resolved`] waits for new next hops: long enough for ARP/ND
/// on a LAN, short enough not to stall the agent on a dead one.
pub const RESOLVE_WAIT: Duration = Duration::from_millis(300);

fn rtnl(op: impl FnOnce() -> String) -> Result<Rtnl, NeighbourError> {
    Rtnl::open().map_err(|source| NeighbourError::Netlink { op: op(), source })
}

/// The route the kernel would use for `dst`.
pub fn route_to(dst: IpAddr) -> Result<BackendRoute, NeighbourError> {
    let op = || format!("route get {dst}");
    let found = route::get(&mut rtnl(op)?, dst)
        .map_err(|source| NeighbourError::Netlink { op: op(), source })?
        .ok_or(NeighbourError::NoRoute(dst))?;
    Ok(BackendRoute {
        hop: NextHop {
            addr: found.gateway.unwrap_or(dst),
            dev: netlink::ifname(found.ifindex),
            ifindex: found.ifindex,
        },
        src: found.pref_src,
    })
}

impl Neighbours {
    /// Makes sure every backend's next hop has a managed neighbour entry, and removes the
    /// entries no backend needs any more. Errors are per backend and do not stop the others.
    /// Returns the next hops it added, with the errors.
    pub fn ensure(
        &mut self,
        backends: impl IntoIterator<Item = IpAddr>,
    ) -> (Vec<NextHop>, Vec<NeighbourError>) {
        let mut errors = Vec::new();
        let mut wanted = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for b in backends {
            seen.insert(b);
            if let Some(r) = self.routes.get(&b) {
                wanted.insert(r.hop.clone());
                continue;
            }
            match route_to(b) {
                Ok(r) => {
                    wanted.insert(r.hop.clone());
                    self.routes.insert(b, r);
                }
                Err(e) => errors.push(e),
            }
        }
        self.routes.retain(|b, _| seen.contains(b));
        let mut added = Vec::new();
        for hop in wanted.difference(&self.managed.clone()) {
            let op = || {
                format!(
                    "neigh replace {} dev {} managed extern_learn",
                    hop.addr, hop.dev
                )
            };
            let done = rtnl(op).and_then(|mut r| {
                neigh::replace_managed(&mut r, hop.addr, hop.ifindex)
                    .map_err(|source| NeighbourError::Netlink { op: op(), source })
            });
            match done {
                Ok(()) => {
                    self.managed.insert(hop.clone());
                    added.push(hop.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        let stale: Vec<NextHop> = self.managed.difference(&wanted).cloned().collect();
        for hop in stale {
            self.remove(&hop);
        }
        (added, errors)
    }

    /// Waits (up to `limit`) until every hop in `hops` has a link-layer address, so the
    /// first packets of new flows to a new backend are not dropped for want of one (a
    /// dropped SYN costs the client a one-second retransmit). Returns the unresolved ones.
    pub fn wait_resolved(&mut self, hops: &[NextHop], limit: Duration) -> Vec<NextHop> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<NextHop> = hops.to_vec();
        let Ok(mut r) = Rtnl::open() else {
            return pending;
        };
        while !pending.is_empty() {
            pending.retain(|h| match neigh::get(&mut r, h.addr, h.ifindex) {
                Ok(Some(n)) if n.is_resolved() => {
                    if let Some(mac) = n.lladdr {
                        self.lladdrs.insert(h.clone(), mac);
                    }
                    false
                }
                _ => true,
            });
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        pending
    }

    /// Forgets cached routes, so the next [`Neighbours::ensure`] looks them up again.
    pub fn forget_routes(&mut self) {
        self.routes.clear();
    }

    /// Each backend's route, as last looked up.
    pub fn routes(&self) -> &BTreeMap<IpAddr, BackendRoute> {
        &self.routes
    }

    /// The link-layer address last seen for a managed next hop.
    pub fn lladdr(&self, hop: &NextHop) -> Option<[u8; 6]> {
        self.lladdrs.get(hop).copied()
    }

    /// The backends whose next hop is `hop`.
    pub fn backends_via(&self, hop: &NextHop) -> Vec<IpAddr> {
        self.routes
            .iter()
            .filter(|(_, r)| r.hop == *hop)
            .map(|(b, _)| *b)
            .collect()
    }

    fn managed_hop(&self, n: &Neighbour) -> Option<&NextHop> {
        self.managed
            .iter()
            .find(|h| h.addr == n.addr && h.ifindex == n.ifindex)
    }

    /// Takes a neighbour entry the kernel reported. Returns the managed next hop it is if
    /// its link-layer address is new: changed, or first seen (a hop that resolved after
    /// [`Neighbours::wait_resolved`] gave up, or one a route change moved backends to).
    pub fn neighbour_changed(&mut self, n: &Neighbour) -> Option<NextHop> {
        let mac = n.lladdr.filter(|_| n.is_resolved())?;
        let hop = self.managed_hop(n)?.clone();
        (self.lladdrs.insert(hop.clone(), mac) != Some(mac)).then_some(hop)
    }

    /// Reads every managed entry again (after lost events): the hops whose link-layer
    /// address is new, as [`Neighbours::neighbour_changed`] reports them.
    pub fn recheck(&mut self) -> Vec<NextHop> {
        let Ok(mut r) = Rtnl::open() else {
            return Vec::new();
        };
        let entries: Vec<Neighbour> = self
            .managed
            .iter()
            .filter_map(|h| neigh::get(&mut r, h.addr, h.ifindex).ok().flatten())
            .collect();
        entries
            .iter()
            .filter_map(|n| self.neighbour_changed(n))
            .collect()
    }

    /// Takes the removal of a neighbour entry. True if it was one of ours (someone flushed
    /// it): it is forgotten, so the next [`Neighbours::ensure`] adds it again.
    pub fn neighbour_gone(&mut self, n: &Neighbour) -> bool {
        let Some(hop) = self.managed_hop(n).cloned() else {
            return false;
        };
        self.managed.remove(&hop);
        self.lladdrs.remove(&hop);
        true
    }

    fn remove(&mut self, hop: &NextHop) {
        if let Ok(mut r) = Rtnl::open() {
            let _ = neigh::delete(&mut r, hop.addr, hop.ifindex);
        }
        self.managed.remove(hop);
        self.lladdrs.remove(hop);
    }

    /// Removes every entry this agent added.
    pub fn clear(&mut self) {
        for hop in self.managed.clone() {
            self.remove(&hop);
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::neighbour::NeighbourState;

    use super::*;

    fn hop(addr: &str, ifindex: u32) -> NextHop {
        NextHop {
            addr: addr.parse().unwrap(),
            dev: format!("if{ifindex}"),
            ifindex,
        }
    }

    fn entry(addr: &str, ifindex: u32, mac: u8, state: NeighbourState) -> Neighbour {
        Neighbour {
            addr: addr.parse().unwrap(),
            ifindex,
            lladdr: Some([2, 0, 0, 0, 0, mac]),
            state,
        }
    }

    /// Only a managed hop whose address is new or changed is reported; refreshes, failed
    /// entries and other neighbours are not.
    #[test]
    fn only_changed_addresses_of_managed_hops_are_reported() {
        let h = hop("10.0.2.2", 5);
        let mut n = Neighbours::default();
        n.managed.insert(h.clone());
        n.routes.insert(
            "10.9.0.1".parse().unwrap(),
            BackendRoute {
                hop: h.clone(),
                src: None,
            },
        );
        use NeighbourState as S;
        assert_eq!(
            n.neighbour_changed(&entry("10.0.2.2", 5, 1, S::Reachable)),
            Some(h.clone())
        );
        assert_eq!(n.lladdr(&h), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(
            n.neighbour_changed(&entry("10.0.2.2", 5, 1, S::Stale)),
            None
        );
        assert_eq!(
            n.neighbour_changed(&entry("10.0.2.2", 5, 2, S::Failed)),
            None
        );
        assert_eq!(
            n.neighbour_changed(&entry("10.0.2.3", 5, 2, S::Reachable)),
            None
        );
        assert_eq!(
            n.neighbour_changed(&entry("10.0.2.2", 6, 2, S::Reachable)),
            None
        );
        assert_eq!(
            n.neighbour_changed(&entry("10.0.2.2", 5, 2, S::Reachable)),
            Some(h.clone())
        );
        assert_eq!(n.lladdr(&h), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(n.backends_via(&h), ["10.9.0.1".parse::<IpAddr>().unwrap()]);

        // Someone removed our entry: forgotten, so the next ensure adds it again.
        assert!(!n.neighbour_gone(&entry("10.0.2.3", 5, 2, S::Reachable)));
        assert!(n.neighbour_gone(&entry("10.0.2.2", 5, 2, S::Reachable)));
        assert!(n.managed.is_empty() && n.lladdr(&h).is_none());
    }
}
