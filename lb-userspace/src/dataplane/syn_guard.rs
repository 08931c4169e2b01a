//! The SYN-flood guard's state as status and metrics show it (the guard itself is in
//! `lb-ebpf/src/syn_guard.rs`; its threshold travels in `SETTINGS`).

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use lb_common::{Settings, VipAddrKey, syn_guard::SynRate};

use super::{Dataplane, DataplaneError, scan::coarse_monotonic_ns, take, take_percpu};

/// The guard's maps the agent reads.
pub struct SynGuardMaps {
    rate: PerCpuArray<MapData, SynRate>,
    verified: HashMap<MapData, VipAddrKey, u64>,
}

impl SynGuardMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            rate: take_percpu(ebpf, "SYN_RATE")?,
            verified: take(ebpf, "SYN_VERIFIED")?,
        })
    }
}

/// What the guard is doing now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynGuardState {
    /// `syn_guard_pps` as the data plane has it (0: off).
    pub threshold_pps: u32,
    /// CPUs in flood mode now (challenging unverified sources).
    pub flood_cpus: u32,
    /// Sources verified within `syn_verified_secs`.
    pub verified_sources: u64,
    /// Challenge SYN-ACKs sent since the program loaded.
    pub challenges: u64,
}

impl Dataplane {
    /// Reads the guard's state. Walks the verified-source map: for scrapes and status, never
    /// for hot paths. Unreadable maps count as zero (status must never fail on counters).
    pub fn syn_guard_state(&self) -> SynGuardState {
        let settings: Settings = self.settings.get(&0, 0).unwrap_or_default();
        let now = coarse_monotonic_ns();
        let mut st = SynGuardState {
            threshold_pps: settings.syn_guard_pps,
            ..SynGuardState::default()
        };
        if let Ok(cpus) = self.syn_guard.rate.get(&0, 0) {
            for r in cpus.iter() {
                st.challenges += r.challenges;
                if now < r.flood_until_ns {
                    st.flood_cpus += 1;
                }
            }
        }
        let ttl = u64::from(settings.syn_verified_secs) * 1_000_000_000;
        st.verified_sources = self
            .syn_guard
            .verified
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, at)| now.saturating_sub(*at) < ttl)
            .count() as u64;
        st
    }
}
