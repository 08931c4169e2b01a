//! Never forward what a router would refuse. Applied to every packet the program owns (to a
//! service, or a backend's reply to one of our SNAT ports) before it touches any state;
//! packets it does not own go to the kernel, which judges them itself.
//!
//! Every check is arithmetic on bytes already in cache but one inlined array read (the
//! receiving interface's MAC); the checks that only matter when a flow opens (source
//! address and port: an established flow's key already passed them) run only then.

use lb_common::{
    FAMILY_V4, FlowKey, IFACE_SLOTS, PROTO_TCP, Reason, VipAddrKey,
    csum::fold,
    sanity::{group_mac, martian_v4, martian_v6, tcp_flags_valid},
};

use crate::{
    ctx::{PacketCtx, ptr_at},
    headers::{EthHdr, Ipv4Hdr},
    maps::{IFACES, VIP_ADDRS},
    parse::Packet,
    wire::Word,
};

/// Checks a packet the program would forward. `Err` names the reason to count; the caller
/// picks the verdict (see `Reason`).
#[inline(always)]
pub fn packet(ctx: &impl PacketCtx, pkt: &Packet) -> Result<(), Reason> {
    if let Some(defect) = pkt.defect {
        return Err(defect);
    }
    l2(ctx)?;
    if pkt.key.family == FAMILY_V4 {
        ipv4_checksum(ctx, pkt.l3_off)?;
    }
    // Forwarding decrements it; a router never sends a packet on with TTL 0.
    if pkt.ttl <= 1 {
        return Err(Reason::TtlExceeded);
    }
    if pkt.key.proto == PROTO_TCP && !tcp_flags_valid(pkt.tcp_flags) {
        return Err(Reason::BadTcpFlags);
    }
    Ok(())
}

/// The frame was sent to the receiving interface's own MAC, from a station's (not a group)
/// MAC. An interface whose slot holds another ifindex (a collision the agent warned about)
/// skips the destination check.
#[inline(always)]
fn l2(ctx: &impl PacketCtx) -> Result<(), Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::TruncatedEth)?;
    let frame = eth.cast::<u8>();
    // SAFETY: within the bounds-checked Ethernet header (dst at 0..6, src at 6..12). Read
    // as words: comparing `[u8; 6]` values compiles to a byte-by-byte memcmp subprogram.
    let (dst_hi, dst_lo, src0) = unsafe {
        (
            u32::load(frame.cast::<u32>()),
            u16::load(frame.add(4).cast::<u16>()),
            *frame.add(6),
        )
    };
    if group_mac(src0) {
        return Err(Reason::BadSrcMac);
    }
    let ifindex = ctx.ingress_ifindex();
    if let Some(slot) = IFACES.get_ptr(ifindex % IFACE_SLOTS) {
        // SAFETY: array value pointer, valid for this program run; `mac` sits at offset 4 of
        // a 4-aligned value: its words are aligned.
        let (owner, mac_hi, mac_lo) = unsafe {
            let mac = (&raw const (*slot).mac).cast::<u8>();
            (
                (*slot).ifindex,
                *mac.cast::<u32>(),
                *mac.add(4).cast::<u16>(),
            )
        };
        if owner == ifindex && (mac_hi != dst_hi || mac_lo != dst_lo) {
            return Err(Reason::BadDstMac);
        }
    }
    Ok(())
}

/// The IPv4 header checksum (no options reach here: 10 words) sums to all ones.
#[inline(always)]
fn ipv4_checksum(ctx: &impl PacketCtx, l3_off: usize) -> Result<(), Reason> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3_off).ok_or(Reason::MalformedIp)?;
    let words = ip.cast::<u32>();
    let mut sum = 0u64;
    for i in 0..5 {
        // SAFETY: within the bounds-checked 20-byte header; no alignment assumed.
        sum += unsafe { u32::load(words.add(i)) } as u64;
    }
    if fold(sum) == 0xffff {
        Ok(())
    } else {
        Err(Reason::BadIpChecksum)
    }
}

/// A new flow's source: a real station's port and address, not one of ours.
#[inline(always)]
pub fn new_flow_source(key: &FlowKey) -> Result<(), Reason> {
    if key.src_port == 0 {
        return Err(Reason::BadSrcPort);
    }
    let martian = if key.family == FAMILY_V4 {
        martian_v4(key.src.words[0])
    } else {
        martian_v6(&key.src.words)
    };
    // A VIP as source: someone spoofing the service at itself (a land attack).
    // SAFETY: presence only.
    if martian || unsafe { VIP_ADDRS.get(&VipAddrKey::new(key.src, key.family)) }.is_some() {
        return Err(Reason::MartianSource);
    }
    Ok(())
}
