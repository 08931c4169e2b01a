//! Map layouts: what each pinned map must look like for this agent's programs, and what to
//! do with a pinned map that a different agent version left behind.
//!
//! A pinned map is adopted only if its type, key size, value size, flags and max entries
//! (from the kernel's map info) equal what this version creates, and the layout version
//! recorded next to it (the pinned `LAYOUT` map: map name -> version) equals [`MapSpec::version`].
//! The version covers changes the sizes do not show (a field reordered, a meaning changed, the
//! Maglev inner template): bump it in [`PINNED`] with any such change. The conntrack maps are
//! the exception for max entries: they are sized by the config, and a pinned one of another
//! size is adopted as it is (its flows are worth more than the new size; the new size applies
//! at the next start without pins).
//!
//! An incompatible map is unpinned before the programs load, so the loader creates and pins a
//! fresh one; the previous program keeps its old map until its links are taken over.

use std::{fmt, path::Path};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo, MapType};
use lb_common::{
    BackendValue, Bucket, CtEntry, FlowKey, IFACE_SLOTS, IfaceSlot, MAX_BACKENDS, MAX_SERVICES,
    NatEntry, RateKey, ServiceKey, ServiceSlot, ServiceValue, Settings, Stats, VipAddrKey,
    reason::REASON_COUNT,
    service_slot::SERVICE_SLOTS,
    sock_lb::{MeshOrig, MeshPeerKey, SOCK_EVENT_COUNT, SockLbSettings, SockRevKey, SockRevValue},
    syn_guard::SynSecret,
};
use tracing::warn;

use super::{
    DataplaneError,
    pin::PinDir,
    raw::{BPF_MAP_TYPE_HASH, MapParams, create_map},
};

/// How a map's max entries are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    Fixed(u32),
    /// `LoadOptions::conntrack_entries`; a pinned map of another size is adopted.
    Conntrack,
}

/// One pinned map as this version of the programs declares it (`lb-ebpf/src/maps.rs`).
#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub entries: Entries,
    pub flags: u32,
    /// Bump when the meaning of the bytes changes without a change of size.
    pub version: u32,
    /// What replacing a pinned map of another layout costs, for the warning.
    pub on_replace: &'static str,
}

