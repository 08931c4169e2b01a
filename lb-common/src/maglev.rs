//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016), built by the agent and
//! read by the XDP program: a new flow hashes to a slot, and the slot names its backend.
//!
//! Each backend derives a permutation of the `M` slots (`M` prime) from its key alone:
//! `offset = h1(key) % M`, `skip = h2(key) % (M - 1) + 1`, and its `j`-th preference is
//! `(offset + j * skip) % M`. Because `M` is prime and `0 < skip < M`, that visits every slot
//! exactly once. The table is filled in rounds; in each round every backend takes its next
//! preferred slot that is still empty.
//!
//! Weights follow Katran's weighted Maglev: in each round backend `i` adds `w_i` to its
//! credit, and when the credit reaches the largest weight it spends that much and claims one
//! slot. The heaviest backend claims a slot every round and a backend of weight `w` every
//! `max_w / w` rounds, so shares are proportional to weights, and with equal weights it is
//! exactly plain Maglev (every backend claims every round).
//!
//! The table depends only on the set of `(key, id, weight)`, not on the order they are given
//! in, nor on anything else (no random seed): two agents, or one agent across restarts, build
//! the same table from the same configuration, so flows keep their backends.

use alloc::vec;
use alloc::vec::Vec;

/// One backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity used to derive the permutation (e.g. `b"10.0.2.2:8080"`); must be
    /// unique in a service.
    pub key: &'a [u8],
    /// Value written into the table slots this backend owns (the data plane's backend id;
    /// never 0).
    pub id: u32,
    /// Relative weight; 0 = takes no slots (drain).
    pub weight: u32,
}

/// SipHash keys of the two permutation hashes. Changing them reshuffles every table.
const H1_KEY: (u64, u64) = (0x6c62_2d6d_6167_6c65, 0x7631_2d6f_6666_7365); // "lb-maglev1-offse"
const H2_KEY: (u64, u64) = (0x6c62_2d6d_6167_6c65, 0x7631_2d73_6b69_7070); // "lb-maglev1-skipp"

/// Candidates examined together while looking for a backend's next empty slot.
const GROUP: usize = 8;

