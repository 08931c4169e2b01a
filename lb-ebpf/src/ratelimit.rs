//! Per-source token bucket (a /32, or a /64 for IPv6), per service.

use lb_common::{FAMILY_V6, FlowKey, RateKey, ServiceValue, token_bucket};

use crate::maps::RATE_LIMIT;

/// True if the packet conforms to the service's per-source rate.
#[inline(always)]
pub fn admit(svc: &ServiceValue, key: &FlowKey, now: u64) -> bool {
    if svc.rate_pps == 0 {
        return true;
    }
    let mut src = key.src;
    if key.family == FAMILY_V6 {
        // One bucket per /64: a host owns a whole /64 and can pick any address in it.
        src.words[2] = 0;
        src.words[3] = 0;
    }
    let rk = RateKey::new(src, svc.id, key.family);
    match RATE_LIMIT.get_ptr_mut(&rk) {
        // Concurrent CPUs may race on one bucket; the loss is a few extra admitted packets,
        // cheaper than a lock on every packet.
        // SAFETY: LRU map value pointer, valid for this program run.
        Some(b) => token_bucket::admit(unsafe { &mut *b }, now, svc.rate_pps, svc.burst),
        None => {
            let b = token_bucket::first_packet(now, svc.burst);
            // Full map: LRU evicts; a failed insert only means this source is not limited yet.
            let _ = RATE_LIMIT.insert(&rk, &b, 0);
            true
        }
    }
}
