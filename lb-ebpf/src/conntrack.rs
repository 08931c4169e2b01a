//! Flow lookup and creation: Maglev pick, next hop, SNAT port, both conntrack entries.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    CtEntry, FlowKey, Mac, NatEntry, Reason, ServiceValue, Settings, flow_state,
    hash::{MAGLEV_SEED, SNAT_SEED, flow_hash},
};

use crate::{
    fib,
    maps::Scratch,
    maps::{BACKENDS, CONNTRACK, MAGLEV, NAT_REVERSE, SCRATCH},
    nat::copy_words,
};

const BPF_NOEXIST: u64 = 1;
/// SNAT ports tried per new flow before giving up.
const SNAT_ATTEMPTS: u32 = 8;
/// Stride between attempts: a prime, so retries spread over the range instead of probing
/// the neighbours of a busy port.
const SNAT_STRIDE: u32 = 4099;

/// The live conntrack entry of this packet's flow, updated for this packet; `None` if there
/// is none or it is stale (then the packet opens a new flow).
#[inline(always)]
pub fn established(
    key: &FlowKey,
    flags: u8,
    now: u64,
    settings: &Settings,
) -> Option<&'static CtEntry> {
    let ct = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: map value pointer, valid for this program run.
    let e = unsafe { &mut *ct };
    if flow_state::is_stale(e.state, e.last_seen_ns, now, flags, settings) {
        return None;
    }
    touch(&mut e.state, &mut e.last_seen_ns, key.proto, flags, now);
    Some(e)
}

/// The same for a backend's reply.
#[inline(always)]
pub fn reply(key: &FlowKey, flags: u8, now: u64) -> Option<&'static NatEntry> {
    let p = NAT_REVERSE.get_ptr_mut(key)?;
    // SAFETY: as above.
    let e = unsafe { &mut *p };
    touch(&mut e.state, &mut e.last_seen_ns, key.proto, flags, now);
    Some(e)
}

/// Advances an entry's state for this packet and refreshes its timestamp, writing at most
/// once per `CT_TOUCH_NS` unless the state changes: a write per packet would bounce the
/// cache line between CPUs for no benefit.
#[inline(always)]
fn touch(state: &mut u8, last_seen_ns: &mut u64, proto: u8, flags: u8, now: u64) {
    let next = flow_state::next(*state, proto, flags);
    // Saturating: CPUs may read the clock up to a tick apart (see `clock`).
    if next != *state || now.saturating_sub(*last_seen_ns) > lb_common::CT_TOUCH_NS {
        *state = next;
        *last_seen_ns = now;
    }
}

