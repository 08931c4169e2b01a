//! Runs the config's `[[source]]` entries as tasks: starts new ones, restarts changed ones,
//! stops removed ones when the config is reloaded.

use std::collections::BTreeMap;

use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle};
use tracing::{error, info};

use super::{Source, SourceHandle, SourceMessage};
use crate::config::SourceConfig;

struct Running {
    config: SourceConfig,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running sources. Dropping it stops them all.
pub struct SourceSet {
    tx: UnboundedSender<SourceMessage>,
    running: BTreeMap<String, Running>,
}

impl SourceSet {
    pub fn new(tx: UnboundedSender<SourceMessage>) -> Self {
        Self {
            tx,
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
                    if let Some(task) = self.spawn(c) {
                        info!(source = %name, "source started");
                        let config = c.clone();
                        self.running.insert(name, Running { config, task });
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

    fn spawn(&self, c: &SourceConfig) -> Option<JoinHandle<()>> {
        let handle = SourceHandle::new(c.name(), self.tx.clone());
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

fn run<S: Source>(source: S, handle: SourceHandle) -> JoinHandle<()> {
    tokio::spawn(source.run(handle))
}
