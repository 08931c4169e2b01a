//! One token bucket in integer fixed point: a token is `UNIT` units and a bucket refills at
//! `rate` units per nanosecond, so refill is exact (no float, no drift).

use std::time::{Duration, Instant};

use super::{LimitDecision, LimitSpec};

/// One token, in units.
const UNIT: u64 = 1_000_000_000;

#[derive(Debug, Clone)]
pub(super) struct Bucket {
    units: u64,
    /// The newest `now` seen; an older `now` (another thread read the clock earlier) refills
    /// nothing, so admissions never exceed what the newest time allows.
    last: Instant,
    /// From the last check, for eviction (which has no spec at hand).
    rate: u64,
    cap: u64,
}

/// `(rate per second, capacity in tokens)`, as `check` applies them: rate 0 counts as 1
/// (`LimitSpec::validate` refuses it), burst 0 as the rate.
pub(super) fn effective(spec: LimitSpec) -> (u64, u64) {
    let rate = u64::from(spec.rate_per_sec.max(1));
    let cap = if spec.burst == 0 {
        rate
    } else {
        u64::from(spec.burst)
    };
    (rate, cap)
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

impl Bucket {
    pub(super) fn full(spec: LimitSpec, now: Instant) -> Self {
        let (rate, cap) = effective(spec);
        Self {
            units: cap * UNIT,
            last: now,
            rate,
            cap: cap * UNIT,
        }
    }

    /// Units at `now` under the stored rate and capacity, without changing the bucket.
    fn units_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let added = elapsed.saturating_mul(u128::from(self.rate));
        let units = u128::from(self.units).saturating_add(added);
        units.min(u128::from(self.cap)) as u64
    }

    /// Nanoseconds until full at `now`; 0 when full (an idle bucket: safe to forget).
    pub(super) fn nanos_to_full(&self, now: Instant) -> u64 {
        ceil_div(self.cap - self.units_at(now), self.rate)
    }

    /// Refill up to `now`, then take one token if there is one.
    pub(super) fn take(&mut self, spec: LimitSpec, now: Instant) -> LimitDecision {
        self.units = self.units_at(now);
        self.last = self.last.max(now);
        // A changed spec (reload) applies from here; a lower burst drops the excess.
        let (rate, cap) = effective(spec);
        self.rate = rate;
        self.cap = cap * UNIT;
        self.units = self.units.min(self.cap);
        let allowed = self.units >= UNIT;
        if allowed {
            self.units -= UNIT;
        }
        let retry_after = if allowed {
            Duration::ZERO
        } else {
            Duration::from_nanos(ceil_div(UNIT - self.units, rate))
        };
        LimitDecision {
            allowed,
            limit: u32::try_from(cap).unwrap_or(u32::MAX),
            remaining: u32::try_from(self.units / UNIT).unwrap_or(u32::MAX),
            reset: Duration::from_nanos(ceil_div(self.cap - self.units, rate)),
            retry_after,
        }
    }
}
