//! Retry backoff: exponential with jitter (Envoy's model), so retries of many requests
//! that failed together do not arrive together.

use std::time::Duration;

/// The pause before retry number `retry` (1 = the first retry): a random point in the upper
/// half of `min(max, base x 2^(retry-1))`, so it never collapses to zero, for random `r`.
pub fn backoff(retry: u32, base: Duration, max: Duration, r: u64) -> Duration {
    let shift = retry.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1 << shift).min(max);
    let ceiling_us = ceiling.as_micros().min(u128::from(u64::MAX)) as u64;
    let half = ceiling_us / 2;
    let span = ceiling_us - half;
    Duration::from_micros(half + if span == 0 { 0 } else { r % (span + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds_and_caps() {
        let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
        for r in [0, 1, 7, 12_345, u64::MAX / 3, u64::MAX] {
            for (retry, ceiling) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (30, 250)] {
                let d = backoff(retry, base, max, r);
                let c = Duration::from_millis(ceiling);
                assert!(
                    d <= c && d >= c / 2,
                    "retry {retry} r {r}: {d:?} not in [{:?}, {c:?}]",
                    c / 2
                );
            }
        }
        // Jitter spreads: different random values give different pauses.
        let spread: std::collections::BTreeSet<Duration> = (0..50u64)
            .map(|r| backoff(3, base, max, r * 7919))
            .collect();
        assert!(spread.len() > 40, "{spread:?}");
    }
}
