//! Header parsing: Ethernet (one 802.1Q/802.1ad tag), IPv4/IPv6, TCP/UDP.
//!
//! The result is the flow key plus the offsets and lengths the checks and the NAT rewrite
//! need. Anything this does not handle comes back as `Err(verdict)`, already counted by
//! reason (see `lb_common::reason`). Length defects (an IP length longer than the frame,
//! a TCP header past the segment) are recorded, not judged: whether they matter depends on
//! whether the packet is ours to forward (`validate`).

use aya_ebpf::bindings::xdp_action;
use lb_common::{Addr, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason, VipAddrKey};

use crate::{
    ctx::{PacketCtx, ptr_at},
    headers::*,
    maps::VIP_ADDRS,
    stats::count,
};

const IPV4_HLEN: usize = core::mem::size_of::<Ipv4Hdr>();
const IPV6_HLEN: usize = core::mem::size_of::<Ipv6Hdr>();
const TCP_HLEN: usize = core::mem::size_of::<TcpHdr>();
const UDP_HLEN: usize = core::mem::size_of::<UdpHdr>();

/// A parsed TCP/UDP packet.
pub struct Packet {
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Frame length in bytes (for byte counters).
    pub len: u64,
    /// Bytes after the IP datagram (Ethernet padding or garbage): trimmed before forwarding,
    /// so they never reach a checksum or a backend.
    pub trailer: u32,
    /// A length that disagrees with the frame, if any (`BadIpLength`, `BadL4Length`).
    pub defect: Option<Reason>,
}

/// Verdict for a packet we do not handle: drop if it is addressed to a VIP (never forward a
/// VIP packet half-handled, nor hand it to a kernel that may route it elsewhere), otherwise
/// pass it to the kernel untouched.
#[inline(always)]
fn unhandled(reason: Reason, dst: Addr, family: u8) -> u32 {
    count(reason);
    let k = VipAddrKey::new(dst, family);
    // SAFETY: the value is not used beyond presence.
    if unsafe { VIP_ADDRS.get(&k) }.is_some() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn malformed() -> u32 {
    count(Reason::MalformedIp);
    xdp_action::XDP_DROP
}

#[inline(always)]
pub fn parse(ctx: &impl PacketCtx) -> Result<Packet, u32> {
    let len = ctx.len();
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        count(Reason::TruncatedEth);
        return Err(xdp_action::XDP_PASS);
    };
    let mut proto = get!(eth, proto);
    let mut l3_off = core::mem::size_of::<EthHdr>();
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3_off) else {
            count(Reason::TruncatedEth);
            return Err(xdp_action::XDP_PASS);
        };
        proto = get!(vlan, proto);
        l3_off += core::mem::size_of::<VlanHdr>();
    }
    // What the frame holds from the IP header on; an IP datagram may not claim more.
    let frame_l3 = len - l3_off;

    if proto == ETH_P_IP {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3_off) else {
            return Err(malformed());
        };
        let version_ihl = get!(ip, version_ihl);
        let ihl = (version_ihl & 0x0f) as usize;
        let tot_len = u16::from_be(get!(ip, tot_len)) as usize;
        if version_ihl >> 4 != 4 || ihl < 5 || tot_len < ihl * 4 {
            return Err(malformed());
        }
        let dst = Addr::v4(get!(ip, dst));
        if ihl != 5 {
            return Err(unhandled(Reason::Ipv4Options, dst, FAMILY_V4));
        }
        // More-fragments flag or a fragment offset: ports are only in the first fragment,
        // and the LB does not reassemble.
        if get!(ip, frag_off) & 0x3fffu16.to_be() != 0 {
            return Err(unhandled(Reason::Fragment, dst, FAMILY_V4));
        }
        let l3 = L3 {
            off: l3_off,
            src: Addr::v4(get!(ip, src)),
            dst,
            proto: get!(ip, proto),
            family: FAMILY_V4,
            ttl: get!(ip, ttl),
            datagram: tot_len,
            header: IPV4_HLEN,
            frame: frame_l3,
        };
        l4(ctx, &l3, len as u64)
    } else if proto == ETH_P_IPV6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3_off) else {
            return Err(malformed());
        };
        if (u32::from_be(get!(ip, version_tc_flow)) >> 28) != 6 {
            return Err(malformed());
        }
        let dst = Addr::v6(get!(ip, dst));
        let next_header = get!(ip, next_header);
        match next_header {
            PROTO_TCP | PROTO_UDP => {}
            // Hop-by-hop (jumbograms too), routing, fragment, ESP, AH, destination options,
            // mobility, HIP, shim6: extension headers we do not walk.
            0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
                return Err(unhandled(Reason::Ipv6ExtHeader, dst, FAMILY_V6));
            }
            _ => return Err(unhandled(Reason::OtherProto, dst, FAMILY_V6)),
        }
        let l3 = L3 {
            off: l3_off,
            src: Addr::v6(get!(ip, src)),
            dst,
            proto: next_header,
            family: FAMILY_V6,
            ttl: get!(ip, hop_limit),
            datagram: IPV6_HLEN + u16::from_be(get!(ip, payload_len)) as usize,
            header: IPV6_HLEN,
            frame: frame_l3,
        };
        l4(ctx, &l3, len as u64)
    } else {
        count(Reason::NotIp);
        Err(xdp_action::XDP_PASS)
    }
}

