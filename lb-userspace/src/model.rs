//! The control plane's model: which services exist and which backends serve them, with their
//! weights and health, as one immutable [`Snapshot`] that no data plane owns.
//!
//! The control plane (`control`) builds a snapshot from the config, the sources and the
//! health checks (`registry::merge`) and publishes it, `Arc`'d, through a `watch` channel
//! ([`channel`]). Each consumer turns the latest snapshot into its own state: the XDP data
//! plane (`l4`, through `reconcile`) into kernel maps; later the L7 gateway into routes and
//! the socket load balancer into cgroup maps. A consumer always sees a whole snapshot, and
//! may skip intermediate ones (only the latest matters).
//!
//! May depend on: `lb_common` and `config` (the plain types it shares: [`Protocol`], [`Mode`],
//! and the generation's [`Config`], from which consumers read their own settings). Nothing
//! else in the agent.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::sync::watch;

use crate::config::{Config, Mode, Protocol, Scope};

/// A backend's identity: its address and port. Equal identities are one backend, whichever
/// services and origins list it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub addr: IpAddr,
    pub port: u16,
}

/// One instance of a service, as a source reports it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Endpoint {
    /// Name of the config service this instance serves.
    pub service: String,
    pub addr: IpAddr,
    pub port: u16,
    /// Relative share of new flows; 0 drains (no new flows, established ones stay).
    pub weight: u32,
    /// Free-form labels from the source (shown in status; not used for balancing).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// One backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub key: BackendKey,
    /// Weight as configured or registered.
    pub weight: u32,
    /// The share of new flows it gets now: `weight`, or 0 when it is down and the service
    /// does not fail open.
    pub effective_weight: u32,
    /// `config` or the source's name.
    pub origin: String,
    /// Health as the checker last saw it (true when the service has no health check).
    pub up: bool,
}

/// A service (from the config, or from a source that supplies services) with its merged
/// backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// VIP and port; `None` for a backend set only gateway routes reach.
    pub frontend: Option<SocketAddr>,
    pub protocol: Protocol,
    pub mode: Mode,
    /// External, or reachable only through the socket LB (`scope = "cluster"`, a
    /// Kubernetes ClusterIP).
    pub scope: Scope,
    /// The service has a health check.
    pub health_checked: bool,
    /// Every backend that would take flows is down, so all of them do (fail open).
    pub fail_open: bool,
    /// Sorted by key.
    pub backends: Vec<Backend>,
}

/// A source's endpoint that no service uses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    pub source: String,
    pub endpoint: Endpoint,
    pub why: &'static str,
}

/// Everything the consumers need, at one moment. Equal inputs give equal snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Config generation it was built from: 1 at start, +1 per applied reload (0: built
    /// before the first generation, never published to consumers).
    pub generation: u64,
    /// That generation's config: consumers read their own settings from it (the XDP data
    /// plane its interfaces, Maglev table sizes and rate limits). Its `services` also hold
    /// the services sources supplied (see `registry::merge::with_source_services`), so every
    /// consumer finds each snapshot service's settings there by name.
    pub config: Arc<Config>,
    /// In config order.
    pub services: Vec<Service>,
    /// Endpoints not used (unknown service, wrong address family).
    pub ignored: Vec<Ignored>,
}

impl Snapshot {
    /// No service, generation 0: the channel's value until the first generation.
    pub fn empty(config: Arc<Config>) -> Self {
        Self {
            generation: 0,
            config,
            services: Vec::new(),
            ignored: Vec::new(),
        }
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Names of the services failing open.
    pub fn fail_open(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .filter(|s| s.fail_open)
            .map(|s| s.name.as_str())
    }

    /// Equal services and ignored endpoints: consumers would do nothing with the other.
    /// The config's services are compared too: sources that supply services change them
    /// within a generation.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.services == other.services
            && self.ignored == other.ignored
            && (Arc::ptr_eq(&self.config, &other.config)
                || self.config.services == other.config.services)
    }
}

/// The publishing end: the control plane holds it.
pub type Publisher = watch::Sender<Arc<Snapshot>>;
/// A consumer's end: `changed()` then `borrow_and_update()` for the latest snapshot.
pub type Subscriber = watch::Receiver<Arc<Snapshot>>;

/// A snapshot channel starting at `first`.
pub fn channel(first: Snapshot) -> (Publisher, Subscriber) {
    watch::channel(Arc::new(first))
}
