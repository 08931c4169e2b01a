//! Flow lookup and creation: both conntrack entries (client side and reply side), kept in
//! step through a flow's life. Backend choice is `maglev`, the SNAT port `snat`.

use lb_common::{
    CT_CLOSING, CtEntry, FlowKey, Mac, NatEntry, Reason, ServiceValue, Settings, flow_state,
};

use crate::{
    ctx::PacketCtx,
    fib, maglev,
    maps::Scratch,
    maps::{CONNTRACK, NAT_REVERSE, SCRATCH},
    nat::copy_words,
    snat,
};

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

/// The reply-side entry of a backend's packet, if it is a reply to one of our flows. Not
/// yet updated: the packet is checked first (see [`reply_seen`]).
#[inline(always)]
pub fn reply(key: &FlowKey) -> Option<&'static mut NatEntry> {
    let p = NAT_REVERSE.get_ptr_mut(key)?;
    // SAFETY: map value pointer, valid for this program run.
    Some(unsafe { &mut *p })
}

/// Updates a reply-side entry for a packet that passed the checks.
#[inline(always)]
pub fn reply_seen(key: &FlowKey, e: &mut NatEntry, flags: u8, now: u64) {
    if touch(&mut e.state, &mut e.last_seen_ns, key.proto, flags, now) {
        close_forward(key, e, now);
    }
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

/// As `zero_pad`, for a MAC copied between map values (a plain assignment compiles to a
/// `memmove` call).
#[inline(always)]
fn copy_mac(dst: &mut Mac, src: &Mac) {
    for (d, s) in dst.iter_mut().zip(src.iter()) {
        // SAFETY: a valid byte.
        unsafe { core::ptr::write_volatile(d, *s) };
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
    ctx: &impl PacketCtx,
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
    let (backend_id, backend) = maglev::pick(svc, key)?;
    let hop = fib::next_hop(ctx, key.family, key.proto, backend_id, &backend.addr, now)?;
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
    let snat_port = snat::allocate_port(rev, nat, key, settings, now)?;

    // SAFETY: as above.
    unsafe {
        copy_words(&raw mut ct.backend.words, &backend.addr.words);
        copy_words(&raw mut ct.snat.words, &hop.src.words);
    }
    ct.backend_port = backend.port;
    ct.snat_port = snat_port;
    ct.egress_ifindex = hop.ifindex;
    copy_mac(&mut ct.egress_dmac, &hop.dmac);
    copy_mac(&mut ct.egress_smac, &hop.smac);
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
