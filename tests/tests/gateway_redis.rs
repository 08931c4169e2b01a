//! End to end: fleet-wide limits and API keys. Two gateway instances (two real `lb` agents,
//! each in its own `GatewayLab` topology of namespaces) share one real `redis-server`, which
//! listens on a unix socket both reach (see `lb_tests::redis_server`). Needs root, the agent
//! built (`cargo build --release -p lb-userspace`), curl and Debian's `redis-server`.
//!
//! - A tenant's shared limit holds across both gateways within the documented bound
//!   (`burst + rate * T + nodes * lease`).
//! - Redis killed mid-run: `on_redis_error = "open"` lets requests through, `"closed"`
//!   answers 503, `"local"` applies the limit per node; no request waits (bounded latency);
//!   `lb status` shows Redis down with its errors and fallbacks; after a restart the agents
//!   reconnect and the shared limit is back.
//! - An API key added to Redis is accepted by both gateways within the cache TTL, and
//!   refused by both within the TTL of its removal.

use std::time::{Duration, Instant};

use lb_tests::{
    VIP4,
    gateway_lab::{GatewayLab, GwConfig, Reply},
    redis_server::RedisServer,
};
use sha2::{Digest, Sha256};

const KEY: &str = "fleet-key-0123456789";
/// Redis-stored keys' cache TTL in the agents' config.
const KEY_TTL: Duration = Duration::from_millis(1000);

fn url(path: &str) -> String {
    format!("http://{VIP4}{path}")
}

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Starts both gateways with `routes`, Redis-stored keys and `[gateway.redis]` on `redis`.
fn two_gateways(redis: &RedisServer, routes: &str) -> [GatewayLab; 2] {
    let cfg = GwConfig {
        routes: routes.to_owned(),
        extra: format!(
            r#"
[[auth]]
name = "fleet"
kind = "api_key"
store = "redis"
cache_ttl_ms = {}

[gateway.redis]
url = "{}"
timeout_ms = 50
"#,
            KEY_TTL.as_millis(),
            redis.url()
        ),
        ..GwConfig::default()
    };
    let labs = std::thread::scope(|s| {
        let a = s.spawn(GatewayLab::new);
        let b = s.spawn(GatewayLab::new);
        [a.join().unwrap(), b.join().unwrap()]
    });
    let mut labs = labs;
    for lab in &mut labs {
        lab.start(&cfg);
        wait_redis_up(lab);
    }
    labs
}

