//! The SYN-flood guard (see `lb_common::syn_guard` for the scheme): runs for TCP packets to a
//! service that found no conntrack entry, before a flow is created. Established flows never
//! get here, so they are never affected.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_get_prandom_u32};
use lb_common::{
    Addr, FAMILY_V4, PROTO_TCP, Reason, Settings, VipAddrKey,
    flow_state::{TCP_ACK, TCP_RST, TCP_SYN},
    syn_guard::{self, SynSecret},
};

use crate::{
    ctx::{PacketCtx, ptr_at},
    headers::{EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr},
    maps::{SYN_RATE, SYN_SECRET, SYN_VERIFIED},
    parse::Packet,
    stats::service_drop,
};

const TCP_HLEN: usize = core::mem::size_of::<TcpHdr>();
const IPV4_HLEN: usize = core::mem::size_of::<Ipv4Hdr>();
const IPV6_HLEN: usize = core::mem::size_of::<Ipv6Hdr>();
const SEC: u64 = 1_000_000_000;

/// `Some(verdict)` if the guard handled the packet (a challenge sent, an RST consumed);
/// `None` to go on and open the flow as usual.
#[inline(always)]
pub fn check(
    ctx: &impl PacketCtx,
    pkt: &Packet,
    svc_id: u32,
    settings: &Settings,
    now: u64,
) -> Option<u32> {
    if settings.syn_guard_pps == 0 || pkt.key.proto != PROTO_TCP || !ctx.can_reflect() {
        return None;
    }
    let f = pkt.tcp_flags;
    if f & (TCP_SYN | TCP_ACK) == TCP_SYN {
        syn(ctx, pkt, svc_id, settings, now)
    } else if f & (TCP_RST | TCP_SYN) == TCP_RST {
        rst(ctx, pkt, svc_id, now)
    } else {
        None
    }
}

#[inline(always)]
fn source_key(pkt: &Packet) -> VipAddrKey {
    VipAddrKey::new(pkt.key.src, pkt.key.family)
}

#[inline(always)]
fn syn(
    ctx: &impl PacketCtx,
    pkt: &Packet,
    svc_id: u32,
    settings: &Settings,
    now: u64,
) -> Option<u32> {
    let rate = SYN_RATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; XDP runs to completion on one CPU.
    let rate = unsafe { &mut *rate };
    if !syn_guard::count_syn(rate, now, settings.syn_guard_pps) {
        return None;
    }
    // SAFETY: read only, the value is copied out.
    if let Some(at) = unsafe { SYN_VERIFIED.get(&source_key(pkt)) }
        && now.saturating_sub(*at) < settings.syn_verified_secs as u64 * SEC
    {
        return None;
    }
    let secret = secret()?;
    let cookie = syn_guard::cookie(&pkt.key, &secret, syn_guard::slot(now));
    if challenge(ctx, pkt, cookie).is_none() {
        // Could not turn the frame around: the SYN is not forwarded either.
        service_drop(svc_id, Reason::SynChallenged);
        return Some(xdp_action::XDP_DROP);
    }
    rate.challenges += 1;
    service_drop(svc_id, Reason::SynChallenged);
    Some(xdp_action::XDP_TX)
}

#[inline(always)]
fn rst(ctx: &impl PacketCtx, pkt: &Packet, svc_id: u32, now: u64) -> Option<u32> {
    let tcp = ptr_at::<TcpHdr>(ctx, pkt.l4_off)?;
    let seq = u32::from_be(get!(tcp, seq));
    let secret = *SYN_SECRET.get(0)?;
    if secret.words == [0, 0] || !syn_guard::check(&pkt.key, &secret, now, seq) {
        return None;
    }
    // A full map evicts the oldest; a failed insert means the client is challenged again.
    let _ = SYN_VERIFIED.insert(&source_key(pkt), &now, 0);
    service_drop(svc_id, Reason::SynVerified);
    Some(xdp_action::XDP_DROP)
}

