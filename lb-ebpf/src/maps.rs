//! Every map the packet path uses. Sizes here are defaults; the agent resizes the conntrack
//! maps at load time from the config.

use aya_ebpf::{
    btf_maps::{Array as BtfArray, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, SockMap},
};
use lb_common::{
    BackendValue, Bucket, CtEntry, FlowKey, IFACE_SLOTS, IfaceSlot, MAX_BACKENDS, MAX_SERVICES,
    NatEntry, RateKey, ServiceKey, ServiceSlot, ServiceValue, Settings, Stats, VipAddrKey,
    reason::REASON_COUNT,
    service_slot::SERVICE_SLOTS as SERVICE_SLOTS_LEN,
    sock_lb::{MeshOrig, MeshPeerKey, SOCK_EVENT_COUNT, SockLbSettings, SockRevKey, SockRevValue},
    syn_guard::{SynRate, SynSecret},
};

use crate::{
    clock::ClockCache,
    fib::{NEXT_HOP_SLOTS, NextHop},
};

/// Inner Maglev arrays: `BPF_F_INNER_MAP` lets them differ in size (each service has its own
/// table size); `BPF_F_MMAPABLE` lets the agent fill one with a single copy. Must match
/// `lb-userspace/src/dataplane/table.rs`.
const MAGLEV_INNER_FLAGS: usize = 0x1000 | 0x400;

/// (VIP, port, protocol) -> service.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// The L7 gateway's listening sockets: index 0 IPv4, 1 IPv6 (see `sk_lookup_gateway`).
/// Not pinned: the sockets live and die with the agent.
#[map]
pub static GATEWAY_SOCKETS: SockMap = SockMap::with_max_entries(2, 0);

/// Direct-mapped copy of `SERVICES`, read first (see `lb_common::service_slot`).
#[map]
pub static SERVICE_SLOTS: Array<ServiceSlot> = Array::with_max_entries(SERVICE_SLOTS_LEN, 0);

/// Every VIP address (any port); see `Reason`'s drop-or-pass rule.
#[map]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Service id -> Maglev table (slot -> backend id). The agent builds a new inner array and
/// swaps it in with one update, so a packet sees either the old table or the new one.
#[btf_map]
pub static MAGLEV: ArrayOfMaps<BtfArray<u32, 1, MAGLEV_INNER_FLAGS>, { MAX_SERVICES as usize }> =
    ArrayOfMaps::new();

/// Backend id -> address. Read only when a flow is created.
#[map]
pub static BACKENDS: Array<BackendValue> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Client-side tuple -> flow state and cached forwarding decision.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(262_144, 0);

/// Backend reply tuple -> client tuple to restore.
#[map]
pub static NAT_REVERSE: LruHashMap<FlowKey, NatEntry> = LruHashMap::with_max_entries(262_144, 0);

/// Per-source token buckets.
#[map]
pub static RATE_LIMIT: LruHashMap<RateKey, Bucket> = LruHashMap::with_max_entries(262_144, 0);

/// Global settings (one entry).
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// The interfaces the program is attached to and their MACs, direct-mapped by
/// `ifindex % IFACE_SLOTS` (an inlined array read on every packet, where a hash lookup would
/// cost ~30 ns): frames not addressed to the receiving interface are never forwarded.
#[map]
pub static IFACES: Array<IfaceSlot> = Array::with_max_entries(IFACE_SLOTS, 0);

/// Interfaces we may redirect to, keyed by ifindex.
#[map]
pub static DEVMAP: DevMapHash = DevMapHash::with_max_entries(64, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Packets by `Reason`.
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Per-CPU scratch space for building a new flow's entries: the BPF stack (512 bytes) cannot
/// hold them next to everything else.
#[repr(C)]
pub struct Scratch {
    pub ct: CtEntry,
    pub nat: NatEntry,
    pub rev: FlowKey,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU cache of each backend's next hop (see `fib`). Not pinned: a new program fills
/// its own.
#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

/// Bumped by the agent when a next hop may have changed: every CPU's cache goes stale.
#[map]
pub static NEXT_HOP_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU copy of the coarse clock (see `clock`). Not pinned: a new program fills its own.
#[map]
pub static CLOCK: PerCpuArray<ClockCache> = PerCpuArray::with_max_entries(1, 0);

/// Socket LB: (socket, backend) -> the service address the application asked for, so
/// `getpeername` and a datagram's source read back as the service. LRU: entries of sockets
/// that never connected (unconnected UDP) age out; `sock_release` removes a connected
/// socket's own entry at once.
#[map]
pub static SOCK_REVERSE: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(65_536, 0);

/// Socket LB settings (one entry; all zero = off).
#[map]
pub static SOCKLB_SETTINGS: Array<SockLbSettings> = Array::with_max_entries(1, 0);

/// Socket LB counters by `SockEvent`.
#[map]
pub static SOCK_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SOCK_EVENT_COUNT, 0);

/// SYN-flood guard: this CPU's SYN rate window and flood state (see `syn_guard`).
#[map]
pub static SYN_RATE: PerCpuArray<SynRate> = PerCpuArray::with_max_entries(1, 0);

/// SYN-flood guard: the cookie secret (one entry, chosen by the first challenge).
#[map]
pub static SYN_SECRET: Array<SynSecret> = Array::with_max_entries(1, 0);

/// SYN-flood guard: source address -> when it answered a challenge (coarse ns). LRU: a
/// flood of real sources cannot fill it for good.
#[map]
pub static SYN_VERIFIED: LruHashMap<VipAddrKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// Mesh steering: client socket cookie -> where its connect() was going (written by connect4/6
/// for `mtls` services, moved to `MESH_ORIGDST` by `sock_ops` once the local port is known).
#[map]
pub static MESH_SOCK_ORIG: LruHashMap<u64, MeshOrig> = LruHashMap::with_max_entries(16_384, 0);

/// Mesh steering: client (address, port) -> original destination; the agent reads and
/// deletes the entry when it accepts the steered connection.
#[map]
pub static MESH_ORIGDST: LruHashMap<MeshPeerKey, MeshOrig> =
    LruHashMap::with_max_entries(16_384, 0);
