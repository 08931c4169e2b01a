//! Map keys and values. See the crate docs for the byte-order convention.

/// Address family tags used in keys (values of `family` fields).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers used in keys (values of `proto` fields).
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Highest service id + 1: size of the per-service arrays (stats, Maglev outer map).
pub const MAX_SERVICES: u32 = 1024;
/// Highest backend id + 1: size of the per-backend stats array. Backend id 0 means "none".
pub const MAX_BACKENDS: u32 = 65536;
/// Maglev table size used when the config does not say (a prime, as Maglev requires).
pub const DEFAULT_MAGLEV_SIZE: u32 = 65537;
/// Largest Maglev table size the agent accepts (a prime).
pub const MAX_MAGLEV_SIZE: u32 = 1_000_003;

/// Service flags (`ServiceValue::flags`).
pub const SVC_FLAG_NAT: u32 = 1;
/// The service is the L7 gateway's: after the rate limit and the checks, packets go to the
/// kernel (`XDP_PASS`), which delivers them to the gateway's socket.
pub const SVC_FLAG_PASS: u32 = 2;
/// The service is `scope = "cluster"`: reachable only through the socket LB (a local
/// process's connect()), never from the wire. XDP drops packets to it (`ClusterOnly`).
pub const SVC_FLAG_CLUSTER: u32 = 4;
/// A new flow's backend is picked by hashing the source address alone (not the 5-tuple), so
/// every flow of one client goes to the same backend while the table holds (client-IP
/// session affinity, as Kubernetes' `sessionAffinity: ClientIP`).
pub const SVC_FLAG_SRC_HASH: u32 = 8;
/// The service is `mtls = true`: the socket LB steers a local connect() to the agent's mesh
/// outbound listener (`SockLbSettings::mesh_*`), keeping the original destination in
/// `MESH_SOCK_ORIG` (see `sock_lb::MeshOrig`).
pub const SVC_FLAG_MTLS: u32 = 16;

/// An IPv4 or IPv6 address in wire order. IPv4 uses `words[0]`; the other words are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr {
    pub words: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<Addr>() == 16);

impl Addr {
    pub const fn v4(wire: u32) -> Self {
        Self {
            words: [wire, 0, 0, 0],
        }
    }
    pub const fn v6(words: [u32; 4]) -> Self {
        Self { words }
    }

    /// `::ffff:a.b.c.d` (RFC 4291 2.5.5.2): how a dual-stack IPv6 socket names an IPv4 peer.
    pub const fn v4_mapped(wire: u32) -> Self {
        Self {
            words: [0, 0, MAPPED_PREFIX_WORD, wire],
        }
    }

    /// The IPv4 address (wire order) inside an IPv4-mapped IPv6 address, if this is one.
    pub const fn unmapped_v4(&self) -> Option<u32> {
        if self.words[0] == 0 && self.words[1] == 0 && self.words[2] == MAPPED_PREFIX_WORD {
            Some(self.words[3])
        } else {
            None
        }
    }
}

/// The third word of an IPv4-mapped IPv6 address: bytes `00 00 ff ff` in memory.
const MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Key of the `SERVICES` map: which packets belong to a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Virtual IP, wire order.
    pub vip: Addr,
    /// Virtual port, network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

impl ServiceKey {
    pub const fn new(vip: Addr, port_be: u16, proto: u8, family: u8) -> Self {
        Self {
            vip,
            port: port_be,
            proto,
            family,
        }
    }
}

/// Value of the `SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service arrays (`MAGLEV` outer map, `SERVICE_STATS`). Host order.
    pub id: u32,
    /// `SVC_FLAG_*` bits. Host order.
    pub flags: u32,
    /// Number of entries of this service's Maglev table (a prime). Host order.
    pub maglev_size: u32,
    pub _pad0: u32,
    /// Per-source token bucket refill rate in packets per second; 0 disables the limit.
    pub rate_pps: u64,
    /// Per-source bucket depth in packets.
    pub burst: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 32);

/// Value of the `SERVICE_SLOTS` array: a direct-mapped copy of `SERVICES` (see
/// [`crate::service_slot`]). Host order but for `key`, which is as in `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSlot {
    /// Seqlock sequence: odd while the agent rewrites the slot.
    pub seq: u32,
    /// `SLOT_EMPTY`, `SLOT_ONE` or `SLOT_SHARED`.
    pub kind: u32,
    /// The one service's key and record (`SLOT_ONE`; zero otherwise).
    pub key: ServiceKey,
    pub _pad: u32,
    pub value: ServiceValue,
}
const _: () = assert!(core::mem::size_of::<ServiceSlot>() == 64);

/// Value of the `BACKENDS` array, indexed by backend id (the ids in Maglev tables).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    /// Backend address, wire order.
    pub addr: Addr,
    /// Backend port, network byte order.
    pub port: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: u8,
    pub _pad1: u32,
}
const _: () = assert!(core::mem::size_of::<BackendValue>() == 24);

