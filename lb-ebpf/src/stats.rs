//! Counter updates. Per-CPU arrays: no atomics needed.

use lb_common::{Reason, Stats};

use crate::maps::{BACKEND_STATS, REASONS, SERVICE_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add(stats: Option<*mut Stats>, bytes: u64, new_flow: bool, dropped: bool) {
    if let Some(s) = stats {
        // SAFETY: as above.
        unsafe {
            if dropped {
                (*s).drops += 1;
            } else {
                (*s).packets += 1;
                (*s).bytes += bytes;
                if new_flow {
                    (*s).new_flows += 1;
                }
            }
        }
    }
}

/// A packet of service `svc` forwarded to (or replied from) backend `backend`.
#[inline(always)]
pub fn forwarded(svc: u32, backend: u32, bytes: u64, new_flow: bool) {
    add(SERVICE_STATS.get_ptr_mut(svc), bytes, new_flow, false);
    add(BACKEND_STATS.get_ptr_mut(backend), bytes, new_flow, false);
}

/// A packet of service `svc` dropped for `reason`.
#[inline(always)]
pub fn service_drop(svc: u32, reason: Reason) {
    count(reason);
    add(SERVICE_STATS.get_ptr_mut(svc), 0, false, true);
}

/// A packet of gateway service `svc` passed to the kernel (a SYN counts as a new flow).
#[inline(always)]
pub fn to_gateway(svc: u32, bytes: u64, syn: bool) {
    count(Reason::ToGateway);
    add(SERVICE_STATS.get_ptr_mut(svc), bytes, syn, false);
}
