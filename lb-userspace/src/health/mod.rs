//! Active health checks of backends: one tokio task per (service, backend) that probes it
//! (TCP connect or HTTP GET, see [`probe`]) every interval and keeps a rise/fall view of it
//! (see [`state`]). The [`HealthManager`] owns the tasks, answers "is this backend up?"
//! and sends a [`HealthEvent`] on every up->down and down->up change.
//!
//! Backends start up (optimistic), so a restart or a new backend never empties a table;
//! a dead backend is taken down after `fall` failed checks, about `fall x interval`.
//!
//! May depend on: `lb_common`, `config`, `model` (a target is a model [`BackendKey`]). The
//! control plane owns the manager; nothing here knows about data planes.

pub mod probe;
pub mod state;
mod task;
pub mod tls;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::{config::HealthCheck, model::BackendKey};

pub use probe::{ProbeError, probe};
pub use state::{HealthState, Transition};

use task::{Shared, SharedState, lock};

/// A backend of a service to check, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub backend: BackendKey,
    pub check: HealthCheck,
}

/// A backend's view changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub service: String,
    pub backend: BackendKey,
    /// The new view.
    pub up: bool,
    /// Why, for logs: how many checks passed or failed and the last error.
    pub reason: String,
}

/// One target's health, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetHealth {
    pub service: String,
    pub backend: BackendKey,
    pub up: bool,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// Up->down and down->up changes since the target's check started.
    pub transitions: u64,
    /// Checks done since the target's check started.
    pub checks: u64,
    /// What the most recent failed check said.
    pub last_error: Option<String>,
}

/// A target's running check. Dropping it stops the check (its token is cancelled, and the
/// task ends at its next await without reporting again).
struct Running {
    check: HealthCheck,
    shared: SharedState,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.shared).retired = true;
        self.stop.cancel();
    }
}

/// Owns the check tasks of every target. Must be created and used inside a tokio runtime
/// (it spawns tasks); dropping it, or cancelling its stop token, stops them all.
pub struct HealthManager {
    events: UnboundedSender<HealthEvent>,
    /// Each target's token is a child of this one.
    stop: CancellationToken,
    /// Service name -> backend -> its check.
    targets: BTreeMap<String, BTreeMap<BackendKey, Running>>,
}

impl HealthManager {
    /// Transitions are sent on `events`.
    pub fn new(events: UnboundedSender<HealthEvent>) -> Self {
        Self::with_stop(events, CancellationToken::new())
    }

    /// [`HealthManager::new`] whose checks also stop when `stop` is cancelled.
    pub fn with_stop(events: UnboundedSender<HealthEvent>, stop: CancellationToken) -> Self {
        Self {
            events,
            stop,
            targets: BTreeMap::new(),
        }
    }

    /// Starts tasks for new targets, stops tasks of targets gone, restarts those whose
    /// check changed. A target kept with the same check keeps its state and its task.
    ///
    /// A restarted target keeps its up/down view (its counts start again): a config edit
    /// by itself neither takes a backend out of the tables nor puts a down one back, and
    /// so sends no event. A target listed twice is checked once, as its last entry says.
    pub fn set_targets(&mut self, targets: Vec<Target>) {
        let mut old = std::mem::take(&mut self.targets);
        for target in targets {
            // Running before this call, or earlier in this list (listed twice).
            let kept = [&mut old, &mut self.targets].into_iter().find_map(|map| {
                map.get_mut(&target.service)
                    .and_then(|backends| backends.remove(&target.backend))
            });
            let running = match kept {
                Some(running) if running.check == target.check => running,
                previous => {
                    let up = previous
                        .as_ref()
                        .is_none_or(|r| lock(&r.shared).state.is_up());
                    // Stop the old task before the new one can report anything.
                    drop(previous);
                    self.start(target.clone(), up)
                }
            };
            self.targets
                .entry(target.service)
                .or_default()
                .insert(target.backend, running);
        }
        // Whatever is left in `old` is gone from the list: dropping it stops its tasks.
        drop(old);
    }

    /// Is this backend up? True for targets not checked (no health check, or unknown).
    pub fn is_up(&self, service: &str, backend: &BackendKey) -> bool {
        self.targets
            .get(service)
            .and_then(|backends| backends.get(backend))
            .is_none_or(|r| lock(&r.shared).state.is_up())
    }

    /// Every target's health, sorted by service then backend.
    pub fn snapshot(&self) -> Vec<TargetHealth> {
        self.targets
            .iter()
            .flat_map(|(service, backends)| {
                backends.iter().map(move |(backend, running)| {
                    let shared = lock(&running.shared);
                    let s = &shared.state;
                    TargetHealth {
                        service: service.clone(),
                        backend: *backend,
                        up: s.is_up(),
                        consecutive_successes: s.consecutive_successes(),
                        consecutive_failures: s.consecutive_failures(),
                        transitions: s.transitions(),
                        checks: s.checks(),
                        last_error: s.last_error().map(str::to_owned),
                    }
                })
            })
            .collect()
    }

    /// Spawns `target`'s check, its view starting `up`.
    fn start(&self, target: Target, up: bool) -> Running {
        let (rise, fall) = (target.check.rise, target.check.fall);
        let state = if up {
            HealthState::new(rise, fall)
        } else {
            HealthState::new_down(rise, fall)
        };
        let shared = Arc::new(Mutex::new(Shared {
            state,
            retired: false,
        }));
        let check = target.check.clone();
        let stop = self.stop.child_token();
        let checking = task::run(target, shared.clone(), self.events.clone());
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = checking => {}
                () = stopped => {}
            }
        });
        Running {
            check,
            shared,
            stop,
        }
    }
}

#[cfg(test)]
mod tests;
