//! Failure handling of the L7 gateway (Envoy's model): a route's timeouts, retries and
//! injected faults (`[[service.route]]` keys and its `retry` / `fault` tables), and per
//! upstream service circuit breakers, retry budget and outlier detection (`[gateway]`
//! defaults, `[gateway.upstream.NAME]` overrides).

use std::time::Duration;

use super::Service;
use super::diag::{Diag, Span};
use super::doc::Table;

/// Default connect timeout (Envoy: 5 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default per-request timeout: until the last try's response head (nginx: 60 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default idle time of a pooled backend connection (below common backend keep-alives).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// A route's failure handling.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteResilience {
    /// Whole exchange (all tries and backoffs) until a response head; `None`: the
    /// `[gateway]` default.
    pub timeout: Option<Duration>,
    /// One try; `None`: only the request timeout bounds it.
    pub per_try_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
}

/// `[service.route.retry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (2..=10).
    pub tries: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    /// A try that hit `per_try_timeout_ms`.
    pub on_timeout: bool,
    /// Backend response codes that are retried (e.g. 502, 503).
    pub statuses: Vec<u16>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retry POST/PATCH (and anything not idempotent) too.
    pub non_idempotent: bool,
    /// Request bodies up to this size are buffered so a retry can send them again; larger
    /// or chunked bodies are streamed and not retried.
    pub max_body_bytes: u64,
}

pub const DEFAULT_RETRY_TRIES: u32 = 3;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
pub const DEFAULT_RETRY_BODY_BYTES: u64 = 64 * 1024;
const RETRY_ON: &[&str] = &["connect_failure", "reset", "timeout"];

/// `[service.route.fault]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultPolicy {
    pub delay: Duration,
    /// Share of requests delayed, 0..=100.
    pub delay_percent: u32,
    pub abort_status: u16,
    /// Share of requests aborted, 0..=100.
    pub abort_percent: u32,
    /// Honour `x-lb-fault-delay-ms` / `x-lb-fault-abort` request headers.
    pub header_faults: bool,
}

/// Circuit breaker limits of one upstream service (per gateway instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerLimits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
}

impl Default for BreakerLimits {
    fn default() -> Self {
        // Envoy's defaults.
        Self {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
        }
    }
}

/// Retries in flight at most `percent` of the requests in flight, or `min_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub percent: u32,
    pub min_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20,
            min_concurrency: 3,
        }
    }
}

/// Outlier ejection of one upstream service's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive 5xx (backend's or the gateway's 502/503/504) that eject; 0: off.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502/503/504, connect failures, resets, timeouts); 0: off.
    pub consecutive_gateway_errors: u32,
    /// Consecutive connect failures; 0: off.
    pub consecutive_connect_failures: u32,
    /// Failures further apart than this do not count as consecutive.
    pub interval: Duration,
    /// Ejection time = base x number of ejections so far, at most `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of the service's serving backends out at once (at least one).
    pub max_ejection_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 5,
            consecutive_connect_failures: 5,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// Per upstream service: breaker, retry budget, outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpstreamPolicy {
    pub breaker: BreakerLimits,
    pub budget: RetryBudget,
    pub outlier: OutlierPolicy,
}

/// `[gateway.upstream.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamOverride {
    pub service: String,
    pub span: Span,
    pub policy: UpstreamPolicy,
}

/// The `[gateway]` part of failure handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResilienceSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub defaults: UpstreamPolicy,
    pub upstreams: Vec<UpstreamOverride>,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            defaults: UpstreamPolicy::default(),
            upstreams: Vec::new(),
        }
    }
}

impl ResilienceSettings {
    /// The policy of upstream service `name`.
    pub fn upstream(&self, name: &str) -> UpstreamPolicy {
        self.upstreams
            .iter()
            .find(|o| o.service == name)
            .map_or(self.defaults, |o| o.policy)
    }
}

/// Keys of `[gateway]` read here.
pub(super) const GATEWAY_KEYS: &[&str] = &[
    "connect_timeout_ms",
    "request_timeout_ms",
    "idle_timeout_ms",
    "retry_budget",
    "circuit_breaker",
    "outlier_detection",
    "upstream",
];

/// An integer in `range`, or `None` (reported) when out of it or of the wrong type.
fn int(
    t: &Table,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
    unit: &str,
    d: &mut Diag,
    ok: &mut bool,
) -> Option<u64> {
    let v = t.get(key)?.int(d);
    match v {
        Some(v) if range.contains(&v.val) => Some(v.val as u64),
        Some(v) => {
            d.error(
                &v.span,
                &t.field(key),
                format!(
                    "{key} {} out of range {}..={}{unit}",
                    v.val,
                    range.start(),
                    range.end()
                ),
            );
            *ok = false;
            None
        }
        None => {
            *ok = false;
            None
        }
    }
}

const MAX_MS: i64 = 3_600_000;