/// The IP layer as parsed, for the TCP/UDP part.
struct L3 {
    off: usize,
    src: Addr,
    dst: Addr,
    proto: u8,
    family: u8,
    ttl: u8,
    /// IP datagram length the header claims (header included).
    datagram: usize,
    /// Fixed header length (no options or extension headers reach here).
    header: usize,
    /// Bytes the frame holds from the IP header on.
    frame: usize,
}

/// The TCP/UDP part, inlined once per address family so the IPv4 copy works with constant
/// zero upper address words instead of carrying both families' values through one join.
#[inline(always)]
fn l4(ctx: &impl PacketCtx, l3: &L3, len: u64) -> Result<Packet, u32> {
    let l4_off = l3.off + l3.header;
    // Payload the IP header claims; the frame must hold it.
    let payload = l3.datagram.saturating_sub(l3.header);
    let mut defect = None;
    if l3.datagram > l3.frame {
        defect = Some(Reason::BadIpLength);
    }
    let (sport, dport, tcp_flags) = match l3.proto {
        PROTO_TCP => {
            let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_off) else {
                return Err(unhandled(Reason::TruncatedL4, l3.dst, l3.family));
            };
            let doff = (get!(tcp, off_res) >> 4) as usize * 4;
            if doff < TCP_HLEN {
                return Err(unhandled(Reason::TruncatedL4, l3.dst, l3.family));
            }
            if payload < TCP_HLEN {
                defect = Some(Reason::BadIpLength);
            } else if doff > payload && defect.is_none() {
                defect = Some(Reason::BadL4Length);
            }
            (get!(tcp, sport), get!(tcp, dport), get!(tcp, flags))
        }
        PROTO_UDP => {
            let Some(udp) = ptr_at::<UdpHdr>(ctx, l4_off) else {
                return Err(unhandled(Reason::TruncatedL4, l3.dst, l3.family));
            };
            let ulen = u16::from_be(get!(udp, len)) as usize;
            if payload < UDP_HLEN {
                defect = Some(Reason::BadIpLength);
            } else if (ulen < UDP_HLEN || ulen > payload) && defect.is_none() {
                defect = Some(Reason::BadL4Length);
            }
            (get!(udp, sport), get!(udp, dport), 0)
        }
        _ => return Err(unhandled(Reason::OtherProto, l3.dst, l3.family)),
    };

    Ok(Packet {
        key: FlowKey::new(l3.src, l3.dst, sport, dport, l3.proto, l3.family),
        l3_off: l3.off,
        l4_off,
        tcp_flags,
        ttl: l3.ttl,
        len,
        trailer: l3.frame.saturating_sub(l3.datagram) as u32,
        defect,
    })
}
