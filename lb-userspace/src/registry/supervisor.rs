//! Runs the config's `[[source]]` entries as tasks: starts new ones, restarts changed ones,
//! stops removed ones when the config is reloaded. Each source has its own stop token, a
//! child of the set's: cancelling the set's token (the control plane stopping) stops all.

use std::collections::BTreeMap;

use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Source, SourceHandle, SourceMessage};
use crate::config::SourceConfig;

struct Running {
    config: SourceConfig,
    stop: CancellationToken,
    /// Ends soon after `stop` is cancelled (at the source's next await).
    _task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The running sources. Dropping it (or cancelling its token) stops them all.
pub struct SourceSet {
    tx: UnboundedSender<SourceMessage>,
    stop: CancellationToken,
    running: BTreeMap<String, Running>,
}

impl SourceSet {
    /// Sources report on `tx` and stop when `stop` is cancelled.
    pub fn new(tx: UnboundedSender<SourceMessage>, stop: CancellationToken) -> Self {
        Self {
            tx,
            stop,
            running: BTreeMap::new(),
        }
    }

    /// Makes the running sources match `configs`. Returns the names of sources stopped
    /// for good (their endpoints must be forgotten); a restarted source republishes.
    pub fn reconcile(&mut self, configs: &[SourceConfig]) -> Vec<String> {
        let mut old = std::mem::take(&mut self.running);
        for c in configs {
            let name = c.name().to_owned();
            match old.remove(&name) {
                Some(r) if r.config == *c => {
                    self.running.insert(name, r);
                }
                previous => {
                    drop(previous);
                    let stop = self.stop.child_token();
                    if let Some(task) = self.spawn(c, stop.clone()) {
                        info!(source = %name, "source started");
                        let running = Running {
                            config: c.clone(),
                            stop,
                            _task: task,
                        };
                        self.running.insert(name, running);
                    }
                }
            }
        }
        let gone: Vec<String> = old.keys().cloned().collect();
        for name in &gone {
            info!(source = %name, "source stopped (removed from the config)");
        }
        gone
    }

    fn spawn(&self, c: &SourceConfig, stop: CancellationToken) -> Option<JoinHandle<()>> {
        let handle = SourceHandle::with_stop(c.name(), self.tx.clone(), stop);
        let report = handle.clone();
        let started: Result<JoinHandle<()>, String> = match c {
            SourceConfig::Etcd(e) => super::etcd::EtcdWatcher::new(e)
                .map(|w| run(w, handle))
                .map_err(|e| e.to_string()),
            SourceConfig::Consul(e) => super::consul::ConsulWatcher::new(e)
                .map(|w| run(w, handle))
                .map_err(|e| e.to_string()),
            SourceConfig::Kubernetes(e) => super::kubernetes::KubernetesWatcher::new(e)
                .map(|w| run(w, handle))
                .map_err(|e| e.to_string()),
        };
        match started {
            Ok(task) => Some(task),
            Err(e) => {
                error!(source = c.name(), error = %e, "source not started");
                // Shows in status and lb_source_errors_total, not only in the log.
                report.error(format!("not started: {e}"));
                None
            }
        }
    }
}

/// Runs `source` until it returns or its handle is closed (then its future is dropped, so
/// a request in flight ends at once).
fn run<S: Source>(source: S, handle: SourceHandle) -> JoinHandle<()> {
    let closed = handle.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = source.run(handle) => {}
            () = closed.closed() => {}
        }
    })
}
