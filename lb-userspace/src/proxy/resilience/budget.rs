//! The retry budget of an upstream service (Envoy's `retry_budget`): retries in flight may
//! be at most `percent` of the requests in flight, or `min_concurrency`, whichever is more.
//! A backend that fails everything then sees at most that much extra load, not `tries`
//! times the load.

use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use crate::config::RetryBudget;

/// Whether one more retry fits: `retries` in flight now, `active` requests in flight.
pub fn allows(budget: RetryBudget, active: u32, retries: u32) -> bool {
    let share = (u64::from(active) * u64::from(budget.percent) / 100) as u32;
    retries < share.max(budget.min_concurrency)
}

#[derive(Debug, Default)]
pub struct Budget {
    retries: AtomicU32,
    /// Retries refused by the budget.
    pub exhausted: AtomicU64,
    /// Retries sent.
    pub sent: AtomicU64,
}

/// One retry in flight; released on drop.
#[derive(Debug)]
pub struct RetryPermit(Arc<Budget>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Budget {
    /// A permit for one retry when the budget allows it with `active` requests in flight.
    pub fn try_retry(self: &Arc<Self>, budget: RetryBudget, active: u32) -> Option<RetryPermit> {
        let got = self
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                allows(budget, active, n).then_some(n + 1)
            })
            .is_ok();
        if got {
            self.sent.fetch_add(1, Ordering::Relaxed);
            Some(RetryPermit(self.clone()))
        } else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let b = RetryBudget {
            percent: 20,
            min_concurrency: 3,
        };
        // Few requests: the minimum concurrency rules.
        assert!(allows(b, 1, 2));
        assert!(!allows(b, 1, 3));
        // 100 in flight: 20 % = 20 retries.
        assert!(allows(b, 100, 19));
        assert!(!allows(b, 100, 20));
        let none = RetryBudget {
            percent: 0,
            min_concurrency: 0,
        };
        assert!(!allows(none, 1000, 0));
    }

    #[test]
    fn permits_count_and_release() {
        let b = Arc::new(Budget::default());
        let budget = RetryBudget {
            percent: 50,
            min_concurrency: 1,
        };
        // 4 active: 2 retries at once, the third refused until one ends.
        let p1 = b.try_retry(budget, 4).unwrap();
        let _p2 = b.try_retry(budget, 4).unwrap();
        assert!(b.try_retry(budget, 4).is_none());
        drop(p1);
        assert!(b.try_retry(budget, 4).is_some());
        assert_eq!(b.exhausted.load(Ordering::Relaxed), 1);
        assert_eq!(b.sent.load(Ordering::Relaxed), 3);
        assert_eq!(b.in_flight(), 1);
    }
}