/// The guard's secret, chosen on first use.
#[inline(always)]
fn secret() -> Option<SynSecret> {
    let p = SYN_SECRET.get_ptr_mut(0)?;
    // SAFETY: array value pointer. Two CPUs choosing at once may each answer one challenge
    // with a secret the other overwrites: those clients are challenged again.
    let s = unsafe { &mut *p };
    if s.words == [0, 0] {
        // SAFETY: plain helper.
        unsafe {
            s.words = [bpf_get_prandom_u32() | 1, bpf_get_prandom_u32()];
        }
    }
    Some(*s)
}

/// Turns the SYN into the challenge SYN-ACK in place: MACs, addresses and ports swapped,
/// options cut, ACK number = `cookie`, checksums computed whole (the frame is all fixed
/// fields now). `None` if the frame cannot be rewritten.
#[inline(always)]
fn challenge(ctx: &impl PacketCtx, pkt: &Packet, cookie: u32) -> Option<()> {
    let v4 = pkt.key.family == FAMILY_V4;
    let ip_hlen = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    let want = pkt.l3_off + ip_hlen + TCP_HLEN;
    let have = ctx.len();
    if have < want {
        return None;
    }
    if have > want && !ctx.trim_tail((have - want) as u32) {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let (smac, dmac) = (get!(eth, src), get!(eth, dst));
    set!(eth, src, dmac);
    set!(eth, dst, smac);
    let k = &pkt.key;
    let (src, dst): (&Addr, &Addr) = (&k.dst, &k.src);
    if v4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, pkt.l3_off)?;
        let tot = (IPV4_HLEN + TCP_HLEN) as u16;
        let words: [u16; 10] = [
            0x4500u16.to_be(),
            tot.to_be(),
            0,
            // Don't fragment.
            0x4000u16.to_be(),
            u16::from_ne_bytes([64, PROTO_TCP]),
            0,
            src.words[0] as u16,
            (src.words[0] >> 16) as u16,
            dst.words[0] as u16,
            (dst.words[0] >> 16) as u16,
        ];
        set!(ip, version_ihl, 0x45);
        set!(ip, tos, 0);
        set!(ip, tot_len, tot.to_be());
        set!(ip, id, 0);
        set!(ip, frag_off, 0x4000u16.to_be());
        set!(ip, ttl, 64);
        set!(ip, proto, PROTO_TCP);
        set!(ip, src, src.words[0]);
        set!(ip, dst, dst.words[0]);
        set!(ip, check, syn_guard::ipv4_csum(&words));
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, pkt.l3_off)?;
        set!(ip, version_tc_flow, 0x6000_0000u32.to_be());
        set!(ip, payload_len, (TCP_HLEN as u16).to_be());
        set!(ip, next_header, PROTO_TCP);
        set!(ip, hop_limit, 64);
        set!(ip, src, src.words);
        set!(ip, dst, dst.words);
    }
    let tcp = ptr_at::<TcpHdr>(ctx, pkt.l3_off + ip_hlen)?;
    let client_seq = u32::from_be(get!(tcp, seq));
    // Our own sequence number: any value; derived from the cookie so it costs no helper.
    let seq = cookie.rotate_left(16) ^ client_seq;
    let words = syn_guard::tcp_words(k.dst_port, k.src_port, seq.to_be(), cookie.to_be());
    set!(tcp, sport, k.dst_port);
    set!(tcp, dport, k.src_port);
    set!(tcp, seq, seq.to_be());
    set!(tcp, ack, cookie.to_be());
    set!(tcp, off_res, 0x50);
    set!(tcp, flags, TCP_SYN | TCP_ACK);
    set!(tcp, window, syn_guard::CHALLENGE_WINDOW.to_be());
    set!(tcp, urg, 0);
    set!(tcp, check, syn_guard::tcp_csum(src, dst, &words));
    Some(())
}
