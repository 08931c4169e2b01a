//! The kernel side as the agent sees it: loads the XDP object, attaches it to interfaces and
//! owns typed handles to every map. Nothing here decides *what* to write (that is `reconcile`).
//!
//! With a pin path, maps are pinned under `<pin_path>/maps/` and XDP links under
//! `<pin_path>/links/`, so forwarding survives the agent; the next load adopts the maps whose
//! layout is unchanged (`layout`) and takes over the links in place (`links`).
//!
//! May depend on: `lb_common` only. Used by `reconcile`, `sysctls` and `l4`.

mod counters;
mod gateway;
mod iface;
pub mod layout;
mod links;
pub mod pin;
mod raw;
mod retarget;
mod scan;
mod slots;
mod socket_lb;
mod syn_guard;
mod table;

use std::{collections::BTreeMap, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, DevMapHash, HashMap, MapData, MapError, PerCpuArray},
    programs::{ProgramError, SchedClassifier, Xdp, links::LinkError},
};
use lb_common::{
    BackendValue, CtEntry, FlowKey, IFACE_SLOTS, IfaceSlot, ServiceKey, ServiceValue, Settings,
    Stats, VipAddrKey,
};
use tracing::warn;

pub use counters::Counters;
pub use layout::MapsFound;
pub use pin::{PinDir, PinError, mount_bpffs};
pub use retarget::Egress;
pub use socket_lb::{MeshOrigDst, SocketLbAttach, SocketLbOptions, is_cgroup2, own_netns_cookie};
pub use syn_guard::SynGuardState;

pub use iface::is_veth;
pub use links::Attach;
use links::Attachment;

/// The load balancer on tc (tcx ingress), for interfaces attached with [`Attach::Tc`].
const TC_PROGRAM: &str = "tc_lb";

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("this agent was built without its eBPF object (AYA_BUILD_SKIP); rebuild normally")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("creating a Maglev table of {slots} slots: {source}")]
    Table {
        slots: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("removing the Maglev table of service id {id}: {source}")]
    RemoveTable {
        id: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("duplicating the fd of map {name}: {source}")]
    DupFd {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("devmap: {0}")]
    Devmap(#[from] aya::maps::xdp::XdpMapError),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("reading the MAC address of interface {ifindex}: {source}")]
    InterfaceMac {
        ifindex: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("interface `{0}` not found")]
    NoInterface(String),
    #[error("attaching {how:?} to `{iface}`: {source}")]
    Attach {
        iface: String,
        how: Attach,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("socket LB on cgroup {cgroup}: {source}")]
    SocketLb {
        cgroup: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket LB program {name}: {source}")]
    SockLink {
        name: &'static str,
        #[source]
        source: LinkError,
    },
    #[error("link on `{iface}`: {source}")]
    Link {
        iface: String,
        #[source]
        source: LinkError,
    },
    #[error("pinning a link at {path}: {source}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(
        "taking over the pinned link on `{iface}` (the previous program keeps running): \
         {source}"
    )]
    TakeOver {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error(
        "map {name} does not have the layout `dataplane/layout.rs` says ({detail}): update \
         the table there to match lb-ebpf/src/maps.rs"
    )]
    LayoutTable { name: &'static str, detail: String },
}

type Result<T> = std::result::Result<T, DataplaneError>;

/// `text` as a fixed-size, NUL-padded key or value of a pinned record (cut at `N` bytes).
pub fn nul_padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = text.len().min(N);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// Pinned name of the saved-sysctls record.
const SAVED_SYSCTLS: &str = "SAVED_SYSCTLS";
/// Which sysctl: the interface name (NUL-padded) and the family byte (4 or 6) after it.
pub type SysctlKey = [u8; 20];
/// Its value before the first agent changed it, as text (NUL-padded).
pub type SysctlValue = [u8; 8];

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// Sizes and pinning, fixed at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of each conntrack map (`CONNTRACK`, `NAT_REVERSE`).
    pub conntrack_entries: u32,
    /// bpffs directory to pin maps and links under and adopt them from; `None`: nothing is
    /// pinned and everything goes with the process.
    pub pin_path: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_entries: 262_144,
            pin_path: None,
        }
    }
}

/// What a load found pinned by a previous agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    pub maps: MapsFound,
    /// Interfaces with a pinned link (inherited until `take_over_links`).
    pub links: Vec<String>,
}

impl Adoption {
    /// Nothing was pinned: a fresh start.
    pub fn is_empty(&self) -> bool {
        self.maps.adopted.is_empty() && self.links.is_empty()
    }
}

