//! The packet path: parse -> service lookup -> rate limit -> checks -> conntrack -> (new
//! flow: source checks, Maglev, FIB, SNAT) -> NAT rewrite -> XDP_TX / XDP_REDIRECT. Replies
//! from backends take the reverse path back to the client, through the same checks.

use aya_ebpf::bindings::xdp_action;
use lb_common::{Reason, SVC_FLAG_CLUSTER, SVC_FLAG_PASS, ServiceValue, Settings};

use crate::{
    clock,
    conntrack::{self, ClientSide},
    ctx::{PacketCtx, ptr_at},
    headers::EthHdr,
    maps::SETTINGS,
    nat::{self, Rewrite},
    parse::{self, Packet},
    ratelimit, service,
    stats::{self, count, service_drop},
    syn_guard, validate,
};

#[inline(always)]
pub fn process(ctx: &impl PacketCtx) -> u32 {
    let pkt = match parse::parse(ctx) {
        Ok(p) => p,
        Err(verdict) => return verdict,
    };
    let Some(settings) = SETTINGS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let k = &pkt.key;
    if let Some(svc) = service::lookup(k) {
        return to_backend(ctx, &pkt, &svc, settings);
    }
    // Replies come back to our SNAT ports; skip the lookup for everything else.
    let dport = u16::from_be(k.dst_port);
    if dport >= settings.snat_port_min
        && dport <= settings.snat_port_max
        && let Some(v) = to_client(ctx, &pkt)
    {
        return v;
    }
    count(Reason::NoService);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn to_backend(ctx: &impl PacketCtx, pkt: &Packet, svc: &ServiceValue, settings: &Settings) -> u32 {
    // Rate limit first: a flood from one source is dropped at the cheapest point, and
    // garbage counts against its sender's bucket like anything else it sends.
    // Cluster-scope services are reachable only through the socket LB: from the wire, the
    // VIP is not there.
    if svc.flags & SVC_FLAG_CLUSTER != 0 {
        service_drop(svc.id, Reason::ClusterOnly);
        return xdp_action::XDP_DROP;
    }
    let now = clock::now_ns();
    if !ratelimit::admit(svc, &pkt.key, now) {
        service_drop(svc.id, Reason::RateLimited);
        return xdp_action::XDP_DROP;
    }
    if let Err(reason) = validate::packet(ctx, pkt) {
        service_drop(svc.id, reason);
        // TTL running out on the way in: the kernel answers ICMP time exceeded, as a router
        // does (the VIP is not local, so it does not deliver it).
        return if reason == Reason::TtlExceeded {
            xdp_action::XDP_PASS
        } else {
            xdp_action::XDP_DROP
        };
    }
    // The gateway's services end here: checked and limited like any other, then the kernel
    // delivers them (local route for the VIP, sk_lookup to the gateway's socket). No
    // conntrack: the kernel's TCP stack owns these connections.
    if svc.flags & SVC_FLAG_PASS != 0 {
        let syn = lb_common::flow_state::opens_flow(pkt.key.proto, pkt.tcp_flags);
        stats::to_gateway(svc.id, pkt.len, syn);
        return xdp_action::XDP_PASS;
    }
    let (ct, new_flow) = match conntrack::established(&pkt.key, pkt.tcp_flags, now, settings) {
        Some(ct) => (ct, false),
        None => {
            if let Err(reason) = validate::new_flow_source(&pkt.key) {
                service_drop(svc.id, reason);
                return xdp_action::XDP_DROP;
            }
            if let Some(v) = syn_guard::check(ctx, pkt, svc.id, settings, now) {
                return v;
            }
            let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
                return xdp_action::XDP_DROP;
            };
            let client = ClientSide {
                ifindex: ctx.ingress_ifindex(),
                mac: get!(eth, src),
                local_mac: get!(eth, dst),
            };
            match conntrack::create(ctx, &pkt.key, pkt.tcp_flags, svc, settings, &client, now) {
                Ok(ct) => (ct, true),
                Err(reason) => {
                    service_drop(svc.id, reason);
                    return xdp_action::XDP_DROP;
                }
            }
        }
    };
    if !trim(ctx, pkt) {
        service_drop(svc.id, Reason::BadIpLength);
        return xdp_action::XDP_DROP;
    }
    let rw = Rewrite {
        src: &ct.snat,
        src_port: ct.snat_port,
        dst: &ct.backend,
        dst_port: ct.backend_port,
        smac: &ct.egress_smac,
        dmac: &ct.egress_dmac,
    };
    if nat::rewrite(ctx, pkt, &rw).is_none() {
        return xdp_action::XDP_DROP;
    }
    stats::forwarded(svc.id, ct.backend_id, pkt.len, new_flow);
    count(Reason::Forwarded);
    send(ctx, ct.egress_ifindex)
}

/// Translates a backend's reply back to client <- VIP. `None` if it is not one of ours.
#[inline(always)]
fn to_client(ctx: &impl PacketCtx, pkt: &Packet) -> Option<u32> {
    let nat = conntrack::reply(&pkt.key)?;
    if let Err(reason) = validate::packet(ctx, pkt) {
        service_drop(nat.service_id, reason);
        return Some(xdp_action::XDP_DROP);
    }
    conntrack::reply_seen(&pkt.key, nat, pkt.tcp_flags, clock::now_ns());
    if !trim(ctx, pkt) {
        service_drop(nat.service_id, Reason::BadIpLength);
        return Some(xdp_action::XDP_DROP);
    }
    let rw = Rewrite {
        src: &nat.orig.dst,
        src_port: nat.orig.dst_port,
        dst: &nat.orig.src,
        dst_port: nat.orig.src_port,
        smac: &nat.local_mac,
        dmac: &nat.client_mac,
    };
    if nat::rewrite(ctx, pkt, &rw).is_none() {
        return Some(xdp_action::XDP_DROP);
    }
    stats::forwarded(nat.service_id, nat.backend_id, pkt.len, false);
    count(Reason::ReplyForwarded);
    Some(send(ctx, nat.client_ifindex))
}

/// Cuts bytes after the IP datagram (Ethernet padding, garbage) before forwarding, as the
/// kernel's `ip_rcv` does: they would otherwise travel on. Rare (veth never pads; physical
/// NICs pad frames under 60 bytes), so it costs nothing on the common path.
#[inline(always)]
fn trim(ctx: &impl PacketCtx, pkt: &Packet) -> bool {
    pkt.trailer == 0 || ctx.trim_tail(pkt.trailer)
}

/// Sends the frame out of `ifindex` (see `PacketCtx::redirect`).
#[inline(always)]
fn send(ctx: &impl PacketCtx, ifindex: u32) -> u32 {
    match ctx.redirect(ifindex) {
        Some(v) => v,
        None => {
            count(Reason::RedirectFailed);
            xdp_action::XDP_DROP
        }
    }
}
