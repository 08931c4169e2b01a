//! The L4 data plane part: the XDP programs and everything they need from the host. It
//! loads (or adopts) the programs and maps, attaches to the config's interfaces, turns on
//! their forwarding sysctls, keeps the backends' next hops resolved, and reconciles every
//! model snapshot into the maps (`reconcile`). It is one consumer of the model; it owns the
//! data plane and nothing of the control plane.
//!
//! Runs as its own task ([`L4Dataplane::run`]) with its own stop token; the composition
//! root talks to it through an [`L4Handle`] (prepare a new config generation, read what
//! status needs) and the snapshot channel.
//!
//! Next hops follow the kernel: a neighbour's new MAC or a changed route to a backend
//! (netlink events, gathered for [`NEXT_HOP_DEBOUNCE`]) reaches the managed neighbour
//! entries and the established flows' conntrack entries without a reload.
//!
//! May depend on: `lb_common`, `config`, `netlink`, `model`, `dataplane`, `reconcile`,
//! `sysctls`, `neighbour`. Not on `registry`, `health`, `control`, `admin`, `status`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use lb_common::Stats;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    config::{self, Config},
    dataplane::{
        Attach, Dataplane, DataplaneError, Egress, LoadOptions, SocketLbAttach, SocketLbOptions,
        is_veth,
    },
    model::{BackendKey, Snapshot, Subscriber},
    neighbour::{Neighbours, NextHop, RESOLVE_WAIT},
    netlink::{Event, Events, NetlinkError},
    reconcile::{AppliedService, ApplyReport, DesiredState, ReconcileError, Reconciler},
    sysctls::Forwarding,
};

/// How often the attached interfaces' MACs are re-read: the data plane drops frames not
/// addressed to the receiving interface's MAC, so a changed MAC must reach `IFACES` soon.
/// One ioctl per interface; a netlink link subscription would make it immediate.
const MAC_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long neighbour and route changes are gathered before the agent acts on them (from
/// the first one): a route flap or a neighbour flush comes as a burst of events.
const NEXT_HOP_DEBOUNCE: Duration = Duration::from_millis(50);

/// Neighbour and route changes not acted on yet.
#[derive(Debug, Default)]
struct NextHopChanges {
    /// Managed next hops with a new MAC.
    macs: BTreeSet<NextHop>,
    /// A route changed, one of our neighbour entries went, or events were lost: look the
    /// backends' routes up again.
    reroute: bool,
}

impl NextHopChanges {
    fn is_empty(&self) -> bool {
        self.macs.is_empty() && !self.reroute
    }
}

#[derive(Debug, thiserror::Error)]
pub enum L4Error {
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
    #[error("the L4 data plane is not running")]
    Stopped,
    #[error(
        "no cgroup v2 hierarchy at {}: set `[socket_lb] cgroup` to a cgroup v2 directory",
        config::DEFAULT_SOCKET_LB_CGROUPS.join(" or ")
    )]
    NoCgroup2,
    #[error("reading this network namespace's cookie for `[socket_lb] namespaces = \"host\"`: {0}")]
    NetnsCookie(#[source] std::io::Error),
}

/// How long a conntrack walk is reused: a full table is a quarter million entries, each a
/// syscall or two, and scrapes should not stall the agent's loop.
const CONNTRACK_SCAN_TTL: Duration = Duration::from_secs(2);

