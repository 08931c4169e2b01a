//! Hands connections to a gateway VIP:port to the L7 gateway's listening socket, whatever
//! address that socket is bound to (Cloudflare's sk_lookup pattern): the VIP needs only a
//! `local` route, never an address on an interface, and one socket per family serves every
//! gateway service (the accepted socket's local address says which one was asked for).
//!
//! Runs for every listener lookup in the network namespace (TCP SYNs and unconnected UDP),
//! so it does one map lookup and nothing else. Connections the gateway opens to backends are
//! never looked up here: their replies match established sockets first.

use core::ptr::read_volatile;

use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, SVC_FLAG_PASS, ServiceKey};

use crate::maps::{GATEWAY_SOCKETS, SERVICES};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `SK_PASS`: go on with the kernel's lookup (with the socket assigned, if any).
const SK_PASS: u32 = 1;

#[sk_lookup]
pub fn sk_lookup_gateway(ctx: SkLookupContext) -> u32 {
    // Every field is read once, up front, with its own load at a fixed offset: the verifier
    // refuses a context access through a pointer moved by a branch-dependent offset, which
    // is what LLVM makes of reads done inside the match arms.
    let l = ctx.lookup;
    // SAFETY: the context pointer is valid for the program run; fields read by value.
    let (family, protocol, port, ip4, ip6) = unsafe {
        (
            read_volatile(&raw const (*l).family),
            read_volatile(&raw const (*l).protocol),
            read_volatile(&raw const (*l).local_port),
            read_volatile(&raw const (*l).local_ip4),
            [
                read_volatile(&raw const (*l).local_ip6[0]),
                read_volatile(&raw const (*l).local_ip6[1]),
                read_volatile(&raw const (*l).local_ip6[2]),
                read_volatile(&raw const (*l).local_ip6[3]),
            ],
        )
    };
    if protocol != u32::from(PROTO_TCP) {
        return SK_PASS;
    }
    let (addr, fam, index) = match family {
        AF_INET => (lb_common::Addr::v4(ip4), FAMILY_V4, 0),
        AF_INET6 => (lb_common::Addr::v6(ip6), FAMILY_V6, 1),
        _ => return SK_PASS,
    };
    // `local_port` is in host order; the map keys hold it in network order.
    let key = ServiceKey::new(addr, (port as u16).to_be(), PROTO_TCP, fam);
    // SAFETY: the value is read at once.
    let Some(svc) = (unsafe { SERVICES.get(&key) }) else {
        return SK_PASS;
    };
    if svc.flags & SVC_FLAG_PASS != 0 {
        // No socket yet (the gateway is starting): the kernel's own lookup finds none and
        // answers RST, as it would without us.
        let _ = GATEWAY_SOCKETS.redirect_sk_lookup(&ctx, index, 0);
    }
    SK_PASS
}