const fn size<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// Every map the agent pins. `SCRATCH`, `CLOCK` and `SYN_RATE` are not here: they hold nothing
/// a new program needs (per-CPU scratch space, a per-CPU clock copy, the SYN guard's rate
/// window), so it is better off with its own.
pub const PINNED: &[MapSpec] = &[
    MapSpec {
        name: "SERVICES",
        map_type: MapType::Hash,
        key_size: size::<ServiceKey>(),
        value_size: size::<ServiceValue>(),
        entries: Entries::Fixed(MAX_SERVICES),
        flags: 0,
        version: 1,
        on_replace: "services get new ids, and their counters restart from zero",
    },
    MapSpec {
        name: "SERVICE_SLOTS",
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<ServiceSlot>(),
        entries: Entries::Fixed(SERVICE_SLOTS),
        flags: 0,
        // Covers `service_slot::slot_of`: another hash puts records in other slots.
        version: 1,
        on_replace: "rebuilt from SERVICES before the new program runs",
    },
    MapSpec {
        name: "VIP_ADDRS",
        map_type: MapType::Hash,
        key_size: size::<VipAddrKey>(),
        value_size: 4,
        entries: Entries::Fixed(MAX_SERVICES),
        flags: 0,
        version: 1,
        on_replace: "refilled from the config before the new program runs",
    },
    MapSpec {
        name: "MAGLEV",
        map_type: MapType::ArrayOfMaps,
        key_size: 4,
        value_size: 4,
        entries: Entries::Fixed(MAX_SERVICES),
        flags: 0,
        version: 1,
        on_replace: "Maglev tables are rebuilt from the config before the new program runs",
    },
    MapSpec {
        name: "BACKENDS",
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<BackendValue>(),
        entries: Entries::Fixed(MAX_BACKENDS),
        flags: 0,
        version: 1,
        on_replace: "backends get new ids, and their counters restart from zero",
    },
    MapSpec {
        name: "CONNTRACK",
        map_type: MapType::LruHash,
        key_size: size::<FlowKey>(),
        value_size: size::<CtEntry>(),
        entries: Entries::Conntrack,
        flags: 0,
        version: 1,
        on_replace: "established flows through this node will be reset",
    },
    MapSpec {
        name: "NAT_REVERSE",
        map_type: MapType::LruHash,
        key_size: size::<FlowKey>(),
        value_size: size::<NatEntry>(),
        entries: Entries::Conntrack,
        flags: 0,
        version: 1,
        on_replace: "replies of established flows are no longer translated: those flows will \
                     be reset",
    },
    MapSpec {
        name: "RATE_LIMIT",
        map_type: MapType::LruHash,
        key_size: size::<RateKey>(),
        value_size: size::<Bucket>(),
        entries: Entries::Fixed(262_144),
        flags: 0,
        version: 1,
        on_replace: "every source's token bucket starts full again",
    },
    MapSpec {
        name: "SETTINGS",
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<Settings>(),
        entries: Entries::Fixed(1),
        flags: 0,
        version: 1,
        on_replace: "rewritten from the config before the new program runs",
    },
    MapSpec {
        name: "DEVMAP",
        map_type: MapType::DevMapHash,
        key_size: 4,
        value_size: 8,
        entries: Entries::Fixed(64),
        // BPF_F_RDONLY_PROG: the kernel sets it on every devmap.
        flags: 0x80,
        version: 1,
        on_replace: "refilled before the new program runs",
    },
    MapSpec {
        name: "IFACES",
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<IfaceSlot>(),
        entries: Entries::Fixed(IFACE_SLOTS),
        flags: 0,
        version: 1,
        on_replace: "refilled before the new program runs",
    },
    MapSpec {
        name: "SERVICE_STATS",
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: size::<Stats>(),
        entries: Entries::Fixed(MAX_SERVICES),
        flags: 0,
        version: 1,
        on_replace: "per-service counters restart from zero",
    },
    MapSpec {
        name: "BACKEND_STATS",
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: size::<Stats>(),
        entries: Entries::Fixed(MAX_BACKENDS),
        flags: 0,
        version: 1,
        on_replace: "per-backend counters restart from zero",
    },
    MapSpec {
        name: "REASONS",
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: 8,
        entries: Entries::Fixed(REASON_COUNT),
        flags: 0,
        version: 1,
        on_replace: "per-reason counters restart from zero",
    },
    MapSpec {
        name: "SOCK_REVERSE",
        map_type: MapType::LruHash,
        key_size: size::<SockRevKey>(),
        value_size: size::<SockRevValue>(),
        entries: Entries::Fixed(65_536),
        flags: 0,
        version: 1,
        on_replace: "sockets connected through the socket LB before the upgrade show their \
                     backend's address to getpeername()",
    },
    MapSpec {
        name: "SOCKLB_SETTINGS",
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<SockLbSettings>(),
        entries: Entries::Fixed(1),
        flags: 0,
        version: 1,
        on_replace: "rewritten from the config when the socket LB attaches",
    },
    MapSpec {
        name: "SOCK_EVENTS",
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: 8,
        entries: Entries::Fixed(SOCK_EVENT_COUNT),
        flags: 0,
        version: 1,
        on_replace: "socket LB counters restart from zero",
    },
    MapSpec {
        name: "SYN_SECRET",
        map_type: MapType::Array,
        key_size: 4,
        value_size: size::<SynSecret>(),
        entries: Entries::Fixed(1),
        flags: 0,
        version: 1,
        on_replace: "SYN-guard challenges in flight fail (their clients are challenged again)",
    },
    MapSpec {
        name: "SYN_VERIFIED",
        map_type: MapType::LruHash,
        key_size: size::<VipAddrKey>(),
        value_size: 8,
        entries: Entries::Fixed(65_536),
        flags: 0,
        version: 1,
        on_replace: "sources verified by the SYN guard are challenged again during a flood",
    },
    MapSpec {
        name: "MESH_SOCK_ORIG",
        map_type: MapType::LruHash,
        key_size: 8,
        value_size: size::<MeshOrig>(),
        entries: Entries::Fixed(16_384),
        flags: 0,
        version: 1,
        on_replace: "mesh connects in flight during the upgrade are refused by the agent",
    },
    MapSpec {
        name: "MESH_ORIGDST",
        map_type: MapType::LruHash,
        key_size: size::<MeshPeerKey>(),
        value_size: size::<MeshOrig>(),
        entries: Entries::Fixed(16_384),
        flags: 0,
        version: 1,
        on_replace: "mesh connects in flight during the upgrade are refused by the agent",
    },
];

