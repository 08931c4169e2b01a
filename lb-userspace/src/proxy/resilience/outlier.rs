//! Outlier ejection (passive health): a backend whose exchanges fail several times in a row
//! is taken out of its service's picks for `base_ejection x ejections` (capped), while at
//! most `max_ejection_percent` of the service's serving backends (at least one, never the
//! last) are out at once. Active health checks take backends out of the snapshot; this
//! takes them out of the gateway's picks too, so either can.
//!
//! Time is milliseconds since [`epoch`], in atomics: recording an outcome takes no lock.

use std::{
    net::SocketAddr,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Instant,
};

use crate::config::OutlierPolicy;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's outlier clock started (never 0).
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// How one exchange with a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx from the backend; `gateway`: 502, 503 or 504.
    Status { gateway: bool },
    /// Could not connect.
    Connect,
    /// Broke off, or timed out.
    Reset,
}

/// One backend's passive health.
#[derive(Debug)]
pub struct BackendOutlier {
    pub addr: SocketAddr,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_connect: AtomicU32,
    last_failure: AtomicU64,
    ejected: AtomicBool,
    /// When the current ejection ends (ms).
    until: AtomicU64,
    /// Ejections that count toward the next ejection's length.
    multiplier: AtomicU32,
    /// When it last came back (ms); 0: never ejected.
    returned: AtomicU64,
    /// Ejections in all.
    pub ejections: AtomicU64,
}

impl BackendOutlier {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            last_failure: AtomicU64::new(0),
            ejected: AtomicBool::new(false),
            until: AtomicU64::new(0),
            multiplier: AtomicU32::new(0),
            returned: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Counts `o` at `now`; true when the backend has now failed enough to be ejected.
    pub fn record(&self, p: &OutlierPolicy, o: Outcome, now: u64) -> bool {
        let counters = [
            (&self.consecutive_5xx, p.consecutive_5xx),
            (&self.consecutive_gateway, p.consecutive_gateway_errors),
            (&self.consecutive_connect, p.consecutive_connect_failures),
        ];
        // Which counters this outcome advances (5xx, gateway, connect); the rest restart.
        let hits = match o {
            Outcome::Success => {
                // The common case: only write when something is to reset.
                for (c, _) in counters {
                    if c.load(Ordering::Relaxed) != 0 {
                        c.store(0, Ordering::Relaxed);
                    }
                }
                return false;
            }
            Outcome::Status { gateway } => [true, gateway, false],
            Outcome::Connect => [true, true, true],
            Outcome::Reset => [true, true, false],
        };
        // Failures further apart than the interval are not consecutive.
        let last = self.last_failure.swap(now, Ordering::Relaxed);
        let stale = last != 0 && now.saturating_sub(last) > p.interval.as_millis() as u64;
        let mut trip = false;
        for ((c, threshold), hit) in counters.into_iter().zip(hits) {
            if !hit {
                c.store(0, Ordering::Relaxed);
                continue;
            }
            let n = if stale {
                c.store(1, Ordering::Relaxed);
                1
            } else {
                c.fetch_add(1, Ordering::Relaxed) + 1
            };
            trip |= threshold > 0 && n >= threshold;
        }
        trip && !self.is_ejected()
    }

