//! Backend sources: everything that tells the agent which instances serve a service.
//!
//! Each source (the built-in registry, etcd, Consul, Kubernetes) is a long-running task that
//! publishes its *complete* current set of endpoints through a [`SourceHandle`] whenever it
//! changes. The agent keeps the last set each source published (its last-known-good: a
//! source that loses its server publishes nothing and reports errors, so its backends stay)
//! and merges all of them with the config's static backends (see [`merge`]).
//!
//! Services themselves (VIP, port, protocol) come from the config, and a source may supply
//! more of them ([`SourceUpdate::Catalog`]: the Kubernetes source with `discover_services`);
//! a source supplies backends for services by name, and endpoints naming an unknown service
//! are ignored (and counted). [`merge::with_source_services`] says how the two kinds of
//! services meet.
//!
//! May depend on: `lb_common`, `config`, `model` (an [`Endpoint`] is a model type). Used by
//! the control plane (which merges) and by `admin` (the built-in registry's API).

pub mod backoff;
pub mod builtin;
pub mod consul;
pub mod etcd;
pub mod kubernetes;
pub mod merge;
mod per_service;
pub mod supervisor;

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::config::Service;
pub use crate::model::Endpoint;
pub use backoff::Backoff;

/// An endpoint without metadata, from text: for the sources' unit tests.
#[cfg(test)]
pub(crate) fn ep(service: &str, addr: &str, port: u16, weight: u32) -> Endpoint {
    Endpoint {
        service: service.into(),
        addr: addr.parse().unwrap(),
        port,
        weight,
        metadata: Default::default(),
    }
}

/// What a source tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceUpdate {
    /// The source's complete set of endpoints now (replaces the previous one).
    Endpoints(Vec<Endpoint>),
    /// The source's complete set of services and endpoints now (replaces both): services it
    /// defines itself, next to the config's (sorted by name, unique names).
    Catalog {
        services: Vec<Service>,
        endpoints: Vec<Endpoint>,
    },
    /// Talking to the source's server failed; its last endpoints stay in use.
    Error(String),
}

/// A source's update, tagged with the source's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceMessage {
    pub source: String,
    pub update: SourceUpdate,
}

/// How a source reaches the agent. Cheap to clone.
///
/// A source is told to stop in one of two ways, both seen by [`SourceHandle::closed`]: its
/// `stop` token is cancelled (the control plane stops or removes it), or the agent dropped
/// the receiving end.
#[derive(Clone, Debug)]
pub struct SourceHandle {
    name: String,
    tx: mpsc::UnboundedSender<SourceMessage>,
    stop: CancellationToken,
}

impl SourceHandle {
    /// A handle that stops only when `tx`'s receiver goes away.
    pub fn new(name: impl Into<String>, tx: mpsc::UnboundedSender<SourceMessage>) -> Self {
        Self::with_stop(name, tx, CancellationToken::new())
    }

    /// A handle that also stops when `stop` is cancelled.
    pub fn with_stop(
        name: impl Into<String>,
        tx: mpsc::UnboundedSender<SourceMessage>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            name: name.into(),
            tx,
            stop,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes the complete endpoint set (sorted here, so sources need not care).
    pub fn publish(&self, mut endpoints: Vec<Endpoint>) {
        endpoints.sort();
        endpoints.dedup();
        self.send(SourceUpdate::Endpoints(endpoints));
    }

    /// Publishes the complete sets of services and endpoints (both sorted here).
    pub fn publish_catalog(&self, mut services: Vec<Service>, mut endpoints: Vec<Endpoint>) {
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services.dedup_by(|a, b| a.name == b.name);
        endpoints.sort();
        endpoints.dedup();
        self.send(SourceUpdate::Catalog {
            services,
            endpoints,
        });
    }

    /// Reports a failure to reach or read the source; the agent counts it and keeps the
    /// last endpoints.
    pub fn error(&self, error: impl std::fmt::Display) {
        self.send(SourceUpdate::Error(error.to_string()));
    }

    /// True once the source should return (stopped, or the agent stopped listening).
    pub fn is_closed(&self) -> bool {
        self.stop.is_cancelled() || self.tx.is_closed()
    }

    /// Resolves once the source should return; cancel-safe, for `select!`.
    pub async fn closed(&self) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = self.tx.closed() => {}
        }
    }

    /// Sleeps `delay` (a backoff); false, at once, if the source should return.
    pub async fn sleep_unless_closed(&self, delay: std::time::Duration) -> bool {
        tokio::select! {
            () = self.closed() => false,
            () = tokio::time::sleep(delay) => !self.is_closed(),
        }
    }

    fn send(&self, update: SourceUpdate) {
        // A closed channel means the agent is shutting down; nothing to do.
        let _ = self.tx.send(SourceMessage {
            source: self.name.clone(),
            update,
        });
    }
}

/// A backend source. `run` lives as long as the agent: it publishes the full endpoint set
/// at start and after every change, reports errors, reconnects with [`Backoff`], and
/// returns once `out.closed()` resolves (the supervisor also drops a stopped source's
/// future, so a source need not check at every await).
pub trait Source: Send + 'static {
    fn run(self, out: SourceHandle) -> impl Future<Output = ()> + Send + 'static;
}
