//! Socket-level load balancing (cgroup `connect`/`sendmsg`/`recvmsg`/`getpeername` hooks):
//! the keys, values and counters its maps hold, and the pick of a Maglev slot for a socket.
//!
//! A socket to a service address is given a backend once, when it connects (TCP, connected
//! UDP) or sends (unconnected UDP): the kernel never sees the service address on the wire,
//! so there is no per-packet work. What the application reads back (`getpeername`, the
//! source of a received datagram) is translated back from `SOCK_REVERSE`.

use crate::Addr;

/// Key of `SOCK_REVERSE`: one socket's view of one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// Backend address, wire order.
    pub addr: Addr,
    /// Backend port, network byte order.
    pub port: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);

impl SockRevKey {
    #[inline(always)]
    pub fn new(cookie: u64, addr: Addr, port_be: u16, family: u8) -> Self {
        // Zeroed whole (see `VipAddrKey::new`): the padding is part of the hashed key.
        // SAFETY: plain integers: all-zero is a valid value.
        let mut k: Self = unsafe { core::mem::zeroed() };
        k.cookie = cookie;
        k.addr = addr;
        k.port = port_be;
        k.family = family;
        k
    }
}

/// Value of `SOCK_REVERSE`: the service address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    /// Service address, wire order.
    pub vip: Addr,
    /// Service port, network byte order.
    pub port: u16,
    pub _pad: u16,
    /// The service's id (for counters).
    pub service_id: u32,
}
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 24);

/// Value of `SOCKLB_SETTINGS` (one entry), written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLbSettings {
    /// Translate only sockets of the network namespace with this cookie
    /// (`SO_NETNS_COOKIE`); 0: sockets of every namespace.
    pub netns_cookie: u64,
    /// Non-zero: translate. Zero (also before the agent wrote anything): leave every socket
    /// alone.
    pub enabled: u32,
    /// Port of the mesh outbound listener, network byte order; 0: no mesh (`mtls` services
    /// are translated like any other).
    pub mesh_port: u16,
    pub _pad: u16,
    /// Address of the mesh outbound listener (IPv4, wire order).
    pub mesh_ip4: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<SockLbSettings>() == 24);

/// Where a connect() steered to the mesh outbound listener was going: value of
/// `MESH_SOCK_ORIG` (keyed by the client socket's cookie, written by connect4) and of
/// `MESH_ORIGDST` (keyed by the client's address and port, copied there by the sock_ops
/// program once the local port is bound; the agent reads and deletes it on accept).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshOrig {
    /// Service address the application asked for, wire order.
    pub vip: Addr,
    /// Backend the socket LB picked (same Maglev table as unsteered sockets), wire order.
    pub backend: Addr,
    /// Service port, network byte order.
    pub vip_port: u16,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 3],
    /// The service's id.
    pub service_id: u32,
    pub _pad2: u32,
    /// The client's cgroup v2 id (`bpf_get_current_cgroup_id`): its identity.
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<MeshOrig>() == 56);

/// Key of `MESH_ORIGDST`: the steered client socket's own address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MeshPeerKey {
    /// Client address, wire order.
    pub addr: Addr,
    /// Client port, host byte order.
    pub port: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<MeshPeerKey>() == 24);

impl MeshPeerKey {
    #[inline(always)]
    pub fn new(addr: Addr, port: u16, family: u8) -> Self {
        // SAFETY: plain integers: all-zero is a valid value (padding is hashed).
        let mut k: Self = unsafe { core::mem::zeroed() };
        k.addr = addr;
        k.port = port;
        k.family = family;
        k
    }
}

/// What the socket LB did (index of the `SOCK_EVENTS` per-CPU counters).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockEvent {
    /// A connect() to a service address was given a backend.
    Connect = 0,
    /// A datagram sent to a service address (unconnected UDP) was given a backend.
    Sendmsg = 1,
    /// A connect() or send to a service with no usable backend: refused (`ECONNREFUSED`).
    NoBackend = 2,
    /// A backend address read back (`getpeername`, a datagram's source) was translated to
    /// the service address.
    Reverse = 3,
    /// A reverse entry could not be written (the map refused): the socket works, but
    /// `getpeername` shows the backend.
    ReverseFailed = 4,
    /// A socket of another network namespace left alone (`namespaces = "host"`).
    OtherNetns = 5,
    /// A connect() to an `mtls` service steered to the mesh outbound listener.
    MeshSteer = 6,
    /// A steered socket's original destination could not be recorded: refused.
    MeshFailed = 7,
}