    /// Marks the backend ejected at `now`; returns until when (ms).
    fn eject(&self, p: &OutlierPolicy, now: u64) -> u64 {
        let returned = self.returned.load(Ordering::Relaxed);
        // A backend that stayed in for the longest ejection time starts afresh.
        if returned != 0 && now.saturating_sub(returned) > p.max_ejection.as_millis() as u64 {
            self.multiplier.store(0, Ordering::Relaxed);
        }
        let m = self.multiplier.fetch_add(1, Ordering::Relaxed) + 1;
        let length = p.base_ejection.saturating_mul(m).min(p.max_ejection);
        let until = now + length.as_millis() as u64;
        self.until.store(until, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        for c in [
            &self.consecutive_5xx,
            &self.consecutive_gateway,
            &self.consecutive_connect,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.ejected.store(true, Ordering::Release);
        until
    }

    /// Returns the backend if its ejection ended by `now`; true if it did.
    fn unject_if_due(&self, now: u64) -> bool {
        if self.is_ejected() && self.until.load(Ordering::Relaxed) <= now {
            self.returned.store(now, Ordering::Relaxed);
            self.ejected.store(false, Ordering::Release);
            return true;
        }
        false
    }
}

/// How many of `serving` backends may be ejected at once under `percent`.
pub fn max_ejected(serving: usize, percent: u32) -> usize {
    if percent == 0 || serving < 2 {
        return 0;
    }
    (serving * percent as usize / 100).clamp(1, serving - 1)
}

/// The ejection count of one service: takes a slot only under the cap.
#[derive(Debug, Default)]
pub struct EjectionSlots(AtomicU32);

impl EjectionSlots {
    pub fn ejected(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Ejects `b` if a slot is free among `serving` backends; `Some(until)` if it did.
    pub fn try_eject(
        &self,
        b: &BackendOutlier,
        p: &OutlierPolicy,
        serving: usize,
        now: u64,
    ) -> Option<u64> {
        let cap = max_ejected(serving, p.max_ejection_percent) as u32;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        if b.is_ejected() {
            // Another thread ejected it meanwhile.
            self.0.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(b.eject(p, now))
    }

    /// Returns `b` if due; true if it came back.
    pub fn return_if_due(&self, b: &BackendOutlier, now: u64) -> bool {
        let back = b.unject_if_due(now);
        if back {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
        back
    }

    /// `b` left the service while ejected: free its slot.
    pub fn forget(&self, b: &BackendOutlier) {
        if b.ejected.swap(false, Ordering::AcqRel) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 0,
            consecutive_connect_failures: 2,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(250),
            max_ejection_percent: 50,
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    #[test]
    fn consecutive_failures_trip_and_success_resets() {
        let p = policy();
        let b = BackendOutlier::new(addr(1));
        let five = Outcome::Status { gateway: false };
        assert!(!b.record(&p, five, 1));
        assert!(!b.record(&p, five, 2));
        assert!(!b.record(&p, Outcome::Success, 3));
        assert!(!b.record(&p, five, 4));
        assert!(!b.record(&p, five, 5));
        assert!(b.record(&p, five, 6));
        // Connect failures trip their own (lower) threshold.
        let c = BackendOutlier::new(addr(2));
        assert!(!c.record(&p, Outcome::Connect, 1));
        assert!(c.record(&p, Outcome::Connect, 2));
        // Failures further apart than the interval start over.
        let d = BackendOutlier::new(addr(3));
        assert!(!d.record(&p, Outcome::Connect, 1));
        assert!(!d.record(&p, Outcome::Connect, 20_000));
    }

    #[test]
    fn cap_is_a_share_at_least_one_never_all() {
        assert_eq!(max_ejected(1, 100), 0);
        assert_eq!(max_ejected(2, 10), 1);
        assert_eq!(max_ejected(10, 10), 1);
        assert_eq!(max_ejected(10, 35), 3);
        assert_eq!(max_ejected(4, 100), 3);
        assert_eq!(max_ejected(10, 0), 0);
    }

    #[test]
    fn ejection_grows_caps_and_returns() {
        let p = policy();
        let slots = EjectionSlots::default();
        let bs: Vec<BackendOutlier> = (1..=4).map(|i| BackendOutlier::new(addr(i))).collect();
        // 50 % of 4: two at once, the third waits for a slot.
        assert_eq!(slots.try_eject(&bs[0], &p, 4, 1000), Some(1100));
        assert_eq!(slots.try_eject(&bs[1], &p, 4, 1000), Some(1100));
        assert_eq!(slots.try_eject(&bs[2], &p, 4, 1000), None);
        assert_eq!(slots.ejected(), 2);
        assert!(!slots.return_if_due(&bs[0], 1099));
        assert!(slots.return_if_due(&bs[0], 1100));
        assert!(!bs[0].is_ejected());
        // Ejected again: twice the base; a third time: capped at the maximum.
        assert_eq!(slots.try_eject(&bs[0], &p, 4, 1200), Some(1400));
        assert!(slots.return_if_due(&bs[0], 1400));
        assert_eq!(slots.try_eject(&bs[0], &p, 4, 1500), Some(1750));
        assert!(slots.return_if_due(&bs[0], 1750));
        // Back and healthy for longer than the maximum: starts from the base again.
        assert_eq!(slots.try_eject(&bs[0], &p, 4, 5000), Some(5100));
        slots.forget(&bs[0]);
        slots.forget(&bs[1]);
        assert_eq!(slots.ejected(), 0);
        assert_eq!(bs[0].ejections.load(Ordering::Relaxed), 4);
    }
}
