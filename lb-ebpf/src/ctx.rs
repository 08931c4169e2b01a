//! The packet context, independent of the attach point (Cilium's `ctx` shims do the same):
//! parsing, validation, selection and NAT take `&impl PacketCtx`, so the tc program
//! (`skb::Skb`) reuses them with its own implementation next to this XDP one.
//!
//! Verdicts stay XDP's (`xdp_action`) along the whole path; a tc entry maps them to its own.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _, bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext,
};
use lb_common::csum::Delta;

use crate::{maps::DEVMAP, wire::Word};

/// The checksum side of a NAT rewrite whose headers are already written.
pub struct L4Csum {
    /// Address changes: in the pseudo-header the TCP/UDP checksum covers.
    pub addrs: Delta,
    /// Port changes: in the TCP/UDP header.
    pub ports: Delta,
    /// Changes no checksum field covers (the IPv6 hop limit): only an skb's
    /// `CHECKSUM_COMPLETE` sum covers them.
    pub uncovered: Delta,
    /// UDP (0 means "no checksum" and is kept) rather than TCP.
    pub udp: bool,
    pub v6: bool,
}

pub trait PacketCtx {
    /// Address of the first byte of the frame.
    fn data(&self) -> usize;
    /// Address one past the last byte directly accessible (all the frame on XDP; at least
    /// the headers the path reads on tc).
    fn data_end(&self) -> usize;
    /// The interface the frame arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// The raw context, for helpers that take it (`bpf_fib_lookup`).
    fn as_raw(&self) -> *mut c_void;
    /// Drops the last `bytes` bytes of the frame. Pointers into the frame taken before are
    /// no longer bounds-checked: take them again. False if the kernel refused.
    fn trim_tail(&self, bytes: u32) -> bool;
    /// Updates the TCP/UDP checksum at `check` (offset `off` in the frame) for `fix`. The
    /// last access to the packet: pointers into it may be invalid afterwards. False if the
    /// kernel refused.
    fn fix_l4_csum(&self, check: *mut u16, off: usize, fix: &L4Csum) -> bool;
    /// Starts sending the frame out of `ifindex`: the verdict to return (`XDP_TX` or
    /// `XDP_REDIRECT`), or `None` if it cannot be sent there.
    fn redirect(&self, ifindex: u32) -> Option<u32>;
    /// True if a frame rewritten whole in place may be sent back with `XDP_TX` (the SYN
    /// guard's challenge). tc's skbs carry checksum-offload state a whole rewrite would
    /// have to reset: not there.
    #[inline(always)]
    fn can_reflect(&self) -> bool {
        false
    }

    /// Frame length in bytes.
    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }
}

impl PacketCtx for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }
    #[inline(always)]
    fn as_raw(&self) -> *mut c_void {
        self.as_ptr()
    }
    #[inline(always)]
    fn trim_tail(&self, bytes: u32) -> bool {
        // SAFETY: the helper takes the program's own context.
        unsafe { bpf_xdp_adjust_tail(self.ctx, -(bytes as i32)) == 0 }
    }
    /// XDP frames carry no checksum state: the field is patched incrementally, in place.
    #[inline(always)]
    fn fix_l4_csum(&self, check: *mut u16, _off: usize, fix: &L4Csum) -> bool {
        let d = fix.ports.merge(fix.addrs);
        // SAFETY: the caller's: a field of a bounds-checked header.
        unsafe {
            let old = u16::load(check);
            u16::store(
                check,
                if fix.udp {
                    d.apply_udp4(old)
                } else {
                    d.apply(old)
                },
            );
        }
        true
    }
    #[inline(always)]
    fn can_reflect(&self) -> bool {
        true
    }
    /// Out the way it came (one-arm) or through the devmap to another interface (two-arm).
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Option<u32> {
        if ifindex == PacketCtx::ingress_ifindex(self) {
            return Some(xdp_action::XDP_TX);
        }
        DEVMAP.redirect(ifindex, xdp_action::XDP_DROP as u64).ok()
    }
}

/// Bounds-checked pointer to a `T` at `off` in the frame. Read and write through it with
/// `read_unaligned`/`write_unaligned` or field by field with raw pointers: headers sit at
/// 2-byte offsets, so a `&T` to one could be misaligned.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl PacketCtx, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}