/// Number of `SockEvent`s (size of `SOCK_EVENTS`).
pub const SOCK_EVENT_COUNT: u32 = 8;

impl SockEvent {
    pub const ALL: [SockEvent; SOCK_EVENT_COUNT as usize] = [
        SockEvent::Connect,
        SockEvent::Sendmsg,
        SockEvent::NoBackend,
        SockEvent::Reverse,
        SockEvent::ReverseFailed,
        SockEvent::OtherNetns,
        SockEvent::MeshSteer,
        SockEvent::MeshFailed,
    ];

    /// Label value in metrics and `lb status`.
    pub const fn name(self) -> &'static str {
        match self {
            SockEvent::Connect => "connect",
            SockEvent::Sendmsg => "sendmsg",
            SockEvent::NoBackend => "no_backend",
            SockEvent::Reverse => "reverse",
            SockEvent::ReverseFailed => "reverse_failed",
            SockEvent::OtherNetns => "other_netns",
            SockEvent::MeshSteer => "mesh_steer",
            SockEvent::MeshFailed => "mesh_failed",
        }
    }
}

/// Maglev slot for a socket: its cookie mixed (cookies are sequential, so unmixed they would
/// walk the table in order), modulo the table size. The same socket always gets the same
/// slot, which is what keeps an unconnected UDP socket on one backend.
#[inline(always)]
pub fn slot_for_socket(cookie: u64, seed: u32, table_size: u32) -> u32 {
    // splitmix64's finalizer: every input bit moves about half the output bits.
    let mut z = cookie ^ (u64::from(seed) << 32 | u64::from(seed));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z >> 32) as u32 ^ z as u32) % table_size
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), made only of integers, with explicit padding fields.
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for SockLbSettings {}
    unsafe impl aya::Pod for MeshOrig {}
    unsafe impl aya::Pod for MeshPeerKey {}
}

// Every field, in order: no hidden padding anywhere.
crate::packed_fields!(SockRevKey {
    cookie,
    addr,
    port,
    family,
    _pad
});
crate::packed_fields!(SockRevValue {
    vip,
    port,
    _pad,
    service_id
});
crate::packed_fields!(SockLbSettings {
    netns_cookie,
    enabled,
    mesh_port,
    _pad,
    mesh_ip4,
    _pad2
});
crate::packed_fields!(MeshOrig {
    vip,
    backend,
    vip_port,
    backend_port,
    family,
    _pad,
    service_id,
    _pad2,
    cgroup_id
});
crate::packed_fields!(MeshPeerKey {
    addr,
    port,
    family,
    _pad
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_cookies_spread_over_the_table() {
        let size = 251;
        let mut hits = [0u32; 251];
        for cookie in 1..=25_100u64 {
            hits[slot_for_socket(cookie, 7, size) as usize] += 1;
        }
        // 100 per slot on average; a walk in order would also give 100, so check the
        // neighbours differ too.
        let (min, max) = (hits.iter().min().unwrap(), hits.iter().max().unwrap());
        assert!(*min > 50 && *max < 160, "min {min} max {max}");
        let adjacent_same = (1..1000u64)
            .filter(|c| slot_for_socket(*c, 7, size) + 1 == slot_for_socket(c + 1, 7, size))
            .count();
        assert!(
            adjacent_same < 20,
            "{adjacent_same} cookies land next to their predecessor"
        );
    }

    #[test]
    fn a_socket_keeps_its_slot_and_the_seed_matters() {
        assert_eq!(slot_for_socket(42, 1, 65537), slot_for_socket(42, 1, 65537));
        let differs = (0..100u64)
            .filter(|c| slot_for_socket(*c, 1, 65537) != slot_for_socket(*c, 2, 65537))
            .count();
        assert!(differs > 90);
    }

    #[test]
    fn keys_zero_their_padding() {
        let k = SockRevKey::new(9, Addr::v4(1), 80u16.to_be(), 4);
        assert_eq!(k._pad, [0; 5]);
    }
}