/// What the status document needs from the data plane, read at one moment.
#[derive(Clone, Debug, Default)]
pub struct L4View {
    /// Config generation of the last snapshot applied.
    pub generation: u64,
    /// Checksum of every table and service record.
    pub checksum: u64,
    /// Snapshots applied (the tables recomputed).
    pub syncs: u64,
    /// Services in the kernel, in key order.
    pub services: Vec<AppliedService>,
    /// Counters per service id.
    pub service_stats: BTreeMap<u32, Stats>,
    /// Counters per backend that has an id.
    pub backend_stats: BTreeMap<BackendKey, Stats>,
    /// Live conntrack entries per service id (up to [`CONNTRACK_SCAN_TTL`] old).
    pub conntrack_per_service: BTreeMap<u32, u64>,
    /// The conntrack table's size (max entries).
    pub conntrack_capacity: u64,
    /// Every verdict reason with its packet count, in `Reason::ALL` order.
    pub reasons: Vec<(&'static str, u64)>,
    /// The socket LB, when attached.
    pub socket_lb: Option<SocketLbView>,
    /// The SYN-flood guard.
    pub syn_guard: crate::dataplane::SynGuardState,
}

/// The socket LB as status shows it.
#[derive(Clone, Debug, Default)]
pub struct SocketLbView {
    pub cgroup: String,
    /// `host` or `all`.
    pub namespaces: &'static str,
    /// Every `SockEvent` with its count, in `SockEvent::ALL` order.
    pub events: Vec<(&'static str, u64)>,
}

/// Requests to the running part (through an [`L4Handle`]).
#[derive(Debug)]
pub enum L4Request {
    /// Attach to the new generation's interfaces and set its settings, before its snapshot.
    Prepare(Arc<Config>, oneshot::Sender<Result<(), L4Error>>),
    View(oneshot::Sender<L4View>),
}

/// How the composition root and the admin part reach the running L4 part. Cheap to clone.
#[derive(Clone, Debug)]
pub struct L4Handle {
    tx: mpsc::Sender<L4Request>,
}

impl L4Handle {
    /// Prepares `config`'s generation (see [`L4Dataplane::prepare`]).
    pub async fn prepare(&self, config: Arc<Config>) -> Result<(), L4Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(L4Request::Prepare(config, tx))
            .await
            .map_err(|_| L4Error::Stopped)?;
        rx.await.map_err(|_| L4Error::Stopped)?
    }

