//! The agent's state as operators see it: one document served as JSON by the admin API
//! (`GET /v1/status`), rendered as Prometheus metrics, and printed by `lb status` (and by
//! `lb run --stats-interval`).
//!
//! [`build`] assembles it from the control plane's view (snapshot, sources, health) and the
//! L4 data plane's (ids, counters, conntrack); [`StatusSource`] asks the running parts.
//!
//! May depend on: `model`, `control`, `l4`, `health` (their views). Used by `metrics`,
//! `admin` and the composition root (`agent`, `main`).

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::{
    control::{ControlHandle, ControlView},
    health::TargetHealth,
    l4::{L4Handle, L4View},
    model::BackendKey,
    proxy::{metrics::GatewayMetrics, metrics::RouteStats, state::GatewayState},
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Config generation: 1 at start, +1 per applied reload.
    pub generation: u64,
    /// Checksum of every Maglev table and service record (hex): equal on agents given
    /// equal inputs.
    pub table_checksum: String,
    /// Times the tables were recomputed (config reloads, registry changes, health flips).
    pub syncs: u64,
    /// Live conntrack entries, all services.
    pub conntrack_entries: u64,
    /// Size of the conntrack table (max entries): what `conntrack_entries` can reach.
    #[serde(default)]
    pub conntrack_capacity: u64,
    pub services: Vec<ServiceStatus>,
    pub sources: Vec<SourceStatus>,
    /// Every data-path verdict reason with its packet count.
    pub reasons: Vec<ReasonCount>,
    /// The L7 gateway's routes and their counters (`service/route` order).
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    /// The gateway's failed upstream exchanges.
    #[serde(default)]
    pub upstream_errors: Vec<UpstreamErrors>,
    /// The socket LB, when attached.
    #[serde(default)]
    pub socket_lb: Option<SocketLbStatus>,
    /// The gateway's Redis (`[gateway.redis]`), if configured.
    #[serde(default)]
    pub redis: Option<RedisStatus>,
    /// The gateway's circuit breakers, retry budgets and outlier ejections per upstream.
    #[serde(default)]
    pub upstream_guards: Vec<UpstreamGuard>,
    /// The SYN-flood guard of the L4 data plane.
    #[serde(default)]
    pub syn_guard: SynGuardStatus,
    /// The mesh tunnel (`[mesh]`), when enabled.
    #[serde(default)]
    pub mesh: Option<crate::mesh::tunnel::TunnelView>,
}

/// The SYN-flood guard (`[global.syn_guard]`) now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SynGuardStatus {
    /// SYNs per second per CPU that turn flood mode on (0: the guard is off).
    pub rate: u32,
    /// CPUs in flood mode now (challenging unverified sources); 0 when no flood.
    pub flood_cpus: u32,
    /// Sources that answered a challenge within `verified_secs`.
    pub verified_sources: u64,
    /// Challenge SYN-ACKs sent since the program loaded.
    pub challenges: u64,
}

/// The socket LB: where it is attached and what it did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SocketLbStatus {
    /// The cgroup v2 directory it is attached to.
    pub cgroup: String,
    /// `host` (only the agent's network namespace) or `all`.
    pub namespaces: String,
    /// Counts by event (`connect`, `sendmsg`, `no_backend`, `reverse`, ...).
    pub events: BTreeMap<String, u64>,
}

/// The gateway's Redis connection and what went wrong with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisStatus {
    /// Credentials masked.
    pub url: String,
    /// Connected now.
    pub up: bool,
    /// Connections made (the first one included).
    pub reconnects: u64,
    pub connect_failures: u64,
    /// Calls by operation (`ratelimit`, `apikey`), failed ones included.
    pub calls: BTreeMap<String, u64>,
    /// Failed calls.
    pub errors: Vec<RedisErrors>,
    pub last_error: Option<String>,
    /// Requests a shared limit decided by its `on_redis_error` mode.
    pub fallbacks: Vec<RedisFallbacks>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisErrors {
    pub op: String,
    /// `down` (no connection), `timeout`, `error`.
    pub kind: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisFallbacks {
    pub route: String,
    /// `open`, `closed` or `local`.
    pub mode: String,
    pub count: u64,
}

/// One upstream service's failure handling in the gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamGuard {
    pub service: String,
    /// Requests in flight, waiting for a connection, connections open.
    pub requests: u32,
    pub pending: u32,
    pub connections: u32,
    /// 503s by breaker limit: max_requests, max_pending, max_connections.
    pub overflows: [u64; 3],
    pub retries: u64,
    /// Retries the retry budget refused.
    pub retries_refused: u64,
    pub ejections: u64,
    /// Backends ejected now (`addr:port`).
    pub ejected: Vec<String>,
}