/// Waits (5 s at most) until `lb status` shows the agent connected to Redis.
fn wait_redis_up(lab: &GatewayLab) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = lab.status().expect("status");
        if st["redis"]["up"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never connected to Redis: {}\n{}",
            st["redis"],
            lab.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status codes of `n` requests to `path` on `lab` (one kept-alive curl run), and how long
/// the run took.
fn statuses(lab: &GatewayLab, path: &str, n: usize, args: &[&str]) -> (Vec<u16>, Duration) {
    let urls: Vec<String> = (0..n).map(|i| url(&format!("{path}/{i}"))).collect();
    let t = Instant::now();
    let run = lab.curl_many(args, &urls);
    (run.replies.iter().map(|r| r.status).collect(), t.elapsed())
}

fn count(s: &[u16], code: u16) -> usize {
    s.iter().filter(|c| **c == code).count()
}

#[track_caller]
fn expect_status(lab: &GatewayLab, what: &str, r: &Reply, want: u16) {
    assert_eq!(
        r.status,
        want,
        "{what}: want {want}, got {r:?}\nagent output:\n{}",
        lab.agent_log()
    );
}

const RATE: u32 = 20;
const BURST: u32 = 20;
const LEASE: u32 = 2;

fn limit_routes() -> String {
    let limit = |mode: &str, key: &str| {
        format!(
            "rate_limit = {{ rate = {RATE}, burst = {BURST}, key = \"{key}\", shared = \"redis\", on_redis_error = \"{mode}\", lease = {LEASE} }}"
        )
    };
    format!(
        r#"
[[service.route]]
name = "tenant"
path_prefix = "/tenant"
service = "b0"
auth = "fleet"
{}

[[service.route]]
name = "open"
path_prefix = "/open"
service = "b0"
{}

[[service.route]]
name = "closed"
path_prefix = "/closed"
service = "b0"
{}

[[service.route]]
name = "local"
path_prefix = "/local"
service = "b0"
{}
"#,
        limit("local", "tenant"),
        limit("open", "route"),
        limit("closed", "route"),
        limit("local", "route"),
    )
}

/// The tenant's limit holds across both gateways; then Redis dies and each fail mode does
/// what it says without making anyone wait; then Redis comes back.
#[test]
fn shared_limit_across_two_gateways_and_fail_modes() {
    let mut redis = RedisServer::start().expect("redis-server");
    redis
        .cli(&[
            "HSET",
            &format!("lb:apikey:{}", key_hash(KEY)),
            "name",
            "ci",
            "tenant",
            "acme",
        ])
        .unwrap();
    let labs = two_gateways(&redis, &limit_routes());
    let header = format!("x-api-key: {KEY}");

    // Both gateways send one tenant's requests at 100/s each for 1.5 s, in parallel: twice
    // the whole fleet's 20/s, so each alone would stay under a per-node limit's share.
    let t = Instant::now();
    let runs: Vec<(Vec<u16>, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = labs
            .iter()
            .map(|lab| {
                s.spawn(|| statuses(lab, "/tenant", 150, &["-H", &header, "--rate", "100/s"]))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = t.elapsed().as_secs_f64();
    let ok: Vec<usize> = runs.iter().map(|(s, _)| count(s, 200)).collect();
    let limited: usize = runs.iter().map(|(s, _)| count(s, 429)).sum();
    let admitted = ok.iter().sum::<usize>() as f64;
    let bound = f64::from(BURST) + f64::from(RATE) * took + 2.0 * f64::from(LEASE);
    println!(
        "admitted {ok:?} (429: {limited}) in {took:.2}s; bound {bound:.1}; runs {:?}",
        runs.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    assert!(
        admitted <= bound,
        "the fleet admitted {admitted} > {bound:.1} = burst + rate*T + nodes*lease"
    );
    // Not much stricter either: leases left unspent cost at most nodes * lease.
    let least = f64::from(BURST) + f64::from(RATE) * (took - 0.3) - 2.0 * f64::from(LEASE);
    assert!(
        admitted >= least,
        "the fleet admitted only {admitted} < {least:.1} in {took:.2}s: {runs:?}"
    );
    assert!(
        ok.iter().all(|n| *n > 0),
        "each gateway got a share: {ok:?}"
    );
    assert_eq!(
        ok.iter().sum::<usize>() + limited,
        300,
        "only 200 and 429 expected: {runs:?}"
    );

    // Redis dies. No request may wait for it beyond its timeout (50 ms): a whole run of 60
    // kept-alive requests stays well under a second.
    redis.stop();
    let n = 3 * BURST as usize;
    for lab in &labs {
        let (open, took) = statuses(lab, "/open", n, &[]);
        assert_eq!(count(&open, 200), n, "fail open lets all through: {open:?}");
        assert!(took < Duration::from_secs(3), "open run took {took:?}");
        let (closed, took) = statuses(lab, "/closed", n, &[]);
        assert_eq!(
            count(&closed, 503),
            n,
            "fail closed refuses all: {closed:?}"
        );
        assert!(took < Duration::from_secs(3), "closed run took {took:?}");
        let (local, took) = statuses(lab, "/local", n, &[]);
        let passed = count(&local, 200);
        let most = BURST as usize + (f64::from(RATE) * took.as_secs_f64()).ceil() as usize + 1;
        assert!(
            (BURST as usize..=most).contains(&passed) && count(&local, 429) == n - passed,
            "fail to local: this node's own bucket (burst {BURST}, at most {most} in {took:?}): {local:?}"
        );
        assert!(took < Duration::from_secs(3), "local run took {took:?}");
        // One request's latency on its own, too.
        let t = Instant::now();
        let r = lab.curl(&[&url("/closed/one")]);
        expect_status(lab, "closed, alone", &r, 503);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

        let st = lab.status().expect("status");
        let rs = &st["redis"];
        assert_eq!(rs["up"], false, "status shows Redis down: {rs}");
        assert!(
            rs["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "status shows Redis errors: {rs}"
        );
        let fallbacks = rs["fallbacks"].as_array().cloned().unwrap_or_default();
        for mode in ["open", "closed", "local"] {
            assert!(
                fallbacks
                    .iter()
                    .any(|f| f["mode"] == mode && f["count"].as_u64() > Some(0)),
                "no {mode} fallback counted: {rs}"
            );
        }
        let metrics = lab.metrics().unwrap();
        assert!(metrics.contains("lb_gateway_redis_up 0\n"), "{metrics}");
        assert!(
            metrics.contains("lb_gateway_redis_errors_total{op=\"ratelimit\",kind="),
            "{metrics}"
        );
    }

    // Redis back (empty): both agents reconnect (backoff at most 2 s) and the closed route
    // serves again.
    redis.restart().unwrap();
    for lab in &labs {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let r = lab.curl(&[&url("/closed/again")]);
            if r.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never back after Redis restarted: {r:?}\n{}",
                lab.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(lab.status().unwrap()["redis"]["up"], true);
    }
}

/// Keys live in Redis: adding one reaches both gateways within the cache TTL, removing it
/// too; a cached answer is not refetched before the TTL.
#[test]
fn api_keys_in_redis_added_and_revoked_on_both_gateways() {
    let redis = RedisServer::start().expect("redis-server");
    let labs = two_gateways(
        &redis,
        r#"
[[service.route]]
name = "keyed"
path_prefix = "/keyed"
service = "b0"
auth = "fleet"
"#,
    );
    let header = format!("x-api-key: {KEY}");
    let get = |lab: &GatewayLab| lab.curl(&["-H", &header, &url("/keyed/x")]);
    for lab in &labs {
        let r = get(lab);
        expect_status(lab, "unknown key", &r, 401);
    }
    let rkey = format!("lb:apikey:{}", key_hash(KEY));
    redis
        .cli(&[
            "HSET", &rkey, "name", "ci", "tenant", "acme", "scopes", "read",
        ])
        .unwrap();
    let added = Instant::now();
    // Wait for each until it is accepted: within TTL (plus the time a request takes).
    let slack = Duration::from_millis(700);
    for lab in &labs {
        loop {
            let r = get(lab);
            if r.status == 200 {
                assert_eq!(r.echoed_header("x-user-id").as_deref(), Some("ci"), "{r:?}");
                assert_eq!(r.echoed_header("x-tenant-id").as_deref(), Some("acme"));
                assert_eq!(
                    r.echoed_header("x-api-key"),
                    None,
                    "the key is not forwarded"
                );
                break;
            }
            expect_status(lab, "key not yet seen", &r, 401);
            assert!(
                added.elapsed() < KEY_TTL + slack,
                "added key still refused after {:?}",
                added.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    redis.cli(&["DEL", &rkey]).unwrap();
    let revoked = Instant::now();
    for lab in &labs {
        loop {
            let r = get(lab);
            if r.status == 401 {
                break;
            }
            expect_status(lab, "revoked key still cached", &r, 200);
            assert!(
                revoked.elapsed() < KEY_TTL + slack,
                "revoked key still accepted after {:?}",
                revoked.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The agent looked the key up a few times, not once per request.
    let st = labs[0].status().unwrap();
    let calls = st["redis"]["calls"]["apikey"].as_u64().unwrap_or(0);
    assert!(calls >= 2, "{st}");
}
