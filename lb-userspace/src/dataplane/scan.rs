//! Walks the conntrack map for status and metrics: live entries per service.

use std::collections::BTreeMap;

use lb_common::{Settings, flow_state::is_stale};

use super::Dataplane;

impl Dataplane {
    /// Live conntrack entries per service id. Idle entries past their timeout (which the
    /// LRU map keeps until it needs the room) are not counted. Walks the whole map: for
    /// scrapes and status, never for hot paths.
    /// Entries the conntrack map holds at most, as the kernel reports it (an adopted pinned
    /// map keeps the size it was created with); 0 if the kernel does not answer.
    pub fn conntrack_capacity(&self) -> u32 {
        use aya::maps::IterableMap as _;
        self.conntrack
            .map()
            .info()
            .map_or(0, |info| info.max_entries())
    }

    pub fn conntrack_per_service(&self) -> BTreeMap<u32, u64> {
        let settings: Settings = self.settings.get(&0, 0).unwrap_or_default();
        let now = coarse_monotonic_ns();
        let mut out = BTreeMap::new();
        for (_, e) in self.conntrack.iter().filter_map(Result::ok) {
            if !is_stale(e.state, e.last_seen_ns, now, 0, &settings) {
                *out.entry(e.service_id).or_insert(0) += 1;
            }
        }
        out
    }
}

/// The clock `bpf_ktime_get_coarse_ns` reads (CLOCK_MONOTONIC, coarse).
pub(super) fn coarse_monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
