//! The control plane part: decides what every data plane should serve, and owns none of
//! them. It keeps the config generation, runs the config's sources and records what each
//! last published (its last-known-good) and its errors, keeps the health checks' targets
//! equal to the merged backends, merges it all (`registry::merge`, fail open included) into a
//! model [`Snapshot`] and publishes it on the snapshot channel to every consumer.
//!
//! Runs as its own task ([`ControlPlane::run`]) with its own stop token (sources and health
//! checks stop with it); the composition root talks to it through a [`ControlHandle`].
//!
//! May depend on: `lb_common`, `config`, `model`, `registry`, `health`. Not on `dataplane`,
//! `reconcile`, `l4`, `admin`, `status` (a data plane is a consumer, never an input).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{
    mpsc::{self, UnboundedReceiver, UnboundedSender},
    oneshot,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    health::{HealthEvent, HealthManager, Target, TargetHealth},
    model::{self, Publisher, Snapshot, Subscriber},
    registry::{
        Endpoint, Service, SourceMessage, SourceUpdate, builtin,
        merge::{IgnoredService, merge, with_source_services},
        supervisor::SourceSet,
    },
};

/// How long the first generation waits for every source's first report: the first tables
/// should hold the registries' backends (with an adopted data plane, the pinned tables keep
/// forwarding meanwhile), but a source that cannot be reached must not hold up the start.
pub const FIRST_REPORT_WAIT: Duration = Duration::from_secs(3);

/// A source as the control plane knows it: its last complete set (kept when it fails: the
/// last-known-good) and its error count.
#[derive(Clone, Debug, Default)]
struct SourceState {
    endpoints: Vec<Endpoint>,
    /// Services it supplies (only sources that publish a catalog do).
    services: Vec<Service>,
    updates: u64,
    errors: u64,
    last_error: Option<String>,
}

/// One source, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceView {
    pub name: String,
    pub endpoints: u64,
    pub updates: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// What the status document needs from the control plane, read at one moment.
#[derive(Clone, Debug)]
pub struct ControlView {
    /// The snapshot published last.
    pub snapshot: Arc<Snapshot>,
    /// By name.
    pub sources: Vec<SourceView>,
    /// Every health-checked target, sorted by service then backend.
    pub health: Vec<TargetHealth>,
}

/// Requests to the running part (through a [`ControlHandle`]).
#[derive(Debug)]
pub enum ControlRequest {
    /// Make this config the next generation; answers with its number once published.
    SetConfig(Arc<Config>, oneshot::Sender<u64>),
    View(oneshot::Sender<ControlView>),
}

/// How the composition root and the admin part reach the running control plane.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    tx: mpsc::Sender<ControlRequest>,
}

impl ControlHandle {
    /// Publishes `config` as the next generation; its number, `None` if the part stopped.
    pub async fn set_config(&self, config: Arc<Config>) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(ControlRequest::SetConfig(config, tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// What status needs; `None` if the part stopped.
    pub async fn view(&self) -> Option<ControlView> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(ControlRequest::View(tx)).await.ok()?;
        rx.await.ok()
    }
}

pub struct ControlPlane {
    config: Arc<Config>,
    generation: u64,
    sources: BTreeMap<String, SourceState>,
    running: SourceSet,
    health: HealthManager,
    publisher: Publisher,
    source_rx: UnboundedReceiver<SourceMessage>,
    health_rx: UnboundedReceiver<HealthEvent>,
    /// Source services left out of the last snapshot (each logged once).
    ignored_services: Vec<IgnoredService>,
}

impl ControlPlane {
    /// Starts `config`'s sources, reporting on `source_tx` (whose receiving end is
    /// `source_rx`; the built-in registry reports there too). Sources and health checks stop
    /// when `stop` is cancelled. Nothing is published before [`ControlPlane::set_config`];
    /// the subscriber returned starts at an empty generation 0. Must run inside a tokio
    /// runtime (sources and checks are tasks).
    pub fn start(
        config: Arc<Config>,
        source_tx: UnboundedSender<SourceMessage>,
        source_rx: UnboundedReceiver<SourceMessage>,
        stop: &CancellationToken,
    ) -> (Self, Subscriber) {
        let (health_tx, health_rx) = mpsc::unbounded_channel();
        let (publisher, subscriber) = model::channel(Snapshot::empty(config.clone()));
        let mut running = SourceSet::new(source_tx, stop.child_token());
        running.reconcile(&config.sources);
        let control = Self {
            config,
            generation: 0,
            sources: BTreeMap::new(),
            running,
            health: HealthManager::with_stop(health_tx, stop.child_token()),
            publisher,
            source_rx,
            health_rx,
            ignored_services: Vec::new(),
        };
        (control, subscriber)
    }