/// What the kernel says about a map (or what we would create).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Layout {
    fn of_info(info: &MapInfo) -> Result<Self, aya::maps::MapError> {
        Ok(Self {
            map_type: info.map_type()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }
}

impl MapSpec {
    /// The layout this version creates, with conntrack maps of `conntrack_entries`.
    pub fn wanted(&self, conntrack_entries: u32) -> Layout {
        Layout {
            map_type: self.map_type as u32,
            key_size: self.key_size,
            value_size: self.value_size,
            max_entries: match self.entries {
                Entries::Fixed(n) => n,
                Entries::Conntrack => conntrack_entries,
            },
            flags: self.flags,
        }
    }
}

/// Why a pinned map cannot be adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    MapType { from: u32, to: u32 },
    KeySize { from: u32, to: u32 },
    ValueSize { from: u32, to: u32 },
    Flags { from: u32, to: u32 },
    MaxEntries { from: u32, to: u32 },
    Version { from: Option<u32>, to: u32 },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Change::MapType { from, to } => write!(f, "map type {from} -> {to}"),
            Change::KeySize { from, to } => write!(f, "key {from} -> {to} bytes"),
            Change::ValueSize { from, to } => write!(f, "value {from} -> {to} bytes"),
            Change::Flags { from, to } => write!(f, "flags {from:#x} -> {to:#x}"),
            Change::MaxEntries { from, to } => write!(f, "max entries {from} -> {to}"),
            Change::Version {
                from: Some(from),
                to,
            } => write!(f, "layout version {from} -> {to}"),
            Change::Version { from: None, to } => {
                write!(f, "no layout version recorded, this agent uses {to}")
            }
        }
    }
}

/// What to do with one pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Adopt,
    /// A conntrack map of another size than the config's: adopted as it is.
    AdoptResized {
        pinned: u32,
        wanted: u32,
    },
    Replace(Change),
}

/// The compatibility rule (see the module doc).
pub fn decide(spec: &MapSpec, wanted: Layout, pinned: Layout, recorded: Option<u32>) -> Decision {
    let (w, p) = (wanted, pinned);
    let change = if p.map_type != w.map_type {
        Some(Change::MapType {
            from: p.map_type,
            to: w.map_type,
        })
    } else if p.key_size != w.key_size {
        Some(Change::KeySize {
            from: p.key_size,
            to: w.key_size,
        })
    } else if p.value_size != w.value_size {
        Some(Change::ValueSize {
            from: p.value_size,
            to: w.value_size,
        })
    } else if p.flags != w.flags {
        Some(Change::Flags {
            from: p.flags,
            to: w.flags,
        })
    } else if recorded != Some(spec.version) {
        Some(Change::Version {
            from: recorded,
            to: spec.version,
        })
    } else {
        None
    };
    if let Some(c) = change {
        return Decision::Replace(c);
    }
    match (p.max_entries == w.max_entries, spec.entries) {
        (true, _) => Decision::Adopt,
        (false, Entries::Conntrack) => Decision::AdoptResized {
            pinned: p.max_entries,
            wanted: w.max_entries,
        },
        (false, Entries::Fixed(_)) => Decision::Replace(Change::MaxEntries {
            from: p.max_entries,
            to: w.max_entries,
        }),
    }
}

