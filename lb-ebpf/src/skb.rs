//! The packet context of the tc program (`sched_cls` on tcx ingress): an skb.
//!
//! What differs from XDP:
//! - Only the skb's linear part is directly accessible: the headers the path reads are
//!   pulled into it first when they are not (`bpf_skb_pull_data`), and the frame length is
//!   the skb's (a GSO or paged skb is longer than its linear part).
//! - The skb has checksum state. A frame a local socket sent through a veth is
//!   `CHECKSUM_PARTIAL`: its TCP/UDP checksum field holds only the pseudo-header sum, to be
//!   completed on transmit. Patching it as XDP does (ports included) corrupts it, so the NAT
//!   goes through `bpf_l4_csum_replace`, which knows the state: addresses as pseudo-header
//!   changes (`BPF_F_PSEUDO_HDR`), ports as data changes; and `CHECKSUM_COMPLETE` sums are
//!   kept right (`bpf_csum_update` for what no checksum field covers).
//! - Delivery is `bpf_redirect` to the egress interface (the same one for one-arm); the
//!   MACs were rewritten from the FIB lookup as on XDP.

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, xdp_action},
    helpers::{
        bpf_csum_update, bpf_l4_csum_replace, bpf_redirect, bpf_skb_change_tail, bpf_skb_pull_data,
    },
    programs::TcContext,
};

use crate::{
    ctx::{L4Csum, PacketCtx},
    headers::{EthHdr, Ipv6Hdr, TcpHdr, VlanHdr},
};

/// `BPF_F_IPV6` (kernel 6.16+; not in aya's bindings yet): an IPv6 pseudo-header change
/// leaves a `CHECKSUM_COMPLETE` sum as it is (the address change in the header and the
/// checksum field's change cancel out; IPv4's header checksum already does that).
const BPF_F_IPV6: u64 = 1 << 7;

/// The most header bytes the path reads: Ethernet, one VLAN tag, IPv6, TCP (IPv4 without
/// options and UDP are shorter).
const HEADERS: u32 = (core::mem::size_of::<EthHdr>()
    + core::mem::size_of::<VlanHdr>()
    + core::mem::size_of::<Ipv6Hdr>()
    + core::mem::size_of::<TcpHdr>()) as u32;

pub struct Skb {
    skb: *mut __sk_buff,
    ifindex: u32,
    len: u32,
}

impl Skb {
    /// Reads the fields the path needs once, up front (the verifier refuses context reads
    /// through a pointer moved by branch-dependent offsets), and makes sure the headers are
    /// in the linear part.
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> Self {
        let skb = ctx.skb.skb;
        // SAFETY: the context pointer is valid for the program run; fields read by value.
        let (len, ifindex) = unsafe {
            (
                read_volatile(&raw const (*skb).len),
                read_volatile(&raw const (*skb).ifindex),
            )
        };
        let s = Skb { skb, ifindex, len };
        let want = if len < HEADERS { len } else { HEADERS };
        if s.data_end() - s.data() < want as usize {
            // A failure leaves the headers out of reach: the parser then passes the frame.
            // SAFETY: the program's own context.
            let _ = unsafe { bpf_skb_pull_data(skb, want) };
        }
        s
    }
}

impl PacketCtx for Skb {
    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: the context pointer is valid for the program run.
        unsafe { (*self.skb).data as usize }
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*self.skb).data_end as usize }
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        self.ifindex
    }
    #[inline(always)]
    fn as_raw(&self) -> *mut c_void {
        self.skb.cast()
    }
    #[inline(always)]
    fn trim_tail(&self, bytes: u32) -> bool {
        // SAFETY: the program's own context.
        unsafe { bpf_skb_change_tail(self.skb, self.len - bytes, 0) == 0 }
    }
    #[inline(always)]
    fn fix_l4_csum(&self, _check: *mut u16, off: usize, fix: &L4Csum) -> bool {
        // UDP: a 0 checksum (IPv4's "none") stays 0, a computed 0 is sent as 0xffff.
        let udp = if fix.udp {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let family = if fix.v6 { BPF_F_IPV6 } else { 0 };
        let off = off as u32;
        // Size 0 in the flags: `to` is a diff (from must be 0).
        // SAFETY: the program's own context; the helpers check the offset.
        unsafe {
            if bpf_l4_csum_replace(
                self.skb,
                off,
                0,
                fix.addrs.wsum() as u64,
                BPF_F_PSEUDO_HDR as u64 | family | udp,
            ) != 0
            {
                return false;
            }
            if bpf_l4_csum_replace(self.skb, off, 0, fix.ports.wsum() as u64, udp) != 0 {
                return false;
            }
            if fix.v6 {
                // No-op unless CHECKSUM_COMPLETE; never fails.
                bpf_csum_update(self.skb, fix.uncovered.wsum());
            }
        }
        true
    }
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Option<u32> {
        // SAFETY: plain helper; egress of `ifindex` (flags 0), the same interface included.
        let r = unsafe { bpf_redirect(ifindex, 0) };
        (r == TC_ACT_REDIRECT as i64).then_some(xdp_action::XDP_REDIRECT)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.len as usize
    }
}