/// Builds a table of `size` slots.
///
/// Slot `s` holds the `id` of the backend that owns it. If no backend has a weight above 0,
/// every slot is 0 (the data plane's "no backend"). Otherwise every slot holds the id of a
/// backend with a weight above 0.
///
/// The result is independent of the order of `backends`: rounds visit the backends in a
/// canonical order, sorted by their two permutation hashes (then key, id and weight, which
/// only matters for duplicate keys, which a correct caller never passes). Sorting by the
/// hashes rather than by the key bytes gives the same guarantee with cheaper comparisons.
///
/// # Panics
///
/// If `size` is not prime: the permutations would not cover the table.
pub fn build_table(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    let m = size as usize;
    let mut table = vec![0u32; m];

    let mut active: Vec<(u64, u64, &MaglevBackend<'_>)> = backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| (siphash24(H1_KEY, b.key), siphash24(H2_KEY, b.key), b))
        .collect();
    if active.is_empty() {
        return table;
    }
    debug_assert!(
        active.iter().all(|(_, _, b)| b.id != 0),
        "backend id 0 is reserved for \"no backend\""
    );
    // All fields compared: equal elements are indistinguishable, so unstable is fine.
    active.sort_unstable_by(|(a1, a2, a), (b1, b2, b)| {
        (a1, a2)
            .cmp(&(b1, b2))
            .then_with(|| a.key.cmp(b.key))
            .then(a.id.cmp(&b.id))
            .then(a.weight.cmp(&b.weight))
    });
    let max_weight = active.iter().map(|(_, _, b)| b.weight).max().unwrap_or(1) as u64;

    let mut cursors: Vec<Cursor> = active
        .iter()
        .map(|&(h1, h2, b)| {
            let (offset, skip) = offset_skip(h1, h2, size);
            Cursor::new(offset, skip, size, b)
        })
        .collect();

    // Which slots are taken, stored twice (`taken[s] == taken[s + M]`) so a candidate
    // `pos + k * skip` can be looked up without reducing it modulo M first. Bytes rather than
    // bits: fewer instructions per probe, and probing is nearly all of the build time.
    let mut taken = vec![false; 2 * m];
    // While the table is sparse a backend's next preference is usually free: test it alone.
    // Later, test a group of candidates without branching on each (see `first_free`).
    let sparse = m / 4;
    let mut filled = 0usize;
    loop {
        for c in cursors.iter_mut() {
            c.credit += c.weight;
            if c.credit < max_weight {
                continue;
            }
            c.credit -= max_weight;
            let p = c.pos as usize;
            // A slot is still empty (filled < M) and the permutation visits every slot, so
            // `first_free` terminates.
            let q = if filled < sparse && !taken[p] {
                p
            } else {
                first_free(&taken, p, &c.offsets, c.stride, m)
            };
            taken[q] = true;
            taken[q + m] = true;
            table[q] = c.id;
            c.pos = add_mod(q as u64, c.offsets[1] as u64, m as u64) as u32;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// Where a backend is in its permutation during [`build_table`]. The permutation itself is
/// never materialised: the next candidate is `(pos + k * skip) % M`.
struct Cursor {
    /// The backend's next candidate slot, `(offset + j * skip) % M` for its current `j`.
    pos: u32,
    id: u32,
    /// `k * skip % M` for `k` in `0..GROUP`: `pos + offsets[k]` (mod M) is the backend's
    /// `k`-th candidate from `pos` on. `offsets[1]` is `skip`.
    offsets: [u32; GROUP],
    /// `GROUP * skip % M`: from one group of candidates to the next.
    stride: u32,
    weight: u64,
    /// Weight accumulated since the last claim; below the largest weight between rounds.
    credit: u64,
}

impl Cursor {
    fn new(offset: u32, skip: u32, size: u32, b: &MaglevBackend<'_>) -> Self {
        let (skip, size) = (skip as u64, size as u64);
        let mut offsets = [0u32; GROUP];
        for k in 1..GROUP {
            offsets[k] = add_mod(offsets[k - 1] as u64, skip, size) as u32;
        }
        Self {
            pos: offset,
            id: b.id,
            offsets,
            stride: add_mod(offsets[GROUP - 1] as u64, skip, size) as u32,
            weight: b.weight as u64,
            credit: 0,
        }
    }
}

/// First slot not `taken` (the mirrored occupancy of [`build_table`]) in `p, p + skip,
/// p + 2 * skip, ...` modulo `m`. Tests `GROUP` candidates per step and picks the first free
/// one from a bit mask: one hard-to-predict branch per group instead of one per candidate.
#[inline(always)]
fn first_free(
    taken: &[bool],
    mut p: usize,
    offsets: &[u32; GROUP],
    stride: u32,
    m: usize,
) -> usize {
    loop {
        let mut used = 0u32;
        for (k, &o) in offsets.iter().enumerate() {
            used |= (taken[p + o as usize] as u32) << k;
        }
        if used != (1 << GROUP) - 1 {
            let k = (!used).trailing_zeros() as usize;
            return add_mod(p as u64, offsets[k] as u64, m as u64) as usize;
        }
        p = add_mod(p as u64, stride as u64, m as u64) as usize;
    }
}

/// `(a + b) % m` for `a, b < m <= 2^32`, without a division or a branch.
#[inline(always)]
fn add_mod(a: u64, b: u64, m: u64) -> u64 {
    let t = a + b;
    // When t < m, t - m wraps to a huge value and t is the minimum.
    t.min(t.wrapping_sub(m))
}

/// `(offset, skip)` of a permutation over `size` slots from the key's two hashes.
fn offset_skip(h1: u64, h2: u64, size: u32) -> (u32, u32) {
    let size = size as u64;
    let offset = (h1 % size) as u32;
    // `size` is prime, so at least 2.
    let skip = (h2 % (size - 1)) as u32 + 1;
    (offset, skip)
}

/// `(offset, skip)` of `key`'s permutation over `size` slots.
#[cfg(test)]
fn permutation(key: &[u8], size: u32) -> (u32, u32) {
    offset_skip(siphash24(H1_KEY, key), siphash24(H2_KEY, key), size)
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of `data` under the 128-bit key `(k0, k1)` (the reference algorithm; equal to
/// `std`'s `SipHasher::new_with_keys(k0, k1)` fed the same bytes with one `write`).
fn siphash24((k0, k1): (u64, u64), data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let m = u64::from_le_bytes(b);
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut b = [0u8; 8];
    b[..rest.len()].copy_from_slice(rest);
    b[7] = data.len() as u8;
    let m = u64::from_le_bytes(b);
    v[3] ^= m;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Whether `n` is prime.
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    // Candidates 6k - 1 and 6k + 1 up to sqrt(n); u64 so i * i cannot overflow.
    let n = n as u64;
    let mut i = 5u64;
    while i * i <= n {
        if n.is_multiple_of(i) || n.is_multiple_of(i + 2) {
            return false;
        }
        i += 6;
    }
    true
}

/// Largest prime a `u32` holds.
pub const LARGEST_U32_PRIME: u32 = 4_294_967_291;

/// Next prime >= n (for suggestions in config errors).
///
/// # Panics
///
/// If `n > LARGEST_U32_PRIME` (no such prime fits a `u32`).
pub fn next_prime(n: u32) -> u32 {
    assert!(n <= LARGEST_U32_PRIME, "no prime >= {n} fits in a u32");
    let mut n = n.max(2);
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::format;
    use alloc::string::String;
    use std::println;

    const M: u32 = 65537;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255))
            .collect()
    }

    /// Backends with ids 1..=n, weight 1, keys from [`keys`].
    fn equal(keys: &[String]) -> Vec<MaglevBackend<'_>> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| MaglevBackend {
                key: k.as_bytes(),
                id: i as u32 + 1,
                weight: 1,
            })
            .collect()
    }

    /// Slots per id, indexed by id (so index 0 counts empty slots).
    fn counts(table: &[u32], max_id: u32) -> Vec<usize> {
        let mut c = vec![0usize; max_id as usize + 1];
        for &id in table {
            c[id as usize] += 1;
        }
        c
    }

    /// Small deterministic PRNG (xorshift64*) for shuffles.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = (self.next() % (i as u64 + 1)) as usize;
                v.swap(i, j);
            }
        }
    }

    /// The paper's algorithm written the obvious way (full permutations, `%` on u64) with
    /// Katran's weight rule, as an oracle for the incremental version.
    fn reference(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
        let m = size as u64;
        let mut bs: Vec<MaglevBackend<'_>> =
            backends.iter().copied().filter(|b| b.weight > 0).collect();
        let mut table = vec![0u32; size as usize];
        if bs.is_empty() {
            return table;
        }
        let h = |b: &MaglevBackend<'_>| (siphash24(H1_KEY, b.key), siphash24(H2_KEY, b.key));
        bs.sort_by(|a, b| (h(a), a.key, a.id, a.weight).cmp(&(h(b), b.key, b.id, b.weight)));
        let perms: Vec<Vec<u64>> = bs
            .iter()
            .map(|b| {
                let (h1, h2) = h(b);
                let offset = h1 % m;
                let skip = if m > 1 { h2 % (m - 1) + 1 } else { 1 };
                (0..m).map(|j| (offset + j * skip) % m).collect()
            })
            .collect();
        let max_w = bs.iter().map(|b| b.weight).max().unwrap() as u64;
        let mut next = vec![0usize; bs.len()];
        let mut credit = vec![0u64; bs.len()];
        let mut taken = vec![false; size as usize];
        let mut filled = 0;
        loop {
            for i in 0..bs.len() {
                credit[i] += bs[i].weight as u64;
                if credit[i] < max_w {
                    continue;
                }
                credit[i] -= max_w;
                let mut c = perms[i][next[i]];
                while taken[c as usize] {
                    next[i] += 1;
                    c = perms[i][next[i]];
                }
                taken[c as usize] = true;
                table[c as usize] = bs[i].id;
                next[i] += 1;
                filled += 1;
                if filled == size as usize {
                    return table;
                }
            }
        }
    }

    /// Share of slots (of `M`) that changed owner between `old` and `new`, not counting slots
    /// owned by `excluded` in `excluded_in` (the removed or added backend's slots).
    fn moved_others(old: &[u32], new: &[u32], excluded_in: &[u32], excluded: u32) -> f64 {
        let moved = old
            .iter()
            .zip(new)
            .zip(excluded_in)
            .filter(|((o, n), e)| **e != excluded && o != n)
            .count();
        moved as f64 / old.len() as f64
    }

    // --- 1. Balance ---------------------------------------------------------------------

    #[test]
    fn balance_100_equal_backends() {
        let k = keys(100);
        let t = build_table(&equal(&k), M);
        let c = counts(&t, 100);
        assert_eq!(c[0], 0);
        let (min, max) = (c[1..].iter().min().unwrap(), c[1..].iter().max().unwrap());
        assert!(*max as f64 / *min as f64 <= 1.1, "min {min} max {max}");
        // Plain Maglev gives every backend floor(M/N) or ceil(M/N).
        assert!(*min >= 655 && *max <= 656, "min {min} max {max}");
    }

    // --- 2. Disruption ------------------------------------------------------------------

    #[test]
    fn removing_one_backend_disrupts_few_others() {
        for n in [3usize, 10, 100, 1000] {
            let k = keys(n);
            let all = equal(&k);
            let old = build_table(&all, M);
            // Remove backends at several positions (first, middle, last id, and a few more).
            for r in [0, n / 2, n - 1, n / 3, (2 * n) / 3] {
                let removed = all[r].id;
                let rest: Vec<_> = all.iter().copied().filter(|b| b.id != removed).collect();
                let new = build_table(&rest, M);
                assert!(new.iter().all(|&id| id != removed && id != 0));
                let moved = moved_others(&old, &new, &old, removed);
                let bound = 1.0 / n as f64 + 0.01;
                println!("remove 1 of {n} (id {removed}): moved {moved:.5}, bound {bound:.5}");
                assert!(moved <= bound, "n={n} removed={removed} moved={moved}");
            }
        }
    }

    #[test]
    fn adding_one_backend_disrupts_few_others() {
        for n in [3usize, 10, 100, 1000] {
            let k = keys(n + 1);
            let all = equal(&k);
            let old = build_table(&all[..n], M);
            let new = build_table(&all, M);
            let added = all[n].id;
            let c = counts(&new, added);
            // The newcomer gets its fair share ...
            assert!(c[added as usize] >= M as usize / (n + 1));
            // ... mostly taken from the others' slots without reshuffling the rest. Adding
            // to n is removing from n + 1 in reverse, so the removal bound applies.
            let moved = moved_others(&old, &new, &new, added);
            let bound = 1.0 / n as f64 + 0.01;
            println!("add 1 to {n}: moved {moved:.5}, bound {bound:.5}");
            assert!(moved <= bound, "n={n} moved={moved}");
        }
    }

    #[test]
    fn draining_equals_removing() {
        let k = keys(10);
        let mut bs = equal(&k);
        let without: Vec<_> = bs.iter().copied().filter(|b| b.id != 4).collect();
        bs[3].weight = 0;
        assert_eq!(build_table(&bs, M), build_table(&without, M));
    }

    #[test]
    fn changing_one_weight_disrupts_few_others() {
        let k = keys(10);
        let mut bs = equal(&k);
        for b in bs.iter_mut() {
            b.weight = 10;
        }
        let old = build_table(&bs, M);
        bs[5].weight = 5;
        let new = build_table(&bs, M);
        let changed = bs[5].id;
        let c = counts(&new, 10);
        let share = c[changed as usize] as f64 / M as f64;
        assert!((share - 5.0 / 95.0).abs() < 0.005, "share {share}");
        let moved = moved_others(&old, &new, &old, changed);
        println!("halve 1 of 10 weights: moved among others {moved:.5}");
        assert!(moved <= 0.1 + 0.01, "moved {moved}");
    }

    // --- 3. Weights ---------------------------------------------------------------------

    #[test]
    fn shares_follow_weights() {
        let k = keys(3);
        let bs: Vec<_> = k
            .iter()
            .enumerate()
            .map(|(i, k)| MaglevBackend {
                key: k.as_bytes(),
                id: 10 + i as u32,
                weight: i as u32 + 1,
            })
            .collect();
        let t = build_table(&bs, M);
        let c = counts(&t, 12);
        assert_eq!(c[0], 0);
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = c[10 + i] as f64 / M as f64;
            assert!(
                (got - want).abs() < 0.01,
                "weight {}: {got} vs {want}",
                i + 1
            );
        }
    }

    #[test]
    fn shares_follow_weights_many_backends() {
        // 50 backends with weights 1..=5 (10 each): a weight-w backend gets w/150 of slots.
        let k = keys(50);
        let bs: Vec<_> = k
            .iter()
            .enumerate()
            .map(|(i, k)| MaglevBackend {
                key: k.as_bytes(),
                id: i as u32 + 1,
                weight: (i % 5) as u32 + 1,
            })
            .collect();
        let t = build_table(&bs, M);
        let c = counts(&t, 50);
        for b in &bs {
            let want = M as f64 * b.weight as f64 / 150.0;
            let got = c[b.id as usize] as f64;
            assert!((got - want).abs() / want < 0.03, "{b:?}: {got} vs {want}");
        }
    }

    #[test]
    fn extreme_weight_ratio() {
        let k = keys(2);
        let bs = [
            MaglevBackend {
                key: k[0].as_bytes(),
                id: 1,
                weight: u32::MAX,
            },
            MaglevBackend {
                key: k[1].as_bytes(),
                id: 2,
                weight: 1,
            },
        ];
        let c = counts(&build_table(&bs, M), 2);
        assert_eq!(c[1] + c[2], M as usize);
        assert!(c[2] <= 1, "{c:?}");
    }

    #[test]
    fn weight_zero_gets_no_slot() {
        let k = keys(4);
        let mut bs = equal(&k);
        bs[2].weight = 0;
        let t = build_table(&bs, M);
        let c = counts(&t, 4);
        assert_eq!(c[3], 0);
        assert_eq!(c[0], 0);
        assert!(c[1] > 0 && c[2] > 0 && c[4] > 0);
    }

    #[test]
    fn all_zero_weights_give_all_zero_table() {
        let k = keys(5);
        let mut bs = equal(&k);
        for b in bs.iter_mut() {
            b.weight = 0;
        }
        assert!(build_table(&bs, M).iter().all(|&id| id == 0));
        assert!(build_table(&[], M).iter().all(|&id| id == 0));
        assert_eq!(build_table(&[], 7).len(), 7);
    }

    #[test]
    fn equal_weights_are_plain_maglev() {
        let k = keys(20);
        let ones = equal(&k);
        let sevens: Vec<_> = ones
            .iter()
            .map(|b| MaglevBackend { weight: 7, ..*b })
            .collect();
        let t = build_table(&ones, M);
        assert_eq!(t, build_table(&sevens, M));
        // Plain Maglev: backends take turns, so counts differ by at most one.
        let c = counts(&t, 20);
        let (min, max) = (c[1..].iter().min().unwrap(), c[1..].iter().max().unwrap());
        assert!(max - min <= 1, "{c:?}");
    }

    // --- 4. Order independence ----------------------------------------------------------

    #[test]
    fn order_does_not_matter() {
        let k = keys(200);
        let mut bs: Vec<_> = k
            .iter()
            .enumerate()
            .map(|(i, k)| MaglevBackend {
                key: k.as_bytes(),
                id: 1000 + i as u32,
                weight: (i % 4) as u32,
            })
            .collect();
        let want = build_table(&bs, M);
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..5 {
            rng.shuffle(&mut bs);
            assert_eq!(build_table(&bs, M), want);
        }
        bs.reverse();
        assert_eq!(build_table(&bs, M), want);
    }

    // --- 5. Every slot filled -----------------------------------------------------------

    #[test]
    fn every_slot_holds_a_weighted_backend() {
        for (n, size) in [
            (1usize, 7u32),
            (2, 2),
            (3, 3),
            (5, 101),
            (10, 7),
            (37, 4099),
            (7, M),
        ] {
            let k = keys(n);
            let mut bs = equal(&k);
            if n > 2 {
                bs[1].weight = 0;
                bs[2].weight = 3;
            }
            let t = build_table(&bs, size);
            assert_eq!(t.len(), size as usize);
            for &id in &t {
                assert!(
                    bs.iter().any(|b| b.id == id && b.weight > 0),
                    "n={n} size={size}: slot holds {id}"
                );
            }
        }
    }

    #[test]
    fn more_backends_than_slots() {
        let k = keys(50);
        let t = build_table(&equal(&k), 13);
        let c = counts(&t, 50);
        assert_eq!(c[0], 0);
        assert!(c.iter().all(|&n| n <= 1), "{c:?}");
    }

    #[test]
    fn single_backend_takes_everything() {
        let bs = [MaglevBackend {
            key: b"10.0.2.2:8080",
            id: 9,
            weight: 3,
        }];
        assert!(build_table(&bs, M).iter().all(|&id| id == 9));
    }

    #[test]
    fn thousand_backends_sanity() {
        let k = keys(1000);
        let bs = equal(&k);
        let t = build_table(&bs, M);
        let c = counts(&t, 1000);
        assert_eq!(c[0], 0);
        assert!(c[1..].iter().all(|&n| n == 65 || n == 66), "uneven");
    }

    // --- Incremental arithmetic against the textbook algorithm ---------------------------

    #[test]
    fn matches_reference_implementation() {
        let k = keys(40);
        let bs: Vec<_> = k
            .iter()
            .enumerate()
            .map(|(i, k)| MaglevBackend {
                key: k.as_bytes(),
                id: i as u32 + 1,
                weight: [1, 1, 2, 5, 0, 3][i % 6],
            })
            .collect();
        for size in [2u32, 3, 5, 31, 251, 4099, 10007] {
            assert_eq!(build_table(&bs, size), reference(&bs, size), "size {size}");
            assert_eq!(build_table(&bs[..3], size), reference(&bs[..3], size));
        }
        assert_eq!(build_table(&bs[..12], M), reference(&bs[..12], M));
    }

    #[test]
    fn largest_table_size() {
        let k = keys(50);
        let size = crate::MAX_MAGLEV_SIZE;
        let t = build_table(&equal(&k), size);
        let c = counts(&t, 50);
        assert_eq!(c[0], 0);
        let (min, max) = (c[1..].iter().min().unwrap(), c[1..].iter().max().unwrap());
        assert!(max - min <= 1, "min {min} max {max}");
    }

    #[test]
    fn add_mod_wraps_without_overflow() {
        let m = LARGEST_U32_PRIME as u64;
        for (a, b) in [
            (m - 1, m - 1),
            (m - 1, 1),
            (0, m - 1),
            (m / 2, m / 2 + 1),
            (5, 7),
            (0, 0),
        ] {
            assert_eq!(add_mod(a, b, m), (a + b) % m, "a={a} b={b}");
        }
        let m = u32::MAX as u64 + 1;
        assert_eq!(add_mod(m - 1, m - 1, m), m - 2);
        assert_eq!(add_mod(0, 1, 2), 1);
        assert_eq!(add_mod(1, 1, 2), 0);
    }

    #[test]
    fn permutation_is_in_range_and_covers_table() {
        for size in [2u32, 3, 13, 101] {
            for key in keys(20) {
                let (offset, skip) = permutation(key.as_bytes(), size);
                assert!(offset < size && skip >= 1 && skip < size);
                let mut seen = vec![false; size as usize];
                let mut p = offset;
                for _ in 0..size {
                    assert!(!seen[p as usize]);
                    seen[p as usize] = true;
                    p = add_mod(p as u64, skip as u64, size as u64) as u32;
                }
                assert_eq!(p, offset);
            }
        }
    }

    // --- Hashes -------------------------------------------------------------------------

    #[test]
    fn siphash_matches_reference_vectors() {
        // The SipHash paper's test vector: key 00..0f, message 00..0e.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24((k0, k1), &msg), 0xa129_ca61_49be_45e5);
        // And std's SipHash-2-4 for every length 0..64 (covers each tail length).
        #[allow(deprecated)]
        for len in 0..64u8 {
            use core::hash::Hasher;
            let msg: Vec<u8> = (0..len).collect();
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            h.write(&msg);
            assert_eq!(siphash24((k0, k1), &msg), h.finish(), "len {len}");
        }
    }

    #[test]
    fn offset_and_skip_hashes_are_independent_and_spread() {
        // Bucket 20000 keys into 64 buckets by h1 and by h2, and h1 against h2 by low bit.
        let k = keys(20000);
        let mut b1 = [0u32; 64];
        let mut b2 = [0u32; 64];
        let mut same_low_bit = 0u32;
        for key in &k {
            let (h1, h2) = (
                siphash24(H1_KEY, key.as_bytes()),
                siphash24(H2_KEY, key.as_bytes()),
            );
            b1[(h1 % 64) as usize] += 1;
            b2[(h2 % 64) as usize] += 1;
            same_low_bit += ((h1 ^ h2) & 1 == 0) as u32;
        }
        for b in [b1, b2] {
            let (min, max) = (b.iter().min().unwrap(), b.iter().max().unwrap());
            assert!(*min > 230 && *max < 400, "{b:?}");
        }
        assert!((9500..10500).contains(&same_low_bit), "{same_low_bit}");
    }

    // --- 6. Primes ----------------------------------------------------------------------

    #[test]
    fn is_prime_known_values() {
        assert!(!is_prime(0));
        assert!(!is_prime(1));
        assert!(is_prime(2));
        assert!(is_prime(3));
        assert!(!is_prime(4));
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(is_prime(crate::DEFAULT_MAGLEV_SIZE));
        assert!(is_prime(1_000_003));
        assert!(is_prime(2_147_483_647));
        assert!(is_prime(LARGEST_U32_PRIME));
        assert!(!is_prime(u32::MAX));
        assert!(!is_prime(65521 * 65519)); // product of two large primes
        assert!(!is_prime(25) && !is_prime(49) && !is_prime(121));
    }

    #[test]
    fn is_prime_matches_sieve() {
        const N: usize = 100_000;
        let mut sieve = vec![true; N];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..N {
            if sieve[i] {
                for j in (i * i..N).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &p) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u32), p, "{n}");
        }
    }

    #[test]
    fn next_prime_known_values() {
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(1), 2);
        assert_eq!(next_prime(2), 2);
        assert_eq!(next_prime(3), 3);
        assert_eq!(next_prime(4), 5);
        assert_eq!(next_prime(65536), 65537);
        assert_eq!(next_prime(65537), 65537);
        assert_eq!(next_prime(65538), 65539);
        assert_eq!(next_prime(1_000_000), 1_000_003);
        assert_eq!(next_prime(LARGEST_U32_PRIME - 1), LARGEST_U32_PRIME);
        assert_eq!(next_prime(LARGEST_U32_PRIME), LARGEST_U32_PRIME);
        assert!(is_prime(crate::MAX_MAGLEV_SIZE));
    }

    #[test]
    #[should_panic(expected = "no prime")]
    fn next_prime_beyond_largest_panics() {
        next_prime(LARGEST_U32_PRIME + 1);
    }

    #[test]
    #[should_panic(expected = "not prime")]
    fn non_prime_size_panics() {
        build_table(&[], 65536);
    }
}