/// One gateway route's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// `service/route`; `service/` for requests that matched no route of the service.
    pub route: String,
    pub requests: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub by_class: [u64; 5],
    pub auth_failures: u64,
    /// Authentication failures by reason.
    #[serde(default)]
    pub auth_reasons: BTreeMap<String, u64>,
    pub rate_limited: u64,
    #[serde(default)]
    pub retries: u64,
    /// 504s for the request timeout and for per-try timeouts.
    #[serde(default)]
    pub timeouts_request: u64,
    #[serde(default)]
    pub timeouts_per_try: u64,
    /// 503s from a circuit breaker.
    #[serde(default)]
    pub overloaded: u64,
    #[serde(default)]
    pub faults_delayed: u64,
    #[serde(default)]
    pub faults_aborted: u64,
}

/// Failed exchanges with one upstream service's backends, of one kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamErrors {
    pub service: String,
    /// `connect`, `timeout` or `reset`.
    pub kind: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `vip:port` (`[v6]:port`).
    pub address: String,
    pub protocol: String,
    pub packets: u64,
    pub bytes: u64,
    /// New flows (connections) balanced.
    pub connections: u64,
    pub drops: u64,
    /// Live conntrack entries of this service.
    pub conntrack_entries: u64,
    /// True when the service has a health check.
    pub health_checked: bool,
    /// Every backend is down, so all are kept (fail open).
    pub fail_open: bool,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `addr:port` (`[v6]:port`).
    pub address: String,
    /// Weight as configured or registered.
    pub weight: u32,
    /// Weight in the Maglev table now: 0 when drained or down.
    pub effective_weight: u32,
    /// `config` or the source's name.
    pub origin: String,
    pub up: bool,
    pub health_transitions: u64,
    pub last_error: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
    /// Out of the gateway's picks for now (outlier ejection).
    #[serde(default)]
    pub ejected: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub endpoints: u64,
    /// Complete sets received.
    pub updates: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Endpoints of this source not used (unknown service, wrong family).
    pub ignored: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: u64,
}

/// `a:p`, with brackets for IPv6.
pub fn socket_label(addr: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// What status reads of the running gateway: its counters and its current routes.
#[derive(Clone)]
pub struct GatewayView {
    pub metrics: Arc<GatewayMetrics>,
    pub state: Arc<ArcSwap<GatewayState>>,
}

impl std::fmt::Debug for GatewayView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayView").finish_non_exhaustive()
    }
}

impl GatewayView {
    /// Every current route (zero counts included), then any other route with counts (one a
    /// reload removed, or requests that matched none).
    pub fn routes(&self) -> Vec<RouteStatus> {
        let mut counts = self.metrics.snapshot();
        let state = self.state.load();
        let mut ids: Vec<String> = state
            .frontends
            .values()
            .flat_map(|f| f.routes.routes().iter().map(|r| r.payload().id.to_string()))
            .collect();
        ids.sort();
        let mut out: Vec<RouteStatus> = ids
            .into_iter()
            .map(|id| {
                let c = counts.remove(id.as_str()).unwrap_or_default();
                route_status(id, &c)
            })
            .collect();
        out.extend(counts.iter().map(|(id, c)| route_status(id.to_string(), c)));
        out
    }

    /// Breakers, budgets and ejections per upstream service.
    pub fn guards(&self) -> Vec<UpstreamGuard> {
        self.state
            .load()
            .guards
            .stats()
            .into_iter()
            .map(|g| UpstreamGuard {
                service: g.service,
                requests: g.requests,
                pending: g.pending,
                connections: g.connections,
                overflows: g.overflows,
                retries: g.retries,
                retries_refused: g.retries_refused,
                ejections: g.ejections,
                ejected: g.ejected.iter().map(ToString::to_string).collect(),
            })
            .collect()
    }

    /// The gateway's metric families that the status document does not carry (latency
    /// histograms), for the metrics endpoint.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }
}

fn route_status(route: String, c: &RouteStats) -> RouteStatus {
    RouteStatus {
        route,
        requests: c.requests(),
        by_class: c.by_class,
        auth_failures: c.auth_failures,
        auth_reasons: c.auth_reasons.clone(),
        rate_limited: c.rate_limited,
        retries: c.retries,
        timeouts_request: c.timeouts_request,
        timeouts_per_try: c.timeouts_per_try,
        overloaded: c.overloaded,
        faults_delayed: c.faults_delayed,
        faults_aborted: c.faults_aborted,
    }
}

