//! Socket-level load balancing: a process's connect() (or unconnected sendmsg()) to a
//! service address gets a backend's address instead, chosen once from the service's Maglev
//! table, before any packet exists; getpeername() and recvmsg() translate the backend back to
//! the service address. Same `SERVICES`, `MAGLEV` and `BACKENDS` as the packet path, so the
//! two always agree on backends, weights and health.
//!
//! Return values are the cgroup hook's: 1 lets the call go on (translated or not), 0 fails it
//! with the error set by `bpf_set_retval`.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval,
    },
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use lb_common::{
    Addr, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, SVC_FLAG_MTLS, SVC_FLAG_PASS, ServiceKey,
    hash::MAGLEV_SEED,
    sock_lb::{MeshOrig, MeshPeerKey, SockEvent, SockRevKey, SockRevValue, slot_for_socket},
};

use crate::maps::{
    BACKEND_STATS, MESH_ORIGDST, MESH_SOCK_ORIG, SERVICE_STATS, SERVICES, SOCK_EVENTS,
    SOCK_REVERSE, SOCKLB_SETTINGS,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[inline(always)]
fn count(event: SockEvent) {
    if let Some(c) = SOCK_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// Whether sockets of the caller's network namespace are translated at all.
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> bool {
    let Some(s) = SOCKLB_SETTINGS.get(0) else {
        return false;
    };
    if s.enabled == 0 {
        return false;
    }
    // SAFETY: the helper takes the program's own context.
    if s.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != s.netns_cookie {
        count(SockEvent::OtherNetns);
        return false;
    }
    true
}

/// The address a sock_addr hook is about (destination of a connect/sendmsg, peer or
/// source of a getpeername/recvmsg), read once up front with fixed-offset loads (the
/// verifier refuses context reads through a pointer moved by a branch).
#[inline(always)]
fn user_addr(sa: *const bpf_sock_addr, family: u8) -> (Addr, u16, u8) {
    // SAFETY: the context pointer is valid for the program run; fields read by value.
    unsafe {
        let proto = read_volatile(&raw const (*sa).protocol) as u8;
        // 4-byte field holding the port in network order in its first two bytes.
        let port = read_volatile(&raw const (*sa).user_port) as u16;
        let addr = if family == FAMILY_V4 {
            Addr::v4(read_volatile(&raw const (*sa).user_ip4))
        } else {
            Addr::v6([
                read_volatile(&raw const (*sa).user_ip6[0]),
                read_volatile(&raw const (*sa).user_ip6[1]),
                read_volatile(&raw const (*sa).user_ip6[2]),
                read_volatile(&raw const (*sa).user_ip6[3]),
            ])
        };
        (addr, port, proto)
    }
}

#[inline(always)]
fn set_user_addr(sa: *mut bpf_sock_addr, family: u8, addr: &Addr, port: u16) {
    // SAFETY: as above; these fields are writable in connect/sendmsg/recvmsg/getpeername.
    unsafe {
        if family == FAMILY_V4 {
            write_volatile(&raw mut (*sa).user_ip4, addr.words[0]);
        } else {
            write_volatile(&raw mut (*sa).user_ip6[0], addr.words[0]);
            write_volatile(&raw mut (*sa).user_ip6[1], addr.words[1]);
            write_volatile(&raw mut (*sa).user_ip6[2], addr.words[2]);
            write_volatile(&raw mut (*sa).user_ip6[3], addr.words[3]);
        }
        write_volatile(&raw mut (*sa).user_port, u32::from(port));
    }
}

/// A dual-stack IPv6 socket names an IPv4 peer `::ffff:a.b.c.d`; the maps (services,
/// backends, reverse entries) know it as IPv4. Returns the address and family to look up,
/// and whether to map answers back. (An unconnected IPv6 UDP socket sending to a mapped
/// address runs the `sendmsg4` hook, with the IPv4 address, so keys agree across hooks.)
#[inline(always)]
fn unmap(addr: Addr, family: u8) -> (Addr, u8, bool) {
    if family == FAMILY_V6
        && let Some(v4) = addr.unmapped_v4()
    {
        return (Addr::v4(v4), FAMILY_V4, true);
    }
    (addr, family, false)
}

/// An IPv4 address from the maps, as the socket's own family writes it.
#[inline(always)]
fn remap(addr: Addr, mapped: bool) -> Addr {
    if mapped {
        Addr::v4_mapped(addr.words[0])
    } else {
        addr
    }
}

/// connect() (TCP or UDP) or an unconnected sendmsg() (`event` says which): a service
/// address becomes one of its backends.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext, family: u8, event: SockEvent) -> i32 {
    let sa = ctx.sock_addr;
    let (user, port, proto) = user_addr(sa, family);
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    let (addr, map_family, mapped) = unmap(user, family);
    let key = ServiceKey::new(addr, port, proto, map_family);
    // SAFETY: copied out at once.
    let Some(svc) = (unsafe { SERVICES.get(&key) }).copied() else {
        return ALLOW;
    };
    // The gateway's services are served by its own socket (sk_lookup), not translated.
    if svc.flags & SVC_FLAG_PASS != 0 || !in_scope(ctx) {
        return ALLOW;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some((backend_id, backend)) = pick(&svc, cookie, map_family) else {
        count(SockEvent::NoBackend);
        // SAFETY: sets this call's error; valid in cgroup programs.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REFUSE;
    };
    // An mTLS service's TCP connect goes to the mesh outbound listener instead; the agent
    // learns the service, the backend and the client's cgroup from MESH_SOCK_ORIG.
    let (to, to_port) = match mesh_target(&svc, proto, family) {
        // An mTLS service that cannot be steered (IPv6, UDP, a dual-stack socket, or the
        // mesh is off) is refused rather than reached in plaintext.
        Err(()) => {
            count(SockEvent::MeshFailed);
            // SAFETY: sets this call's error; valid in cgroup programs.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            return REFUSE;
        }
        Ok(Some((ip4, port_be))) => {
            let orig = MeshOrig {
                vip: addr,
                backend: backend.addr,
                vip_port: port,
                backend_port: backend.port,
                family: map_family,
                _pad: [0; 3],
                service_id: svc.id,
                _pad2: 0,
                // SAFETY: no arguments; valid in cgroup programs.
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            };
            if MESH_SOCK_ORIG.insert(&cookie, &orig, 0).is_err() {
                count(SockEvent::MeshFailed);
                // SAFETY: sets this call's error; valid in cgroup programs.
                unsafe { bpf_set_retval(-ECONNREFUSED) };
                return REFUSE;
            }
            count(SockEvent::MeshSteer);
            (Addr::v4(ip4), port_be)
        }
        Ok(None) => (backend.addr, backend.port),
    };
    set_user_addr(sa, family, &remap(to, mapped), to_port);
    let rev = SockRevKey::new(cookie, to, to_port, map_family);
    // A socket sending many datagrams to one service writes its entry once.
    // SAFETY: only checked for presence.
    if unsafe { SOCK_REVERSE.get(&rev) }.is_none() {
        let value = SockRevValue {
            vip: addr,
            port,
            _pad: 0,
            service_id: svc.id,
        };
        if SOCK_REVERSE.insert(&rev, &value, 0).is_err() {
            count(SockEvent::ReverseFailed);
        }
    }
    if event == SockEvent::Connect {
        opened(svc.id, backend_id);
    }
    count(event);
    ALLOW
}

/// The mesh outbound listener (IPv4 address, port; wire order) if `svc` is steered there
/// (an `mtls` service: TCP from an IPv4 socket, with the mesh on); `Ok(None)` for other
/// services; `Err` for an `mtls` service this connect cannot be steered for.
#[inline(always)]
fn mesh_target(
    svc: &lb_common::ServiceValue,
    proto: u8,
    family: u8,
) -> Result<Option<(u32, u16)>, ()> {
    if svc.flags & SVC_FLAG_MTLS == 0 {
        return Ok(None);
    }
    if proto != PROTO_TCP || family != FAMILY_V4 {
        return Err(());
    }
    match SOCKLB_SETTINGS.get(0) {
        Some(s) if s.mesh_port != 0 => Ok(Some((s.mesh_ip4, s.mesh_port))),
        _ => Err(()),
    }
}

/// sock_ops at `BPF_SOCK_OPS_TCP_CONNECT_CB` (the local port is bound by then): a socket
/// steered to the mesh gets its original destination re-keyed by its own address and port,
/// which is what the agent sees as the accepted connection's peer.
#[inline(always)]
pub fn mesh_connected(ctx: &SockOpsContext) -> u32 {
    const TCP_CONNECT_CB: u32 = 3;
    if ctx.op() != TCP_CONNECT_CB || ctx.family() != 2 {
        return 1;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let Some(orig) = (unsafe { MESH_SOCK_ORIG.get(&cookie) }).copied() else {
        return 1;
    };
    let key = MeshPeerKey::new(
        Addr::v4(ctx.local_ip4()),
        ctx.local_port() as u16,
        FAMILY_V4,
    );
    let _ = MESH_ORIGDST.insert(&key, &orig, 0);
    let _ = MESH_SOCK_ORIG.remove(&cookie);
    1
}

/// The backend for a socket of `svc`: the Maglev slot its cookie hashes to.
#[inline(always)]
fn pick(
    svc: &lb_common::ServiceValue,
    cookie: u64,
    family: u8,
) -> Option<(u32, &'static lb_common::BackendValue)> {
    if svc.maglev_size == 0 {
        return None;
    }
    let slot = slot_for_socket(cookie, MAGLEV_SEED, svc.maglev_size);
    crate::maglev::at_slot(svc, slot, family).ok()
}

/// A connection opened through the socket LB counts as a new flow of its service and
/// backend (it never shows up in the packet counters).
#[inline(always)]
fn opened(svc: u32, backend: u32) {
    for s in [
        SERVICE_STATS.get_ptr_mut(svc),
        BACKEND_STATS.get_ptr_mut(backend),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: per-CPU slot.
        unsafe { (*s).new_flows += 1 };
    }
}

/// getpeername() or recvmsg(): a backend this socket was sent to reads back as the
/// service address.
#[inline(always)]
pub fn to_service(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = ctx.sock_addr;
    let (user, port, _) = user_addr(sa, family);
    match SOCKLB_SETTINGS.get(0) {
        Some(s) if s.enabled != 0 => {}
        _ => return ALLOW,
    }
    let (addr, map_family, mapped) = unmap(user, family);
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev = SockRevKey::new(cookie, addr, port, map_family);
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { SOCK_REVERSE.get(&rev) }.copied() {
        set_user_addr(sa, family, &remap(v.vip, mapped), v.port);
        count(SockEvent::Reverse);
    }
    ALLOW
}

/// A socket closes: its connected peer's reverse entry goes with it (unconnected UDP
/// sockets have no peer; their entries age out of the LRU map).
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: the context pointer is valid for the program run; fields read by value.
    let (family, port, ip4, ip6) = unsafe {
        (
            read_volatile(&raw const (*sk).family),
            read_volatile(&raw const (*sk).dst_port),
            read_volatile(&raw const (*sk).dst_ip4),
            [
                read_volatile(&raw const (*sk).dst_ip6[0]),
                read_volatile(&raw const (*sk).dst_ip6[1]),
                read_volatile(&raw const (*sk).dst_ip6[2]),
                read_volatile(&raw const (*sk).dst_ip6[3]),
            ],
        )
    };
    if port == 0 {
        return ALLOW;
    }
    let (addr, fam, _) = match family {
        2 => (Addr::v4(ip4), FAMILY_V4, false),
        10 => unmap(Addr::v6(ip6), FAMILY_V6),
        _ => return ALLOW,
    };
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = SOCK_REVERSE.remove(&SockRevKey::new(cookie, addr, port, fam));
    ALLOW
}
