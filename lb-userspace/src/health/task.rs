//! The loop that checks one target forever: probe, record, report transitions.

use std::{
    hash::{BuildHasher, Hash},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::mpsc::UnboundedSender, time::MissedTickBehavior};
use tracing::{debug, info, warn};

use super::{
    HealthEvent, Target,
    probe::probe,
    state::{HealthState, Transition},
};

/// What a target's task and the manager share. The manager reads the state for `is_up`
/// and `snapshot`; `retired` is set (under the same lock the task reports under) when the
/// manager lets the target go, so no event can follow its removal.
#[derive(Debug)]
pub(super) struct Shared {
    pub state: HealthState,
    pub retired: bool,
}

pub(super) type SharedState = Arc<Mutex<Shared>>;

/// Locks `shared`, ignoring poisoning: the state is plain counters, valid after any panic.
pub(super) fn lock(shared: &SharedState) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks `target` every `interval`, the first time after [`initial_delay`].
pub(super) async fn run(target: Target, shared: SharedState, events: UnboundedSender<HealthEvent>) {
    let check = &target.check;
    let addr = SocketAddr::new(
        target.backend.addr,
        check.port.unwrap_or(target.backend.port),
    );
    let backend = SocketAddr::new(target.backend.addr, target.backend.port);
    // Built once per target: a TLS config parses the CA file and sets up the crypto.
    let tls = match &check.kind {
        crate::config::HealthKind::Http { tls: Some(t), .. } => Some(super::tls::connector(t)),
        _ => None,
    };
    tokio::time::sleep(initial_delay(check.interval, &target)).await;
    // A period of zero would make tokio's interval panic; config validation should
    // prevent it, this keeps a bad value from killing the task.
    let mut ticker = tokio::time::interval(check.interval.max(Duration::from_millis(1)));
    // A stalled runtime must not fire a burst of catch-up checks.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(addr, &check.kind, check.timeout, tls.as_ref()).await;
        if let Err(e) = &result {
            debug!(service = %target.service, backend = %addr, error = %e, "health check failed");
        }
        let mut guard = lock(&shared);
        if guard.retired {
            return;
        }
        let transition = guard.state.record(result.map_err(|e| e.to_string()));
        let Some(transition) = transition else {
            continue;
        };
        let up = transition == Transition::WentUp;
        let reason = if up {
            format!(
                "{} checks in a row passed",
                guard.state.consecutive_successes()
            )
        } else {
            format!(
                "{} checks in a row failed, last: {}",
                guard.state.consecutive_failures(),
                guard.state.last_error().unwrap_or_default()
            )
        };
        if up {
            info!(service = %target.service, backend = %backend, checked = %addr, %reason, "backend up");
        } else {
            warn!(service = %target.service, backend = %backend, checked = %addr, %reason, "backend down");
        }
        // Sent under the lock so a retirement cannot slip in between. A receiver that is
        // gone is not an error here: `is_up` and `snapshot` still answer.
        let _ = events.send(HealthEvent {
            service: target.service.clone(),
            backend: target.backend,
            up,
            reason,
        });
        drop(guard);
    }
}

/// A pseudo-random delay in `[0, interval)` before a target's first check, so that many
/// targets started together (agent start, a big reload) spread their checks over the
/// interval instead of all connecting at once. The hasher's keys are random per process.
pub(super) fn initial_delay(interval: Duration, target: &Target) -> Duration {
    let mut hasher_input = std::collections::hash_map::RandomState::new().build_hasher();
    target.service.hash(&mut hasher_input);
    target.backend.hash(&mut hasher_input);
    let seed = std::hash::Hasher::finish(&hasher_input);
    let span = interval.as_nanos().max(1);
    Duration::from_nanos((u128::from(seed) % span) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::HealthCheck, model::BackendKey};

    #[test]
    fn initial_delays_are_within_one_interval_and_spread() {
        let interval = Duration::from_millis(2000);
        let delays: Vec<Duration> = (0..50u16)
            .map(|i| {
                let target = Target {
                    service: "web".to_owned(),
                    backend: BackendKey {
                        addr: [10, 0, 0, 1].into(),
                        port: 8000 + i,
                    },
                    check: HealthCheck::default(),
                };
                initial_delay(interval, &target)
            })
            .collect();
        assert!(delays.iter().all(|d| *d < interval), "{delays:?}");
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        // 50 draws over 2 s: all within 400 ms of each other would be a broken spread.
        assert!(*max - *min > Duration::from_millis(400), "{delays:?}");
        assert_eq!(
            initial_delay(
                Duration::ZERO,
                &Target {
                    service: String::new(),
                    backend: BackendKey {
                        addr: [10, 0, 0, 1].into(),
                        port: 1
                    },
                    check: HealthCheck::default(),
                }
            ),
            Duration::ZERO
        );
    }
}
