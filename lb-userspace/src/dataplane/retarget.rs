//! Points established flows at a backend's new next hop. A conntrack entry carries the
//! egress interface and MACs its flow started with (the established path never looks them
//! up again); when the neighbour's MAC or the route to the backend changes, the agent
//! rewrites them here instead of leaving the flow to a host that is no longer there.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use aya::maps::{Array, MapData};
use lb_common::{Addr, CtEntry, FlowKey, Mac};

use super::{Dataplane, DataplaneError, Result, iface, map_err};

/// Where packets to a backend leave now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub ifindex: u32,
    /// The next hop's MAC.
    pub dmac: Mac,
    /// The source the route picks. A flow that was given another SNAT address cannot move
    /// (the backend would see a new peer): it is left as it is.
    pub snat: Option<IpAddr>,
}

impl Dataplane {
    /// Rewrites the conntrack entries of flows to the backends in `to` whose egress differs.
    /// Returns how many changed. Walks the whole map: for next-hop changes, not hot paths.
    ///
    /// A packet of the flow may update the entry (state, last seen) between the read and the
    /// write here; that update is lost, which costs at most an early state change or timeout.
    ///
    /// Every call also makes the programs' per-CPU next-hop caches stale, so new flows look
    /// the route up again (this runs on every batch of neighbour and route events).
    pub fn retarget_flows(&mut self, to: &BTreeMap<IpAddr, Egress>) -> Result<usize> {
        self.next_hops_changed()?;
        if to.is_empty() {
            return Ok(0);
        }
        let by_addr: HashMap<Addr, &Egress> = to.iter().map(|(b, e)| (Addr::from(*b), e)).collect();
        let mut smacs: HashMap<u32, Mac> = HashMap::new();
        let mut changes: Vec<(FlowKey, CtEntry)> = Vec::new();
        for (key, mut ct) in self.conntrack.iter().filter_map(|r| r.ok()) {
            let Some(eg) = by_addr.get(&ct.backend) else {
                continue;
            };
            if eg.snat.is_some_and(|s| Addr::from(s) != ct.snat) {
                continue;
            }
            let smac = match smacs.get(&eg.ifindex) {
                Some(m) => *m,
                None => {
                    let m = iface::mac_of(eg.ifindex).map_err(|source| {
                        DataplaneError::InterfaceMac {
                            ifindex: eg.ifindex,
                            source,
                        }
                    })?;
                    *smacs.entry(eg.ifindex).or_insert(m)
                }
            };
            if (ct.egress_ifindex, ct.egress_dmac, ct.egress_smac) == (eg.ifindex, eg.dmac, smac) {
                continue;
            }
            ct.egress_ifindex = eg.ifindex;
            ct.egress_dmac = eg.dmac;
            ct.egress_smac = smac;
            changes.push((key, ct));
        }
        let mut changed = 0;
        for (key, ct) in changes {
            // BPF_EXIST: a flow that ended meanwhile stays ended.
            match self.conntrack.insert(key, ct, 2) {
                Ok(()) => changed += 1,
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err("CONNTRACK")(e)),
            }
        }
        Ok(changed)
    }

    /// Bumps `NEXT_HOP_GEN`: each CPU's cached next hops (`lb-ebpf/src/fib.rs`) go stale.
    pub fn next_hops_changed(&mut self) -> Result<()> {
        const NAME: &str = "NEXT_HOP_GEN";
        let map =
            self.ebpf
                .map_mut(NAME)
                .ok_or(map_err(NAME)(aya::maps::MapError::InvalidName {
                    name: NAME.into(),
                }))?;
        let mut table: Array<&mut MapData, u64> = Array::try_from(map).map_err(map_err(NAME))?;
        let next = table.get(&0, 0).map_err(map_err(NAME))?.wrapping_add(1);
        table.set(0, next, 0).map_err(map_err(NAME))
    }
}
