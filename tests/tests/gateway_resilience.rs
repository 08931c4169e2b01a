//! End to end: the gateway's failure handling against `lb-echo` backends that misbehave on
//! request (`x-echo-misbehave`: delay, 5xx, reset; see the binary): timeouts fire within
//! tolerance, retries go to other backends with the same X-Request-ID and stop at the retry
//! budget, a circuit breaker opens and closes, an outlier is ejected (never more than the
//! share allowed) and returns, faults hit their percentage. Needs root, the agent built
//! (`cargo build --release -p lb-userspace`) and curl; every wait is bounded.

use std::time::{Duration, Instant};

use lb_tests::{
    VIP4,
    gateway_lab::{ECHO_PORT, GatewayLab, GwConfig, Reply},
};

fn url(path: &str) -> String {
    format!("http://{VIP4}{path}")
}

fn cfg(routes: &str, extra: &str) -> GwConfig {
    GwConfig {
        routes: routes.to_owned(),
        extra: extra.to_owned(),
        ..GwConfig::default()
    }
}

fn misbehave(spec: &str) -> String {
    format!("x-echo-misbehave: {spec}")
}

/// `curl -H HEADER URL`, timed.
fn timed(lab: &GatewayLab, header: &str, path: &str) -> (Reply, Duration) {
    let t = Instant::now();
    let r = lab.curl(&["-H", header, &url(path)]);
    (r, t.elapsed())
}

/// Echo `i`'s log lines for request id `id`.
fn seen(lab: &GatewayLab, i: usize, id: &str) -> usize {
    lab.echo[i]
        .output()
        .lines()
        .filter(|l| l.starts_with("REQ ") && l.ends_with(&format!(" id={id}")))
        .count()
}

fn route_status(lab: &GatewayLab, route: &str) -> serde_json::Value {
    let st = lab.status().expect("status");
    st["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["route"] == route).cloned())
        .unwrap_or_else(|| panic!("no route {route} in {st}"))
}

fn guard(lab: &GatewayLab, service: &str) -> serde_json::Value {
    let st = lab.status().expect("status");
    st["upstream_guards"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["service"] == service).cloned())
        .unwrap_or_else(|| panic!("no upstream guard {service} in {st}"))
}

const TIMEOUTS: &str = r#"
[[service.route]]
name = "slow"
path_prefix = "/slow"
service = "b0"
timeout_ms = 300

[[service.route]]
name = "pertry"
path_prefix = "/pertry"
service = "all"
timeout_ms = 3000
per_try_timeout_ms = 250
[service.route.retry]
tries = 3
on = ["timeout"]

[[service.route]]
name = "retry"
path_prefix = "/retry"
service = "all"
[service.route.retry]
tries = 3
statuses = [503]
backoff_base_ms = 5
backoff_max_ms = 20

[[service.route]]
name = "post"
path_prefix = "/post"
service = "all"
[service.route.retry]
tries = 3
statuses = [503]
"#;

/// Outlier detection off here: these requests fail on purpose.
const NO_OUTLIERS: &str = "[gateway.outlier_detection]\nconsecutive_5xx = 0\nconsecutive_gateway_errors = 0\nconsecutive_connect_failures = 0\n";

