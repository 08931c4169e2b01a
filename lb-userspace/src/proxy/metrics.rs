//! Gateway metrics (Prometheus, `prometheus-client`) and a plain per-route snapshot for
//! `lb status`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::redis_conn::RedisStats;

type Labels = Vec<(&'static str, String)>;

/// Latency buckets (seconds): 1 ms .. 30 s, roughly x2.5 apart.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why an upstream exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Could not connect (refused, unreachable).
    Connect,
    /// Connect or response timed out.
    Timeout,
    /// The connection broke during the exchange.
    Reset,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
        }
    }
}

/// Per-route counters for `lb status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Responses by class: index 0 = 1xx .. 4 = 5xx.
    pub by_class: [u64; 5],
    pub auth_failures: u64,
    /// Authentication failures by reason (`missing`, `expired`, ...).
    pub auth_reasons: BTreeMap<String, u64>,
    pub rate_limited: u64,
    /// Retries sent.
    pub retries: u64,
    /// 504s for the request timeout / a per-try timeout.
    pub timeouts_request: u64,
    pub timeouts_per_try: u64,
    /// 503s from the upstream's circuit breaker.
    pub overloaded: u64,
    pub faults_delayed: u64,
    pub faults_aborted: u64,
}

impl RouteStats {
    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }
}

/// The gateway's metrics; cheap to share (`Arc`), every method takes `&self`.
#[derive(Debug)]
pub struct GatewayMetrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    upstream_errors: Family<Labels, Counter>,
    auth_failures: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    access_log_dropped: Counter,
    routes: Mutex<BTreeMap<Arc<str>, RouteStats>>,
    /// Per route, the metric handles every request updates: looked up under a read lock,
    /// without building label vectors (the families' own lookups allocate).
    handles: RwLock<HashMap<Arc<str>, Arc<RouteHandles>>>,
    /// Failed upstream exchanges by (service, kind), for the status document.
    upstream: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Redis calls, errors, connection state and fail-mode decisions.
    pub redis: Arc<RedisStats>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.iter().copied())
            }),
            upstream_errors: Family::default(),
            auth_failures: Family::default(),
            rate_limited: Family::default(),
            access_log_dropped: Counter::default(),
            routes: Mutex::new(BTreeMap::new()),
            handles: RwLock::new(HashMap::new()),
            upstream: Mutex::new(BTreeMap::new()),
            redis: Arc::default(),
        }
    }
}

/// One route's per-request metrics: clones of the family members (they share the counts).
#[derive(Debug)]
struct RouteHandles {
    /// By status class, 1xx..5xx.
    requests: [Counter; 5],
    duration: Histogram,
}

/// Route label for requests that matched none.
pub const NO_ROUTE: &str = "";