    /// What status needs; `None` if the part stopped.
    pub async fn view(&self) -> Option<L4View> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(L4Request::View(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// Options from the command line that override the config.
#[derive(Clone, Debug, Default)]
pub struct L4Options {
    /// Force generic (SKB) XDP whatever the config says.
    pub force_generic: bool,
}

pub struct L4Dataplane {
    opts: L4Options,
    dp: Dataplane,
    reconciler: Reconciler,
    neighbours: Neighbours,
    /// The backends of the last snapshot applied (whose next hops are kept).
    backends: BTreeSet<IpAddr>,
    forwarding: Forwarding,
    /// Generation of the last snapshot applied (0: none yet).
    generation: u64,
    syncs: u64,
    /// Last conntrack walk (live entries per service id) and when it was made.
    conntrack_scan: Option<(Instant, BTreeMap<u32, u64>)>,
    /// The first generation is in the maps: the socket LB may attach (or take over).
    started: bool,
    /// `[socket_lb] namespaces` as attached.
    socket_lb_scope: config::NetnsScope,
    /// The mesh outbound listener `mtls` services are steered to (set by the agent's mesh
    /// part before the first sync); `None`: no mesh.
    mesh_outbound: Option<std::net::SocketAddrV4>,
}

impl L4Dataplane {
    /// Loads the programs and maps (adopting pinned ones, with their ids and tables).
    /// Nothing is attached yet.
    pub fn load(config: &Config, opts: L4Options) -> Result<Self, L4Error> {
        let dp = Dataplane::load(LoadOptions {
            conntrack_entries: config.global.conntrack.max_entries,
            pin_path: config.global.pin_path.clone(),
        })?;
        let reconciler = adopt_pinned(&dp)?;
        let forwarding = Forwarding::with_record(dp.saved_sysctls()?);
        let mut l4 = Self {
            opts,
            dp,
            reconciler,
            neighbours: Neighbours::default(),
            backends: BTreeSet::new(),
            forwarding,
            generation: 0,
            syncs: 0,
            conntrack_scan: None,
            started: false,
            socket_lb_scope: config::NetnsScope::Host,
            mesh_outbound: None,
        };
        // Inherited links count as attached, so `prepare` will not enable forwarding on their
        // interfaces: the data plane needs it (bpf_fib_lookup), whoever turned it off since.
        let inherited: Vec<String> = l4.dp.inherited().map(str::to_string).collect();
        for iface in inherited {
            l4.forwarding
                .enable(&iface)
                .map_err(|source| L4Error::Forwarding { iface, source })?;
        }
        Ok(l4)
    }

    /// Where the socket LB steers connects to `mtls` services (the mesh outbound listener);
    /// takes effect at the next socket LB sync (the first one, if called before `apply`).
    pub fn set_mesh_outbound(&mut self, outbound: Option<std::net::SocketAddrV4>) {
        self.mesh_outbound = outbound;
    }

    /// A handle on the steered sockets' original destinations, for the mesh tunnel.
    pub fn mesh_origdst(&self) -> Result<crate::dataplane::MeshOrigDst, L4Error> {
        Ok(self.dp.mesh_origdst()?)
    }

    /// How `iface` is to be attached (see [`attach_for`]).
    fn attach_for(&self, c: &Config, iface: &str) -> Attach {
        attach_for(self.opts.force_generic, c, iface)
    }

    /// Gets ready for a new config generation, before its snapshot: attaches to new
    /// interfaces and detaches from old ones, sets the global settings. On error nothing of
    /// the running generation changed (maps are written only when its snapshot comes).
    pub fn prepare(&mut self, c: &Config) -> Result<(), L4Error> {
        self.attach_interfaces(c)?;
        if self.started {
            self.sync_socket_lb(c)?;
        }
        self.dp.set_settings(&c.global.settings())?;
        // A reload is when routes are looked up again.
        self.neighbours.forget_routes();
        Ok(())
    }

    /// Hands the L7 gateway's listening sockets to the sk_lookup hook (attached once to
    /// this network namespace).
    pub fn attach_gateway(
        &mut self,
        v4: &impl std::os::fd::AsRawFd,
        v6: Option<&impl std::os::fd::AsRawFd>,
    ) -> Result<(), L4Error> {
        self.dp.attach_gateway(v4, v6)?;
        Ok(())
    }

    /// Only once the maps hold the first generation does our program replace the previous
    /// agent's in the links it left pinned (atomically: forwarding never stops).
    pub fn take_over_links(&mut self, c: &Config) -> Result<(), L4Error> {
        let force_generic = self.opts.force_generic;
        self.dp
            .take_over_links(|iface| attach_for(force_generic, c, iface))?;
        self.started = true;
        self.sync_socket_lb(c)
    }

    /// Attaches the socket LB where `[socket_lb]` says (taking over a pinned one), or
    /// detaches it (ours or a previous agent's) when it is off.
    fn sync_socket_lb(&mut self, c: &Config) -> Result<(), L4Error> {
        let s = &c.socket_lb;
        if !s.enabled {
            if self.dp.socket_lb_cgroup().is_some() || self.dp.socket_lb_pinned() {
                self.dp.detach_socket_lb()?;
                info!("socket LB detached");
            }
            return Ok(());
        }
        let netns_cookie = match s.namespaces {
            config::NetnsScope::All => None,
            config::NetnsScope::Host => {
                Some(crate::dataplane::own_netns_cookie().map_err(L4Error::NetnsCookie)?)
            }
        };
        let cgroup = match &s.cgroup {
            Some(c) => c.clone(),
            None => config::DEFAULT_SOCKET_LB_CGROUPS
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| crate::dataplane::is_cgroup2(p))
                .ok_or(L4Error::NoCgroup2)?,
        };
        let outcome = self.dp.attach_socket_lb(&SocketLbOptions {
            cgroup: cgroup.clone(),
            netns_cookie,
            mesh_outbound: self.mesh_outbound,
        })?;
        self.socket_lb_scope = s.namespaces;
        match outcome {
            SocketLbAttach::Unchanged => {}
            SocketLbAttach::Attached => {
                info!(cgroup = %cgroup.display(), namespaces = ?s.namespaces, "socket LB attached")
            }
            SocketLbAttach::TakenOver => info!(
                cgroup = %cgroup.display(),
                "socket LB links taken over (programs replaced in place)"
            ),
        }
        Ok(())
    }

    /// Makes the maps hold `snapshot`: next hops first (a backend enters the tables once its
    /// MAC is known), then the reconciler's ordered writes. Logs `config applied` for a new
    /// generation, `tables updated` when a source or health change rebuilt tables.
    pub fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, L4Error> {
        let desired = DesiredState::from_snapshot(snapshot);
        let backends: BTreeSet<IpAddr> = desired
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.key.addr))
            .collect();
        self.backends = backends;
        self.ensure_next_hops();
        let report = self.reconciler.apply(&mut self.dp, &desired)?;
        self.syncs += 1;
        let checksum = format!("{:016x}", self.reconciler.checksum());
        if snapshot.generation != self.generation {
            self.generation = snapshot.generation;
            info!(
                generation = self.generation,
                services = desired.services.len(),
                added = report.services_added,
                removed = report.services_removed,
                tables_rebuilt = report.tables_rebuilt,
                checksum,
                "config applied"
            );
        } else if report.tables_rebuilt > 0 {
            info!(
                generation = self.generation,
                tables_rebuilt = report.tables_rebuilt,
                checksum,
                "tables updated (a source or health change)"
            );
        }
        Ok(report)
    }

