//! Keeps `SERVICE_SLOTS` in step with `SERVICES` (see `lb_common::service_slot`): every
//! service write or removal rewrites the slot its key hashes to, from an in-memory index of
//! the services per slot.

use std::collections::BTreeMap;

use aya::maps::{Array, MapData};
use lb_common::{
    ServiceKey, ServiceSlot, ServiceValue,
    service_slot::{SERVICE_SLOTS, slot_of},
};

use super::{DataplaneError, map_err};

type Result<T> = std::result::Result<T, DataplaneError>;

const NAME: &str = "SERVICE_SLOTS";

pub(super) struct ServiceSlots {
    map: Array<MapData, ServiceSlot>,
    /// Services by slot (only slots with at least one).
    members: BTreeMap<u32, Vec<(ServiceKey, ServiceValue)>>,
}

impl ServiceSlots {
    /// Takes the map and rewrites every slot that does not match `services` (all of them for
    /// a fresh map; normally none for one adopted from a previous agent).
    pub(super) fn load(
        map: Array<MapData, ServiceSlot>,
        services: &[(ServiceKey, ServiceValue)],
    ) -> Result<Self> {
        let mut s = Self {
            map,
            members: BTreeMap::new(),
        };
        for (k, v) in services {
            s.members.entry(slot_of(k)).or_default().push((*k, *v));
        }
        for slot in 0..SERVICE_SLOTS {
            s.sync(slot)?;
        }
        Ok(s)
    }

    pub(super) fn put(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        let slot = slot_of(key);
        let members = self.members.entry(slot).or_default();
        match members.iter_mut().find(|(k, _)| k == key) {
            Some(m) => m.1 = *value,
            None => members.push((*key, *value)),
        }
        self.sync(slot)
    }

    pub(super) fn remove(&mut self, key: &ServiceKey) -> Result<()> {
        let slot = slot_of(key);
        if let Some(members) = self.members.get_mut(&slot) {
            members.retain(|(k, _)| k != key);
            if members.is_empty() {
                self.members.remove(&slot);
            }
        }
        self.sync(slot)
    }

    /// Rewrites `slot` if it does not say what its members need, as a seqlock: `seq` odd with
    /// the old contents, the new contents, `seq` even again. Each step is one update, so a
    /// packet reading the slot meanwhile sees either a stable slot or an odd/changed `seq`
    /// (and then asks `SERVICES`).
    fn sync(&mut self, slot: u32) -> Result<()> {
        let members = self.members.get(&slot).map_or(&[][..], Vec::as_slice);
        let cur = self.map.get(&slot, 0).map_err(map_err(NAME))?;
        let want = ServiceSlot::for_members(0, members);
        if cur.seq % 2 == 0 && cur.same_contents(&want) {
            return Ok(());
        }
        let odd = cur.seq | 1;
        let steps = [
            ServiceSlot { seq: odd, ..cur },
            ServiceSlot { seq: odd, ..want },
            ServiceSlot {
                seq: odd.wrapping_add(1),
                ..want
            },
        ];
        for s in &steps {
            self.map.set(slot, s, 0).map_err(map_err(NAME))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::Map;
    use lb_common::{
        Addr, FAMILY_V4, PROTO_TCP,
        service_slot::{SLOT_EMPTY, SLOT_ONE, SLOT_SHARED},
    };

    use super::*;
    use crate::dataplane::raw::{BPF_MAP_TYPE_ARRAY, MapParams, create_map};

    /// A fresh kernel array shaped like `SERVICE_SLOTS` (needs root, as every test here).
    fn array() -> Array<MapData, ServiceSlot> {
        let fd = create_map(&MapParams {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: std::mem::size_of::<ServiceSlot>() as u32,
            max_entries: SERVICE_SLOTS,
            flags: 0,
            name: "slots_test",
        })
        .expect("BPF_MAP_CREATE");
        let map = Map::from_map_data(MapData::from_fd(fd).expect("map data")).expect("map");
        Array::try_from(map).expect("array")
    }

    fn key(port: u16) -> ServiceKey {
        ServiceKey::new(Addr::v4(0x0164_000a), port.to_be(), PROTO_TCP, FAMILY_V4)
    }

    fn value(id: u32) -> ServiceValue {
        ServiceValue {
            id,
            maglev_size: 13,
            ..ServiceValue::default()
        }
    }

    /// Two keys that hash to the same slot.
    fn colliding() -> (ServiceKey, ServiceKey, u32) {
        let a = key(80);
        let slot = slot_of(&a);
        let b = (81..u16::MAX)
            .map(key)
            .find(|k| slot_of(k) == slot)
            .expect("a colliding port");
        (a, b, slot)
    }

    #[test]
    fn a_slot_follows_puts_and_removals() {
        let (a, b, slot) = colliding();
        let mut s = ServiceSlots::load(array(), &[]).unwrap();
        let read = |s: &ServiceSlots| s.map.get(&slot, 0).unwrap();

        s.put(&a, &value(1)).unwrap();
        let one = read(&s);
        assert_eq!(
            (one.seq, one.kind, one.key, one.value),
            (2, SLOT_ONE, a, value(1))
        );
        s.put(&a, &value(1)).unwrap();
        assert_eq!(read(&s).seq, 2, "an unchanged slot is not rewritten");

        s.put(&b, &value(2)).unwrap();
        let shared = read(&s);
        assert_eq!((shared.seq, shared.kind), (4, SLOT_SHARED));
        assert_eq!(
            shared.key,
            ServiceKey::default(),
            "a shared slot names no service"
        );
        s.put(&a, &value(3)).unwrap();
        assert_eq!(read(&s).seq, 4, "still shared: nothing to rewrite");

        s.remove(&b).unwrap();
        let back = read(&s);
        assert_eq!(
            (back.seq, back.kind, back.key, back.value),
            (6, SLOT_ONE, a, value(3))
        );
        s.remove(&a).unwrap();
        assert_eq!(
            read(&s),
            ServiceSlot {
                seq: 8,
                ..ServiceSlot::zeroed()
            }
        );
    }

    #[test]
    fn load_rebuilds_every_slot_from_the_services() {
        let mut map = array();
        let (a, _, slot) = colliding();
        // Left by a previous agent: a stale record mid-rewrite, in a slot no service uses.
        let stray = (slot + 1) % SERVICE_SLOTS;
        let mut junk = ServiceSlot::for_members(0, &[(key(9), value(9))]);
        junk.seq = 7;
        map.set(stray, junk, 0).unwrap();

        let s = ServiceSlots::load(map, &[(a, value(1))]).unwrap();
        let got = s.map.get(&slot, 0).unwrap();
        assert_eq!((got.seq % 2, got.kind, got.key), (0, SLOT_ONE, a));
        let cleared = s.map.get(&stray, 0).unwrap();
        assert_eq!((cleared.seq % 2, cleared.kind), (0, SLOT_EMPTY));
        assert_eq!(cleared.key, ServiceKey::default());
    }
}
