//! Next hop toward a backend: route, egress interface, MACs and the source address to use.
//!
//! `bpf_fib_lookup` with source selection is the largest single cost of a new flow, and its
//! answer rarely changes: each CPU keeps the answer per backend (`NEXT_HOPS`) for
//! `NEXT_HOP_TTL_NS`, or until the agent bumps `NEXT_HOP_GEN` (it does on every neighbour or
//! route change it sees, before it points established flows at the new hop).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
};
use lb_common::{Addr, FAMILY_V4, Mac, Reason};

use crate::{
    ctx::PacketCtx,
    maps::{NEXT_HOP_GEN, NEXT_HOPS},
    nat::copy_words,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A backend's next hop as a CPU last looked it up (a `NEXT_HOPS` slot).
#[repr(C)]
pub struct NextHop {
    /// The kernel's preferred source address for this route: our SNAT address.
    pub src: Addr,
    /// What the lookup was for: the slot is shared by backend ids `NEXT_HOP_SLOTS` apart,
    /// and an id may be reused for another address.
    backend: Addr,
    pub ifindex: u32,
    pub smac: Mac,
    pub dmac: Mac,
    ingress: u32,
    proto: u8,
    _pad: [u8; 3],
    generation: u64,
    /// Coarse-clock time of the lookup; 0: never looked up.
    at_ns: u64,
}

/// `NEXT_HOPS` slots per CPU (backend id modulo this).
pub const NEXT_HOP_SLOTS: u32 = 4096;
/// How long a CPU trusts a lookup without a generation bump: bounds what a change the agent
/// does not hear of (it is not running, or a route change with no event) can cost.
const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// The next hop toward backend `backend_id` at `dst`: this CPU's cached answer when it is
/// fresh, else a FIB lookup (which refreshes it). Failed lookups are not cached.
#[inline(always)]
pub fn next_hop(
    ctx: &impl PacketCtx,
    family: u8,
    proto: u8,
    backend_id: u32,
    dst: &Addr,
    now: u64,
) -> Result<&'static NextHop, Reason> {
    let e = NEXT_HOPS
        .get_ptr_mut(backend_id % NEXT_HOP_SLOTS)
        .ok_or(Reason::FibFailed)?;
    // SAFETY: this CPU's slot; XDP and tc programs run to completion without migrating.
    let e = unsafe { &mut *e };
    let generation = NEXT_HOP_GEN.get(0).copied().unwrap_or(0);
    let ingress = ctx.ingress_ifindex();
    if e.at_ns != 0
        && now.saturating_sub(e.at_ns) < NEXT_HOP_TTL_NS
        && e.generation == generation
        && e.ingress == ingress
        && e.proto == proto
        && same_addr(&e.backend, dst)
    {
        return Ok(e);
    }
    // Invalid until the lookup succeeds.
    e.at_ns = 0;
    lookup(ctx, family, proto, dst, e)?;
    // SAFETY: 16-byte addresses on both sides.
    unsafe { copy_words(&raw mut e.backend.words, &dst.words) };
    e.ingress = ingress;
    e.proto = proto;
    e.generation = generation;
    // `now` is 0 only in the first tick after boot: then the slot stays a miss.
    e.at_ns = now;
    Ok(e)
}

/// Looks up the route to `dst` into `out`. `BPF_FIB_LOOKUP_SRC` makes the kernel pick the
/// source address as it would for its own traffic, so SNAT needs no address configuration.
#[inline(always)]
fn lookup(
    ctx: &impl PacketCtx,
    family: u8,
    proto: u8,
    dst: &Addr,
    out: &mut NextHop,
) -> Result<(), Reason> {
    let mut params = core::mem::MaybeUninit::<FibParams>::uninit();
    // Zeroed word by word in place: `mem::zeroed` (or moving a zeroed value) compiles to a
    // call of a byte-by-byte memset subprogram (64 iterations).
    let words = params.as_mut_ptr().cast::<u64>();
    for i in 0..core::mem::size_of::<FibParams>() / 8 {
        // SAFETY: within the struct, which is 8-byte aligned and a multiple of 8 bytes.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: plain-old-data struct, now all zero: a valid value for every field.
    let p = unsafe { params.assume_init_mut() };
    p.l4_protocol = proto;
    p.ifindex = ctx.ingress_ifindex();
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_4.ipv4_dst = dst.words[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_4.ipv6_dst = dst.words;
    }
    // SAFETY: p is a valid bpf_fib_lookup on our stack.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.as_raw(),
            p,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SRC,
        )
    } as u32;
    match ret {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Reason::NoNeighbour),
        BPF_FIB_LKUP_RET_NO_SRC_ADDR => return Err(Reason::NoSnatAddr),
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Reason::ForwardingDisabled),
        _ => return Err(Reason::FibFailed),
    }
    // SAFETY: the helper filled the union member matching `family`.
    unsafe {
        if family == FAMILY_V4 {
            copy_words(
                &raw mut out.src.words,
                &[p.__bindgen_anon_3.ipv4_src, 0, 0, 0],
            );
        } else {
            copy_words(&raw mut out.src.words, &p.__bindgen_anon_3.ipv6_src);
        }
    }
    out.ifindex = p.ifindex;
    copy_mac(&mut out.smac, &p.smac);
    copy_mac(&mut out.dmac, &p.dmac);
    Ok(())
}

/// Word by word: an array comparison may compile to a `bcmp` call.
#[inline(always)]
fn same_addr(a: &Addr, b: &Addr) -> bool {
    let (a, b) = (&a.words, &b.words);
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// Byte by byte, volatile: a `[u8; 6]` assignment into a map value compiles to a call of a
/// byte-by-byte `memmove` subprogram.
#[inline(always)]
fn copy_mac(dst: &mut Mac, src: &Mac) {
    for (d, s) in dst.iter_mut().zip(src.iter()) {
        // SAFETY: a valid byte.
        unsafe { core::ptr::write_volatile(d, *s) };
    }
}
