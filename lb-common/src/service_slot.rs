//! `SERVICE_SLOTS`: a direct-mapped copy of `SERVICES` that the packet path reads first.
//!
//! A hash-map lookup costs the packet path ~30 ns here (two kernel calls, each through the
//! return thunk); the verifier inlines an array lookup into a few instructions. So the agent
//! keeps an array of [`SERVICE_SLOTS`] slots next to `SERVICES`, slot [`slot_of`]`(key)`
//! holding:
//! - [`SLOT_EMPTY`]: no service hashes here, so the packet is to no service;
//! - [`SLOT_ONE`]: exactly one service hashes here, and `key`/`value` are its record;
//! - [`SLOT_SHARED`]: several do; the packet path looks the key up in `SERVICES`.
//!
//! `SERVICES` stays the source of truth (and what a new agent adopts); the slots are rebuilt
//! from it at every load.
//!
//! An array update is a plain copy that a packet on another CPU may read half done, so a slot
//! is written as a seqlock: `seq` goes odd (contents unchanged), then the contents change
//! (`seq` still odd), then `seq` goes even again (contents unchanged). A reader that sees an
//! odd `seq`, or a different `seq` after reading the slot, falls back to `SERVICES`.

use crate::{ServiceKey, ServiceSlot, ServiceValue};

/// Slots in `SERVICE_SLOTS`: a power of two, eight per possible service.
pub const SERVICE_SLOTS: u32 = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 13;
const _: () = assert!(SERVICE_SLOTS >= 8 * crate::MAX_SERVICES);

/// `ServiceSlot::kind`: see the module docs.
pub const SLOT_EMPTY: u32 = 0;
pub const SLOT_ONE: u32 = 1;
pub const SLOT_SHARED: u32 = 2;

/// The slot of a service key: multiply-xor over the key's words, top bits of the product.
/// Cheap on the packet path (a multiply per word, no branches).
#[inline(always)]
pub const fn slot_of(k: &ServiceKey) -> u32 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let tail = ((k.port as u32) << 16) | ((k.proto as u32) << 8) | k.family as u32;
    let mut h = (k.vip.words[0] as u64).wrapping_mul(M);
    h = (h ^ k.vip.words[1] as u64).wrapping_mul(M);
    h = (h ^ k.vip.words[2] as u64).wrapping_mul(M);
    h = (h ^ k.vip.words[3] as u64).wrapping_mul(M);
    h = (h ^ tail as u64).wrapping_mul(M);
    (h >> (64 - SLOT_BITS)) as u32
}

impl ServiceSlot {
    /// A stable (even `seq`) slot for the services that hash to it.
    pub fn for_members(seq: u32, members: &[(ServiceKey, ServiceValue)]) -> Self {
        let mut s = Self::zeroed();
        s.seq = seq;
        match members {
            [] => s.kind = SLOT_EMPTY,
            [(k, v)] => {
                s.kind = SLOT_ONE;
                s.key = *k;
                s.value = *v;
            }
            _ => s.kind = SLOT_SHARED,
        }
        s
    }

    /// All zero: an empty slot.
    pub const fn zeroed() -> Self {
        // SAFETY: plain integers: all-zero is a valid value.
        unsafe { core::mem::zeroed() }
    }

    /// Same kind, key and value (ignores `seq`).
    pub fn same_contents(&self, other: &Self) -> bool {
        self.kind == other.kind && self.key == other.key && self.value == other.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Addr, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

    fn key(a: u32, port: u16, proto: u8) -> ServiceKey {
        ServiceKey::new(Addr::v4(a.to_be()), port.to_be(), proto, FAMILY_V4)
    }

    /// Keys in slots shared with another key, out of `keys`.
    fn shared(keys: impl Iterator<Item = ServiceKey>) -> u32 {
        let mut used = [0u16; SERVICE_SLOTS as usize];
        for k in keys {
            let s = slot_of(&k);
            assert!(s < SERVICE_SLOTS);
            used[s as usize] += 1;
        }
        used.iter().filter(|c| **c > 1).map(|c| *c as u32).sum()
    }

    #[test]
    fn slots_spread_like_random() {
        // 1024 keys (the most services) uniformly in 8192 slots: ~12% share a slot.
        let by_addr = shared((0..1024).map(|i| key(0x0a00_6401 + i, 80, PROTO_TCP)));
        assert!(by_addr < 164, "{by_addr} of 1024 VIPs share a slot");
        let by_port = shared((0..1024).map(|i| key(0x0a00_6401, 1000 + i as u16, PROTO_TCP)));
        assert!(by_port < 164, "{by_port} of 1024 ports share a slot");
    }

    #[test]
    fn every_field_moves_the_slot() {
        let base = key(0x0a00_6401, 80, PROTO_TCP);
        let mut v6 = base;
        v6.family = FAMILY_V6;
        let mut hi = base;
        hi.vip.words[3] = 1;
        for other in [
            key(0x0a00_6402, 80, PROTO_TCP),
            key(0x0a00_6401, 81, PROTO_TCP),
            key(0x0a00_6401, 80, PROTO_UDP),
            v6,
            hi,
        ] {
            assert_ne!(slot_of(&base), slot_of(&other), "{other:?}");
        }
    }

    #[test]
    fn contents_by_member_count() {
        let (k1, k2) = (key(1, 80, PROTO_TCP), key(2, 80, PROTO_TCP));
        let v = ServiceValue {
            id: 7,
            maglev_size: 13,
            ..ServiceValue::default()
        };
        assert_eq!(ServiceSlot::for_members(4, &[]).kind, SLOT_EMPTY);
        let one = ServiceSlot::for_members(4, &[(k1, v)]);
        assert_eq!(
            (one.seq, one.kind, one.key, one.value),
            (4, SLOT_ONE, k1, v)
        );
        let shared = ServiceSlot::for_members(4, &[(k1, v), (k2, v)]);
        assert_eq!(shared.kind, SLOT_SHARED);
        assert_eq!(
            shared.key,
            ServiceKey::default(),
            "no record in a shared slot"
        );
        assert!(one.same_contents(&ServiceSlot::for_members(9, &[(k1, v)])));
        assert!(!one.same_contents(&shared));
    }
}
