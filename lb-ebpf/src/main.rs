//! XDP programs of the load balancer.
//!
//! `xdp_lb` is the packet path (see `lb::process`); `xdp_pass` is a do-nothing program, the
//! floor for benchmarks and the program veth peers need so XDP_REDIRECT into them works.
#![no_std]
#![no_main]
// Map keys and values go to the helpers by reference: by value, each call would copy the
// key (up to 40 bytes) onto the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod clock;
mod conntrack;
mod fib;
mod headers;
mod lb;
mod maps;
mod nat;
mod parse;
mod ratelimit;
mod service;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    lb::process(&ctx)
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_fib_lookup` is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
