//! Next hop toward a backend: route, egress interface, MACs and the source address to use.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
};
use lb_common::{Addr, FAMILY_V4, Mac, Reason};

use crate::ctx::PacketCtx;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

pub struct NextHop {
    pub ifindex: u32,
    pub smac: Mac,
    pub dmac: Mac,
    /// The kernel's preferred source address for this route: our SNAT address.
    pub src: Addr,
}

/// Looks up the route to `dst`. `BPF_FIB_LOOKUP_SRC` makes the kernel pick the source
/// address as it would for its own traffic, so SNAT needs no address configuration.
#[inline(always)]
pub fn lookup(ctx: &impl PacketCtx, family: u8, proto: u8, dst: &Addr) -> Result<NextHop, Reason> {
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
    let src = unsafe {
        if family == FAMILY_V4 {
            Addr::v4(p.__bindgen_anon_3.ipv4_src)
        } else {
            Addr::v6(p.__bindgen_anon_3.ipv6_src)
        }
    };
    Ok(NextHop {
        ifindex: p.ifindex,
        smac: p.smac,
        dmac: p.dmac,
        src,
    })
}
