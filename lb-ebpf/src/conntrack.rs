//! Flow lookup and creation: Maglev pick, next hop, SNAT port, both conntrack entries.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    CT_CLOSING, CtEntry, FlowKey, Mac, NatEntry, Reason, ServiceValue, Settings, flow_state,
    hash::{MAGLEV_SEED, SNAT_SEED, flow_hash},
};

use crate::{
    fib,
    maps::Scratch,
    maps::{BACKENDS, CONNTRACK, MAGLEV, NAT_REVERSE, SCRATCH},
    nat::copy_words,
};

const BPF_NOEXIST: u64 = 1;
/// SNAT ports tried per new flow before giving up. Busy ports cost a lookup each; 32 keeps
/// drops negligible up to ~60 % of the range held (0.6^32 ~ 1e-7).
const SNAT_ATTEMPTS: u32 = 32;
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
    if touch(&mut e.state, &mut e.last_seen_ns, key.proto, flags, now) {
        close_reverse(key, e, now);
    }
    Some(e)
}

/// The same for a backend's reply.
#[inline(always)]
pub fn reply(key: &FlowKey, flags: u8, now: u64) -> Option<&'static NatEntry> {
    let p = NAT_REVERSE.get_ptr_mut(key)?;
    // SAFETY: as above.
    let e = unsafe { &mut *p };
    if touch(&mut e.state, &mut e.last_seen_ns, key.proto, flags, now) {
        close_forward(key, e, now);
    }
    Some(e)
}

/// Advances an entry's state for this packet and refreshes its timestamp, writing at most
/// once per `CT_TOUCH_NS` unless the state changes: a write per packet would bounce the
/// cache line between CPUs for no benefit. True if this packet closed the flow (FIN/RST).
#[inline(always)]
fn touch(state: &mut u8, last_seen_ns: &mut u64, proto: u8, flags: u8, now: u64) -> bool {
    let next = flow_state::next(*state, proto, flags);
    let changed = next != *state;
    // Saturating: CPUs may read the clock up to a tick apart (see `clock`).
    if changed || now.saturating_sub(*last_seen_ns) > lb_common::CT_TOUCH_NS {
        *state = next;
        *last_seen_ns = now;
    }
    changed && next == CT_CLOSING
}

/// A FIN or RST from the client closes the reverse entry too: otherwise it keeps its SNAT
/// port for the established timeout whenever the backend never answers the close (a client
/// RST). Only on the closing packet: one lookup per connection, none per data packet.
#[inline(always)]
fn close_reverse(key: &FlowKey, e: &CtEntry, now: u64) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot (see `create`); `create` does not run for this packet.
    let rev = unsafe { &mut (*scratch).rev };
    // SAFETY: 16-byte addresses on both sides.
    unsafe {
        copy_words(&raw mut rev.src.words, &e.backend.words);
        copy_words(&raw mut rev.dst.words, &e.snat.words);
    }
    rev.src_port = e.backend_port;
    rev.dst_port = e.snat_port;
    rev.proto = key.proto;
    rev.family = key.family;
    rev._pad = [0; 2];
    if let Some(p) = NAT_REVERSE.get_ptr_mut(&*rev) {
        // SAFETY: map value pointer, valid for this program run.
        let r = unsafe { &mut *p };
        // The port may already serve a newer flow.
        if r.orig == *key {
            r.state = CT_CLOSING;
            r.last_seen_ns = now;
        }
    }
}

/// A FIN or RST from the backend closes the client's entry too (the mirror of
/// [`close_reverse`]), so a client reusing its port gets a new flow.
#[inline(always)]
fn close_forward(key: &FlowKey, e: &NatEntry, now: u64) {
    if let Some(p) = CONNTRACK.get_ptr_mut(&e.orig) {
        // SAFETY: map value pointer, valid for this program run.
        let f = unsafe { &mut *p };
        // The client's tuple may already be a newer flow on another port.
        if f.snat_port == key.dst_port && f.backend_id == e.backend_id {
            f.state = CT_CLOSING;
            f.last_seen_ns = now;
        }
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
///
/// The first probe just inserts (the common case: its port is free). Later probes look
/// before they insert: a failed insert into an LRU map costs a free-list pop and push (~3x a
/// lookup), and they only run when part of the range is held.
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
