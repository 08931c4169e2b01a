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

/// Builds a table of `size` slots.
///
/// Slot `s` holds the `id` of the backend that owns it. If no backend has a weight above 0,
/// every slot is 0 (the data plane's "no backend"). Otherwise every slot holds the id of a
/// backend with a weight above 0.
///
/// The result is independent of the order of `backends` (they are sorted by key first; ties,
/// which a correct caller never produces, are broken by id, then weight).
///
/// # Panics
///
/// If `size` is not prime: the permutations would not cover the table.
pub fn build_table(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
    assert!(
        is_prime(size),
        "Maglev table size {size} is not prime (next prime: {})",
        next_prime(size)
    );
    let m = size as usize;
    let mut table = vec![0u32; m];

    let mut active: Vec<&MaglevBackend<'_>> = backends.iter().filter(|b| b.weight > 0).collect();
    if active.is_empty() {
        return table;
    }
    debug_assert!(
        active.iter().all(|b| b.id != 0),
        "backend id 0 is reserved for \"no backend\""
    );
    // All three fields compared: equal elements are indistinguishable, so unstable is fine.
    active.sort_unstable_by(|a, b| {
        a.key
            .cmp(b.key)
            .then(a.id.cmp(&b.id))
            .then(a.weight.cmp(&b.weight))
    });
    let max_weight = active.iter().map(|b| b.weight).max().unwrap_or(1) as u64;

    let mut states: Vec<Cursor> = active
        .iter()
        .map(|b| {
            let (offset, skip) = permutation(b.key, size);
            let skip2 = advance(skip, skip, size);
            let skip3 = advance(skip2, skip, size);
            let skip4 = advance(skip3, skip, size);
            Cursor {
                pos: offset,
                skips: [skip, skip2, skip3, skip4],
                id: b.id,
                weight: b.weight as u64,
                credit: 0,
            }
        })
        .collect();

    // Occupancy bitmap: small enough to stay in L1 for the default size, and independent of
    // the ids written (so a wrong id 0 in a release build cannot cause double claims).
    let mut used = vec![0u64; m.div_ceil(64)];
    let mut filled = 0usize;
    loop {
        for c in states.iter_mut() {
            c.credit += c.weight;
            if c.credit < max_weight {
                continue;
            }
            c.credit -= max_weight;
            // A slot is still empty (filled < m) and the permutation visits every slot, so
            // this terminates.
            let p = first_free(&used, c.pos, c.skips, size);
            used[(p >> 6) as usize] |= 1u64 << (p & 63);
            table[p as usize] = c.id;
            c.pos = advance(p, c.skips[0], size);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// Where a backend is in its permutation during [`build_table`].
struct Cursor {
    /// Next candidate slot, `(offset + j * skip) % M` for the backend's current `j`.
    pos: u32,
    /// `k * skip % M` for k = 1..=4.
    skips: [u32; 4],
    id: u32,
    weight: u64,
    /// Weight accumulated since the last claim; below the largest weight between rounds.
    credit: u64,
}

#[inline(always)]
fn is_used(used: &[u64], p: u32) -> bool {
    used[(p >> 6) as usize] & (1u64 << (p & 63)) != 0
}

/// First empty slot of `p, p + skip, p + 2 * skip, ...` (mod `size`), where `skips` is
/// `[skip, 2 * skip, 3 * skip, 4 * skip]` mod `size`. Looks at four candidates per step so
/// the loop-carried dependency is one modular add per four probes instead of per probe
/// (this loop is nearly all of the build time, mostly while the table is nearly full).
#[inline(always)]
fn first_free(used: &[u64], mut p: u32, skips: [u32; 4], size: u32) -> u32 {
    loop {
        let q1 = advance(p, skips[0], size);
        let q2 = advance(p, skips[1], size);
        let q3 = advance(p, skips[2], size);
        let all_used = is_used(used, p) & is_used(used, q1) & is_used(used, q2) & is_used(used, q3);
        if !all_used {
            return if !is_used(used, p) {
                p
            } else if !is_used(used, q1) {
                q1
            } else if !is_used(used, q2) {
                q2
            } else {
                q3
            };
        }
        p = advance(p, skips[3], size);
    }
}

/// `(offset, skip)` of a backend's permutation over `size` slots.
fn permutation(key: &[u8], size: u32) -> (u32, u32) {
    let offset = (siphash24(H1_KEY, key) % size as u64) as u32;
    let skip = if size > 1 {
        (siphash24(H2_KEY, key) % (size as u64 - 1)) as u32 + 1
    } else {
        1
    };
    (offset, skip)
}

/// `(p + skip) % size` for `p < size`, `skip <= size`, without overflow.
#[inline(always)]
fn advance(p: u32, skip: u32, size: u32) -> u32 {
    let room = size - skip;
    if p >= room { p - room } else { p + skip }
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
        bs.sort_by(|a, b| (a.key, a.id, a.weight).cmp(&(b.key, b.id, b.weight)));
        let perms: Vec<Vec<u64>> = bs
            .iter()
            .map(|b| {
                let offset = siphash24(H1_KEY, b.key) % m;
                let skip = siphash24(H2_KEY, b.key) % (m - 1) + 1;
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
    }

    #[test]
    fn advance_wraps_without_overflow() {
        let m = LARGEST_U32_PRIME;
        for (p, s) in [
            (m - 1, m - 1),
            (m - 1, 1),
            (0, m - 1),
            (m / 2, m / 2 + 1),
            (5, 7),
        ] {
            let want = ((p as u64 + s as u64) % m as u64) as u32;
            assert_eq!(advance(p, s, m), want, "p={p} s={s}");
        }
        assert_eq!(advance(0, 1, 2), 1);
        assert_eq!(advance(1, 1, 2), 0);
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
                    p = advance(p, skip, size);
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

    /// Not a test of speed (nothing asserted): prints build times. Run with
    /// `cargo test -p lb-common --features user --release maglev::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        for n in [10usize, 100, 1000] {
            let k = keys(n);
            let bs = equal(&k);
            let mut best = std::time::Duration::MAX;
            for _ in 0..50 {
                let t0 = std::time::Instant::now();
                let t = build_table(&bs, M);
                best = best.min(t0.elapsed());
                assert_eq!(t.len(), M as usize);
            }
            println!("{n} backends, M={M}: best of 50 {best:?}");
        }
    }
}
