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