/// Zeroes a padding field byte by byte: `= [0; N]` compiles to a call of a byte-by-byte
/// memset subprogram.
#[inline(always)]
fn zero_pad<const N: usize>(pad: &mut [u8; N]) {
    for b in pad.iter_mut() {
        // SAFETY: a valid, aligned byte; volatile keeps the stores from being merged back
        // into a memset call.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
}

/// What the new flow's client side looks like, for the reverse entry.
pub struct ClientSide {
    pub ifindex: u32,
    pub mac: Mac,
    pub local_mac: Mac,
}

/// Opens a flow: picks the backend by Maglev, resolves the next hop, allocates the SNAT
/// port (writing the reverse entry) and writes the conntrack entry. The returned entry lives
/// in this CPU's scratch slot, valid until the program returns.
#[inline(always)]
pub fn create(
    ctx: &XdpContext,
    key: &FlowKey,
    flags: u8,
    svc: &ServiceValue,
    settings: &Settings,
    client: &ClientSide,
    now: u64,
) -> Result<&'static CtEntry, Reason> {
    if !flow_state::opens_flow(key.proto, flags) {
        return Err(Reason::NoFlow);
    }
    if svc.maglev_size == 0 {
        return Err(Reason::NoBackend);
    }
    let slot = flow_hash(key, MAGLEV_SEED) % svc.maglev_size;
    let backend_id = *MAGLEV.get_value(svc.id, &slot).ok_or(Reason::NoBackend)?;
    if backend_id == 0 {
        return Err(Reason::NoBackend);
    }
    let backend = BACKENDS.get(backend_id).ok_or(Reason::NoBackend)?;
    if backend.family != key.family {
        return Err(Reason::FamilyMismatch);
    }
    let hop = fib::lookup(ctx, key.family, key.proto, &backend.addr)?;
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtInsertFailed)?;
    // SAFETY: this CPU's slot; XDP runs to completion without migrating.
    let Scratch { ct, nat, rev } = unsafe { &mut *scratch };

    let state = flow_state::initial(key.proto);
    nat.orig = *key;
    nat.client_ifindex = client.ifindex;
    nat.client_mac = client.mac;
    nat.local_mac = client.local_mac;
    nat.service_id = svc.id;
    nat.backend_id = backend_id;
    nat.state = state;
    zero_pad(&mut nat._pad);
    nat._pad1 = 0;
    nat.last_seen_ns = now;
    // Field by field: whole-struct and address assignments between map values compile to
    // memset/memmove subprogram calls.
    // SAFETY: 16-byte addresses on both sides.
    unsafe {
        copy_words(&raw mut rev.src.words, &backend.addr.words);
        copy_words(&raw mut rev.dst.words, &hop.src.words);
    }
    rev.src_port = backend.port;
    rev.dst_port = 0;
    rev.proto = key.proto;
    rev.family = key.family;
    rev._pad = [0; 2];
    let snat_port = allocate_port(rev, nat, key, settings, now)?;

    // SAFETY: as above.
    unsafe {
        copy_words(&raw mut ct.backend.words, &backend.addr.words);
        copy_words(&raw mut ct.snat.words, &hop.src.words);
    }
    ct.backend_port = backend.port;
    ct.snat_port = snat_port;
    ct.egress_ifindex = hop.ifindex;
    ct.egress_dmac = hop.dmac;
    ct.egress_smac = hop.smac;
    ct.service_id = svc.id;
    ct.backend_id = backend_id;
    ct.state = state;
    zero_pad(&mut ct._pad);
    ct.last_seen_ns = now;
    if CONNTRACK.insert(key, &*ct, 0).is_err() {
        let _ = NAT_REVERSE.remove(&*rev);
        return Err(Reason::CtInsertFailed);
    }
    Ok(ct)
}

/// Claims a free SNAT source port toward the backend in `rev` by inserting the reverse
/// entry with `BPF_NOEXIST`; the insert is the lock. Ports held by flows that went idle past
/// their timeout are reclaimed. Returns the port in network byte order.
#[inline(always)]
fn allocate_port(
    rev: &mut FlowKey,
    nat: &NatEntry,
    key: &FlowKey,
    settings: &Settings,
    now: u64,
) -> Result<u16, Reason> {
    let min = settings.snat_port_min as u32;
    let range = (settings.snat_port_max as u32).saturating_sub(min) + 1;
    let start = flow_hash(key, SNAT_SEED);
    for i in 0..SNAT_ATTEMPTS {
        let port = ((min + (start.wrapping_add(i * SNAT_STRIDE)) % range) as u16).to_be();
        rev.dst_port = port;
        if NAT_REVERSE.insert(&*rev, nat, BPF_NOEXIST).is_ok() {
            return Ok(port);
        }
        // SAFETY: read-only look at the current holder.
        // Reclaimable: idle past its timeout, or an earlier incarnation of this very
        // connection (the client reused its port and a SYN reopened the flow). Without the
        // second case a client that reuses ports quickly burns a fresh port per reuse until
        // its probes run out while most of the range is free.
        if let Some(old) = unsafe { NAT_REVERSE.get(&*rev) }
            && (old.orig == *key
                || flow_state::is_stale(old.state, old.last_seen_ns, now, 0, settings))
        {
            // Two CPUs reclaiming the same port at once: one insert wins, the other tries
            // its next port.
            let _ = NAT_REVERSE.remove(&*rev);
            if NAT_REVERSE.insert(&*rev, nat, BPF_NOEXIST).is_ok() {
                return Ok(port);
            }
        }
    }
    Err(Reason::SnatExhausted)
}