/// Where the status document comes from: the running parts. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StatusSource {
    control: ControlHandle,
    l4: L4Handle,
    gateway: Option<GatewayView>,
    mesh: Option<crate::mesh::tunnel::MeshView>,
}

impl StatusSource {
    /// Adds the mesh tunnel's counters and certificate expiries to the document.
    pub fn with_mesh(mut self, mesh: crate::mesh::tunnel::MeshView) -> Self {
        self.mesh = Some(mesh);
        self
    }

    pub fn new(control: ControlHandle, l4: L4Handle, gateway: Option<GatewayView>) -> Self {
        Self {
            control,
            l4,
            gateway,
            mesh: None,
        }
    }

    /// The document now; `None` if a part stopped.
    pub async fn get(&self) -> Option<Status> {
        let control = self.control.view().await?;
        let l4 = self.l4.view().await?;
        let mut status = build(&control, &l4);
        status.mesh = self.mesh.as_ref().map(|m| m.view());
        if let Some(g) = &self.gateway {
            status.routes = g.routes();
            status.upstream_errors = g
                .metrics
                .upstream_errors()
                .into_iter()
                .map(|((service, kind), count)| UpstreamErrors {
                    service,
                    kind: kind.to_owned(),
                    count,
                })
                .collect();
            status.redis = g.metrics.redis.view().map(|v| RedisStatus {
                url: v.url,
                up: v.up,
                reconnects: v.reconnects,
                connect_failures: v.connect_failures,
                calls: v.calls,
                errors: v
                    .errors
                    .into_iter()
                    .map(|((op, kind), count)| RedisErrors { op, kind, count })
                    .collect(),
                last_error: v.last_error,
                fallbacks: v
                    .fallbacks
                    .into_iter()
                    .map(|((route, mode), count)| RedisFallbacks { route, mode, count })
                    .collect(),
            });
            status.upstream_guards = g.guards();
            mark_ejected(&mut status);
        }
        Some(status)
    }

    pub fn gateway(&self) -> Option<&GatewayView> {
        self.gateway.as_ref()
    }
}

/// Flags the backends the gateway has ejected.
fn mark_ejected(status: &mut Status) {
    for g in &status.upstream_guards {
        let Some(svc) = status.services.iter_mut().find(|s| s.name == g.service) else {
            continue;
        };
        for b in &mut svc.backends {
            b.ejected = g.ejected.contains(&b.address);
        }
    }
}