/// What happened to each pinned map at load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapsFound {
    /// Pinned maps taken over as they are.
    pub adopted: Vec<&'static str>,
    /// Pinned maps of another layout, unpinned and replaced by fresh ones.
    pub replaced: Vec<&'static str>,
}

/// The pinned record of layout versions: map name (NUL-padded) -> version. Its own layout
/// never changes.
const LAYOUT_MAP: &str = "LAYOUT";
type LayoutKey = [u8; 16];

fn layout_key(name: &str) -> LayoutKey {
    super::nul_padded(name)
}

/// Opens the pinned layout record, or creates and pins an empty one (also in place of a pin
/// that is not a record: then no version is known and every pinned map is replaced).
fn layout_record(pins: &PinDir) -> Result<BpfHashMap<MapData, LayoutKey, u32>, DataplaneError> {
    pinned_record(pins, LAYOUT_MAP, 64)
}

/// A small hash map of the agent's own pinned under `pins`' maps as `name`: the pinned one
/// if it is a hash of `K` -> `V`, else a new empty one pinned in its place. bpffs holds no
/// regular files, so state that must outlive one agent for the next lives in maps like this.
pub(super) fn pinned_record<K: aya::Pod, V: aya::Pod>(
    pins: &PinDir,
    name: &'static str,
    max_entries: u32,
) -> Result<BpfHashMap<MapData, K, V>, DataplaneError> {
    let path = pins.map(name);
    let err = |source| DataplaneError::Map { name, source };
    let as_record = |data: MapData| Map::from_map_data(data).and_then(BpfHashMap::try_from);
    if let Ok(record) = MapData::from_pin(&path).and_then(as_record) {
        return Ok(record);
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(pin_io(&path, e)),
        _ => {}
    }
    let fd = create_map(&MapParams {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
        max_entries,
        flags: 0,
        name,
    })
    .map_err(|e| pin_io(&path, e))?;
    let data = MapData::from_fd(fd).map_err(err)?;
    data.pin(&path).map_err(|error| {
        err(aya::maps::MapError::PinError {
            name: Some(name.into()),
            error,
        })
    })?;
    as_record(data).map_err(err)
}