    /// Managed neighbour entries for the backends' next hops (see `neighbour`), waiting a
    /// little for new ones to resolve.
    fn ensure_next_hops(&mut self) {
        let (added, errors) = self.neighbours.ensure(self.backends.iter().copied());
        for e in errors {
            warn!(error = %e, "backend next hop not resolved; new flows to it drop until it is");
        }
        for hop in self.neighbours.wait_resolved(&added, RESOLVE_WAIT) {
            warn!(next_hop = %hop.addr, dev = %hop.dev, "next hop not resolved yet; its first flows may be retried");
        }
    }

    /// Notes what a kernel event changes for the backends' next hops.
    fn note_event(&mut self, event: Event, changes: &mut NextHopChanges) {
        match event {
            Event::Neighbour(n) => {
                if let Some(hop) = self.neighbours.neighbour_changed(&n) {
                    changes.macs.insert(hop);
                }
            }
            Event::NeighbourGone(n) => changes.reroute |= self.neighbours.neighbour_gone(&n),
            // Only routes that may now be the one to a backend matter (not, e.g., the
            // gateway's VIP routes).
            Event::Route(r) => changes.reroute |= self.backends.iter().any(|b| r.covers(*b)),
            Event::Lost => changes.reroute = true,
        }
    }

    /// Acts on gathered changes: routes looked up again (managed entries follow), then the
    /// established flows of every backend whose next hop moved or changed MAC point at it.
    fn follow_next_hops(&mut self, mut changes: NextHopChanges) {
        let mut to: BTreeMap<IpAddr, Egress> = BTreeMap::new();
        if changes.reroute {
            let before = self.neighbours.routes().clone();
            self.neighbours.forget_routes();
            self.ensure_next_hops();
            // A lost event may have been a new MAC.
            changes.macs.extend(self.neighbours.recheck());
            for (backend, r) in self.neighbours.routes() {
                if before.get(backend) == Some(r) {
                    continue;
                }
                info!(%backend, next_hop = %r.hop.addr, dev = %r.hop.dev, "route to a backend changed");
                if let Some(dmac) = self.neighbours.lladdr(&r.hop) {
                    let eg = Egress {
                        ifindex: r.hop.ifindex,
                        dmac,
                        snat: r.src,
                    };
                    to.insert(*backend, eg);
                }
            }
        }
        for hop in &changes.macs {
            let Some(dmac) = self.neighbours.lladdr(hop) else {
                continue;
            };
            let mac = dmac.map(|b| format!("{b:02x}")).join(":");
            info!(next_hop = %hop.addr, dev = %hop.dev, mac, "backend next hop resolved to a new MAC");
            for backend in self.neighbours.backends_via(hop) {
                let snat = self.neighbours.routes().get(&backend).and_then(|r| r.src);
                to.entry(backend).or_insert(Egress {
                    ifindex: hop.ifindex,
                    dmac,
                    snat,
                });
            }
        }
        match self.dp.retarget_flows(&to) {
            Ok(0) => {}
            Ok(flows) => info!(
                flows,
                backends = to.len(),
                "established flows now follow their backends' new next hops"
            ),
            Err(e) => warn!(error = %e, "established flows not moved to a backend's new next hop"),
        }
    }