/// The document from the parts' views: one service per service in the kernel (key order),
/// its backends as the control plane merged them.
pub fn build(control: &ControlView, l4: &L4View) -> Status {
    let health: BTreeMap<(&str, BackendKey), &TargetHealth> = control
        .health
        .iter()
        .map(|t| ((t.service.as_str(), t.backend), t))
        .collect();
    let snapshot = &control.snapshot;
    let mut services = Vec::new();
    for applied in &l4.services {
        let d = &applied.desired;
        let st = l4
            .service_stats
            .get(&applied.id)
            .copied()
            .unwrap_or_default();
        let svc = snapshot.service(&d.name);
        let backends = svc
            .into_iter()
            .flat_map(|s| &s.backends)
            .map(|b| {
                let bs = l4.backend_stats.get(&b.key).copied().unwrap_or_default();
                let h = health.get(&(d.name.as_str(), b.key));
                let effective = d
                    .backends
                    .iter()
                    .find(|x| x.key == b.key)
                    .map_or(0, |x| x.weight);
                BackendStatus {
                    address: socket_label(b.key.addr, b.key.port),
                    weight: b.weight,
                    effective_weight: effective,
                    origin: b.origin.clone(),
                    up: b.up,
                    health_transitions: h.map_or(0, |h| h.transitions),
                    last_error: h.and_then(|h| h.last_error.clone()),
                    packets: bs.packets,
                    bytes: bs.bytes,
                    connections: bs.new_flows,
                    ejected: false,
                }
            })
            .collect();
        services.push(ServiceStatus {
            name: d.name.clone(),
            address: socket_label(d.vip, d.port),
            protocol: svc.map_or(String::new(), |s| s.protocol.to_string()),
            packets: st.packets,
            bytes: st.bytes,
            connections: st.new_flows,
            drops: st.drops,
            conntrack_entries: l4
                .conntrack_per_service
                .get(&applied.id)
                .copied()
                .unwrap_or(0),
            health_checked: svc.is_some_and(|s| s.health_checked),
            fail_open: svc.is_some_and(|s| s.fail_open),
            backends,
        });
    }
    // Backend sets (no VIP: only gateway routes reach them) are not in the kernel; their
    // backends and health still are the operator's business.
    for svc in snapshot.services.iter().filter(|s| s.frontend.is_none()) {
        let backends = svc
            .backends
            .iter()
            .map(|b| {
                let h = health.get(&(svc.name.as_str(), b.key));
                BackendStatus {
                    address: socket_label(b.key.addr, b.key.port),
                    weight: b.weight,
                    effective_weight: b.effective_weight,
                    origin: b.origin.clone(),
                    up: b.up,
                    health_transitions: h.map_or(0, |h| h.transitions),
                    last_error: h.and_then(|h| h.last_error.clone()),
                    ..BackendStatus::default()
                }
            })
            .collect();
        services.push(ServiceStatus {
            name: svc.name.clone(),
            address: "-".into(),
            protocol: svc.protocol.to_string(),
            health_checked: svc.health_checked,
            fail_open: svc.fail_open,
            backends,
            ..ServiceStatus::default()
        });
    }
    let sources = control
        .sources
        .iter()
        .map(|s| SourceStatus {
            name: s.name.clone(),
            endpoints: s.endpoints,
            updates: s.updates,
            errors: s.errors,
            last_error: s.last_error.clone(),
            ignored: snapshot
                .ignored
                .iter()
                .filter(|i| i.source == s.name)
                .count() as u64,
        })
        .collect();
    Status {
        generation: l4.generation,
        table_checksum: format!("{:016x}", l4.checksum),
        syncs: l4.syncs,
        conntrack_entries: l4.conntrack_per_service.values().sum(),
        conntrack_capacity: l4.conntrack_capacity,
        services,
        sources,
        routes: Vec::new(),
        upstream_errors: Vec::new(),
        socket_lb: l4.socket_lb.as_ref().map(|s| SocketLbStatus {
            cgroup: s.cgroup.clone(),
            namespaces: s.namespaces.to_string(),
            events: s.events.iter().map(|(e, n)| (e.to_string(), *n)).collect(),
        }),
        redis: None,
        upstream_guards: Vec::new(),
        syn_guard: SynGuardStatus {
            rate: l4.syn_guard.threshold_pps,
            flood_cpus: l4.syn_guard.flood_cpus,
            verified_sources: l4.syn_guard.verified_sources,
            challenges: l4.syn_guard.challenges,
        },
        mesh: None,
        reasons: l4
            .reasons
            .iter()
            .map(|(r, n)| ReasonCount {
                reason: r.to_string(),
                packets: *n,
            })
            .collect(),
    }
}

