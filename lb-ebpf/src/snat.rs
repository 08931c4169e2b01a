//! SNAT source-port allocation toward a backend: the reverse (reply) conntrack entry is the
//! port's lock.

use lb_common::{
    CT_SYN_SENT, FlowKey, NatEntry, Reason, Settings, flow_state,
    hash::{SNAT_SEED, flow_hash},
};

use crate::maps::{CONNTRACK, NAT_REVERSE};

const BPF_NOEXIST: u64 = 1;
/// SNAT ports tried per new flow before giving up. Busy ports cost a lookup each; 32 keeps
/// drops negligible up to ~60 % of the range held (0.6^32 ~ 1e-7).
const SNAT_ATTEMPTS: u32 = 32;
/// Stride between attempts: a prime, so retries spread over the range instead of probing
/// the neighbours of a busy port.
const SNAT_STRIDE: u32 = 4099;

/// Claims a free SNAT source port toward the backend in `rev` by inserting the reverse
/// entry with `BPF_NOEXIST`; the insert is the lock. Ports held by flows that went idle past
/// their timeout are reclaimed. Returns the port in network byte order.
///
/// The first port tried is the client's own source port when it lies in the range (as
/// Linux's NAT and Cilium do), else one picked by the flow hash. Keeping the port keeps the
/// backend's view of a client's connections one to one with the client's own: a client
/// reusing a port reaches the backend on the same 4-tuple, whose TIME_WAIT accepts the new
/// SYN. Two different client tuples sharing a backend tuple would not: clients draw TCP
/// timestamp offsets and ISNs per 4-tuple, so the backend's TIME_WAIT rejects the newcomer
/// by PAWS about half the time, costing the client an RST and a SYN retransmit (seen in the
/// end-to-end bench: ~2 % of new connections with a hash-only choice).
///
/// The first probe just inserts (the common case: its port is free). Later probes look
/// before they insert: a failed insert into an LRU map costs a free-list pop and push (~3x a
/// lookup), and they only run when part of the range is held.
#[inline(always)]
pub fn allocate_port(
    rev: &mut FlowKey,
    nat: &NatEntry,
    key: &FlowKey,
    settings: &Settings,
    now: u64,
) -> Result<u16, Reason> {
    let min = settings.snat_port_min as u32;
    let range = (settings.snat_port_max as u32).saturating_sub(min) + 1;
    // Chosen so that attempt 0 lands on the client's port when it is in the range.
    let client = u16::from_be(key.src_port) as u32;
    let start = if client >= min && client - min < range {
        client - min
    } else {
        flow_hash(key, SNAT_SEED)
    };
    for i in 0..SNAT_ATTEMPTS {
        let port = ((min + (start.wrapping_add(i * SNAT_STRIDE)) % range) as u16).to_be();
        rev.dst_port = port;
        if i == 0 && NAT_REVERSE.insert(&*rev, nat, BPF_NOEXIST).is_ok() {
            return Ok(port);
        }
        // SAFETY: read-only look at the current holder.
        match unsafe { NAT_REVERSE.get(&*rev) } {
            None => {}
            // Reclaimable: idle past its timeout, or an earlier incarnation of this very
            // connection (the client reused its port and a SYN reopened the flow). Without
            // the second case a client that reuses ports quickly burns a fresh port per
            // reuse until its probes run out while most of the range is free.
            Some(old)
                if old.orig == *key
                    || flow_state::is_stale(old.state, old.last_seen_ns, now, 0, settings) =>
            {
                let _ = NAT_REVERSE.remove(&*rev);
            }
            Some(old) if abandoned(old, port, now, settings) => {
                let _ = NAT_REVERSE.remove(&*rev);
            }
            Some(_) => continue,
        }
        // Two CPUs claiming the same port at once: one insert wins, the other tries its next
        // port.
        if NAT_REVERSE.insert(&*rev, nat, BPF_NOEXIST).is_ok() {
            return Ok(port);
        }
    }
    Err(Reason::SnatExhausted)
}

/// A held port's flow that may give the port up under pressure (this runs only when a probe
/// collides): its client-side entry is gone (evicted from the LRU: the flow is dead anyway),
/// or it never got past the handshake and went quiet for `tcp_syn_reclaim_ms` (a spoofed SYN,
/// whose client will never answer). The client-side entry of a reclaimed opening flow is
/// removed too, so a late packet of it opens a new flow instead of sharing the port.
#[inline(always)]
fn abandoned(old: &NatEntry, port: u16, now: u64, settings: &Settings) -> bool {
    let reclaim_ns = settings.tcp_syn_reclaim_ms as u64 * 1_000_000;
    if reclaim_ns == 0 {
        return false;
    }
    // SAFETY: read-only look.
    match unsafe { CONNTRACK.get(&old.orig) } {
        // The client's tuple now belongs to another flow (another port or backend).
        Some(f) if f.snat_port != port || f.backend_id != old.backend_id => true,
        Some(f) => {
            let opening = f.state == CT_SYN_SENT
                && now.saturating_sub(f.last_seen_ns) > reclaim_ns
                && now.saturating_sub(old.last_seen_ns) > reclaim_ns;
            if opening {
                let _ = CONNTRACK.remove(&old.orig);
            }
            opening
        }
        None => true,
    }
}