/// Key of `VIP_ADDRS`: every VIP address, whatever its ports. Consulted only for packets the
/// fast path does not handle, to decide between drop (to a VIP) and pass (anything else).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<VipAddrKey>() == 20);

impl VipAddrKey {
    pub const fn new(addr: Addr, family: u8) -> Self {
        // Zeroed whole rather than `_pad: [0; 3]`, which the BPF target compiles to a call
        // of a byte-by-byte memset subprogram.
        // SAFETY: plain integers: all-zero is a valid value.
        let mut k: Self = unsafe { core::mem::zeroed() };
        k.addr = addr;
        k.family = family;
        k
    }
}

/// One MAC address plus padding to keep the containing structs aligned.
pub type Mac = [u8; 6];

/// Key of the `CONNTRACK` and `NAT_REVERSE` maps: one direction of a flow as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    pub const fn new(
        src: Addr,
        dst: Addr,
        src_port: u16,
        dst_port: u16,
        proto: u8,
        family: u8,
    ) -> Self {
        Self {
            src,
            dst,
            src_port,
            dst_port,
            proto,
            family,
            _pad: [0; 2],
        }
    }
}

/// Connection-tracking states (`CtEntry::state`, `NatEntry::state`).
pub const CT_SYN_SENT: u8 = 1;
pub const CT_ESTABLISHED: u8 = 2;
pub const CT_CLOSING: u8 = 3;
/// UDP flows have one state.
pub const CT_UDP: u8 = 4;

/// Value of `CONNTRACK`, keyed by the client's packet (client -> VIP). Everything the
/// established-flow path needs is here, so it never reads the backend or routing state again:
/// that is what keeps a flow on its backend whatever happens to the tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Backend address and port, wire order.
    pub backend: Addr,
    /// Our source address toward the backend (SNAT), wire order.
    pub snat: Addr,
    pub backend_port: u16,
    pub snat_port: u16,
    /// Egress interface toward the backend (host order).
    pub egress_ifindex: u32,
    /// Next-hop MAC toward the backend and our MAC on that interface.
    pub egress_dmac: Mac,
    pub egress_smac: Mac,
    pub service_id: u32,
    pub backend_id: u32,
    /// `CT_*`.
    pub state: u8,
    pub _pad: [u8; 11],
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most every `CT_TOUCH_NS`).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 80);

/// Value of `NAT_REVERSE`, keyed by the backend's reply (backend -> SNAT address/port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    /// The client tuple to restore: the reply goes from `orig.dst` (VIP) to `orig.src` (client).
    pub orig: FlowKey,
    /// Interface the client's packets arrived on; replies leave through it.
    pub client_ifindex: u32,
    /// MAC the client's packets came from (next hop back) and the MAC they were sent to (ours).
    pub client_mac: Mac,
    pub local_mac: Mac,
    pub service_id: u32,
    pub backend_id: u32,
    pub state: u8,
    pub _pad: [u8; 3],
    pub _pad1: u32,
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NatEntry>() == 80);

/// Key of the `RATE_LIMIT` map: one source (a /32, or a /64 for IPv6) toward one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateKey {
    /// Source address, wire order; IPv6 keeps only the /64 prefix (low words zero).
    pub src: Addr,
    pub service_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<RateKey>() == 24);

impl RateKey {
    pub const fn new(src: Addr, service_id: u32, family: u8) -> Self {
        // Zeroed whole for the same reason as `VipAddrKey::new`.
        // SAFETY: plain integers: all-zero is a valid value.
        let mut k: Self = unsafe { core::mem::zeroed() };
        k.src = src;
        k.service_id = service_id;
        k.family = family;
        k
    }
}

/// Value of the `RATE_LIMIT` map; see [`crate::token_bucket`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens in units of 1e-9 packet (so refill is `elapsed_ns * rate`).
    pub nano_tokens: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 16);

/// Per-service and per-backend counters (per-CPU arrays; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets of this service dropped (rate limit, no backend, ...).
    pub drops: u64,
}
const _: () = assert!(core::mem::size_of::<Stats>() == 32);

/// Our addresses on one interface, used as SNAT source toward backends (`SNAT_ADDRS`,
/// keyed by ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfAddrs {
    pub v4: Addr,
    pub v6: Addr,
    /// Bit 0: `v4` is set; bit 1: `v6` is set.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<IfAddrs>() == 40);
pub const IFADDR_HAS_V4: u32 = 1;
pub const IFADDR_HAS_V6: u32 = 2;