/// The loaded programs and their maps. Dropping it detaches the XDP links it owns; pinned
/// links stay attached (that is what pinning is for: see [`Dataplane::remove_pins`]).
pub struct Dataplane {
    // Declared first so owned links are detached before the maps go (drop order =
    // declaration).
    ebpf: Ebpf,
    attached: BTreeMap<String, Attachment>,
    pins: Option<PinDir>,
    adoption: Adoption,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    service_slots: slots::ServiceSlots,
    vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    maglev: ArrayOfMaps<MapData, MapData>,
    /// `maglev`'s fd again, for deletes (aya 0.14's `ArrayOfMaps` has none).
    maglev_fd: std::os::fd::OwnedFd,
    backends: Array<MapData, BackendValue>,
    settings: Array<MapData, Settings>,
    devmap: DevMapHash<MapData>,
    ifaces: Array<MapData, IfaceSlot>,
    conntrack: HashMap<MapData, FlowKey, CtEntry>,
    counters: Counters,
    /// The gateway's sk_lookup hook is attached (see `gateway`).
    gateway_attached: bool,
    socket_lb: socket_lb::SocketLbMaps,
    /// Attached by this agent (see `socket_lb`).
    socket_lb_links: Option<socket_lb::SocketLbLinks>,
    syn_guard: syn_guard::SynGuardMaps,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// The object's program `name`, as the program type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

impl Dataplane {
    /// Loads the object and verifies both programs. With a pin path, adopts the pinned maps
    /// whose layout is unchanged (replacing the others, with a warning each) and opens the
    /// pinned links, which keep running the previous program until
    /// [`Dataplane::take_over_links`]. Attaches nothing new.
    pub fn load(opts: LoadOptions) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let pins = opts.pin_path.as_deref().map(PinDir::prepare).transpose()?;
        let maps_found = match &pins {
            Some(p) => layout::check_pinned(p, opts.conntrack_entries)?,
            None => MapsFound::default(),
        };
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("CONNTRACK", opts.conntrack_entries)
            .map_max_entries("NAT_REVERSE", opts.conntrack_entries);
        if let Some(p) = &pins {
            // Opens the pinned map when there is one, else creates and pins it.
            for spec in layout::PINNED {
                loader.map_pin_path(spec.name, p.map(spec.name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        if let Some(p) = &pins {
            layout::record_and_verify(p, opts.conntrack_entries)?;
        }
        for name in ["xdp_lb", "xdp_pass"] {
            program::<Xdp>(&mut ebpf, name)?
                .load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        program::<SchedClassifier>(&mut ebpf, TC_PROGRAM)?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: TC_PROGRAM,
                source,
            })?;
        program::<aya::programs::SkLookup>(&mut ebpf, gateway::PROGRAM)?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: gateway::PROGRAM,
                source,
            })?;
        let socket_lb = socket_lb::load(&mut ebpf)?;
        let services: HashMap<MapData, ServiceKey, ServiceValue> = take(&mut ebpf, "SERVICES")?;
        let records = services
            .iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("SERVICES"))?;
        let service_slots = slots::ServiceSlots::load(take(&mut ebpf, "SERVICE_SLOTS")?, &records)?;
        let (maglev, maglev_fd) = take_maglev(&mut ebpf)?;
        let mut dp = Self {
            services,
            service_slots,
            vip_addrs: take(&mut ebpf, "VIP_ADDRS")?,
            maglev,
            maglev_fd,
            backends: take(&mut ebpf, "BACKENDS")?,
            settings: take(&mut ebpf, "SETTINGS")?,
            devmap: take(&mut ebpf, "DEVMAP")?,
            ifaces: take(&mut ebpf, "IFACES")?,
            conntrack: take(&mut ebpf, "CONNTRACK")?,
            counters: Counters::take(&mut ebpf)?,
            gateway_attached: false,
            socket_lb,
            socket_lb_links: None,
            syn_guard: syn_guard::SynGuardMaps::take(&mut ebpf)?,
            attached: BTreeMap::new(),
            pins,
            adoption: Adoption {
                maps: maps_found,
                links: Vec::new(),
            },
            ebpf,
        };
        if !dp.adoption.maps.adopted.contains(&"SETTINGS") {
            // Adopted settings stay as they are: the previous program still reads them.
            dp.set_settings(&Settings::default())?;
        }
        dp.inherit_pinned_links()?;
        dp.adoption.links = dp.inherited().map(str::to_string).collect();
        Ok(dp)
    }

    /// What this load found pinned.
    pub fn adoption(&self) -> &Adoption {
        &self.adoption
    }