fn ms(t: &Table, key: &str, min: i64, d: &mut Diag, ok: &mut bool) -> Option<Duration> {
    int(t, key, min..=MAX_MS, " ms", d, ok).map(Duration::from_millis)
}

/// The route's failure handling keys; `None` if any was wrong (reported).
pub(super) fn route(t: &Table, d: &mut Diag) -> Option<RouteResilience> {
    let mut ok = true;
    let timeout = ms(t, "timeout_ms", 1, d, &mut ok);
    let per_try_timeout = ms(t, "per_try_timeout_ms", 1, d, &mut ok);
    let retry = t.get("retry").and_then(|n| n.table(d)).and_then(|rt| {
        retry(&rt, d).or_else(|| {
            ok = false;
            None
        })
    });
    let fault = t.get("fault").and_then(|n| n.table(d)).and_then(|ft| {
        fault(&ft, d).or_else(|| {
            ok = false;
            None
        })
    });
    ok.then_some(RouteResilience {
        timeout,
        per_try_timeout,
        retry,
        fault,
    })
}

fn retry(t: &Table, d: &mut Diag) -> Option<RetryPolicy> {
    t.deny_unknown(
        &[
            "tries",
            "on",
            "statuses",
            "backoff_base_ms",
            "backoff_max_ms",
            "non_idempotent",
            "max_body_bytes",
        ],
        d,
    );
    let mut ok = true;
    let mut p = RetryPolicy {
        tries: int(t, "tries", 2..=10, "", d, &mut ok).map_or(DEFAULT_RETRY_TRIES, |n| n as u32),
        on_connect_failure: true,
        on_reset: true,
        on_timeout: false,
        statuses: Vec::new(),
        backoff_base: ms(t, "backoff_base_ms", 1, d, &mut ok).unwrap_or(DEFAULT_BACKOFF_BASE),
        backoff_max: ms(t, "backoff_max_ms", 1, d, &mut ok).unwrap_or(DEFAULT_BACKOFF_MAX),
        non_idempotent: t
            .get("non_idempotent")
            .and_then(|n| n.bool(d))
            .is_some_and(|b| b.val),
        max_body_bytes: int(t, "max_body_bytes", 0..=16 << 20, " bytes", d, &mut ok)
            .unwrap_or(DEFAULT_RETRY_BODY_BYTES),
    };
    if let Some(on) = t.get("on").and_then(|n| n.array(d)) {
        p.on_connect_failure = false;
        p.on_reset = false;
        for n in on {
            let Some(s) = n.str(d) else {
                ok = false;
                continue;
            };
            match s.val.as_str() {
                "connect_failure" => p.on_connect_failure = true,
                "reset" => p.on_reset = true,
                "timeout" => p.on_timeout = true,
                other => {
                    d.error(
                        &s.span,
                        &t.field("on"),
                        format!(
                            "unknown retry condition `{other}`; expected some of {}",
                            RETRY_ON.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
        }
    }
    if let Some(codes) = t.get("statuses").and_then(|n| n.array(d)) {
        for n in codes {
            match n.int(d) {
                Some(c) if (500..=599).contains(&c.val) => p.statuses.push(c.val as u16),
                Some(c) => {
                    d.error(
                        &c.span,
                        &t.field("statuses"),
                        format!("status {} is not a 5xx code", c.val),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
    }
    if ok && p.backoff_max < p.backoff_base {
        let span = t.get("backoff_max_ms").map_or(t.span.clone(), |n| n.span);
        d.error(
            &span,
            &t.field("backoff_max_ms"),
            "backoff_max_ms is below backoff_base_ms",
        );
        ok = false;
    }
    ok.then_some(p)
}

fn fault(t: &Table, d: &mut Diag) -> Option<FaultPolicy> {
    t.deny_unknown(
        &[
            "delay_ms",
            "delay_percent",
            "abort_status",
            "abort_percent",
            "header_faults",
        ],
        d,
    );
    let mut ok = true;
    let f = FaultPolicy {
        delay: ms(t, "delay_ms", 0, d, &mut ok).unwrap_or_default(),
        delay_percent: int(t, "delay_percent", 0..=100, " %", d, &mut ok).unwrap_or(0) as u32,
        abort_status: int(t, "abort_status", 200..=599, "", d, &mut ok).unwrap_or(503) as u16,
        abort_percent: int(t, "abort_percent", 0..=100, " %", d, &mut ok).unwrap_or(0) as u32,
        header_faults: t
            .get("header_faults")
            .and_then(|n| n.bool(d))
            .is_some_and(|b| b.val),
    };
    if ok && f.delay_percent > 0 && f.delay.is_zero() {
        let span = t.get("delay_percent").map_or(t.span.clone(), |n| n.span);
        d.error(
            &span,
            &t.field("delay_ms"),
            "delay_percent needs a delay_ms > 0",
        );
        ok = false;
    }
    ok.then_some(f)
}

/// The `[gateway]` keys of failure handling.
pub(super) fn settings(t: &Table, d: &mut Diag) -> ResilienceSettings {
    let mut ok = true;
    let mut s = ResilienceSettings::default();
    if let Some(v) = ms(t, "connect_timeout_ms", 1, d, &mut ok) {
        s.connect_timeout = v;
    }
    if let Some(v) = ms(t, "request_timeout_ms", 1, d, &mut ok) {
        s.request_timeout = v;
    }
    if let Some(v) = ms(t, "idle_timeout_ms", 1, d, &mut ok) {
        s.idle_timeout = v;
    }
    s.defaults = policy(t, UpstreamPolicy::default(), d);
    if let Some(ut) = t.get("upstream").and_then(|n| n.table(d)) {
        for name in ut.keys() {
            let Some(node) = ut.get(&name) else { continue };
            let span = node.span.clone();
            if let Some(pt) = node.table(d) {
                pt.deny_unknown(&["retry_budget", "circuit_breaker", "outlier_detection"], d);
                s.upstreams.push(UpstreamOverride {
                    service: name,
                    span,
                    policy: policy(&pt, s.defaults, d),
                });
            }
        }
    }
    s
}

/// `retry_budget`, `circuit_breaker`, `outlier_detection` of `t`, over `base`.
fn policy(t: &Table, base: UpstreamPolicy, d: &mut Diag) -> UpstreamPolicy {
    let mut p = base;
    let mut ok = true;
    if let Some(bt) = t.get("retry_budget").and_then(|n| n.table(d)) {
        bt.deny_unknown(&["percent", "min_concurrency"], d);
        if let Some(v) = int(&bt, "percent", 0..=100, " %", d, &mut ok) {
            p.budget.percent = v as u32;
        }
        if let Some(v) = int(&bt, "min_concurrency", 0..=100_000, "", d, &mut ok) {
            p.budget.min_concurrency = v as u32;
        }
    }
    if let Some(ct) = t.get("circuit_breaker").and_then(|n| n.table(d)) {
        ct.deny_unknown(&["max_connections", "max_pending", "max_requests"], d);
        let lim = 1..=1_000_000;
        if let Some(v) = int(&ct, "max_connections", lim.clone(), "", d, &mut ok) {
            p.breaker.max_connections = v as u32;
        }
        if let Some(v) = int(&ct, "max_pending", 0..=1_000_000, "", d, &mut ok) {
            p.breaker.max_pending = v as u32;
        }
        if let Some(v) = int(&ct, "max_requests", lim, "", d, &mut ok) {
            p.breaker.max_requests = v as u32;
        }
    }
    if let Some(ot) = t.get("outlier_detection").and_then(|n| n.table(d)) {
        ot.deny_unknown(
            &[
                "consecutive_5xx",
                "consecutive_gateway_errors",
                "consecutive_connect_failures",
                "interval_ms",
                "base_ejection_ms",
                "max_ejection_ms",
                "max_ejection_percent",
            ],
            d,
        );
        let o = &mut p.outlier;
        for (key, field) in [
            ("consecutive_5xx", &mut o.consecutive_5xx),
            (
                "consecutive_gateway_errors",
                &mut o.consecutive_gateway_errors,
            ),
            (
                "consecutive_connect_failures",
                &mut o.consecutive_connect_failures,
            ),
        ] {
            if let Some(v) = int(&ot, key, 0..=1000, "", d, &mut ok) {
                *field = v as u32;
            }
        }
        if let Some(v) = ms(&ot, "interval_ms", 1, d, &mut ok) {
            o.interval = v;
        }
        if let Some(v) = ms(&ot, "base_ejection_ms", 1, d, &mut ok) {
            o.base_ejection = v;
        }
        if let Some(v) = ms(&ot, "max_ejection_ms", 1, d, &mut ok) {
            o.max_ejection = v;
        }
        if let Some(v) = int(&ot, "max_ejection_percent", 0..=100, " %", d, &mut ok) {
            o.max_ejection_percent = v as u32;
        }
        if ok && o.max_ejection < o.base_ejection {
            let span = ot
                .get("max_ejection_ms")
                .map_or(ot.span.clone(), |n| n.span);
            d.error(
                &span,
                &ot.field("max_ejection_ms"),
                "max_ejection_ms is below base_ejection_ms",
            );
        }
    }
    p
}

/// Each `[gateway.upstream.NAME]` names a service the gateway can route to.
pub(super) fn check_upstreams(s: &ResilienceSettings, services: &[Service], d: &mut Diag) {
    for o in &s.upstreams {
        let found = services
            .iter()
            .any(|svc| svc.name == o.service && svc.http.is_none());
        if !found {
            d.error(
                &o.span,
                &format!("gateway.upstream.{}", o.service),
                format!(
                    "no upstream service named `{}` (a service that is not mode = \"http\")",
                    o.service
                ),
            );
        }
    }
}
