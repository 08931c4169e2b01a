//! A do-nothing program: the floor for benchmarks, and what veth peers need so XDP_REDIRECT
//! into them works.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
