//! Header parsing: Ethernet (one 802.1Q/802.1ad tag), IPv4/IPv6, TCP/UDP.
//!
//! The result is the flow key plus the offsets the NAT rewrite needs. Anything this does not
//! handle comes back as `Err(verdict)`, already counted by reason (see `lb_common::reason`).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Addr, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason, VipAddrKey};

use crate::{headers::*, maps::VIP_ADDRS, stats::count};

/// A parsed TCP/UDP packet.
pub struct Packet {
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// Frame length in bytes (for byte counters).
    pub len: u64,
}

/// Bounds-checked pointer to a `T` at `off` in the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
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
pub fn parse(ctx: &XdpContext) -> Result<Packet, u32> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        count(Reason::TruncatedEth);
        return Err(xdp_action::XDP_PASS);
    };
    // SAFETY: bounds checked by ptr_at.
    let mut proto = unsafe { (*eth).proto };
    let mut l3_off = core::mem::size_of::<EthHdr>();
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3_off) else {
            count(Reason::TruncatedEth);
            return Err(xdp_action::XDP_PASS);
        };
        proto = unsafe { (*vlan).proto };
        l3_off += core::mem::size_of::<VlanHdr>();
    }

    if proto == ETH_P_IP {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3_off) else {
            return Err(malformed());
        };
        let ip = unsafe { &*ip };
        let ihl = (ip.version_ihl & 0x0f) as u16;
        if ip.version_ihl >> 4 != 4 || ihl < 5 || u16::from_be(ip.tot_len) < ihl * 4 {
            return Err(malformed());
        }
        let dst = Addr::v4(ip.dst);
        if ihl != 5 {
            return Err(unhandled(Reason::Ipv4Options, dst, FAMILY_V4));
        }
        // More-fragments flag or a fragment offset: ports are only in the first fragment,
        // and the LB does not reassemble.
        if ip.frag_off & 0x3fffu16.to_be() != 0 {
            return Err(unhandled(Reason::Fragment, dst, FAMILY_V4));
        }
        let l4_off = l3_off + core::mem::size_of::<Ipv4Hdr>();
        l4(
            ctx,
            l3_off,
            l4_off,
            Addr::v4(ip.src),
            dst,
            ip.proto,
            FAMILY_V4,
            len,
        )
    } else if proto == ETH_P_IPV6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3_off) else {
            return Err(malformed());
        };
        let ip = unsafe { &*ip };
        if (u32::from_be(ip.version_tc_flow) >> 28) != 6 {
            return Err(malformed());
        }
        let dst = Addr::v6(ip.dst);
        match ip.next_header {
            PROTO_TCP | PROTO_UDP => {}
            // Hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP,
            // shim6: extension headers we do not walk.
            0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
                return Err(unhandled(Reason::Ipv6ExtHeader, dst, FAMILY_V6));
            }
            _ => return Err(unhandled(Reason::OtherProto, dst, FAMILY_V6)),
        }
        let l4_off = l3_off + core::mem::size_of::<Ipv6Hdr>();
        l4(
            ctx,
            l3_off,
            l4_off,
            Addr::v6(ip.src),
            dst,
            ip.next_header,
            FAMILY_V6,
            len,
        )
    } else {
        count(Reason::NotIp);
        Err(xdp_action::XDP_PASS)
    }
}

/// The TCP/UDP part, inlined once per address family so the IPv4 copy works with constant
/// zero upper address words instead of carrying both families' values through one join.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn l4(
    ctx: &XdpContext,
    l3_off: usize,
    l4_off: usize,
    src: Addr,
    dst: Addr,
    l4_proto: u8,
    family: u8,
    len: u64,
) -> Result<Packet, u32> {
    let (sport, dport, tcp_flags) = match l4_proto {
        PROTO_TCP => {
            let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_off) else {
                return Err(unhandled(Reason::TruncatedL4, dst, family));
            };
            let tcp = unsafe { &*tcp };
            if tcp.off_res >> 4 < 5 {
                return Err(unhandled(Reason::TruncatedL4, dst, family));
            }
            (tcp.sport, tcp.dport, tcp.flags)
        }
        PROTO_UDP => {
            let Some(udp) = ptr_at::<UdpHdr>(ctx, l4_off) else {
                return Err(unhandled(Reason::TruncatedL4, dst, family));
            };
            let udp = unsafe { &*udp };
            (udp.sport, udp.dport, 0)
        }
        _ => return Err(unhandled(Reason::OtherProto, dst, family)),
    };

    Ok(Packet {
        key: FlowKey::new(src, dst, sport, dport, l4_proto, family),
        l3_off,
        l4_off,
        tcp_flags,
        len,
    })
}
