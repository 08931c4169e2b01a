//! Rewrites a parsed packet's MACs, addresses and ports, patching checksums incrementally.

use lb_common::{Addr, FAMILY_V4, Mac, PROTO_TCP, csum::Delta};

use crate::{
    ctx::{L4Csum, PacketCtx, ptr_at},
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr},
    parse::Packet,
    wire::Word,
};

/// Offset of the checksum in a TCP header.
const TCP_CHECK: usize = 16;
/// Offset of the checksum in a UDP header.
const UDP_CHECK: usize = 6;

/// The new headers of a translated packet.
pub struct Rewrite<'a> {
    pub src: &'a Addr,
    pub src_port: u16,
    pub dst: &'a Addr,
    pub dst_port: u16,
    pub smac: &'a Mac,
    pub dmac: &'a Mac,
}

/// Copies a MAC as three 16-bit words. A plain `*dst = *src` of `[u8; 6]` from a map value
/// into the frame compiles to a call of a byte-by-byte `memmove` subprogram: two of them
/// cost about 20 ns per packet.
///
/// # Safety
/// `dst` must be valid for a 6-byte write (any alignment); `src` is 2-aligned (MACs sit at
/// even offsets of our map values).
#[inline(always)]
unsafe fn copy_mac(dst: *mut Mac, src: &Mac) {
    let d = dst.cast::<u16>();
    let s = src.as_ptr().cast::<u16>();
    // SAFETY: 6 bytes on both sides; the frame side takes any alignment.
    unsafe {
        for i in 0..3 {
            u16::store(d.add(i), *s.add(i));
        }
    }
}

/// Writes an address word by word into a map value, for the same reason as [`copy_mac`]
/// (volatile, or LLVM merges the stores back into a `memmove` call).
///
/// # Safety
/// `dst` must be valid for a 16-byte write and 4-byte aligned (map values are).
#[inline(always)]
pub unsafe fn copy_words(dst: *mut [u32; 4], src: &[u32; 4]) {
    let d = dst.cast::<u32>();
    // SAFETY: 16 bytes, 4-byte aligned.
    unsafe {
        for (i, w) in src.iter().enumerate() {
            core::ptr::write_volatile(d.add(i), *w);
        }
    }
}

/// Applies `rw` to the packet and decrements its TTL / hop limit (the LB is a hop: a packet
/// must not circle through it forever; `validate` made sure it is above 1). `None` if the
/// frame shrank under us (cannot happen: the offsets were bounds-checked at parse time, but
/// the verifier needs the checks again) or a tc checksum helper refused.
#[inline(always)]
pub fn rewrite(ctx: &impl PacketCtx, pkt: &Packet, rw: &Rewrite) -> Option<()> {
    let k = &pkt.key;
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds-checked pointers into the frame.
    unsafe {
        copy_mac(&raw mut (*eth).dst, rw.dmac);
        copy_mac(&raw mut (*eth).src, rw.smac);
    }

    let ports = Delta::new()
        .replace16(k.src_port, rw.src_port)
        .replace16(k.dst_port, rw.dst_port);
    // The pseudo-header covers the addresses (not the TTL): L4 takes their delta too.
    let addrs;
    // Header bytes no checksum covers (the IPv6 hop limit), for skb checksum state.
    let mut uncovered = Delta::new();
    let v6 = k.family != FAMILY_V4;
    if !v6 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, pkt.l3_off)?;
        // TTL shares a checksummed 16-bit word with the protocol.
        let ttl_word = ip.cast::<u8>().wrapping_add(8).cast::<u16>();
        // SAFETY: bytes 8..10 of the bounds-checked header.
        let old_ttl_word = unsafe { u16::load(ttl_word) };
        set!(ip, ttl, pkt.ttl - 1);
        // SAFETY: as above.
        let new_ttl_word = unsafe { u16::load(ttl_word) };
        let header = Delta::new()
            .replace16(old_ttl_word, new_ttl_word)
            .replace32(k.src.words[0], rw.src.words[0])
            .replace32(k.dst.words[0], rw.dst.words[0]);
        set!(ip, check, header.apply(get!(ip, check)));
        set!(ip, src, rw.src.words[0]);
        set!(ip, dst, rw.dst.words[0]);
        addrs = Delta::new()
            .replace32(k.src.words[0], rw.src.words[0])
            .replace32(k.dst.words[0], rw.dst.words[0]);
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, pkt.l3_off)?;
        set!(ip, hop_limit, pkt.ttl - 1);
        set!(ip, src, rw.src.words);
        set!(ip, dst, rw.dst.words);
        addrs = Delta::new()
            .replace_addr(&k.src.words, &rw.src.words)
            .replace_addr(&k.dst.words, &rw.dst.words);
        // Next header and hop limit share a 16-bit word; computed, not read back, so an
        // implementation that ignores it (XDP) costs nothing for it.
        uncovered = Delta::new().replace16(
            u16::from_ne_bytes([k.proto, pkt.ttl]),
            u16::from_ne_bytes([k.proto, pkt.ttl - 1]),
        );
    }

    // The checksum field is updated last: on tc the helpers that do it invalidate every
    // pointer into the packet.
    if k.proto == PROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, pkt.l4_off)?;
        set!(tcp, sport, rw.src_port);
        set!(tcp, dport, rw.dst_port);
        let fix = L4Csum {
            addrs,
            ports,
            uncovered,
            udp: false,
            v6,
        };
        // SAFETY: a field of the bounds-checked header (no access, no alignment assumed).
        let check = unsafe { &raw mut (*tcp).check };
        ctx.fix_l4_csum(check, pkt.l4_off + TCP_CHECK, &fix)
            .then_some(())
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, pkt.l4_off)?;
        set!(udp, sport, rw.src_port);
        set!(udp, dport, rw.dst_port);
        // IPv4 UDP may carry no checksum (0); IPv6 UDP always does, and must never
        // send 0 (RFC 8200 section 8.1): both implementations keep 0 and never make one.
        let fix = L4Csum {
            addrs,
            ports,
            uncovered,
            udp: true,
            v6,
        };
        // SAFETY: as for TCP.
        let check = unsafe { &raw mut (*udp).check };
        ctx.fix_l4_csum(check, pkt.l4_off + UDP_CHECK, &fix)
            .then_some(())
    }
}