    /// Records source reports until every source (the built-in registry and each
    /// `[[source]]`) has sent one, or [`FIRST_REPORT_WAIT`] passed.
    pub async fn first_reports(&mut self) {
        let mut waiting: BTreeSet<String> = self
            .config
            .sources
            .iter()
            .map(|s| s.name().to_owned())
            .chain([builtin::SOURCE_NAME.to_owned()])
            .collect();
        let deadline = tokio::time::Instant::now() + FIRST_REPORT_WAIT;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, self.source_rx.recv()).await {
                Ok(Some(m)) => {
                    waiting.remove(&m.source);
                    self.record_source(m);
                }
                Ok(None) => break,
                Err(_) => {
                    warn!(sources = ?waiting, "no first report within {FIRST_REPORT_WAIT:?}; starting without their backends");
                    break;
                }
            }
        }
    }

    /// Makes `config` the next generation: sources removed from it are stopped and
    /// forgotten, new and changed ones (re)started; publishes its snapshot.
    pub fn set_config(&mut self, config: Arc<Config>) -> Arc<Snapshot> {
        for gone in self.running.reconcile(&config.sources) {
            self.sources.remove(&gone);
        }
        self.config = config;
        self.generation += 1;
        self.publish(&format!("config generation {}", self.generation))
    }

    /// Merges config, sources and health into a snapshot, points the health checks at its
    /// backends, and publishes it if anything changed.
    fn publish(&mut self, why: &str) -> Arc<Snapshot> {
        let endpoints: BTreeMap<String, Vec<Endpoint>> = self
            .sources
            .iter()
            .map(|(name, s)| (name.clone(), s.endpoints.clone()))
            .collect();
        let services: BTreeMap<String, Vec<Service>> = self
            .sources
            .iter()
            .map(|(name, s)| (name.clone(), s.services.clone()))
            .collect();
        let (config, ignored) = with_source_services(&self.config, &services);
        for i in ignored
            .iter()
            .filter(|i| !self.ignored_services.contains(i))
        {
            warn!(source = %i.source, service = %i.service, "service not added: {}", i.why);
        }
        self.ignored_services = ignored;
        let health = &self.health;
        let next = merge(&config, self.generation, &endpoints, |s, b| {
            health.is_up(s, b)
        });
        self.set_health_targets(&next);

        let old = self.publisher.borrow().clone();
        let old_open: BTreeSet<&str> = old.fail_open().collect();
        let new_open: BTreeSet<&str> = next.fail_open().collect();
        for name in new_open.difference(&old_open) {
            warn!(service = %name, "every backend is down: failing open, all of them stay in the table");
        }
        for name in old_open.difference(&new_open) {
            info!(service = %name, "a backend is up again: no longer failing open");
        }
        for i in next.ignored.iter().filter(|i| !old.ignored.contains(i)) {
            let e = &i.endpoint;
            warn!(source = %i.source, service = %e.service, backend = %std::net::SocketAddr::new(e.addr, e.port), "endpoint ignored: {}", i.why);
        }
        if next.generation == old.generation && next.same_content(&old) {
            return old;
        }
        debug!(why, generation = next.generation, "snapshot published");
        let next = Arc::new(next);
        self.publisher.send_replace(next.clone());
        next
    }

    fn set_health_targets(&mut self, snapshot: &Snapshot) {
        let targets = self
            .config
            .services
            .iter()
            .filter_map(|s| Some((s, s.health.as_ref()?)))
            .flat_map(|(s, check)| {
                snapshot
                    .service(&s.name)
                    .into_iter()
                    .flat_map(|m| &m.backends)
                    .map(|b| Target {
                        service: s.name.clone(),
                        backend: b.key,
                        check: check.clone(),
                    })
            })
            .collect();
        self.health.set_targets(targets);
    }

    /// A source published or failed.
    fn on_source(&mut self, msg: SourceMessage) {
        let source = msg.source.clone();
        if self.record_source(msg) {
            self.publish(&format!("source {source} changed"));
        }
    }

    /// Records a source's message; true if its endpoints changed.
    fn record_source(&mut self, msg: SourceMessage) -> bool {
        let state = self.sources.entry(msg.source.clone()).or_default();
        match msg.update {
            SourceUpdate::Endpoints(endpoints) => {
                state.updates += 1;
                let changed = state.endpoints != endpoints || !state.services.is_empty();
                state.endpoints = endpoints;
                state.services.clear();
                changed
            }
            SourceUpdate::Catalog {
                services,
                endpoints,
            } => {
                state.updates += 1;
                let changed = state.endpoints != endpoints || state.services != services;
                state.endpoints = endpoints;
                state.services = services;
                changed
            }
            SourceUpdate::Error(e) => {
                state.errors += 1;
                warn!(source = %msg.source, error = %e, "source failed; its last known backends stay");
                state.last_error = Some(e);
                false
            }
        }
    }

    /// A health check changed its view of a backend.
    fn on_health(&mut self, ev: HealthEvent) {
        let label = std::net::SocketAddr::new(ev.backend.addr, ev.backend.port);
        let view = if ev.up { "up" } else { "down" };
        self.publish(&format!("{} {label} {view}", ev.service));
    }

    /// What status needs, now.
    pub fn view(&self) -> ControlView {
        ControlView {
            snapshot: self.publisher.borrow().clone(),
            sources: self
                .sources
                .iter()
                .map(|(name, s)| SourceView {
                    name: name.clone(),
                    endpoints: s.endpoints.len() as u64,
                    updates: s.updates,
                    errors: s.errors,
                    last_error: s.last_error.clone(),
                })
                .collect(),
            health: self.health.snapshot(),
        }
    }

    /// A handle for [`ControlPlane::run`]'s requests, and their receiving end.
    pub fn channel() -> (ControlHandle, mpsc::Receiver<ControlRequest>) {
        let (tx, rx) = mpsc::channel(16);
        (ControlHandle { tx }, rx)
    }

    /// Follows sources and health checks, and answers `requests`, until `stop` is
    /// cancelled; then its sources and health checks stop (dropped with it).
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<ControlRequest>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(m) = self.source_rx.recv() => self.on_source(m),
                Some(h) = self.health_rx.recv() => self.on_health(h),
                Some(r) = requests.recv() => match r {
                    ControlRequest::SetConfig(config, reply) => {
                        self.set_config(config);
                        let _ = reply.send(self.generation);
                    }
                    ControlRequest::View(reply) => {
                        let _ = reply.send(self.view());
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The control plane with no data plane at all: what it publishes, and when.

    use std::time::Duration;

    use super::*;
    use crate::{
        config,
        registry::{SourceHandle, ep},
    };

    const CONFIG: &str = r#"
[global]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "192.0.2.1"
port = 80
protocol = "tcp"
backend = [{ address = "10.0.0.1", port = 80 }]
"#;

    fn backends(s: &Snapshot) -> Vec<String> {
        s.service("web")
            .unwrap()
            .backends
            .iter()
            .map(|b| format!("{}:{}/{}", b.key.addr, b.key.port, b.origin))
            .collect()
    }

    /// Waits for the next published snapshot; `None` if none comes within 300 ms.
    async fn next(sub: &mut Subscriber) -> Option<Arc<Snapshot>> {
        tokio::time::timeout(Duration::from_millis(300), sub.changed())
            .await
            .ok()?
            .ok()?;
        Some(sub.borrow_and_update().clone())
    }

    #[tokio::test]
    async fn publishes_generations_and_source_changes_only_when_they_change_something() {
        let config = Arc::new(config::parse(CONFIG, "test.toml").unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let registry = SourceHandle::new(builtin::SOURCE_NAME, tx.clone());
        let stop = CancellationToken::new();
        let (mut control, mut sub) = ControlPlane::start(config.clone(), tx, rx, &stop);
        assert_eq!(sub.borrow_and_update().generation, 0);

        let first = control.set_config(config.clone());
        assert_eq!(first.generation, 1);
        assert_eq!(backends(&first), ["10.0.0.1:80/config"]);
        assert_eq!(next(&mut sub).await.unwrap().generation, 1);

        let (handle, requests) = ControlPlane::channel();
        let task = tokio::spawn(control.run(requests, stop.clone()));

        // A source adds a backend: published, same generation.
        registry.publish(vec![ep("web", "10.0.0.2", 80, 1)]);
        let changed = next(&mut sub)
            .await
            .expect("a snapshot for the new backend");
        assert_eq!(changed.generation, 1);
        assert_eq!(
            backends(&changed),
            ["10.0.0.1:80/config", "10.0.0.2:80/registry"]
        );

        // The same set again, or an error: nothing to publish (last-known-good kept).
        registry.publish(vec![ep("web", "10.0.0.2", 80, 1)]);
        registry.error("unreachable");
        assert!(next(&mut sub).await.is_none());
        let view = handle.view().await.unwrap();
        assert_eq!(view.sources[0].updates, 2);
        assert_eq!(view.sources[0].errors, 1);
        assert_eq!(backends(&view.snapshot).len(), 2);

        // A reload is a new generation even with an equal config.
        assert_eq!(handle.set_config(config).await, Some(2));
        assert_eq!(next(&mut sub).await.unwrap().generation, 2);

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the control plane stops on its token")
            .unwrap();
        assert!(handle.view().await.is_none());
    }

    #[tokio::test]
    async fn a_source_adds_services_and_removing_them_removes_them() {
        let config = Arc::new(config::parse(CONFIG, "test.toml").unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let k8s = SourceHandle::new("k8s", tx.clone());
        let stop = CancellationToken::new();
        let (mut control, mut sub) = ControlPlane::start(config.clone(), tx, rx, &stop);
        control.set_config(config.clone());
        next(&mut sub).await.unwrap();
        let (_handle, requests) = ControlPlane::channel();
        let task = tokio::spawn(control.run(requests, stop.clone()));

        let mut api = config.services[0].clone();
        api.name = "default/api:80@10.96.0.7".into();
        api.frontend = Some("10.96.0.7:80".parse().unwrap());
        api.backends.clear();
        k8s.publish_catalog(
            vec![api.clone()],
            vec![ep("default/api:80@10.96.0.7", "10.1.0.1", 8080, 1)],
        );
        let added = next(&mut sub)
            .await
            .expect("a snapshot with the new service");
        let names: Vec<&str> = added.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "default/api:80@10.96.0.7"]);
        assert_eq!(added.service(&api.name).unwrap().backends.len(), 1);
        // Consumers find its settings in the snapshot's config, by name.
        assert!(added.config.services.iter().any(|s| s.name == api.name));

        // The same catalog again: nothing new. Without the service: it is gone.
        k8s.publish_catalog(
            vec![api.clone()],
            vec![ep("default/api:80@10.96.0.7", "10.1.0.1", 8080, 1)],
        );
        assert!(next(&mut sub).await.is_none());
        k8s.publish_catalog(Vec::new(), Vec::new());
        let gone = next(&mut sub).await.expect("a snapshot without it");
        assert!(gone.service(&api.name).is_none());
        assert_eq!(gone.config.services.len(), 1);

        stop.cancel();
        task.await.unwrap();
    }
}
