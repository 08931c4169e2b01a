//! The circuit breaker of an upstream service (Envoy's thresholds, per gateway instance):
//! requests in flight, connections open, and requests waiting for a connection. Over a
//! limit a request fails at once (503 with `x-lb-overloaded: <reason>`) instead of queueing
//! behind a backend that cannot keep up. Counters are atomics: no lock per request.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

use crate::config::BreakerLimits;

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    #[error("max_requests")]
    MaxRequests,
    #[error("max_pending")]
    MaxPending,
    #[error("max_connections")]
    MaxConnections,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxRequests => "max_requests",
            Self::MaxPending => "max_pending",
            Self::MaxConnections => "max_connections",
        }
    }
}

#[derive(Debug, Default)]
pub struct Breaker {
    max_requests: AtomicU32,
    max_pending: AtomicU32,
    max_connections: AtomicU32,
    requests: AtomicU32,
    pending: AtomicU32,
    connections: AtomicU32,
    freed: Notify,
    /// Refusals by [`Overflow`] (requests, pending, connections).
    pub overflows: [AtomicU64; 3],
}

/// One request in flight; released on drop.
#[derive(Debug)]
pub struct RequestPermit(Arc<Breaker>);

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection; released on drop (the connection closed).
#[derive(Debug)]
pub struct ConnPermit(Arc<Breaker>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Release);
        self.0.freed.notify_one();
    }
}

/// Increment `n` unless it is at `max` already.
fn take(n: &AtomicU32, max: u32) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
        (v < max).then_some(v + 1)
    })
    .is_ok()
}

impl Breaker {
    pub fn new(limits: BreakerLimits) -> Self {
        let b = Self::default();
        b.set_limits(limits);
        b
    }

    /// New limits apply to the next request (a reload keeps the counts).
    pub fn set_limits(&self, l: BreakerLimits) {
        self.max_requests.store(l.max_requests, Ordering::Relaxed);
        self.max_pending.store(l.max_pending, Ordering::Relaxed);
        self.max_connections
            .store(l.max_connections, Ordering::Relaxed);
    }

    fn refused(&self, o: Overflow) -> Overflow {
        self.overflows[o as usize].fetch_add(1, Ordering::Relaxed);
        o
    }

    /// A request starts, unless `max_requests` are in flight.
    pub fn enter(self: &Arc<Self>) -> Result<RequestPermit, Overflow> {
        if take(&self.requests, self.max_requests.load(Ordering::Relaxed)) {
            Ok(RequestPermit(self.clone()))
        } else {
            Err(self.refused(Overflow::MaxRequests))
        }
    }

    /// A new connection may open: at once under `max_connections`; else it waits (as a
    /// pending request, at most `max_pending` of them) up to `wait` for one to close.
    pub async fn connection(self: &Arc<Self>, wait: Duration) -> Result<ConnPermit, Overflow> {
        let max = || self.max_connections.load(Ordering::Relaxed);
        if take(&self.connections, max()) {
            return Ok(ConnPermit(self.clone()));
        }
        if !take(&self.pending, self.max_pending.load(Ordering::Relaxed)) {
            return Err(self.refused(Overflow::MaxPending));
        }
        let waited = tokio::time::timeout(wait, async {
            loop {
                let freed = self.freed.notified();
                if take(&self.connections, max()) {
                    return;
                }
                freed.await;
            }
        })
        .await;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(()) => Ok(ConnPermit(self.clone())),
            Err(_) => Err(self.refused(Overflow::MaxConnections)),
        }
    }

    /// (requests, pending, connections) now.
    pub fn load(&self) -> (u32, u32, u32) {
        (
            self.requests.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
        )
    }

    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(req: u32, pend: u32, conns: u32) -> BreakerLimits {
        BreakerLimits {
            max_requests: req,
            max_pending: pend,
            max_connections: conns,
        }
    }

    #[test]
    fn requests_open_and_close() {
        let b = Arc::new(Breaker::new(limits(2, 0, 1)));
        let p1 = b.enter().unwrap();
        let _p2 = b.enter().unwrap();
        assert_eq!(b.enter().unwrap_err(), Overflow::MaxRequests);
        drop(p1);
        assert!(b.enter().is_ok());
        assert_eq!(b.overflows[0].load(Ordering::Relaxed), 1);
        // A reload that raises the limit applies at once.
        b.set_limits(limits(5, 0, 1));
        assert!(b.enter().is_ok());
    }

    #[tokio::test]
    async fn connections_wait_as_pending() {
        let b = Arc::new(Breaker::new(limits(10, 1, 1)));
        let c1 = b.connection(Duration::from_millis(10)).await.unwrap();
        // Over max_connections: waits, then gives up.
        assert_eq!(
            b.connection(Duration::from_millis(20)).await.unwrap_err(),
            Overflow::MaxConnections
        );
        // A waiter gets the connection another closes.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.connection(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(b.load().1, 1, "one pending");
        // The pending queue (1) is full: the next is refused at once.
        assert_eq!(
            b.connection(Duration::from_secs(5)).await.unwrap_err(),
            Overflow::MaxPending
        );
        drop(c1);
        let c2 = waiter.await.unwrap().unwrap();
        assert_eq!(b.load(), (0, 0, 1));
        drop(c2);
        assert_eq!(b.load(), (0, 0, 0));
    }
}