/// Global data-plane settings (`SETTINGS`, an array of one), host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// SNAT source ports are allocated from `[snat_port_min, snat_port_max]`.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Under SNAT-port pressure (a new flow's probe finds its port held), a flow still
    /// opening (SYN_SENT on the client side) whose last packet is this old gives its port
    /// back: a flood of spoofed SYNs cannot hold the port range for the whole SYN timeout.
    /// 0 disables.
    pub tcp_syn_reclaim_ms: u32,
    pub tcp_syn_timeout_ns: u64,
    pub tcp_established_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// SYN-flood guard: SYNs of new flows per second on one CPU above which unverified
    /// sources are challenged (see `syn_guard`). 0 disables.
    pub syn_guard_pps: u32,
    /// How long a source stays verified after answering a challenge, in seconds.
    pub syn_verified_secs: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 48);

const SEC: u64 = 1_000_000_000;

impl Default for Settings {
    fn default() -> Self {
        Self {
            snat_port_min: 40000,
            snat_port_max: 59999,
            tcp_syn_reclaim_ms: 1000,
            tcp_syn_timeout_ns: 60 * SEC,
            tcp_established_timeout_ns: 3600 * SEC,
            tcp_closing_timeout_ns: 10 * SEC,
            udp_timeout_ns: 60 * SEC,
            syn_guard_pps: 0,
            syn_verified_secs: 300,
        }
    }
}

impl Settings {
    /// Idle timeout for a flow in `state`.
    #[inline(always)]
    pub fn timeout_ns(&self, state: u8) -> u64 {
        match state {
            CT_ESTABLISHED => self.tcp_established_timeout_ns,
            CT_CLOSING => self.tcp_closing_timeout_ns,
            CT_UDP => self.udp_timeout_ns,
            _ => self.tcp_syn_timeout_ns,
        }
    }
}

/// One interface the program is attached to (`IFACES`, direct-mapped by
/// `ifindex % IFACE_SLOTS`): frames must be addressed to `mac` to be forwarded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceSlot {
    /// Host order; 0 = empty slot.
    pub ifindex: u32,
    pub mac: Mac,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<IfaceSlot>() == 12);

/// Slots of `IFACES`. Two attached interfaces whose ifindexes collide modulo this keep the
/// first; the other's frames skip the destination-MAC check (the agent warns).
pub const IFACE_SLOTS: u32 = 4096;

/// Conntrack entries refresh `last_seen_ns` at most this often, to keep the established path
/// from writing a shared cache line on every packet.
pub const CT_TOUCH_NS: u64 = SEC;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), made only of integers, with explicit padding fields.
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for ServiceSlot {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for RateKey {}
    unsafe impl aya::Pod for Bucket {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for IfAddrs {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for VipAddrKey {}
    unsafe impl aya::Pod for IfaceSlot {}
    unsafe impl aya::Pod for crate::syn_guard::SynRate {}
    unsafe impl aya::Pod for crate::syn_guard::SynSecret {}
}

// Every field of every shared type, in order: no hidden padding anywhere.
crate::packed_fields!(Addr { words });
crate::packed_fields!(ServiceKey {
    vip,
    port,
    proto,
    family
});
crate::packed_fields!(ServiceValue {
    id,
    flags,
    maglev_size,
    _pad0,
    rate_pps,
    burst
});
crate::packed_fields!(ServiceSlot {
    seq,
    kind,
    key,
    _pad,
    value
});
crate::packed_fields!(BackendValue {
    addr,
    port,
    family,
    _pad,
    _pad1
});
crate::packed_fields!(VipAddrKey { addr, family, _pad });
crate::packed_fields!(FlowKey {
    src,
    dst,
    src_port,
    dst_port,
    proto,
    family,
    _pad
});
crate::packed_fields!(CtEntry {
    backend,
    snat,
    backend_port,
    snat_port,
    egress_ifindex,
    egress_dmac,
    egress_smac,
    service_id,
    backend_id,
    state,
    _pad,
    last_seen_ns,
});
crate::packed_fields!(NatEntry {
    orig,
    client_ifindex,
    client_mac,
    local_mac,
    service_id,
    backend_id,
    state,
    _pad,
    _pad1,
    last_seen_ns,
});
crate::packed_fields!(RateKey {
    src,
    service_id,
    family,
    _pad
});
crate::packed_fields!(Bucket {
    nano_tokens,
    last_ns
});
crate::packed_fields!(Stats {
    packets,
    bytes,
    new_flows,
    drops
});
crate::packed_fields!(IfAddrs {
    v4,
    v6,
    flags,
    _pad
});
crate::packed_fields!(Settings {
    snat_port_min,
    snat_port_max,
    tcp_syn_reclaim_ms,
    tcp_syn_timeout_ns,
    tcp_established_timeout_ns,
    tcp_closing_timeout_ns,
    udp_timeout_ns,
    syn_guard_pps,
    syn_verified_secs,
});
crate::packed_fields!(IfaceSlot { ifindex, mac, _pad });
