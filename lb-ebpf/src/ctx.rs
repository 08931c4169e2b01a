//! The packet context, independent of the attach point (Cilium's `ctx` shims do the same):
//! parsing, validation, selection and NAT take `&impl PacketCtx`, so a tc or cgroup program
//! can reuse them with its own implementation next to this XDP one.

use core::ffi::c_void;

use aya_ebpf::{EbpfContext as _, helpers::bpf_xdp_adjust_tail, programs::XdpContext};

pub trait PacketCtx {
    /// Address of the first byte of the frame.
    fn data(&self) -> usize;
    /// Address one past the last byte of the frame.
    fn data_end(&self) -> usize;
    /// The interface the frame arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// The raw context, for helpers that take it (`bpf_fib_lookup`).
    fn as_raw(&self) -> *mut c_void;
    /// Drops the last `bytes` bytes of the frame. Pointers into the frame taken before are
    /// no longer bounds-checked: take them again. False if the kernel refused.
    fn trim_tail(&self, bytes: u32) -> bool;

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
