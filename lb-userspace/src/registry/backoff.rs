//! Exponential backoff with jitter for reconnecting to registries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delays of `initial`, doubling up to `max`, each with up to 25% random jitter (so many
/// agents losing one server do not reconnect in lockstep).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base + jitter(base / 4)
    }

    /// Call after a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// A pseudo-random duration in `[0, up_to]`: clock nanoseconds are random enough here.
fn jitter(up_to: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let span = up_to.as_nanos().max(1);
    Duration::from_nanos((u128::from(nanos) % span) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base) && d <= Duration::from_millis(base + base / 4)
        };
        assert!(within(d[0], 100), "{d:?}");
        assert!(within(d[1], 200), "{d:?}");
        assert!(within(d[2], 350), "{d:?}");
        assert!(within(d[3], 350), "{d:?}");
        b.reset();
        assert!(within(b.next_delay(), 100));
    }
}
