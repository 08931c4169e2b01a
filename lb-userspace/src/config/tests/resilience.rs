//! Failure handling config: route timeouts, retries, faults; `[gateway]` breakers, retry
//! budget, outlier detection and per-upstream overrides. One test per mistake.

use std::time::Duration;

use super::{gw, one_error};
use crate::config::{BreakerLimits, RetryBudget, UpstreamPolicy, parse};

#[test]
fn full_failure_handling_parses() {
    let text = gw(r#"timeout_ms = 2000
per_try_timeout_ms = 500
[service.route.retry]
tries = 4
on = ["connect_failure", "timeout"]
statuses = [502, 503]
backoff_base_ms = 10
backoff_max_ms = 100
non_idempotent = true
max_body_bytes = 1024
[service.route.fault]
delay_ms = 50
delay_percent = 10
abort_status = 500
abort_percent = 5
header_faults = true
[gateway]
connect_timeout_ms = 300
request_timeout_ms = 9000
idle_timeout_ms = 4000
retry_budget = { percent = 50, min_concurrency = 1 }
circuit_breaker = { max_connections = 10, max_pending = 5, max_requests = 20 }
outlier_detection = { consecutive_5xx = 3, base_ejection_ms = 1000, max_ejection_ms = 5000, max_ejection_percent = 50, interval_ms = 2000 }
[gateway.upstream.users.circuit_breaker]
max_requests = 2
"#);
    let c = parse(&text, "t.toml").unwrap();
    let r = &c.services[1].http.as_ref().unwrap().routes[0].resilience;
    assert_eq!(r.timeout, Some(Duration::from_millis(2000)));
    assert_eq!(r.per_try_timeout, Some(Duration::from_millis(500)));
    let retry = r.retry.as_ref().unwrap();
    assert_eq!(retry.tries, 4);
    assert!(retry.on_connect_failure && retry.on_timeout && !retry.on_reset);
    assert_eq!(retry.statuses, vec![502, 503]);
    assert_eq!(
        (retry.backoff_base, retry.backoff_max),
        (Duration::from_millis(10), Duration::from_millis(100))
    );
    assert!(retry.non_idempotent);
    assert_eq!(retry.max_body_bytes, 1024);
    let f = r.fault.as_ref().unwrap();
    assert_eq!(
        (
            f.delay,
            f.delay_percent,
            f.abort_status,
            f.abort_percent,
            f.header_faults
        ),
        (Duration::from_millis(50), 10, 500, 5, true)
    );
    let g = &c.gateway.resilience;
    assert_eq!(g.connect_timeout, Duration::from_millis(300));
    assert_eq!(g.request_timeout, Duration::from_millis(9000));
    assert_eq!(g.idle_timeout, Duration::from_millis(4000));
    let d = g.defaults;
    assert_eq!(
        d.budget,
        RetryBudget {
            percent: 50,
            min_concurrency: 1
        }
    );
    assert_eq!(
        d.breaker,
        BreakerLimits {
            max_connections: 10,
            max_pending: 5,
            max_requests: 20
        }
    );
    assert_eq!(d.outlier.consecutive_5xx, 3);
    assert_eq!(d.outlier.consecutive_gateway_errors, 5, "default kept");
    assert_eq!(d.outlier.max_ejection_percent, 50);
    // The override starts from the [gateway] values.
    let users = g.upstream("users");
    assert_eq!(users.breaker.max_requests, 2);
    assert_eq!(users.breaker.max_connections, 10);
    assert_eq!(users.outlier, d.outlier);
    assert_eq!(g.upstream("other"), d);
}

#[test]
fn defaults() {
    let c = parse(&gw(""), "t.toml").unwrap();
    let r = &c.services[1].http.as_ref().unwrap().routes[0].resilience;
    assert_eq!(*r, Default::default());
    let g = &c.gateway.resilience;
    assert_eq!(g.request_timeout, Duration::from_secs(60));
    assert_eq!(g.connect_timeout, Duration::from_secs(5));
    assert_eq!(g.defaults, UpstreamPolicy::default());
    assert_eq!(g.defaults.breaker.max_requests, 1024);
    assert_eq!(g.defaults.outlier.max_ejection_percent, 10);
    // A retry table alone: 3 tries on connect failures and resets.
    let c = parse(&gw("[service.route.retry]\n"), "t.toml").unwrap();
    let retry = c.services[1].http.as_ref().unwrap().routes[0]
        .resilience
        .retry
        .clone()
        .unwrap();
    assert_eq!(retry.tries, 3);
    assert!(retry.on_connect_failure && retry.on_reset && !retry.on_timeout);
    assert!(!retry.non_idempotent);
}

#[test]
fn route_timeout_out_of_range() {
    one_error(
        &gw("timeout_ms = 0\n"),
        14,
        "service[1].route[0].timeout_ms",
        "out of range 1..=3600000 ms",
    );
}

#[test]
fn retry_tries_out_of_range() {
    one_error(
        &gw("[service.route.retry]\ntries = 11\n"),
        15,
        "service[1].route[0].retry.tries",
        "tries 11 out of range 2..=10",
    );
}

#[test]
fn unknown_retry_condition() {
    one_error(
        &gw("[service.route.retry]\non = [\"reset\", \"5xx\"]\n"),
        15,
        "service[1].route[0].retry.on",
        "unknown retry condition `5xx`",
    );
}

#[test]
fn retry_status_not_5xx() {
    one_error(
        &gw("[service.route.retry]\nstatuses = [503, 404]\n"),
        15,
        "service[1].route[0].retry.statuses",
        "status 404 is not a 5xx code",
    );
}

#[test]
fn backoff_max_below_base() {
    one_error(
        &gw("[service.route.retry]\nbackoff_base_ms = 100\nbackoff_max_ms = 10\n"),
        16,
        "service[1].route[0].retry.backoff_max_ms",
        "below backoff_base_ms",
    );
}

#[test]
fn unknown_retry_key() {
    one_error(
        &gw("[service.route.retry]\nattempts = 3\n"),
        15,
        "service[1].route[0].retry.attempts",
        "unknown",
    );
}

#[test]
fn fault_percent_out_of_range() {
    one_error(
        &gw("[service.route.fault]\nabort_percent = 101\n"),
        15,
        "service[1].route[0].fault.abort_percent",
        "out of range 0..=100 %",
    );
}

#[test]
fn fault_delay_share_without_delay() {
    one_error(
        &gw("[service.route.fault]\ndelay_percent = 10\n"),
        15,
        "service[1].route[0].fault.delay_ms",
        "needs a delay_ms",
    );
}

#[test]
fn breaker_limit_out_of_range() {
    one_error(
        &gw("[gateway.circuit_breaker]\nmax_requests = 0\n"),
        15,
        "gateway.circuit_breaker.max_requests",
        "out of range 1..=1000000",
    );
}

#[test]
fn outlier_max_below_base() {
    one_error(
        &gw("[gateway.outlier_detection]\nbase_ejection_ms = 5000\nmax_ejection_ms = 1000\n"),
        16,
        "gateway.outlier_detection.max_ejection_ms",
        "below base_ejection_ms",
    );
}

#[test]
fn upstream_override_of_unknown_service() {
    one_error(
        &gw("[gateway.upstream.nosuch.circuit_breaker]\nmax_requests = 5\n"),
        14,
        "gateway.upstream.nosuch",
        "no upstream service named `nosuch`",
    );
}

#[test]
fn upstream_override_of_the_gateway_itself() {
    one_error(
        &gw("[gateway.upstream.api.circuit_breaker]\nmax_requests = 5\n"),
        14,
        "gateway.upstream.api",
        "no upstream service named `api`",
    );
}
