//! Token-bucket arithmetic for the per-source rate limit.
//!
//! Tokens are kept in nano-tokens (1e-9 packet) so a refill is one multiplication,
//! `elapsed_ns * rate_pps`, with no division on the packet path. The elapsed time is capped at
//! the time a full refill takes, so the product never overflows.

use crate::Bucket;

/// Nano-tokens one packet costs.
pub const NANO: u64 = 1_000_000_000;
/// Largest rate and burst honoured (packets/s, packets). With both at most 1e9 every product
/// below stays under 2^63, so plain multiplication is safe: BPF has no 128-bit multiply, and
/// `saturating_mul` would need one. The config rejects larger values.
pub const MAX_RATE: u64 = 1_000_000_000;
pub const MAX_BURST: u64 = 1_000_000_000;

/// A new bucket for a source first seen at `now_ns`: full, minus the packet that created it.
#[inline(always)]
pub fn first_packet(now_ns: u64, burst: u64) -> Bucket {
    Bucket {
        nano_tokens: clamp(burst, 1, MAX_BURST) * NANO - NANO,
        last_ns: now_ns,
    }
}

/// Refills `b` up to `now_ns` and takes one packet's token. Returns `true` if the packet
/// conforms (and the bucket was charged), `false` if it is over the limit.
///
/// `burst` of 0 is treated as 1 (a bucket must hold at least one packet); rate and burst are
/// capped at [`MAX_RATE`] and [`MAX_BURST`].
#[inline(always)]
pub fn admit(b: &mut Bucket, now_ns: u64, rate_pps: u64, burst: u64) -> bool {
    let cap = clamp(burst, 1, MAX_BURST) * NANO;
    let rate = clamp(rate_pps, 1, MAX_RATE);
    let elapsed = now_ns.saturating_sub(b.last_ns);
    // Time to refill an empty bucket; beyond it the bucket is full anyway.
    let full_after = cap / rate + 1;
    let elapsed = if elapsed > full_after {
        full_after
    } else {
        elapsed
    };
    let nano_tokens = if b.nano_tokens > cap {
        cap
    } else {
        b.nano_tokens
    };
    let mut tokens = nano_tokens + elapsed * rate;
    if tokens > cap {
        tokens = cap;
    }
    b.last_ns = now_ns;
    if tokens >= NANO {
        b.nano_tokens = tokens - NANO;
        true
    } else {
        b.nano_tokens = tokens;
        false
    }
}

#[inline(always)]
const fn clamp(v: u64, lo: u64, hi: u64) -> u64 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_limit() {
        let mut b = first_packet(0, 10);
        let admitted = (0..100).filter(|_| admit(&mut b, 0, 100, 10)).count();
        assert_eq!(
            admitted, 9,
            "10-packet burst, one spent by the first packet"
        );
    }

    #[test]
    fn refills_at_rate() {
        let mut b = first_packet(0, 5);
        while admit(&mut b, 0, 1000, 5) {}
        // 1000 pps: one token per millisecond.
        assert!(!admit(&mut b, 999_000, 1000, 5));
        assert!(admit(&mut b, 1_000_000 + 999_000, 1000, 5));
    }

    #[test]
    fn steady_rate_over_a_second() {
        let rate = 10_000;
        let mut b = first_packet(0, 1);
        let mut admitted = 0;
        // Offer 50k packets evenly over one second.
        for i in 1..=50_000u64 {
            if admit(&mut b, i * SEC / 50_000, rate, 1) {
                admitted += 1;
            }
        }
        assert!((9_990..=10_010).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn long_idle_does_not_overflow_or_exceed_burst() {
        let mut b = first_packet(0, 3);
        let t = u64::MAX / 2;
        let n = (0..10).filter(|_| admit(&mut b, t, u64::MAX, 3)).count();
        assert_eq!(n, 3);
    }

    #[test]
    fn zero_burst_means_one() {
        let mut b = Bucket::default();
        assert!(admit(&mut b, 10 * SEC, 1, 0));
        assert!(!admit(&mut b, 10 * SEC, 1, 0));
    }
}