/// Request timeout (504 at 300 ms), per-try timeouts retried to the one backend that is
/// fast, 503s retried to other backends with the same X-Request-ID (each backend once),
/// resets retried, POST not retried.
#[test]
fn timeouts_and_retries() {
    let mut lab = GatewayLab::new();
    lab.start(&cfg(TIMEOUTS, NO_OUTLIERS));

    // The whole-request timeout: 504 after ~300 ms, not the backend's 2 s.
    for _ in 0..3 {
        let (r, took) = timed(&lab, &misbehave("*:delay=2000"), "/slow");
        assert_eq!(r.status, 504, "{r:?}");
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(900),
            "timeout fired after {took:?}"
        );
    }
    assert_eq!(route_status(&lab, "gw/slow")["timeouts_request"], 3);

    // Per-try timeouts: b0 and b1 are slow, so tries go on (never to the same backend)
    // until b2 answers, well before the slow backends would.
    for _ in 0..6 {
        let (r, took) = timed(&lab, &misbehave("b0,b1:delay=2000"), "/pertry");
        assert_eq!(r.status, 200, "{r:?}\n{}", lab.agent_log());
        assert_eq!(r.backend(), "b2");
        assert!(took < Duration::from_millis(1200), "took {took:?}");
    }

    // 503 from every backend: three tries, one per backend, one request id; the client
    // gets the last 503 with that id.
    let id = "resil-retry-1";
    let r = lab.curl(&[
        "-H",
        &misbehave("*:503"),
        "-H",
        &format!("x-request-id: {id}"),
        &url("/retry/a"),
    ]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-request-id"), Some(id));
    for i in 0..3 {
        assert_eq!(seen(&lab, i, id), 1, "backend {i} saw {id} not once");
    }
    // Only b0 fails: every request ends at 200 from b1 or b2.
    for n in 0..20 {
        let r = lab.curl(&["-H", &misbehave("b0:503"), &url(&format!("/retry/{n}"))]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(r.backend(), "b0");
    }
    // Resets are retried too.
    for n in 0..10 {
        let r = lab.curl(&["-H", &misbehave("b1:reset"), &url(&format!("/retry/r{n}"))]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(r.backend(), "b1");
    }
    assert!(route_status(&lab, "gw/retry")["retries"].as_u64() >= Some(2));

    // POST is not idempotent: one try.
    let id = "resil-post-1";
    let r = lab.curl(&[
        "-X",
        "POST",
        "--data",
        "x=1",
        "-H",
        &misbehave("*:503"),
        "-H",
        &format!("x-request-id: {id}"),
        &url("/post"),
    ]);
    assert_eq!(r.status, 503);
    let total: usize = (0..3).map(|i| seen(&lab, i, id)).sum();
    assert_eq!(total, 1, "POST was retried");
    let metrics = lab.metrics().expect("metrics");
    assert!(
        metrics.contains("lb_gateway_timeouts_total{route=\"gw/slow\",kind=\"request\"} 3"),
        "{metrics}"
    );
}

const BUDGET: &str = r#"
[[service.route]]
name = "budget"
path_prefix = "/budget"
service = "all"
[service.route.retry]
tries = 3
statuses = [503]
backoff_base_ms = 1
backoff_max_ms = 2
"#;

/// Ten requests fail at once (slow 503s from every backend): the retry budget (0 % of
/// requests, at least 2 at once) lets few retries through, not the 20 that three tries
/// each would send.
#[test]
fn retries_stop_at_the_budget() {
    let mut lab = GatewayLab::new();
    let extra = format!("{NO_OUTLIERS}[gateway.retry_budget]\npercent = 0\nmin_concurrency = 2\n");
    lab.start(&cfg(BUDGET, &extra));
    let before = lab.echo_requests_total();
    let lab = &lab;
    let header = misbehave("*:delay=400,503");
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..10)
            .map(|i| {
                let header = header.clone();
                s.spawn(move || lab.curl(&["-H", &header, &url(&format!("/budget/{i}"))]))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("curl thread"))
            .collect()
    });
    assert!(replies.iter().all(|r| r.status == 503), "{replies:?}");
    let sent = lab.echo_requests_total() - before;
    let g = guard(lab, "all");
    println!("10 failing requests: {sent} backend requests, guard {g}");
    assert!(
        (10..=16).contains(&sent),
        "{sent} backend requests for 10 requests: the budget did not hold"
    );
    assert!(g["retries_refused"].as_u64() >= Some(4), "{g}");
}

const BREAKER: &str = r#"
[[service.route]]
name = "cb"
path_prefix = "/cb"
service = "b1"
"#;

/// max_requests = 2 on b1: of six slow requests at once, two get through and four get 503
/// at once with `x-lb-overloaded: max_requests`; afterwards requests pass again.
#[test]
fn circuit_breaker_opens_and_closes() {
    let mut lab = GatewayLab::new();
    lab.start(&cfg(
        BREAKER,
        "[gateway.upstream.b1.circuit_breaker]\nmax_requests = 2\n",
    ));
    let lab = &lab;
    let header = misbehave("*:delay=1500");
    let results: Vec<(Reply, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let header = header.clone();
                s.spawn(move || {
                    // Stagger a little so the slow two are surely in first.
                    std::thread::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 }));
                    timed(lab, &header, "/cb")
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("curl thread"))
            .collect()
    });
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let refused: Vec<&(Reply, Duration)> =
        results.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!((ok, refused.len()), (2, 4), "{results:?}");
    for (r, took) in &refused {
        assert_eq!(r.header("x-lb-overloaded"), Some("max_requests"), "{r:?}");
        assert!(*took < Duration::from_millis(700), "refusal took {took:?}");
    }
    // Closed again.
    for _ in 0..3 {
        assert_eq!(lab.curl(&[&url("/cb")]).status, 200);
    }
    let g = guard(lab, "b1");
    assert_eq!(g["overflows"][0], 4, "{g}");
    assert_eq!(g["requests"], 0, "{g}");
    assert_eq!(route_status(lab, "gw/cb")["overloaded"], 4);
}

const OUTLIER: &str = r#"
[[service.route]]
name = "ej"
path_prefix = "/ej"
service = "all"
"#;

