//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! The XDP program rewrites addresses and ports and patches the IPv4 header and TCP/UDP
//! checksums with these instead of recomputing them over the packet (which the verifier
//! rejects for variable-length data, and which would cost far more).
//!
//! All values are taken exactly as they sit in the packet (wire order, read as native
//! integers); one's-complement sums are byte-order independent as long as every operand uses
//! the same order.

/// Folds a 32-bit-or-wider one's-complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds a 32-bit word to an accumulator: whole, since 2^16 = 1 (mod 2^16 - 1) makes that
/// the same one's-complement sum as adding its two 16-bit halves, in one instruction instead
/// of four ([`fold`] reduces the 64-bit total; a few dozen words cannot overflow it).
#[inline(always)]
const fn add32(acc: u64, w: u32) -> u64 {
    acc + w as u64
}

/// A pending checksum adjustment: add the words that leave, the words that arrive, and apply
/// the difference to any number of checksums that cover them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delta {
    acc: u64,
}

impl Delta {
    pub const fn new() -> Self {
        Self { acc: 0 }
    }

    /// Records that the 32-bit word `old` is replaced by `new`.
    #[inline(always)]
    pub const fn replace32(self, old: u32, new: u32) -> Self {
        Self {
            acc: add32(add32(self.acc, !old), new),
        }
    }

    /// Records that the 16-bit word `old` is replaced by `new`.
    #[inline(always)]
    pub const fn replace16(self, old: u16, new: u16) -> Self {
        Self {
            acc: self.acc + (!old) as u64 + new as u64,
        }
    }

    /// Records a 128-bit (IPv6) or 32-bit (IPv4, other words zero) address change.
    #[inline(always)]
    pub const fn replace_addr(self, old: &[u32; 4], new: &[u32; 4]) -> Self {
        self.replace32(old[0], new[0])
            .replace32(old[1], new[1])
            .replace32(old[2], new[2])
            .replace32(old[3], new[3])
    }

    /// Both deltas' changes together.
    #[inline(always)]
    pub const fn merge(self, other: Delta) -> Self {
        Self {
            acc: self.acc + other.acc,
        }
    }

    /// The changes as a 32-bit one's-complement sum (the kernel's `__wsum`), for the
    /// checksum helpers of tc programs (`bpf_l4_csum_replace` with a diff).
    #[inline(always)]
    pub const fn wsum(self) -> u32 {
        let s = (self.acc & 0xffff_ffff) + (self.acc >> 32);
        ((s & 0xffff_ffff) + (s >> 32)) as u32
    }

    /// Applies the recorded changes to checksum field `check` (as stored in the packet).
    #[inline(always)]
    pub const fn apply(self, check: u16) -> u16 {
        !fold((!check) as u64 + self.acc)
    }

    /// Like [`Delta::apply`] for a UDP-over-IPv4 checksum, where 0 means "no checksum" and a
    /// computed 0 is sent as 0xffff (RFC 768).
    #[inline(always)]
    pub const fn apply_udp4(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        let c = self.apply(check);
        if c == 0 { 0xffff } else { c }
    }
}

/// Full Internet checksum of `data` (for tests and userspace packet builders), with an
/// initial accumulator (e.g. a pseudo-header sum).
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_ne_bytes([*last, 0]) as u64;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header (from RFC 1071 examples / a real capture) with a valid checksum.
    fn header(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 0x3c, 0x1c, 0x46, 0x40, 0, 0x40, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        h
    }

    fn word(b: &[u8]) -> u32 {
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let cases = [
            ([10, 0, 1, 2], [10, 0, 100, 1], [10, 0, 2, 1], [10, 0, 2, 2]),
            (
                [0, 0, 0, 0],
                [255, 255, 255, 255],
                [1, 2, 3, 4],
                [0, 0, 0, 0],
            ),
            (
                [192, 168, 1, 1],
                [8, 8, 8, 8],
                [192, 168, 1, 1],
                [8, 8, 8, 8],
            ),
            (
                [255, 255, 0, 0],
                [0, 0, 255, 255],
                [0, 0, 255, 255],
                [255, 255, 0, 0],
            ),
        ];
        for (s0, d0, s1, d1) in cases {
            let before = header(s0, d0);
            let after = header(s1, d1);
            let old = u16::from_ne_bytes([before[10], before[11]]);
            let d = Delta::new()
                .replace32(word(&before[12..]), word(&after[12..]))
                .replace32(word(&before[16..]), word(&after[16..]));
            let got = d.apply(old);
            // 0x0000 and 0xffff are both "zero" in one's complement; a valid header sums to
            // all-ones either way.
            let mut patched = before;
            patched[12..20].copy_from_slice(&after[12..20]);
            patched[10..12].copy_from_slice(&got.to_ne_bytes());
            assert_eq!(checksum(&patched, 0), 0, "case {s0:?}->{s1:?}");
        }
    }

    #[test]
    fn replace16_matches() {
        let data = [0x12u8, 0x34, 0xab, 0xcd, 0x00, 0x50];
        let c = checksum(&data, 0);
        let mut data2 = data;
        data2[4..6].copy_from_slice(&[0x1f, 0x90]);
        let d = Delta::new().replace16(
            u16::from_ne_bytes([0x00, 0x50]),
            u16::from_ne_bytes([0x1f, 0x90]),
        );
        let mut full = data2.to_vec();
        full.extend_from_slice(&d.apply(c).to_ne_bytes());
        assert_eq!(checksum(&full, 0), 0);
    }

    /// Adding whole 32-bit words gives exactly what adding their 16-bit halves gave (the
    /// previous form), zero and all-ones results included.
    #[test]
    fn whole_words_fold_like_halves() {
        let by_halves = |pairs: &[(u32, u32)], check: u16| {
            let acc = pairs
                .iter()
                .flat_map(|(old, new)| [!old, *new])
                .fold(0u64, |a, w| a + (w & 0xffff) as u64 + (w >> 16) as u64);
            !fold((!check) as u64 + acc)
        };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..200_000u32 {
            // Up to 10 replaced words: an IPv6 header's addresses plus the ports.
            let n = 1 + (i % 10) as usize;
            let mut pairs = [(0u32, 0u32); 10];
            for p in &mut pairs[..n] {
                *p = match i % 5 {
                    0 => (u32::MAX, 0),
                    1 => (0, u32::MAX),
                    _ => (next() as u32, next() as u32),
                };
            }
            let check = if i % 3 == 0 { 0 } else { next() as u16 };
            let d = pairs[..n]
                .iter()
                .fold(Delta::new(), |d, (old, new)| d.replace32(*old, *new));
            assert_eq!(d.apply(check), by_halves(&pairs[..n], check), "{pairs:x?}");
        }
    }

    /// A delta folded to 32 bits (what tc's checksum helpers take) applies as the 64-bit
    /// accumulator does.
    #[test]
    fn wsum_applies_like_the_accumulator() {
        let d = Delta::new()
            .replace32(0xffff_ffff, 0)
            .replace32(0x0a00_0001, 0xc0a8_0101)
            .replace16(0x1f90, 0x0050);
        let big = Delta::new().merge(d).merge(d).merge(d).merge(d);
        for check in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
            for delta in [d, big] {
                let via_wsum = !fold((!check) as u64 + delta.wsum() as u64);
                assert_eq!(via_wsum, delta.apply(check), "{check:#x}");
            }
        }
    }

    #[test]
    fn udp4_zero_checksum_stays_zero() {
        let d = Delta::new().replace32(1, 2);
        assert_eq!(d.apply_udp4(0), 0);
    }
}