    /// Applies every new snapshot until `stop` is cancelled, answering `requests` meanwhile;
    /// returns itself for the composition root to shut down. An apply that fails is logged
    /// and the tables keep their last good state.
    pub async fn run(
        mut self,
        mut snapshots: Subscriber,
        mut requests: mpsc::Receiver<L4Request>,
        stop: CancellationToken,
    ) -> Self {
        // Whatever the channel holds was applied before this task started.
        snapshots.borrow_and_update();
        let mut mac_check = tokio::time::interval(MAC_CHECK_INTERVAL);
        mac_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = Events::subscribe()
            .inspect_err(|e| warn!(error = %e, "no neighbour or route events: backends' next hops are looked up again on reload only"))
            .ok();
        let mut changes = NextHopChanges::default();
        let mut act_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                batch = next_events(&mut events) => match batch {
                    Ok(batch) => {
                        for event in batch {
                            self.note_event(event, &mut changes);
                        }
                        if !changes.is_empty() && act_at.is_none() {
                            act_at = Some(tokio::time::Instant::now() + NEXT_HOP_DEBOUNCE);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "neighbour and route events stopped: backends' next hops are looked up again on reload only");
                        events = None;
                    }
                },
                () = sleep_until(act_at) => {
                    act_at = None;
                    self.follow_next_hops(std::mem::take(&mut changes));
                }
                _ = mac_check.tick() => match self.dp.refresh_interface_macs() {
                    Ok(changed) => {
                        for iface in changed {
                            info!(iface, "interface MAC changed: the data plane now expects the new one");
                        }
                    }
                    Err(e) => warn!(error = %e, "re-reading interface MACs failed"),
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        // The control plane is gone: nothing more will come.
                        stop.cancelled().await;
                        break;
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    if let Err(e) = self.apply(&snapshot) {
                        error!(generation = snapshot.generation, error = %e, "tables not updated");
                    }
                }
                Some(r) = requests.recv() => match r {
                    L4Request::Prepare(config, reply) => {
                        let _ = reply.send(self.prepare(&config));
                    }
                    L4Request::View(reply) => {
                        let _ = reply.send(self.view());
                    }
                },
            }
        }
        self
    }

    /// A handle for [`L4Dataplane::run`]'s requests, and their receiving end.
    pub fn channel() -> (L4Handle, mpsc::Receiver<L4Request>) {
        let (tx, rx) = mpsc::channel(16);
        (L4Handle { tx }, rx)
    }

    /// Live conntrack entries per service id, walked at most every [`CONNTRACK_SCAN_TTL`].
    fn conntrack_per_service(&mut self) -> BTreeMap<u32, u64> {
        match &self.conntrack_scan {
            Some((at, counts)) if at.elapsed() < CONNTRACK_SCAN_TTL => counts.clone(),
            _ => {
                let counts = self.dp.conntrack_per_service();
                self.conntrack_scan = Some((Instant::now(), counts.clone()));
                counts
            }
        }
    }

    /// What status needs, now.
    pub fn view(&mut self) -> L4View {
        let conntrack_per_service = self.conntrack_per_service();
        let counters = self.dp.counters();
        let services: Vec<AppliedService> = self.reconciler.applied().cloned().collect();
        let service_stats = services
            .iter()
            .map(|s| (s.id, counters.service(s.id)))
            .collect();
        let backend_stats = services
            .iter()
            .flat_map(|s| s.desired.backends.iter().map(|b| b.key))
            .filter_map(|k| Some((k, counters.backend(self.reconciler.backend_id(&k)?))))
            .collect();
        L4View {
            generation: self.generation,
            checksum: self.reconciler.checksum(),
            syncs: self.syncs,
            services,
            service_stats,
            backend_stats,
            conntrack_per_service,
            conntrack_capacity: self.dp.conntrack_capacity().into(),
            syn_guard: self.dp.syn_guard_state(),
            reasons: counters
                .reasons()
                .iter()
                .map(|(r, n)| (r.name(), *n))
                .collect(),
            socket_lb: self.dp.socket_lb_cgroup().map(|cg| SocketLbView {
                cgroup: cg.display().to_string(),
                namespaces: match self.socket_lb_scope {
                    config::NetnsScope::Host => "host",
                    config::NetnsScope::All => "all",
                },
                events: self
                    .dp
                    .socket_lb_events()
                    .into_iter()
                    .map(|(e, n)| (e.name(), n))
                    .collect(),
            }),
        }
    }

    /// Attaches to new interfaces first (undoing them if one fails), then detaches from the
    /// ones no longer listed, so an attach error leaves everything as it was.
    fn attach_interfaces(&mut self, c: &Config) -> Result<(), L4Error> {
        let current: BTreeSet<String> = self.dp.attached().map(str::to_string).collect();
        let wanted: BTreeSet<String> = c.global.interfaces.iter().cloned().collect();
        let mut added: Vec<String> = Vec::new();
        for iface in wanted.difference(&current) {
            let how = self.attach_for(c, iface);
            let attached = self
                .forwarding
                .enable(iface)
                .map_err(|source| L4Error::Forwarding {
                    iface: iface.clone(),
                    source,
                })
                .and_then(|()| Ok(self.dp.attach(iface, how)?));
            if let Err(e) = attached {
                self.forwarding.restore(iface);
                for a in &added {
                    let _ = self.dp.detach(a);
                    self.forwarding.restore(a);
                }
                return Err(e);
            }
            info!(iface, ?how, "{} attached", kind(how));
            added.push(iface.to_string());
        }
        // A reload that changed how an interface is attached (inherited links are settled
        // by `take_over_links`).
        for iface in wanted.intersection(&current) {
            let how = self.attach_for(c, iface);
            if let Some(was) = self.dp.attached_as(iface).filter(|was| *was != how) {
                self.dp.reattach(iface, how)?;
                info!(iface, ?was, ?how, "{} attached instead", kind(how));
            }
        }
        for iface in current.difference(&wanted) {
            let was = self.dp.attached_as(iface);
            self.dp.detach(iface)?;
            self.forwarding.restore(iface);
            info!(iface, "{} detached", was.map_or("link", kind));
        }
        Ok(())
    }

    /// Clean exit: detaches from every interface, removes every pin (so a next start begins
    /// afresh), restores forwarding and removes the neighbour entries it added.
    pub fn shutdown(mut self) {
        let ifaces: Vec<String> = self.dp.attached().map(str::to_string).collect();
        for iface in ifaces {
            let was = self.dp.attached_as(&iface);
            match self.dp.detach(&iface) {
                Ok(()) => info!(iface, "{} detached", was.map_or("link", kind)),
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
    /// path nothing can outlive the process, so this is [`L4Dataplane::shutdown`].
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

/// The next events of the subscription; never, without one.
async fn next_events(events: &mut Option<Events>) -> Result<Vec<Event>, NetlinkError> {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// How `iface` is to be attached: as `attach` names it, else tc on a veth (native XDP there
/// loses the checksum state of frames sent with TX offload) and XDP elsewhere, in
/// `xdp_mode` (generic whatever it says with `force_generic`).
fn attach_for(force_generic: bool, c: &Config, iface: &str) -> Attach {
    let mode = if force_generic || c.global.xdp_mode == config::XdpMode::Generic {
        XdpMode::Skb
    } else {
        XdpMode::Driver
    };
    match c.global.attach.get(iface) {
        Some(config::AttachPoint::Tc) => Attach::Tc,
        Some(config::AttachPoint::Xdp) => Attach::Xdp(mode),
        None if is_veth(iface) => Attach::Tc,
        None => Attach::Xdp(mode),
    }
}

/// What the log calls an attachment.
fn kind(how: Attach) -> &'static str {
    match how {
        Attach::Xdp(_) => "XDP",
        Attach::Tc => "tc",
    }
}

/// A reconciler that knows what the previous agent left pinned (ids, tables), with the one
/// line that says what was adopted.
fn adopt_pinned(dp: &Dataplane) -> Result<Reconciler, L4Error> {
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
