//! The running agent: owns the data plane and applies config generations to it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
};

use aya::programs::XdpMode;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::{
    config::{self, Config, ConfigErrors},
    dataplane::{Dataplane, DataplaneError, LoadOptions},
    health::{HealthEvent, HealthManager, Target},
    neighbour::{Neighbours, RESOLVE_WAIT},
    reconcile::{ApplyReport, ReconcileError, Reconciler},
    registry::{
        Endpoint, SourceMessage, SourceUpdate,
        merge::{Merged, merge},
        supervisor::SourceSet,
    },
    status::{self, BackendStatus, ReasonCount, ServiceStatus, SourceStatus, Status},
    sysctls::Forwarding,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("enabling forwarding on `{iface}`: {source}")]
    Forwarding {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Options from the command line that override the config.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Force generic (SKB) XDP whatever the config says.
    pub force_generic: bool,
}

/// Where the agent's helpers report: sources (registries) and health checks. The caller
/// keeps the receiving ends and hands each message to [`Agent::on_source`] /
/// [`Agent::on_health`].
#[derive(Clone, Debug)]
pub struct AgentChannels {
    pub sources: UnboundedSender<SourceMessage>,
    pub health: UnboundedSender<HealthEvent>,
}

/// How long the first generation waits for every source's first report: the first tables
/// should hold the registries' backends (with an adopted data plane, the pinned tables keep
/// forwarding meanwhile), but a source that cannot be reached must not hold up the start.
pub const FIRST_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A source as the agent knows it: its last complete set (kept when it fails: the
/// last-known-good) and its error count.
#[derive(Clone, Debug, Default)]
struct SourceState {
    endpoints: Vec<Endpoint>,
    updates: u64,
    errors: u64,
    last_error: Option<String>,
}

/// How long a conntrack walk is reused: a full table is a quarter million entries, each a
/// syscall or two, and scrapes should not stall the agent's loop.
const CONNTRACK_SCAN_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The inputs merged with the config into the tables: registries and health.
struct Control {
    sources: BTreeMap<String, SourceState>,
    running: SourceSet,
    health: HealthManager,
    merged: Merged,
    syncs: u64,
    /// Last conntrack walk (live entries per service id) and when it was made.
    conntrack_scan: std::cell::RefCell<Option<(std::time::Instant, BTreeMap<u32, u64>)>>,
}

pub struct Agent {
    path: PathBuf,
    opts: AgentOptions,
    config: Config,
    generation: u64,
    dp: Dataplane,
    reconciler: Reconciler,
    neighbours: Neighbours,
    forwarding: Forwarding,
    control: Control,
}

impl Agent {
    /// Loads the config and the programs (adopting pinned ones), starts the config's
    /// sources, waits up to [`FIRST_REPORT_WAIT`] for each to report once on `reports` (the
    /// receiving end of `channels.sources`; the built-in registry `builtin` has reported
    /// already when given), then attaches and applies generation 1. Must run inside a tokio
    /// runtime (sources and health checks are tasks).
    pub async fn start(
        path: PathBuf,
        opts: AgentOptions,
        channels: AgentChannels,
        reports: &mut tokio::sync::mpsc::UnboundedReceiver<SourceMessage>,
    ) -> Result<Self, AgentError> {
        let config = config::load(&path)?;
        let dp = Dataplane::load(LoadOptions {
            conntrack_entries: config.global.conntrack.max_entries,
            pin_path: config.global.pin_path.clone(),
        })?;
        let reconciler = adopt_pinned(&dp)?;
        let forwarding = Forwarding::with_record(dp.saved_sysctls()?);
        let mut agent = Self {
            path,
            opts,
            config: config.clone(),
            generation: 0,
            dp,
            reconciler,
            neighbours: Neighbours::default(),
            forwarding,
            control: Control {
                sources: BTreeMap::new(),
                running: SourceSet::new(
                    channels.sources,
                    tokio_util::sync::CancellationToken::new(),
                ),
                health: HealthManager::new(channels.health),
                merged: Merged::default(),
                syncs: 0,
                conntrack_scan: Default::default(),
            },
        };
        agent.control.running.reconcile(&config.sources);
        agent.first_reports(&config, reports).await;
        // Inherited links count as attached, so `apply` will not enable forwarding on their
        // interfaces: the data plane needs it (bpf_fib_lookup), whoever turned it off since.
        let inherited: Vec<String> = agent.dp.inherited().map(str::to_string).collect();
        for iface in inherited {
            agent
                .forwarding
                .enable(&iface)
                .map_err(|source| AgentError::Forwarding { iface, source })?;
        }
        agent.apply(&config)?;
        // Only now, with every map as the config wants it, does our program replace the
        // previous agent's in the links it left pinned (atomically: forwarding never stops).
        let mode = agent.mode(&config);
        agent.dp.take_over_links(mode)?;
        Ok(agent)
    }

    /// Records source reports until every source (the built-in registry and each
    /// `[[source]]`) has sent one, or [`FIRST_REPORT_WAIT`] passed.
    async fn first_reports(
        &mut self,
        config: &Config,
        reports: &mut tokio::sync::mpsc::UnboundedReceiver<SourceMessage>,
    ) {
        let mut waiting: BTreeSet<String> = config
            .sources
            .iter()
            .map(|s| s.name().to_owned())
            .chain([crate::registry::builtin::SOURCE_NAME.to_owned()])
            .collect();
        let deadline = tokio::time::Instant::now() + FIRST_REPORT_WAIT;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
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

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.path
    }

    /// The config of the running generation.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reads the config file again and applies it. On any error the running generation
    /// stays as it was (maps are only written after the new config validated and every new
    /// interface attached).
    pub fn reload(&mut self) -> Result<(), AgentError> {
        let config = config::load(&self.path)?;
        if config == self.config {
            return Ok(());
        }
        if config.admin != self.config.admin || config.registry != self.config.registry {
            warn!("[admin] and [registry] changes take effect at the next restart");
        }
        if config.global.conntrack.max_entries != self.config.global.conntrack.max_entries {
            warn!(
                old = self.config.global.conntrack.max_entries,
                new = config.global.conntrack.max_entries,
                "conntrack.max_entries changes take effect at the next start without pinned maps (after a clean shutdown)"
            );
        }
        self.apply(&config)
    }

    fn mode(&self, c: &Config) -> XdpMode {
        if self.opts.force_generic || c.global.xdp_mode == config::XdpMode::Generic {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        }
    }

    fn apply(&mut self, c: &Config) -> Result<(), AgentError> {
        self.attach_interfaces(c)?;
        self.dp.set_settings(&c.global.settings())?;
        for gone in self.control.running.reconcile(&c.sources) {
            self.control.sources.remove(&gone);
        }
        // A reload is when routes are looked up again.
        self.neighbours.forget_routes();
        let report = self.sync(c)?;
        self.config = c.clone();
        self.generation += 1;
        info!(
            generation = self.generation,
            services = c.services.len(),
            added = report.services_added,
            removed = report.services_removed,
            tables_rebuilt = report.tables_rebuilt,
            checksum = format!("{:016x}", self.reconciler.checksum()),
            "config applied"
        );
        Ok(())
    }

    /// Merges config, sources and health into the tables.
    fn sync(&mut self, c: &Config) -> Result<ApplyReport, AgentError> {
        let endpoints: BTreeMap<String, Vec<Endpoint>> = self
            .control
            .sources
            .iter()
            .map(|(name, s)| (name.clone(), s.endpoints.clone()))
            .collect();
        let health = &self.control.health;
        let merged = merge(c, &endpoints, |s, b| health.is_up(s, b));
        // Next hops first: a backend enters the tables once its MAC is known.
        let backends: BTreeSet<IpAddr> = merged
            .desired
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.key.addr))
            .collect();
        let (added, errors) = self.neighbours.ensure(backends);
        for e in errors {
            warn!(error = %e, "backend next hop not resolved; new flows to it drop until it is");
        }
        for hop in Neighbours::wait_resolved(&added, RESOLVE_WAIT) {
            warn!(next_hop = %hop.addr, dev = %hop.dev, "next hop not resolved yet; its first flows may be retried");
        }
        let report = self.reconciler.apply(&mut self.dp, &merged.desired)?;
        self.control.syncs += 1;

        let targets = c
            .services
            .iter()
            .filter_map(|s| Some((s, s.health.as_ref()?)))
            .flat_map(|(s, check)| {
                merged
                    .backends
                    .get(&s.name)
                    .into_iter()
                    .flatten()
                    .map(|b| Target {
                        service: s.name.clone(),
                        backend: b.key,
                        check: check.clone(),
                    })
            })
            .collect();
        self.control.health.set_targets(targets);

        let old = &self.control.merged;
        for name in merged
            .fail_open
            .iter()
            .filter(|n| !old.fail_open.contains(n))
        {
            warn!(service = %name, "every backend is down: failing open, all of them stay in the table");
        }
        for name in old
            .fail_open
            .iter()
            .filter(|n| !merged.fail_open.contains(n))
        {
            info!(service = %name, "a backend is up again: no longer failing open");
        }
        for (source, e, why) in merged.ignored.iter().filter(|i| !old.ignored.contains(i)) {
            warn!(source = %source, service = %e.service, backend = %status::socket_label(e.addr, e.port), "endpoint ignored: {why}");
        }
        self.control.merged = merged;
        Ok(report)
    }

    /// Recomputes the tables after a source or health change; errors are logged (the
    /// tables keep their last good state).
    fn resync(&mut self, why: &str) {
        let c = self.config.clone();
        match self.sync(&c) {
            Ok(r) if r.tables_rebuilt > 0 => info!(
                why,
                tables_rebuilt = r.tables_rebuilt,
                checksum = format!("{:016x}", self.reconciler.checksum()),
                "tables updated"
            ),
            Ok(_) => {}
            Err(e) => error!(why, error = %e, "tables not updated"),
        }
    }

    /// A source published or failed.
    pub fn on_source(&mut self, msg: SourceMessage) {
        let source = msg.source.clone();
        if self.record_source(msg) {
            self.resync(&format!("source {source} changed"));
        }
    }

    /// Records a source's message; true if its endpoints changed.
    fn record_source(&mut self, msg: SourceMessage) -> bool {
        let state = self.control.sources.entry(msg.source.clone()).or_default();
        match msg.update {
            SourceUpdate::Endpoints(endpoints) => {
                state.updates += 1;
                let changed = state.endpoints != endpoints;
                state.endpoints = endpoints;
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
    pub fn on_health(&mut self, ev: HealthEvent) {
        let label = status::socket_label(ev.backend.addr, ev.backend.port);
        self.resync(&format!(
            "{} {} {}",
            ev.service,
            label,
            if ev.up { "up" } else { "down" }
        ));
    }

    /// Live conntrack entries per service id, walked at most every [`CONNTRACK_SCAN_TTL`].
    fn conntrack_per_service(&self) -> BTreeMap<u32, u64> {
        let mut cache = self.control.conntrack_scan.borrow_mut();
        match &*cache {
            Some((at, counts)) if at.elapsed() < CONNTRACK_SCAN_TTL => counts.clone(),
            _ => {
                let counts = self.dp.conntrack_per_service();
                *cache = Some((std::time::Instant::now(), counts.clone()));
                counts
            }
        }
    }

    /// Everything `lb status` and the metrics show (conntrack counts up to
    /// [`CONNTRACK_SCAN_TTL`] old).
    pub fn status(&self) -> Status {
        let counters = self.dp.counters();
        let health: BTreeMap<(String, crate::reconcile::BackendKey), crate::health::TargetHealth> =
            self.control
                .health
                .snapshot()
                .into_iter()
                .map(|t| ((t.service.clone(), t.backend), t))
                .collect();
        let per_service = self.conntrack_per_service();
        let mut services = Vec::new();
        for applied in self.reconciler.applied() {
            let d = &applied.desired;
            let st = counters.service(applied.id);
            let svc = self.config.services.iter().find(|s| s.name == d.name);
            let merged = self.control.merged.backends.get(&d.name);
            let backends = merged
                .into_iter()
                .flatten()
                .map(|b| {
                    let bs = self
                        .reconciler
                        .backend_id(&b.key)
                        .map(|id| counters.backend(id))
                        .unwrap_or_default();
                    let h = health.get(&(d.name.clone(), b.key));
                    let effective = d
                        .backends
                        .iter()
                        .find(|x| x.key == b.key)
                        .map_or(0, |x| x.weight);
                    BackendStatus {
                        address: status::socket_label(b.key.addr, b.key.port),
                        weight: b.weight,
                        effective_weight: effective,
                        origin: b.origin.clone(),
                        up: b.up,
                        health_transitions: h.map_or(0, |h| h.transitions),
                        last_error: h.and_then(|h| h.last_error.clone()),
                        packets: bs.packets,
                        bytes: bs.bytes,
                        connections: bs.new_flows,
                    }
                })
                .collect();
            services.push(ServiceStatus {
                name: d.name.clone(),
                address: status::socket_label(d.vip, d.port),
                protocol: svc.map_or(String::new(), |s| s.protocol.to_string()),
                packets: st.packets,
                bytes: st.bytes,
                connections: st.new_flows,
                drops: st.drops,
                conntrack_entries: per_service.get(&applied.id).copied().unwrap_or(0),
                health_checked: svc.is_some_and(|s| s.health.is_some()),
                fail_open: self.control.merged.fail_open.contains(&d.name),
                backends,
            });
        }
        let sources = self
            .control
            .sources
            .iter()
            .map(|(name, s)| SourceStatus {
                name: name.clone(),
                endpoints: s.endpoints.len() as u64,
                updates: s.updates,
                errors: s.errors,
                last_error: s.last_error.clone(),
                ignored: self
                    .control
                    .merged
                    .ignored
                    .iter()
                    .filter(|(src, _, _)| src == name)
                    .count() as u64,
            })
            .collect();
        Status {
            generation: self.generation,
            table_checksum: format!("{:016x}", self.reconciler.checksum()),
            syncs: self.control.syncs,
            conntrack_entries: per_service.values().sum(),
            services,
            sources,
            reasons: counters
                .reasons()
                .iter()
                .map(|(r, n)| ReasonCount {
                    reason: r.name().to_string(),
                    packets: *n,
                })
                .collect(),
        }
    }

    /// Attaches to new interfaces first (undoing them if one fails), then detaches from the
    /// ones no longer listed, so an attach error leaves everything as it was.
    fn attach_interfaces(&mut self, c: &Config) -> Result<(), AgentError> {
        let mode = self.mode(c);
        let current: BTreeSet<String> = self.dp.attached().map(str::to_string).collect();
        let wanted: BTreeSet<String> = c.global.interfaces.iter().cloned().collect();
        let mut added: Vec<String> = Vec::new();
        for iface in wanted.difference(&current) {
            let attached = self
                .forwarding
                .enable(iface)
                .map_err(|source| AgentError::Forwarding {
                    iface: iface.clone(),
                    source,
                })
                .and_then(|()| Ok(self.dp.attach(iface, mode)?));
            if let Err(e) = attached {
                self.forwarding.restore(iface);
                for a in &added {
                    let _ = self.dp.detach(a);
                    self.forwarding.restore(a);
                }
                return Err(e);
            }
            info!(iface, ?mode, "XDP attached");
            added.push(iface.to_string());
        }
        for iface in current.difference(&wanted) {
            self.dp.detach(iface)?;
            self.forwarding.restore(iface);
            info!(iface, "XDP detached");
        }
        Ok(())
    }

    /// The status table (what `lb status` prints), for `--stats-interval`.
    pub fn counters_table(&self) -> String {
        self.status().table()
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    /// Clean exit: detaches from every interface, removes every pin (so a next start begins
    /// afresh), restores forwarding and removes the neighbour entries it added.
    pub fn shutdown(mut self) {
        let ifaces: Vec<String> = self.dp.attached().map(str::to_string).collect();
        for iface in ifaces {
            match self.dp.detach(&iface) {
                Ok(()) => info!(iface, "XDP detached"),
                Err(e) => warn!(iface, error = %e, "detach failed"),
            }
            self.forwarding.restore(&iface);
        }
        let pin_dir = self.dp.pin_dir().map(|p| p.root().display().to_string());
        match (self.dp.remove_pins(), pin_dir) {
            (Ok(()), Some(dir)) => info!(pin_path = dir, "pins removed"),
            (Ok(()), None) => {}
            (Err(e), _) => warn!(error = %e, "removing pins failed"),
        }
        self.neighbours.clear();
    }

    /// Exit that keeps the data plane: the pinned XDP links stay attached and keep
    /// forwarding with the pinned maps, and interface forwarding and the backends' neighbour
    /// entries stay (the data plane needs them). The next start adopts it all. Without a pin
    /// path nothing can outlive the process, so this is [`Agent::shutdown`].
    pub fn shutdown_keep(self) {
        let Some(dir) = self.dp.pin_dir().map(|p| p.root().display().to_string()) else {
            warn!("no pin_path: nothing can outlive the agent; shutting down cleanly");
            return self.shutdown();
        };
        let ifaces: Vec<&str> = self.dp.attached().collect();
        info!(
            pin_path = dir,
            interfaces = ?ifaces,
            "exiting with the data plane pinned and forwarding; the next start adopts it"
        );
        // Dropping the data plane closes our handles only: the pins keep everything alive.
    }
}

/// A reconciler that knows what the previous agent left pinned (ids, tables), with the one
/// line that says what was adopted.
fn adopt_pinned(dp: &Dataplane) -> Result<Reconciler, AgentError> {
    let mut reconciler = Reconciler::new();
    let found = dp.adoption();
    if found.is_empty() {
        if let Some(p) = dp.pin_dir() {
            info!(pin_path = %p.root().display(), "nothing pinned: fresh start");
        }
        return Ok(reconciler);
    }
    let adopted = reconciler.adopt(dp)?;
    info!(
        services = adopted.services,
        backends = adopted.backends,
        conntrack_entries = dp.conntrack_entries(),
        maps = found.maps.adopted.len(),
        replaced = ?found.maps.replaced,
        links = ?found.links,
        checksum = format!("{:016x}", reconciler.checksum()),
        "adopted the pinned data plane"
    );
    Ok(reconciler)
}
