//! The flow hash that picks a Maglev slot for a new flow.
//!
//! The same function runs in the kernel and in userspace, so the agent can answer "which
//! backend does this flow hit?" without sending a packet. It mixes the whole 5-tuple (the
//! VIP included) so flows to different services spread independently.

use crate::FlowKey;

#[inline(always)]
const fn mix(mut h: u32, v: u32) -> u32 {
    // murmur3's 32-bit block step.
    let mut k = v.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    h ^= k;
    h = h.rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Seeded murmur3-style hash of a flow's 5-tuple.
#[inline(always)]
pub fn flow_hash(k: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, k.src.words[0]);
    h = mix(h, k.src.words[1]);
    h = mix(h, k.src.words[2]);
    h = mix(h, k.src.words[3]);
    h = mix(h, k.dst.words[0]);
    h = mix(h, k.dst.words[1]);
    h = mix(h, k.dst.words[2]);
    h = mix(h, k.dst.words[3]);
    h = mix(h, ((k.src_port as u32) << 16) | k.dst_port as u32);
    h = mix(h, k.proto as u32);
    finish(h ^ 40)
}

/// Seeded hash of a flow's source address only (all its ports and destinations hash alike):
/// the Maglev slot of services with `SVC_FLAG_SRC_HASH`.
#[inline(always)]
pub fn source_hash(k: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, k.src.words[0]);
    h = mix(h, k.src.words[1]);
    h = mix(h, k.src.words[2]);
    h = mix(h, k.src.words[3]);
    finish(h ^ 16)
}

/// Seed for [`flow_hash`] when picking a Maglev slot.
pub const MAGLEV_SEED: u32 = 0x6c62_5f31;
/// Seed for [`flow_hash`] when choosing the first SNAT port to try.
pub const SNAT_SEED: u32 = 0x736e_6174;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Addr, FAMILY_V4, PROTO_TCP};

    #[test]
    fn spreads_source_ports_evenly() {
        let mut buckets = [0u32; 16];
        for port in 0..16000u16 {
            let k = FlowKey::new(
                Addr::v4(0x0201_000a),
                Addr::v4(0x0164_000a),
                port.to_be(),
                80u16.to_be(),
                PROTO_TCP,
                FAMILY_V4,
            );
            buckets[(flow_hash(&k, MAGLEV_SEED) % 16) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*max as f64 / *min as f64 <= 1.15, "{buckets:?}");
    }

    #[test]
    fn source_hash_ignores_everything_but_the_source_address() {
        let key = |src: u32, sport: u16, dst: u32| {
            FlowKey::new(
                Addr::v4(src),
                Addr::v4(dst),
                sport.to_be(),
                80u16.to_be(),
                PROTO_TCP,
                FAMILY_V4,
            )
        };
        let a = source_hash(&key(0x0201_000a, 1000, 0x0164_000a), MAGLEV_SEED);
        assert_eq!(
            a,
            source_hash(&key(0x0201_000a, 2000, 0x0264_000a), MAGLEV_SEED)
        );
        assert_ne!(
            a,
            source_hash(&key(0x0301_000a, 1000, 0x0164_000a), MAGLEV_SEED)
        );
        // Sources still spread over the slots.
        let mut buckets = [0u32; 16];
        for i in 0..16000u32 {
            buckets[(source_hash(&key(0x0a00_0000 + i, 1, 1), MAGLEV_SEED) % 16) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*max as f64 / *min as f64 <= 1.15, "{buckets:?}");
    }

    #[test]
    fn seed_changes_hash() {
        let k = FlowKey::default();
        assert_ne!(flow_hash(&k, 1), flow_hash(&k, 2));
    }
}
