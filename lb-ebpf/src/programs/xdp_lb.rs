//! The load balancer on XDP: every frame an attached interface receives.

use aya_ebpf::{macros::xdp, programs::XdpContext};

use crate::lb;

#[xdp]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    lb::process(&ctx)
}