/// b0 and b1 answer 503: after 3 in a row one of them is ejected for 2 s, but never both
/// (max 34 % of 3 = 1); while out it gets no requests; it is back after its time.
#[test]
fn outlier_is_ejected_and_returns() {
    let mut lab = GatewayLab::new();
    lab.start(&cfg(
        OUTLIER,
        "[gateway.outlier_detection]\nconsecutive_5xx = 3\nbase_ejection_ms = 2000\nmax_ejection_ms = 10000\nmax_ejection_percent = 34\n",
    ));
    let header = misbehave("b0,b1:503");
    let urls: Vec<String> = (0..40).map(|i| url(&format!("/ej/{i}"))).collect();
    let run = lab.curl_many(&["-H", &header], &urls);
    assert!(
        run.replies.iter().all(|r| r.status != 0),
        "{:?}",
        run.stderr
    );
    let g = guard(&lab, "all");
    let ejected: Vec<String> = g["ejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ejected.len(), 1, "exactly one out at once: {g}");
    let out = lab
        .topo
        .backends
        .iter()
        .position(|b| ejected[0] == format!("{}:{ECHO_PORT}", b.ip4()))
        .expect("an ejected backend of the lab");
    assert!(out < 2, "b2 never failed, yet {g}");
    let st = lab.status().unwrap();
    assert!(st.to_string().contains("\"ejected\":true"), "{st}");
    // While out: no requests reach it.
    let before = lab.echo_requests(out);
    let more: Vec<String> = (0..30).map(|i| url(&format!("/ej/more{i}"))).collect();
    lab.curl_many(&["-H", &header], &more);
    assert_eq!(
        lab.echo_requests(out),
        before,
        "an ejected backend got requests"
    );
    assert!(guard(&lab, "all")["ejected"].as_array().unwrap().len() <= 1);
    // Back after ~2 s (the sweep runs every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let g = guard(&lab, "all");
        let now_out = g["ejected"].as_array().unwrap();
        if !now_out.iter().any(|v| v.as_str() == Some(&ejected[0])) {
            break;
        }
        assert!(Instant::now() < deadline, "never returned: {g}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = lab.agent_log();
    assert!(log.contains("backend ejected"), "{log}");
    assert!(log.contains("ejected backend returns"), "{log}");
    let metrics = lab.metrics().unwrap();
    assert!(
        metrics.contains("lb_gateway_outlier_ejections_total{service=\"all\"}"),
        "{metrics}"
    );
}

const FAULTS: &str = r#"
[[service.route]]
name = "abort"
path_prefix = "/abort"
service = "b0"
[service.route.fault]
abort_percent = 30
abort_status = 418

[[service.route]]
name = "delay"
path_prefix = "/delay"
service = "b0"
[service.route.fault]
delay_ms = 20
delay_percent = 50

[[service.route]]
name = "hdr"
path_prefix = "/hdr"
service = "b0"
[service.route.fault]
header_faults = true

[[service.route]]
name = "plain"
path_prefix = "/plain"
service = "b0"
"#;

/// Aborts hit 30 % and delays 50 % within tolerance (binomial, > 4 sigma); header faults
/// only where the route allows them.
#[test]
fn fault_injection_hits_its_percentage() {
    let mut lab = GatewayLab::new();
    lab.start(&cfg(FAULTS, ""));
    let n = 400;
    let urls: Vec<String> = (0..n).map(|i| url(&format!("/abort/{i}"))).collect();
    let run = lab.curl_many(&[], &urls);
    let aborted = run.replies.iter().filter(|r| r.status == 418).count();
    let passed = run.replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(aborted + passed, n, "{:?}", run.stderr);
    println!("aborted {aborted} of {n} (want 30 %)");
    assert!((80..=160).contains(&aborted), "aborted {aborted} of {n}");
    let r = run.replies.iter().find(|r| r.status == 418).unwrap();
    assert_eq!(r.header("x-lb-fault"), Some("abort"));

    let urls: Vec<String> = (0..200).map(|i| url(&format!("/delay/{i}"))).collect();
    let run = lab.curl_many(&[], &urls);
    assert!(run.replies.iter().all(|r| r.status == 200));
    let delayed = route_status(&lab, "gw/delay")["faults_delayed"]
        .as_u64()
        .unwrap();
    println!("delayed {delayed} of 200 (want 50 %)");
    assert!((70..=130).contains(&delayed), "delayed {delayed} of 200");

    // Header faults: honoured on `hdr`, ignored on `plain`.
    let r = lab.curl(&["-H", "x-lb-fault-abort: 503", &url("/hdr")]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-lb-fault"), Some("abort"));
    let (r, took) = timed(&lab, "x-lb-fault-delay-ms: 400", "/hdr");
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    let r = lab.curl(&["-H", "x-lb-fault-abort: 503", &url("/plain")]);
    assert_eq!(r.status, 200);
    let (r, took) = timed(&lab, "x-lb-fault-delay-ms: 2000", "/plain");
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_millis(1500), "{took:?}");
}
