//! The packet path's clock: `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE, what the agent
//! compares `last_seen_ns` with), read at most once per jiffy per CPU.
//!
//! The helper costs about 18 ns a call here (two kernel calls, each through the return
//! thunk), while `bpf_jiffies64` is inlined by the verifier into one load. The coarse clock
//! only moves on a tick, when jiffies move too, so a per-CPU copy taken when jiffies last
//! changed is what the helper would return. The one difference: a CPU that sees the new
//! jiffy before the tick has updated the coarse clock keeps the previous tick's time until
//! the next jiffy (at most one tick, 1-10 ms, behind; timeouts and the refresh interval are
//! in seconds).

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::CLOCK;

/// This CPU's copy of the coarse clock and the jiffy it was read in.
#[repr(C)]
pub struct ClockCache {
    pub jiffies: u64,
    pub ns: u64,
}

/// Nanoseconds of CLOCK_MONOTONIC_COARSE.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helpers without side effects.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(c) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot; XDP runs to completion without migrating.
    let c = unsafe { &mut *c };
    // `ns == 0`: never read on this CPU (jiffies may be 0 after they wrap).
    if c.jiffies != jiffies || c.ns == 0 {
        c.jiffies = jiffies;
        // SAFETY: as above.
        c.ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    c.ns
}