impl GatewayMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register every family under `lb_gateway_*`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "lb_gateway_requests",
            "Gateway responses by route and status class",
            self.requests.clone(),
        );
        reg.register(
            "lb_gateway_request_duration_seconds",
            "Gateway request duration (until the response body ended) by route",
            self.duration.clone(),
        );
        reg.register(
            "lb_gateway_upstream_errors",
            "Failed upstream exchanges by service and kind (connect, timeout, reset)",
            self.upstream_errors.clone(),
        );
        reg.register(
            "lb_gateway_auth_failures",
            "Requests refused by authentication, by route and reason",
            self.auth_failures.clone(),
        );
        reg.register(
            "lb_gateway_rate_limited",
            "Requests refused by rate limiting, by route",
            self.rate_limited.clone(),
        );
        reg.register(
            "lb_gateway_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
    }

    /// Only the latency histograms: the agent's metrics endpoint renders the counters from
    /// its status document and adds these.
    pub fn register_histograms(&self, reg: &mut Registry) {
        reg.register(
            "lb_gateway_request_duration_seconds",
            "Gateway request duration (until the response body ended) by route",
            self.duration.clone(),
        );
    }

    /// One finished request (called by the pipeline).
    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        let h = self.route_handles(route);
        let idx = usize::from(status.clamp(100, 599) / 100 - 1);
        h.requests[idx].inc();
        h.duration.observe(elapsed.as_secs_f64());
    }

    fn route_handles(&self, route: &str) -> Arc<RouteHandles> {
        if let Some(h) = self
            .handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
        {
            return h.clone();
        }
        let label = |class: &str| {
            vec![
                ("route", route.to_owned()),
                ("code_class", class.to_owned()),
            ]
        };
        let h = Arc::new(RouteHandles {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.requests.get_or_create(&label(c)).clone()),
            duration: self
                .duration
                .get_or_create(&vec![("route", route.to_owned())])
                .clone(),
        });
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(Arc::from(route))
            .or_insert(h)
            .clone()
    }

    pub fn upstream_error(&self, service: &str, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&vec![
                ("service", service.to_owned()),
                ("kind", kind.as_str().to_owned()),
            ])
            .inc();
        *self
            .upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((service.to_owned(), kind.as_str()))
            .or_default() += 1;
    }

    /// Failed upstream exchanges by (service, kind).
    pub fn upstream_errors(&self) -> BTreeMap<(String, &'static str), u64> {
        self.upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// For the integrator's `Decide`: an authentication failure on `route` for `reason`
    /// (e.g. "missing", "expired", "bad_signature").
    pub fn auth_failure(&self, route: &str, reason: &str) {
        self.auth_failures
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
        self.with_route(route, |s| {
            s.auth_failures += 1;
            *s.auth_reasons.entry(reason.to_owned()).or_default() += 1;
        });
    }

    /// For the integrator's `Decide`: a request refused by the rate limiter on `route`.
    pub fn rate_limited(&self, route: &str) {
        self.rate_limited
            .get_or_create(&vec![("route", route.to_owned())])
            .inc();
        self.with_route(route, |s| s.rate_limited += 1);
    }

    /// A retry sent on `route`.
    pub fn retry(&self, route: &str) {
        self.with_route(route, |s| s.retries += 1);
    }

    /// A 504 on `route` for its `request` or `per_try` timeout.
    pub fn timeout(&self, route: &str, kind: &str) {
        self.with_route(route, |s| match kind {
            "request" => s.timeouts_request += 1,
            _ => s.timeouts_per_try += 1,
        });
    }

    /// A 503 on `route` from the upstream's circuit breaker.
    pub fn overloaded(&self, route: &str) {
        self.with_route(route, |s| s.overloaded += 1);
    }

    /// An injected fault (`delay` or `abort`) on `route`.
    pub fn fault(&self, route: &str, kind: &str) {
        self.with_route(route, |s| match kind {
            "delay" => s.faults_delayed += 1,
            _ => s.faults_aborted += 1,
        });
    }

    pub(super) fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    /// Per-route counters, by route name (`""` = no route matched).
    pub fn snapshot(&self) -> BTreeMap<Arc<str>, RouteStats> {
        let mut out = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (route, h) in self
            .handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let s = out.entry(route.clone()).or_default();
            for (i, c) in h.requests.iter().enumerate() {
                s.by_class[i] = c.get();
            }
        }
        out
    }

    fn with_route(&self, route: &str, f: impl FnOnce(&mut RouteStats)) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        match routes.get_mut(route) {
            Some(s) => f(s),
            None => f(routes.entry(Arc::from(route)).or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_and_snapshot() {
        let m = GatewayMetrics::new();
        m.observe_request("api", 200, Duration::from_millis(3));
        m.observe_request("api", 204, Duration::from_millis(3));
        m.observe_request("api", 503, Duration::from_millis(30));
        m.auth_failure("api", "expired");
        m.rate_limited("api");
        m.upstream_error("users", UpstreamErrorKind::Timeout);
        let snap = m.snapshot();
        let api = &snap["api"];
        assert_eq!(api.by_class, [0, 2, 0, 0, 1]);
        assert_eq!(api.requests(), 3);
        assert_eq!((api.auth_failures, api.rate_limited), (1, 1));

        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            r#"lb_gateway_requests_total{route="api",code_class="2xx"} 2"#,
            r#"lb_gateway_requests_total{route="api",code_class="5xx"} 1"#,
            r#"lb_gateway_request_duration_seconds_count{route="api"} 3"#,
            r#"lb_gateway_upstream_errors_total{service="users",kind="timeout"} 1"#,
            r#"lb_gateway_auth_failures_total{route="api",reason="expired"} 1"#,
            r#"lb_gateway_rate_limited_total{route="api"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
