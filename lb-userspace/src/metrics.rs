//! Prometheus metrics, rendered from a [`Status`] snapshot at each scrape.
//!
//! Built with prometheus-client's registry and text encoder. One deviation, on purpose:
//! prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`;
//! the Prometheus text format (what `promtool check metrics` and most scrapers read) wants
//! the family itself named `x_total`. Our counters are values read from the kernel, so they
//! are encoded through [`KernelCounter`]: TYPE counter, sample named like its family (which
//! ends in `_total`). The output is served as `text/plain; version=0.0.4`.
//!
//! May depend on: `status` (metrics are a rendering of the status document) and the
//! gateway's metrics (its latency histograms, which the document does not carry).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, text::encode},
    metrics::{MetricType, TypedMetric, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{proxy::metrics::GatewayMetrics, status::Status};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count read from elsewhere (the kernel, the agent's state).
#[derive(Debug, Default)]
struct KernelCounter(AtomicU64);

impl KernelCounter {
    fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

impl TypedMetric for KernelCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for KernelCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // A gauge-style sample: no `_total` appended (the family name has it already).
        encoder.encode_gauge(&self.0.load(Ordering::Relaxed))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

type Labels = Vec<(&'static str, String)>;

/// Families keyed by labels, registered under `name` with `help`.
fn counters(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, KernelCounter> {
    let f = Family::<Labels, KernelCounter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauges(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// An unlabelled counter with value `v`.
fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    reg.register(name, help, KernelCounter(AtomicU64::new(v)));
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g = Gauge::<i64>::default();
    g.set(gauge_i64(v));
    reg.register(name, help, g);
}

fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The mesh tunnel: connections, streams, bytes, handshake failures, authorization
/// decisions, certificate expiry.
fn mesh(reg: &mut Registry, m: &crate::mesh::tunnel::TunnelView) {
    let opened = counters(
        reg,
        "lb_mesh_connections_total",
        "Mesh tunnel TLS+HTTP/2 connections opened, by side (outbound to peer nodes, inbound)",
    );
    let active = gauges(
        reg,
        "lb_mesh_connections_active",
        "Mesh tunnel connections open now, by side",
    );
    let streams = counters(
        reg,
        "lb_mesh_streams_total",
        "Mesh CONNECT streams opened, by side",
    );
    let streams_active = gauges(
        reg,
        "lb_mesh_streams_active",
        "Mesh CONNECT streams open now, by side",
    );
    for c in &m.connections {
        let l = vec![("side", c.side.clone())];
        opened.get_or_create(&l).set(c.opened);
        active.get_or_create(&l).set(gauge_i64(c.active));
        streams.get_or_create(&l).set(c.streams);
        streams_active
            .get_or_create(&l)
            .set(gauge_i64(c.streams_active));
    }
    let bytes = counters(
        reg,
        "lb_mesh_bytes_total",
        "Bytes carried by mesh streams (counted when a stream ends), by direction",
    );
    bytes
        .get_or_create(&vec![("direction", "to_backend".to_string())])
        .set(m.bytes_to_backend);
    bytes
        .get_or_create(&vec![("direction", "to_client".to_string())])
        .set(m.bytes_to_client);
    let hs = counters(
        reg,
        "lb_mesh_handshake_failures_total",
        "Mesh TLS handshakes that failed, by side and reason",
    );
    for (side, reason, n) in &m.handshake_failures {
        hs.get_or_create(&vec![("side", side.clone()), ("reason", reason.clone())])
            .set(*n);
    }
    let refused = counters(
        reg,
        "lb_mesh_refused_total",
        "Mesh connections or CONNECTs refused before authorization, by reason",
    );
    for (reason, n) in &m.refused {
        refused
            .get_or_create(&vec![("reason", reason.clone())])
            .set(*n);
    }
    let authz = counters(
        reg,
        "lb_mesh_authz_decisions_total",
        "Mesh L4 authorization decisions, by policy (empty: none matched), reason and outcome",
    );
    for (policy, reason, allowed, n) in &m.authz {
        let outcome = if *allowed { "allow" } else { "deny" };
        authz
            .get_or_create(&vec![
                ("policy", policy.clone()),
                ("reason", reason.clone()),
                ("decision", outcome.to_string()),
            ])
            .set(*n);
    }
    let peers = counters(
        reg,
        "lb_mesh_inbound_streams_by_peer_total",
        "Authorized inbound mesh streams, by the peer's verified SPIFFE ID",
    );
    for (id, n) in &m.peers {
        peers.get_or_create(&vec![("peer", id.clone())]).set(*n);
    }
    let servers = counters(
        reg,
        "lb_mesh_outbound_connections_by_server_total",
        "Outbound mesh connections, by the SPIFFE ID the destination's agent presented",
    );
    for (id, n) in &m.servers {
        servers.get_or_create(&vec![("server", id.clone())]).set(*n);
    }
    let expiry = gauges(
        reg,
        "lb_mesh_cert_expiry_seconds",
        "Expiry of each identity's current certificate, seconds since the epoch",
    );
    for (id, t) in &m.cert_expiry {
        expiry
            .get_or_create(&vec![("identity", id.clone())])
            .set(gauge_i64(*t));
    }
}

/// The gateway's Redis: connection state, calls, errors, fail-mode decisions.
fn redis(reg: &mut Registry, r: &crate::status::RedisStatus) {
    gauge(
        reg,
        "lb_gateway_redis_up",
        "1 while the gateway is connected to its Redis",
        u64::from(r.up),
    );
    counter(
        reg,
        "lb_gateway_redis_connects_total",
        "Connections made to Redis (the first included)",
        r.reconnects,
    );
    counter(
        reg,
        "lb_gateway_redis_connect_failures_total",
        "Failed attempts to connect to Redis",
        r.connect_failures,
    );
    let calls = counters(
        reg,
        "lb_gateway_redis_calls_total",
        "Gateway calls to Redis by operation (ratelimit, apikey), failed ones included",
    );
    for (op, n) in &r.calls {
        calls.get_or_create(&vec![("op", op.clone())]).set(*n);
    }
    let errors = counters(
        reg,
        "lb_gateway_redis_errors_total",
        "Gateway calls to Redis that failed, by operation and kind (down, timeout, error)",
    );
    for e in &r.errors {
        errors
            .get_or_create(&vec![("op", e.op.clone()), ("kind", e.kind.clone())])
            .set(e.count);
    }
    let fallbacks = counters(
        reg,
        "lb_gateway_redis_fallbacks_total",
        "Requests a shared rate limit decided without Redis, by route and on_redis_error mode",
    );
    for f in &r.fallbacks {
        fallbacks
            .get_or_create(&vec![("route", f.route.clone()), ("mode", f.mode.clone())])
            .set(f.count);
    }
}

/// Retries, timeouts, overloads and faults per route; breakers, budgets and ejections per
/// upstream service.
fn gateway_resilience(reg: &mut Registry, s: &Status) {
    let retries = counters(
        reg,
        "lb_gateway_retries_total",
        "Gateway retries sent, by route",
    );
    let timeouts = counters(
        reg,
        "lb_gateway_timeouts_total",
        "Gateway 504s by route and timeout (request, per_try)",
    );
    let overloaded = counters(
        reg,
        "lb_gateway_overloaded_total",
        "Gateway 503s from an upstream's circuit breaker, by route",
    );
    let faults = counters(
        reg,
        "lb_gateway_faults_total",
        "Faults injected by the gateway, by route and kind (delay, abort)",
    );
    for r in &s.routes {
        let route = || vec![("route", r.route.clone())];
        let with = |k: &'static str, v: &str| {
            let mut l = route();
            l.push((k, v.to_owned()));
            l
        };
        retries.get_or_create(&route()).set(r.retries);
        overloaded.get_or_create(&route()).set(r.overloaded);
        timeouts
            .get_or_create(&with("kind", "request"))
            .set(r.timeouts_request);
        timeouts
            .get_or_create(&with("kind", "per_try"))
            .set(r.timeouts_per_try);
        faults
            .get_or_create(&with("kind", "delay"))
            .set(r.faults_delayed);
        faults
            .get_or_create(&with("kind", "abort"))
            .set(r.faults_aborted);
    }
    let overflows = counters(
        reg,
        "lb_gateway_breaker_overflows_total",
        "Requests refused by an upstream's circuit breaker, by service and limit",
    );
    let refused = counters(
        reg,
        "lb_gateway_retry_budget_exhausted_total",
        "Retries not sent because the upstream's retry budget was spent, by service",
    );
    let ejections = counters(
        reg,
        "lb_gateway_outlier_ejections_total",
        "Backends ejected by outlier detection, by service",
    );
    let ejected = gauges(
        reg,
        "lb_gateway_ejected_backends",
        "Backends ejected now, by service",
    );
    let active = gauges(
        reg,
        "lb_gateway_upstream_active_requests",
        "Gateway requests in flight to a service",
    );
    for g in &s.upstream_guards {
        let svc = || vec![("service", g.service.clone())];
        for (i, limit) in ["max_requests", "max_pending", "max_connections"]
            .iter()
            .enumerate()
        {
            let mut l = svc();
            l.push(("limit", (*limit).to_owned()));
            overflows.get_or_create(&l).set(g.overflows[i]);
        }
        refused.get_or_create(&svc()).set(g.retries_refused);
        ejections.get_or_create(&svc()).set(g.ejections);
        ejected
            .get_or_create(&svc())
            .set(gauge_i64(g.ejected.len() as u64));
        active.get_or_create(&svc()).set(i64::from(g.requests));
    }
}

/// The metrics text for `s`, with the gateway's latency histograms when it runs.
pub fn render(s: &Status, gateway: Option<&GatewayMetrics>) -> String {
    let mut reg = Registry::default();
    if let Some(g) = gateway {
        g.register_histograms(&mut reg);
    }
    let gw_requests = counters(
        &mut reg,
        "lb_gateway_requests_total",
        "Gateway responses by route (service/route) and status class",
    );
    let gw_auth = counters(
        &mut reg,
        "lb_gateway_auth_failures_total",
        "Gateway requests refused by authentication (401/403), by route and reason",
    );
    let gw_upstream = counters(
        &mut reg,
        "lb_gateway_upstream_errors_total",
        "Gateway exchanges with a service's backends that failed, by kind (connect, timeout, reset)",
    );
    for u in &s.upstream_errors {
        gw_upstream
            .get_or_create(&vec![
                ("service", u.service.clone()),
                ("kind", u.kind.clone()),
            ])
            .set(u.count);
    }
    let gw_limited = counters(
        &mut reg,
        "lb_gateway_rate_limited_total",
        "Gateway requests refused by a rate limit (429), by route",
    );
    for r in &s.routes {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            gw_requests
                .get_or_create(&vec![
                    ("route", r.route.clone()),
                    ("code_class", (*class).to_owned()),
                ])
                .set(r.by_class[i]);
        }
        for (reason, n) in &r.auth_reasons {
            gw_auth
                .get_or_create(&vec![
                    ("route", r.route.clone()),
                    ("reason", reason.clone()),
                ])
                .set(*n);
        }
        gw_limited
            .get_or_create(&vec![("route", r.route.clone())])
            .set(r.rate_limited);
    }
    if let Some(r) = &s.redis {
        redis(&mut reg, r);
    }
    gateway_resilience(&mut reg, s);
    let svc_packets = counters(
        &mut reg,
        "lb_service_packets_total",
        "Packets to the service's VIP and port, both directions",
    );
    let svc_bytes = counters(&mut reg, "lb_service_bytes_total", "Bytes of those packets");
    let svc_conns = counters(
        &mut reg,
        "lb_service_connections_total",
        "New flows balanced onto a backend",
    );
    let svc_drops = counters(
        &mut reg,
        "lb_service_drops_total",
        "Packets of the service dropped (rate limit, no backend, no route, ...)",
    );
    let svc_ct = gauges(
        &mut reg,
        "lb_service_conntrack_entries",
        "Live conntrack entries of the service",
    );
    let svc_open = gauges(
        &mut reg,
        "lb_service_fail_open",
        "1 when every backend is down and all are kept (fail open)",
    );
    let be_packets = counters(
        &mut reg,
        "lb_backend_packets_total",
        "Packets forwarded to the backend, both directions",
    );
    let be_bytes = counters(&mut reg, "lb_backend_bytes_total", "Bytes of those packets");
    let be_conns = counters(
        &mut reg,
        "lb_backend_connections_total",
        "New flows given to the backend",
    );
    let be_up = gauges(
        &mut reg,
        "lb_backend_up",
        "1 if the backend passes its health check (always 1 without one)",
    );
    let be_weight = gauges(
        &mut reg,
        "lb_backend_weight",
        "The backend's weight in the Maglev table now (0: drained or down)",
    );
    let be_trans = counters(
        &mut reg,
        "lb_backend_health_transitions_total",
        "Up/down changes of the backend's health",
    );
    let verdicts = counters(
        &mut reg,
        "lb_datapath_packets_total",
        "Packets seen by the XDP program, by verdict reason",
    );
    let src_eps = gauges(
        &mut reg,
        "lb_source_endpoints",
        "Endpoints the source published last (kept while it fails)",
    );
    let src_updates = counters(
        &mut reg,
        "lb_source_updates_total",
        "Complete endpoint sets received from the source",
    );
    let src_errors = counters(
        &mut reg,
        "lb_source_errors_total",
        "Failures to reach or read the source (registry sync errors)",
    );
    let src_ignored = gauges(
        &mut reg,
        "lb_source_ignored_endpoints",
        "Endpoints of the source not used (unknown service, wrong family)",
    );
    let checksum = gauges(
        &mut reg,
        "lb_table_checksum_info",
        "Checksum of every Maglev table and service record, as a label; equal on agents with equal inputs",
    );

    for svc in &s.services {
        let l = vec![("service", svc.name.clone())];
        svc_packets.get_or_create(&l).set(svc.packets);
        svc_bytes.get_or_create(&l).set(svc.bytes);
        svc_conns.get_or_create(&l).set(svc.connections);
        svc_drops.get_or_create(&l).set(svc.drops);
        svc_ct
            .get_or_create(&l)
            .set(gauge_i64(svc.conntrack_entries));
        svc_open.get_or_create(&l).set(i64::from(svc.fail_open));
        for b in &svc.backends {
            let l = vec![
                ("service", svc.name.clone()),
                ("backend", b.address.clone()),
            ];
            be_packets.get_or_create(&l).set(b.packets);
            be_bytes.get_or_create(&l).set(b.bytes);
            be_conns.get_or_create(&l).set(b.connections);
            be_up.get_or_create(&l).set(i64::from(b.up));
            be_weight
                .get_or_create(&l)
                .set(i64::from(b.effective_weight));
            be_trans.get_or_create(&l).set(b.health_transitions);
        }
    }
    if let Some(sock) = &s.socket_lb {
        let events = counters(
            &mut reg,
            "lb_socket_lb_events_total",
            "What the socket LB did: connects and datagrams given a backend, refusals for want of \
             one, addresses translated back, sockets of other namespaces left alone",
        );
        for (event, n) in &sock.events {
            events
                .get_or_create(&vec![("event", event.clone())])
                .set(*n);
        }
    }
    if let Some(m) = &s.mesh {
        mesh(&mut reg, m);
    }
    for r in &s.reasons {
        verdicts
            .get_or_create(&vec![("reason", r.reason.clone())])
            .set(r.packets);
    }
    let rate_limited = s
        .reasons
        .iter()
        .find(|r| r.reason == lb_common::Reason::RateLimited.name())
        .map_or(0, |r| r.packets);
    counter(
        &mut reg,
        "lb_rate_limited_packets_total",
        "Packets dropped by the per-source rate limit",
        rate_limited,
    );
    for src in &s.sources {
        let l = vec![("source", src.name.clone())];
        src_eps.get_or_create(&l).set(gauge_i64(src.endpoints));
        src_updates.get_or_create(&l).set(src.updates);
        src_errors.get_or_create(&l).set(src.errors);
        src_ignored.get_or_create(&l).set(gauge_i64(src.ignored));
    }
    checksum
        .get_or_create(&vec![("checksum", s.table_checksum.clone())])
        .set(1);
    gauge(
        &mut reg,
        "lb_config_generation",
        "Config generation applied (1 at start, +1 per reload)",
        s.generation,
    );
    counter(
        &mut reg,
        "lb_table_syncs_total",
        "Times the tables were recomputed (reloads, registry changes, health changes)",
        s.syncs,
    );
    gauge(
        &mut reg,
        "lb_conntrack_entries",
        "Live conntrack entries, all services",
        s.conntrack_entries,
    );
    gauge(
        &mut reg,
        "lb_conntrack_capacity",
        "Size of the conntrack table (max entries) as the data plane has it",
        s.conntrack_capacity,
    );
    gauge(
        &mut reg,
        "lb_syn_flood_cpus",
        "CPUs on which the SYN-flood guard is in flood mode (challenging unverified sources)",
        s.syn_guard.flood_cpus.into(),
    );
    gauge(
        &mut reg,
        "lb_syn_verified_sources",
        "Sources that answered a SYN-guard challenge within verified_secs",
        s.syn_guard.verified_sources,
    );
    counter(
        &mut reg,
        "lb_syn_challenges_total",
        "Challenge SYN-ACKs the SYN-flood guard sent",
        s.syn_guard.challenges,
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BackendStatus, ReasonCount, ServiceStatus, SourceStatus};

    fn sample() -> Status {
        Status {
            generation: 3,
            table_checksum: "00ff".into(),
            syncs: 7,
            conntrack_entries: 2,
            conntrack_capacity: 262_144,
            services: vec![ServiceStatus {
                name: "web".into(),
                address: "10.0.0.1:80".into(),
                protocol: "tcp".into(),
                packets: 10,
                bytes: 1000,
                connections: 2,
                drops: 1,
                conntrack_entries: 2,
                health_checked: true,
                fail_open: false,
                backends: vec![BackendStatus {
                    address: "[2001:db8::1]:80".into(),
                    weight: 2,
                    effective_weight: 0,
                    origin: "registry".into(),
                    up: false,
                    health_transitions: 1,
                    last_error: Some("refused".into()),
                    packets: 9,
                    bytes: 900,
                    connections: 2,
                    ejected: true,
                }],
            }],
            sources: vec![SourceStatus {
                name: "etcd".into(),
                endpoints: 1,
                updates: 4,
                errors: 5,
                last_error: None,
                ignored: 0,
            }],
            reasons: vec![
                ReasonCount {
                    reason: "forwarded".into(),
                    packets: 9,
                },
                ReasonCount {
                    reason: "rate_limited".into(),
                    packets: 1,
                },
            ],
            routes: vec![crate::status::RouteStatus {
                route: "api/users".into(),
                requests: 6,
                by_class: [0, 4, 0, 1, 1],
                auth_failures: 1,
                auth_reasons: [("expired".to_owned(), 1)].into(),
                rate_limited: 0,
                retries: 3,
                timeouts_request: 1,
                timeouts_per_try: 2,
                overloaded: 4,
                faults_delayed: 5,
                faults_aborted: 6,
            }],
            upstream_errors: vec![crate::status::UpstreamErrors {
                service: "users".into(),
                kind: "connect".into(),
                count: 2,
            }],
            socket_lb: Some(crate::status::SocketLbStatus {
                cgroup: "/sys/fs/cgroup".into(),
                namespaces: "host".into(),
                events: [("connect".to_owned(), 7)].into(),
            }),
            redis: Some(crate::status::RedisStatus {
                url: "redis://127.0.0.1:6379".into(),
                up: false,
                reconnects: 1,
                connect_failures: 3,
                calls: [("ratelimit".to_owned(), 9)].into(),
                errors: vec![crate::status::RedisErrors {
                    op: "ratelimit".into(),
                    kind: "timeout".into(),
                    count: 2,
                }],
                last_error: None,
                fallbacks: vec![crate::status::RedisFallbacks {
                    route: "api/users".into(),
                    mode: "local".into(),
                    count: 2,
                }],
            }),
            syn_guard: crate::status::SynGuardStatus {
                rate: 2000,
                flood_cpus: 1,
                verified_sources: 4,
                challenges: 99,
            },
            upstream_guards: vec![crate::status::UpstreamGuard {
                service: "users".into(),
                requests: 7,
                pending: 0,
                connections: 3,
                overflows: [8, 9, 10],
                retries: 3,
                retries_refused: 11,
                ejections: 12,
                ejected: vec!["[2001:db8::1]:80".into()],
            }],
            mesh: Some(crate::mesh::tunnel::TunnelView {
                connections: vec![crate::mesh::tunnel::SideView {
                    side: "inbound".into(),
                    opened: 2,
                    active: 1,
                    streams: 5,
                    streams_active: 1,
                }],
                bytes_to_backend: 100,
                bytes_to_client: 200,
                handshake_failures: vec![("inbound".into(), "unknown_issuer".into(), 3)],
                refused: vec![("not_local".into(), 1)],
                authz: vec![("no-web".into(), "deny_policy".into(), false, 4)],
                peers: vec![("spiffe://td/ns/a/sa/b".into(), 5)],
                servers: vec![("spiffe://td/ns/shop/sa/web".into(), 2)],
                cert_expiry: vec![("spiffe://td/ns/a/sa/b".into(), 1_900_000_000)],
            }),
        }
    }

    #[test]
    fn mesh_counters() {
        let text = render(&sample(), None);
        for want in [
            "lb_mesh_connections_total{side=\"inbound\"} 2\n",
            "lb_mesh_outbound_connections_by_server_total{server=\"spiffe://td/ns/shop/sa/web\"} 2\n",
            "lb_mesh_streams_active{side=\"inbound\"} 1\n",
            "lb_mesh_bytes_total{direction=\"to_client\"} 200\n",
            "lb_mesh_handshake_failures_total{side=\"inbound\",reason=\"unknown_issuer\"} 3\n",
            "lb_mesh_authz_decisions_total{policy=\"no-web\",reason=\"deny_policy\",decision=\"deny\"} 4\n",
            "lb_mesh_inbound_streams_by_peer_total{peer=\"spiffe://td/ns/a/sa/b\"} 5\n",
            "lb_mesh_cert_expiry_seconds{identity=\"spiffe://td/ns/a/sa/b\"} 1900000000\n",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn gateway_resilience_counters() {
        let text = render(&sample(), None);
        for want in [
            "lb_gateway_retries_total{route=\"api/users\"} 3\n",
            "lb_gateway_timeouts_total{route=\"api/users\",kind=\"request\"} 1\n",
            "lb_gateway_timeouts_total{route=\"api/users\",kind=\"per_try\"} 2\n",
            "lb_gateway_overloaded_total{route=\"api/users\"} 4\n",
            "lb_gateway_faults_total{route=\"api/users\",kind=\"delay\"} 5\n",
            "lb_gateway_faults_total{route=\"api/users\",kind=\"abort\"} 6\n",
            "lb_gateway_breaker_overflows_total{service=\"users\",limit=\"max_pending\"} 9\n",
            "lb_gateway_retry_budget_exhausted_total{service=\"users\"} 11\n",
            "lb_gateway_outlier_ejections_total{service=\"users\"} 12\n",
            "lb_gateway_ejected_backends{service=\"users\"} 1\n",
            "lb_gateway_upstream_active_requests{service=\"users\"} 7\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let table = sample().table();
        assert!(table.contains("EJECT"), "{table}");
        assert!(table.contains("8/9/10"), "{table}");
    }

    #[test]
    fn gateway_routes_and_histograms() {
        let g = GatewayMetrics::new();
        g.observe_request("api/users", 200, std::time::Duration::from_millis(2));
        let text = render(&sample(), Some(&g));
        for want in [
            "lb_gateway_requests_total{route=\"api/users\",code_class=\"2xx\"} 4\n",
            "lb_gateway_requests_total{route=\"api/users\",code_class=\"5xx\"} 1\n",
            "lb_gateway_auth_failures_total{route=\"api/users\",reason=\"expired\"} 1\n",
            "lb_gateway_upstream_errors_total{service=\"users\",kind=\"connect\"} 2\n",
            "lb_socket_lb_events_total{event=\"connect\"} 7\n",
            "# TYPE lb_gateway_request_duration_seconds histogram\n",
            "lb_gateway_request_duration_seconds_count{route=\"api/users\"} 1\n",
            "lb_gateway_redis_up 0\n",
            "lb_gateway_redis_calls_total{op=\"ratelimit\"} 9\n",
            "lb_gateway_redis_errors_total{op=\"ratelimit\",kind=\"timeout\"} 2\n",
            "lb_gateway_redis_fallbacks_total{route=\"api/users\",mode=\"local\"} 2\n",
            "lb_gateway_redis_connect_failures_total 3\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn status_table_shows_redis() {
        let t = sample().table();
        assert!(
            t.contains(
                "redis redis://127.0.0.1:6379 DOWN calls=9 errors: ratelimit/timeout=2 fallbacks: api/users:local=2 last error: -"
            ),
            "{t}"
        );
    }

    #[test]
    fn counters_are_named_the_prometheus_text_way() {
        let text = render(&sample(), None);
        assert!(
            text.contains("# TYPE lb_service_packets_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("lb_service_packets_total{service=\"web\"} 10\n"),
            "{text}"
        );
        assert!(!text.contains("_total_total"), "{text}");
        assert!(
            text.contains("lb_backend_up{service=\"web\",backend=\"[2001:db8::1]:80\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("lb_source_errors_total{source=\"etcd\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("lb_rate_limited_packets_total 1\n"), "{text}");
        assert!(
            text.contains("lb_table_checksum_info{checksum=\"00ff\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("lb_config_generation 3\n"), "{text}");
        assert!(text.contains("lb_conntrack_capacity 262144\n"), "{text}");
        assert!(text.contains("lb_syn_flood_cpus 1\n"), "{text}");
        assert!(text.contains("lb_syn_verified_sources 4\n"), "{text}");
        assert!(text.contains("lb_syn_challenges_total 99\n"), "{text}");
    }
}
