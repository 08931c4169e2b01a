//! Reading the per-CPU counters: userspace sums the CPUs.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use lb_common::{Reason, Stats, reason::REASON_COUNT};

use super::{DataplaneError, sum_stats, take_percpu};

pub struct Counters {
    services: PerCpuArray<MapData, Stats>,
    backends: PerCpuArray<MapData, Stats>,
    reasons: PerCpuArray<MapData, u64>,
}

impl Counters {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            services: take_percpu(ebpf, "SERVICE_STATS")?,
            backends: take_percpu(ebpf, "BACKEND_STATS")?,
            reasons: take_percpu(ebpf, "REASONS")?,
        })
    }

    /// Totals of service `id` (zero if unreadable: counters must never fail a caller).
    pub fn service(&self, id: u32) -> Stats {
        self.services
            .get(&id, 0)
            .map(|v| sum_stats(&v))
            .unwrap_or_default()
    }

    pub fn backend(&self, id: u32) -> Stats {
        self.backends
            .get(&id, 0)
            .map(|v| sum_stats(&v))
            .unwrap_or_default()
    }

    pub fn reason(&self, r: Reason) -> u64 {
        self.reasons
            .get(&(r as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or_default()
    }

    /// Every reason with its total, in `Reason::ALL` order.
    pub fn reasons(&self) -> [(Reason, u64); REASON_COUNT as usize] {
        Reason::ALL.map(|r| (r, self.reason(r)))
    }
}