    /// The pin directory, if pinning.
    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// For a clean shutdown: detaches from every interface and removes every pin (maps,
    /// links, the directories), so nothing is left for a next start to adopt. The maps live
    /// on until this `Dataplane` is dropped.
    pub fn remove_pins(&mut self) -> Result<()> {
        let ifaces: Vec<String> = self.attached().map(str::to_string).collect();
        for iface in ifaces {
            self.detach(&iface)?;
        }
        self.detach_socket_lb()?;
        if let Some(p) = self.pins.take() {
            p.remove_all()?;
        }
        Ok(())
    }

    /// The load-balancing program (for `BPF_PROG_TEST_RUN` in tests and benchmarks).
    pub fn lb_program(&mut self) -> &mut Xdp {
        self.program("xdp_lb")
    }

    /// The load-balancing program for tc (for `BPF_PROG_TEST_RUN` in tests).
    pub fn tc_program(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(TC_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("programs were loaded and checked in Dataplane::load")
    }

    /// The do-nothing program: the floor in benchmarks.
    pub fn pass_program(&mut self) -> &mut Xdp {
        self.program("xdp_pass")
    }

    /// Every loaded program by name, with what the kernel reports about it (sizes, the
    /// verifier's processed-instruction count), for benchmarks that record program growth.
    pub fn program_infos(&self) -> Vec<(String, aya::programs::ProgramInfo)> {
        let mut v: Vec<_> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| Some((name.to_string(), p.info().ok()?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn program(&mut self, name: &str) -> &mut Xdp {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("programs were loaded and checked in Dataplane::load")
    }

    /// Registers an interface the program serves (attach and takeover call it; tests call
    /// it directly): a redirect target, and its MAC, which frames must be addressed to.
    /// `ifindex` is in the caller's network namespace.
    pub fn register_interface(&mut self, ifindex: u32) -> Result<()> {
        self.devmap.insert(ifindex, ifindex, None, 0)?;
        let mac = iface::mac_of(ifindex)
            .map_err(|source| DataplaneError::InterfaceMac { ifindex, source })?;
        let slot = ifindex % IFACE_SLOTS;
        let current = self.ifaces.get(&slot, 0).map_err(map_err("IFACES"))?;
        if current.ifindex != 0
            && current.ifindex != ifindex
            && self.attached.values().any(|a| a.ifindex == current.ifindex)
        {
            warn!(
                ifindex,
                other = current.ifindex,
                "two attached interfaces share an IFACES slot: frames on the second skip the \
                 destination-MAC check"
            );
            return Ok(());
        }
        let value = IfaceSlot {
            ifindex,
            mac,
            _pad: [0; 2],
        };
        self.ifaces.set(slot, value, 0).map_err(map_err("IFACES"))
    }

    /// Re-reads the MAC of every attached interface and updates `IFACES` where it changed
    /// (an operator or a bond changed it): frames to the new MAC would otherwise be dropped
    /// as not ours. Returns the interfaces that changed.
    pub fn refresh_interface_macs(&mut self) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        let attached: Vec<(String, u32)> = self
            .attached
            .iter()
            .map(|(name, a)| (name.clone(), a.ifindex))
            .collect();
        for (name, ifindex) in attached {
            let slot = self
                .ifaces
                .get(&(ifindex % IFACE_SLOTS), 0)
                .map_err(map_err("IFACES"))?;
            if slot.ifindex != ifindex {
                continue;
            }
            let mac = iface::mac_of(ifindex)
                .map_err(|source| DataplaneError::InterfaceMac { ifindex, source })?;
            if mac != slot.mac {
                self.register_interface(ifindex)?;
                changed.push(name);
            }
        }
        Ok(changed)
    }

    pub fn set_settings(&mut self, s: &Settings) -> Result<()> {
        self.settings.set(0, s, 0).map_err(map_err("SETTINGS"))
    }

    pub fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(map_err("SERVICES"))?;
        self.service_slots.put(key, value)
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        ignore_missing(self.services.remove(key)).map_err(map_err("SERVICES"))?;
        self.service_slots.remove(key)
    }

    pub fn put_vip_addr(&mut self, key: &VipAddrKey) -> Result<()> {
        self.vip_addrs
            .insert(key, 1, 0)
            .map_err(map_err("VIP_ADDRS"))
    }

    pub fn remove_vip_addr(&mut self, key: &VipAddrKey) -> Result<()> {
        ignore_missing(self.vip_addrs.remove(key)).map_err(map_err("VIP_ADDRS"))
    }

    pub fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<()> {
        self.backends.set(id, value, 0).map_err(map_err("BACKENDS"))
    }

    /// Installs `table` as service `id`'s Maglev table: a new inner array is filled
    /// completely, then swapped in with one update of the outer map, so packets see either
    /// the old table or the new one, never a mix. The kernel frees the old array once no
    /// program run can still hold it.
    pub fn install_table(&mut self, id: u32, table: &[u32]) -> Result<()> {
        let fd = table::create_filled(table).map_err(|source| DataplaneError::Table {
            slots: table.len(),
            source,
        })?;
        let inner = MapData::from_fd(fd).map_err(map_err("MAGLEV inner"))?;
        self.maglev.set(id, &inner, 0).map_err(map_err("MAGLEV"))
    }

    /// The pinned record of interface sysctls an agent changed (see `sysctls`), so that
    /// the agent that finally shuts down cleanly puts back what was there before the first.
    /// `None` without a pin path.
    pub fn saved_sysctls(&self) -> Result<Option<HashMap<MapData, SysctlKey, SysctlValue>>> {
        self.pins
            .as_ref()
            .map(|p| layout::pinned_record(p, SAVED_SYSCTLS, 64))
            .transpose()
    }

    /// Drops service `id`'s Maglev table (the service is gone): the kernel frees it once no
    /// program run can still hold it. A missing table is not an error.
    pub fn remove_table(&mut self, id: u32) -> Result<()> {
        use std::os::fd::AsFd as _;
        raw::delete_elem(self.maglev_fd.as_fd(), &id.to_ne_bytes())
            .map(drop)
            .map_err(|source| DataplaneError::RemoveTable { id, source })
    }

    /// Every service record, in map order.
    pub fn read_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.services
            .iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("SERVICES"))
    }

