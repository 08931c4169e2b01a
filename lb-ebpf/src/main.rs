//! Programs of the load balancer: one entry file per program under `programs/`, over shared
//! logic that does not depend on the attach point (`ctx::PacketCtx`).
//!
//! Layout: `ctx`, `skb` and `headers` (packet access) <- `parse`, `validate` (what a packet is and
//! whether it may be forwarded) <- `service`, `ratelimit`, `maglev`, `snat`, `fib`,
//! `conntrack` (decisions and state) <- `nat` (the rewrite) <- `lb` (the path) <- `programs`.
#![no_std]
// Single-instruction unaligned header access (see `wire`).
#![feature(asm_experimental_arch)]
#![no_main]
// Map keys and values go to the helpers by reference: by value, each call would copy the
// key (up to 40 bytes) onto the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod clock;
mod conntrack;
mod ctx;
mod fib;
#[macro_use]
mod headers;
mod lb;
mod maglev;
mod maps;
mod nat;
mod parse;
mod programs;
mod ratelimit;
mod service;
mod skb;
mod snat;
mod socket_lb;
mod stats;
mod syn_guard;
mod validate;
mod wire;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_fib_lookup` is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