impl Status {
    /// The gateway's per-upstream breaker, retry and ejection counters, and the routes'
    /// retries, timeouts, overloads and faults (when any).
    fn guards_table(&self, out: &mut String) {
        if !self.upstream_guards.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<16} {:>7} {:>7} {:>6} {:>22} {:>8} {:>8} {:>9}  EJECTED",
                "UPSTREAM",
                "ACTIVE",
                "PENDING",
                "CONNS",
                "OVERFLOW req/pend/conn",
                "RETRIES",
                "REFUSED",
                "EJECTIONS"
            );
            for g in &self.upstream_guards {
                let _ = writeln!(
                    out,
                    "{:<16} {:>7} {:>7} {:>6} {:>22} {:>8} {:>8} {:>9}  {}",
                    g.service,
                    g.requests,
                    g.pending,
                    g.connections,
                    format!("{}/{}/{}", g.overflows[0], g.overflows[1], g.overflows[2]),
                    g.retries,
                    g.retries_refused,
                    g.ejections,
                    if g.ejected.is_empty() {
                        "-".to_owned()
                    } else {
                        g.ejected.join(" ")
                    }
                );
            }
        }
        let busy: Vec<&RouteStatus> = self
            .routes
            .iter()
            .filter(|r| {
                r.retries
                    + r.timeouts_request
                    + r.timeouts_per_try
                    + r.overloaded
                    + r.faults_delayed
                    + r.faults_aborted
                    > 0
            })
            .collect();
        if !busy.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<32} {:>8} {:>9} {:>9} {:>10} {:>7} {:>7}",
                "ROUTE", "RETRIES", "TIMEOUTS", "PER-TRY", "OVERLOADED", "DELAYED", "ABORTED"
            );
            for r in busy {
                let _ = writeln!(
                    out,
                    "{:<32} {:>8} {:>9} {:>9} {:>10} {:>7} {:>7}",
                    r.route,
                    r.retries,
                    r.timeouts_request,
                    r.timeouts_per_try,
                    r.overloaded,
                    r.faults_delayed,
                    r.faults_aborted
                );
            }
        }
    }

    /// The table `lb status` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "generation {}  table checksum {}  syncs {}  conntrack entries {}",
            self.generation, self.table_checksum, self.syncs, self.conntrack_entries
        );
        let g = &self.syn_guard;
        if g.rate > 0 {
            let _ = writeln!(
                out,
                "syn guard: {} (rate {}/s per CPU)  verified sources {}  challenges sent {}",
                if g.flood_cpus > 0 {
                    "FLOOD MODE"
                } else {
                    "armed"
                },
                g.rate,
                g.verified_sources,
                g.challenges
            );
        }
        let _ = writeln!(
            out,
            "\n{:<16} {:<26} {:<8} {:>7} {:<6} {:>11} {:>13} {:>9} {:>8}",
            "SERVICE",
            "BACKEND",
            "ORIGIN",
            "WEIGHT",
            "HEALTH",
            "PACKETS",
            "BYTES",
            "CONNS",
            "DROPS"
        );
        for s in &self.services {
            let health = match (s.health_checked, s.fail_open) {
                (_, true) => "OPEN!",
                (true, false) => "check",
                (false, false) => "-",
            };
            let _ = writeln!(
                out,
                "{:<16} {:<26} {:<8} {:>7} {:<6} {:>11} {:>13} {:>9} {:>8}",
                s.name,
                format!("{} {}", s.address, s.protocol),
                "",
                "",
                health,
                s.packets,
                s.bytes,
                s.connections,
                s.drops
            );
            for b in &s.backends {
                let weight = if b.effective_weight == b.weight {
                    b.weight.to_string()
                } else {
                    format!("{}>{}", b.weight, b.effective_weight)
                };
                let health = match (s.health_checked, b.up, b.ejected) {
                    (_, _, true) => "EJECT",
                    (false, _, _) => "-",
                    (true, true, _) => "up",
                    (true, false, _) => "DOWN",
                };
                let _ = writeln!(
                    out,
                    "{:<16} {:<26} {:<8} {:>7} {:<6} {:>11} {:>13} {:>9}",
                    "", b.address, b.origin, weight, health, b.packets, b.bytes, b.connections
                );
            }
        }
        if !self.sources.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<16} {:>9} {:>8} {:>7} {:>8}  LAST ERROR",
                "SOURCE", "ENDPOINTS", "UPDATES", "ERRORS", "IGNORED"
            );
            for s in &self.sources {
                let _ = writeln!(
                    out,
                    "{:<16} {:>9} {:>8} {:>7} {:>8}  {}",
                    s.name,
                    s.endpoints,
                    s.updates,
                    s.errors,
                    s.ignored,
                    s.last_error.as_deref().unwrap_or("-")
                );
            }
        }
        if !self.routes.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<32} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "ROUTE", "REQUESTS", "2XX", "4XX", "5XX", "AUTH-401", "LIMITED"
            );
            for r in &self.routes {
                let _ = writeln!(
                    out,
                    "{:<32} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    if r.route.is_empty() {
                        "(no route)"
                    } else {
                        &r.route
                    },
                    r.requests,
                    r.by_class[1],
                    r.by_class[3],
                    r.by_class[4],
                    r.auth_failures,
                    r.rate_limited
                );
            }
        }
        if let Some(r) = &self.redis {
            let errors: Vec<String> = r
                .errors
                .iter()
                .map(|e| format!("{}/{}={}", e.op, e.kind, e.count))
                .collect();
            let fallbacks: Vec<String> = r
                .fallbacks
                .iter()
                .map(|f| format!("{}:{}={}", f.route, f.mode, f.count))
                .collect();
            let _ = writeln!(
                out,
                "\nredis {} {} calls={} errors: {} fallbacks: {} last error: {}",
                r.url,
                if r.up { "up" } else { "DOWN" },
                r.calls.values().sum::<u64>(),
                if errors.is_empty() {
                    "-".into()
                } else {
                    errors.join(" ")
                },
                if fallbacks.is_empty() {
                    "-".into()
                } else {
                    fallbacks.join(" ")
                },
                r.last_error.as_deref().unwrap_or("-")
            );
        }
        self.guards_table(&mut out);
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .filter(|r| r.packets > 0)
            .map(|r| format!("{}={}", r.reason, r.packets))
            .collect();
        let _ = writeln!(out, "\nverdicts: {}", reasons.join(" "));
        if let Some(s) = &self.socket_lb {
            let events: Vec<String> = s
                .events
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(e, n)| format!("{e}={n}"))
                .collect();
            let _ = writeln!(
                out,
                "socket LB on {} (namespaces: {}): {}",
                s.cgroup,
                s.namespaces,
                events.join(" ")
            );
        }
        out
    }
}