    /// Every backend record in use (address family set), by id.
    pub fn read_backends(&self) -> Result<Vec<(u32, BackendValue)>> {
        let mut out = Vec::new();
        for (id, v) in self.backends.iter().enumerate() {
            let v = v.map_err(map_err("BACKENDS"))?;
            if v.family != 0 {
                out.push((id as u32, v));
            }
        }
        Ok(out)
    }

    /// Service `id`'s installed Maglev table, read back from the kernel.
    pub fn read_table(&self, id: u32) -> Result<Vec<u32>> {
        let inner: MapData = self.maglev.get(&id, 0).map_err(map_err("MAGLEV"))?;
        let arr: Array<MapData, u32> = aya::maps::Map::from_map_data(inner)
            .and_then(Array::try_from)
            .map_err(map_err("MAGLEV inner"))?;
        arr.iter()
            .collect::<std::result::Result<Vec<u32>, _>>()
            .map_err(map_err("MAGLEV inner"))
    }

    /// Live conntrack entries (walks the map: for status, not for hot paths).
    pub fn conntrack_entries(&self) -> usize {
        self.conntrack.keys().filter(|k| k.is_ok()).count()
    }

    /// The conntrack entry of a client tuple, if any.
    pub fn conntrack_get(&self, key: &FlowKey) -> Option<CtEntry> {
        self.conntrack.get(key, 0).ok()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// A removal of something already gone is not an error for a reconciler.
/// The outer Maglev map, and a second fd of it for deletes.
fn take_maglev(ebpf: &mut Ebpf) -> Result<(ArrayOfMaps<MapData, MapData>, std::os::fd::OwnedFd)> {
    use std::os::fd::AsFd as _;
    let map = ebpf
        .take_map("MAGLEV")
        .ok_or(DataplaneError::MissingMap("MAGLEV"))?;
    let aya::maps::Map::ArrayOfMaps(data) = map else {
        // Not an array of maps: `try_from` names what it is.
        return Err(ArrayOfMaps::<MapData, MapData>::try_from(map)
            .err()
            .map_or(DataplaneError::MissingMap("MAGLEV"), map_err("MAGLEV")));
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::DupFd {
            name: "MAGLEV",
            source,
        })?;
    let outer =
        ArrayOfMaps::try_from(aya::maps::Map::ArrayOfMaps(data)).map_err(map_err("MAGLEV"))?;
    Ok((outer, fd))
}

fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).map_err(|_| DataplaneError::NoInterface(iface.into()))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DataplaneError::NoInterface(iface.into())),
        i => Ok(i),
    }
}

/// Sum of a per-CPU `Stats` slot.
pub(crate) fn sum_stats(values: &[Stats]) -> Stats {
    values.iter().fold(Stats::default(), |a, s| Stats {
        packets: a.packets + s.packets,
        bytes: a.bytes + s.bytes,
        new_flows: a.new_flows + s.new_flows,
        drops: a.drops + s.drops,
    })
}

pub(crate) fn take_percpu<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<MapData, V>> {
    take(ebpf, name)
}