fn pin_io(path: &Path, source: std::io::Error) -> DataplaneError {
    DataplaneError::Pin(super::pin::PinError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Before loading: decides for every pinned map, unpins the incompatible ones (with a warning
/// that names the map and the consequence) and returns what it found.
pub fn check_pinned(pins: &PinDir, conntrack_entries: u32) -> Result<MapsFound, DataplaneError> {
    let record = layout_record(pins)?;
    let mut found = MapsFound::default();
    for spec in PINNED {
        let path = pins.map(spec.name);
        if !path.exists() {
            continue;
        }
        let wanted = spec.wanted(conntrack_entries);
        let pinned = MapInfo::from_pin(&path)
            .and_then(|i| Layout::of_info(&i))
            .map_err(|source| DataplaneError::Map {
                name: spec.name,
                source,
            })?;
        let recorded = record.get(&layout_key(spec.name), 0).ok();
        match decide(spec, wanted, pinned, recorded) {
            Decision::Adopt => found.adopted.push(spec.name),
            Decision::AdoptResized { pinned, wanted } => {
                warn!(
                    map = spec.name,
                    pinned,
                    configured = wanted,
                    "{} holds {pinned} entries, the config says {wanted}: the pinned map is \
                     kept with its flows; the new size applies at the next start without pins \
                     (after a clean shutdown)",
                    spec.name
                );
                found.adopted.push(spec.name);
            }
            Decision::Replace(change) => {
                warn!(
                    map = spec.name,
                    %change,
                    "{} layout changed ({change}): {}; replacing it with a fresh map",
                    spec.name,
                    spec.on_replace
                );
                unpin(&path)?;
                found.replaced.push(spec.name);
            }
        }
    }
    Ok(found)
}

/// After loading: records this version's layout versions, and checks that every pinned map
/// now has the layout [`PINNED`] says (a mismatch means the table above is out of date with
/// `lb-ebpf/src/maps.rs`, and adoption decisions would be wrong).
pub fn record_and_verify(pins: &PinDir, conntrack_entries: u32) -> Result<(), DataplaneError> {
    let mut record = layout_record(pins)?;
    for spec in PINNED {
        let path = pins.map(spec.name);
        let actual = MapInfo::from_pin(&path)
            .and_then(|i| Layout::of_info(&i))
            .map_err(|source| DataplaneError::Map {
                name: spec.name,
                source,
            })?;
        match decide(
            spec,
            spec.wanted(conntrack_entries),
            actual,
            Some(spec.version),
        ) {
            Decision::Adopt | Decision::AdoptResized { .. } => {}
            Decision::Replace(change) => {
                return Err(DataplaneError::LayoutTable {
                    name: spec.name,
                    detail: change.to_string(),
                });
            }
        }
        record
            .insert(layout_key(spec.name), spec.version, 0)
            .map_err(|source| DataplaneError::Map {
                name: LAYOUT_MAP,
                source,
            })?;
    }
    Ok(())
}

fn unpin(path: &Path) -> Result<(), DataplaneError> {
    std::fs::remove_file(path).map_err(|e| pin_io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> &'static MapSpec {
        PINNED.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn same_layout_and_version_is_adopted() {
        let s = spec("SERVICES");
        let w = s.wanted(1000);
        assert_eq!(decide(s, w, w, Some(s.version)), Decision::Adopt);
    }

    #[test]
    fn a_value_size_change_replaces() {
        let s = spec("CONNTRACK");
        let w = s.wanted(1000);
        let old = Layout {
            value_size: 88,
            ..w
        };
        let d = decide(s, w, old, Some(s.version));
        assert_eq!(
            d,
            Decision::Replace(Change::ValueSize {
                from: 88,
                to: size::<CtEntry>()
            })
        );
        let Decision::Replace(c) = d else { panic!() };
        assert_eq!(c.to_string(), "value 88 -> 80 bytes");
    }

    #[test]
    fn key_type_and_flag_changes_replace() {
        let s = spec("NAT_REVERSE");
        let w = s.wanted(1000);
        for old in [
            Layout { key_size: 36, ..w },
            Layout {
                map_type: MapType::Hash as u32,
                ..w
            },
            Layout { flags: 1, ..w },
        ] {
            assert!(
                matches!(decide(s, w, old, Some(1)), Decision::Replace(_)),
                "{old:?}"
            );
        }
    }

    #[test]
    fn a_version_change_or_no_record_replaces_even_with_equal_sizes() {
        let s = spec("MAGLEV");
        let w = s.wanted(1000);
        assert_eq!(
            decide(s, w, w, Some(s.version + 1)),
            Decision::Replace(Change::Version {
                from: Some(s.version + 1),
                to: s.version
            })
        );
        assert!(matches!(
            decide(s, w, w, None),
            Decision::Replace(Change::Version { from: None, .. })
        ));
    }

    #[test]
    fn conntrack_of_another_size_is_adopted_other_maps_are_not() {
        let ct = spec("CONNTRACK");
        let w = ct.wanted(2000);
        assert_eq!(
            decide(ct, w, ct.wanted(1000), Some(1)),
            Decision::AdoptResized {
                pinned: 1000,
                wanted: 2000
            }
        );
        let s = spec("SERVICES");
        let w = s.wanted(2000);
        let old = Layout {
            max_entries: 512,
            ..w
        };
        assert_eq!(
            decide(s, w, old, Some(1)),
            Decision::Replace(Change::MaxEntries {
                from: 512,
                to: MAX_SERVICES
            })
        );
    }

    #[test]
    fn a_size_change_is_reported_before_a_version_change() {
        let s = spec("BACKENDS");
        let w = s.wanted(1);
        let old = Layout {
            value_size: 16,
            ..w
        };
        assert!(matches!(
            decide(s, w, old, None),
            Decision::Replace(Change::ValueSize { from: 16, .. })
        ));
    }

    #[test]
    fn names_are_unique_and_fit_the_record_key() {
        let mut names: Vec<&str> = PINNED.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PINNED.len());
        assert!(names.iter().all(|n| n.len() <= 15));
    }
}
