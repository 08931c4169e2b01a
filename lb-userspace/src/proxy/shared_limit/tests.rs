//! Lease logic (pure), the Lua script's arithmetic against a real `redis-server`, and two
//! limiters (two "nodes") sharing one bucket within the documented bound.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Grant, LEASE_TTL, Lease, MAX_DENY_CACHE, SharedLimiter, Spec};
use crate::proxy::redis_conn::test_server::TestRedis;

const SPEC: Spec = Spec {
    rate: 10,
    burst: 20,
};

#[test]
fn lease_spends_locally_then_asks_again() {
    let t0 = Instant::now();
    let mut l = Lease::new(t0);
    assert!(l.try_local(SPEC, t0).is_none(), "nothing held: ask Redis");
    let g = Grant {
        granted: 3,
        left: 10,
        wait: Duration::ZERO,
    };
    let d = l.apply(g, SPEC, t0);
    assert!(d.allowed);
    // This request took one of the three.
    assert_eq!(l.held(t0), 2);
    assert_eq!(d.remaining, 12);
    assert_eq!(d.limit, 20);
    assert!(l.try_local(SPEC, t0).unwrap().allowed);
    assert!(l.try_local(SPEC, t0).unwrap().allowed);
    assert!(l.try_local(SPEC, t0).is_none(), "spent: ask again");
}

#[test]
fn unspent_lease_expires() {
    let t0 = Instant::now();
    let mut l = Lease::new(t0);
    l.apply(
        Grant {
            granted: 5,
            left: 0,
            wait: Duration::ZERO,
        },
        SPEC,
        t0,
    );
    assert_eq!(l.held(t0 + LEASE_TTL - Duration::from_millis(1)), 4);
    let later = t0 + LEASE_TTL;
    assert_eq!(l.held(later), 0);
    assert!(l.try_local(SPEC, later).is_none());
    assert!(l.idle(later));
}

#[test]
fn empty_answer_refuses_locally_until_a_token_is_back() {
    let t0 = Instant::now();
    let mut l = Lease::new(t0);
    let wait = Duration::from_millis(80);
    let d = l.apply(
        Grant {
            granted: 0,
            left: 0,
            wait,
        },
        SPEC,
        t0,
    );
    assert!(!d.allowed);
    assert_eq!(d.retry_after, wait);
    let d = l.try_local(SPEC, t0 + Duration::from_millis(30)).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_millis(50));
    assert!(!l.idle(t0 + Duration::from_millis(30)));
    assert!(l.try_local(SPEC, t0 + wait).is_none(), "time to ask again");
    // A long wait is cached for MAX_DENY_CACHE at most.
    l.apply(
        Grant {
            granted: 0,
            left: 0,
            wait: Duration::from_secs(60),
        },
        SPEC,
        t0,
    );
    assert!(l.try_local(SPEC, t0 + MAX_DENY_CACHE).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_takes_leases_from_one_bucket() {
    let server = TestRedis::start();
    let c = server.client(Duration::from_millis(200)).await;
    let s = SharedLimiter::new(c);
    // rate 1/s so refill during the test is at most a token or two.
    let spec = Spec { rate: 1, burst: 10 };
    let g = s.take("svc/r", "k", spec, 4).await.unwrap();
    assert_eq!((g.granted, g.left, g.wait), (4, 6, Duration::ZERO));
    let g = s.take("svc/r", "k", spec, 8).await.unwrap();
    assert_eq!(g.granted, 6, "only what is left: {g:?}");
    let g = s.take("svc/r", "k", spec, 1).await.unwrap();
    assert_eq!(g.granted, 0, "{g:?}");
    assert!(
        g.wait > Duration::from_millis(500) && g.wait <= Duration::from_secs(1),
        "one token takes about a second at 1/s: {g:?}"
    );
    // Other keys and routes have their own buckets.
    assert_eq!(s.take("svc/r", "k2", spec, 10).await.unwrap().granted, 10);
    assert_eq!(s.take("svc/q", "k", spec, 10).await.unwrap().granted, 10);
    // The bucket is a hash under the prefix, with a TTL (idle keys go away).
    let key = s.redis_key("svc/r", "k");
    assert_eq!(key, "t:rl:svc/r:k");
    let ttl: i64 = server.cli(&["PTTL", &key]).parse().unwrap();
    assert!(ttl > 1000 && ttl <= 11_000, "{ttl}");
    // Refill from Redis's clock: 10 tokens/s, 200 ms -> about 2 tokens.
    let spec = Spec {
        rate: 10,
        burst: 10,
    };
    assert_eq!(s.take("svc/z", "k", spec, 10).await.unwrap().granted, 10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let g = s.take("svc/z", "k", spec, 10).await.unwrap();
    assert!((1..=3).contains(&g.granted), "{g:?}");
}

/// Two limiters ("nodes") on one bucket, hammered for a while: what they admit together
/// stays within `burst + rate * T + nodes * lease`, and does not fall far below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_limit_within_the_bound() {
    let server = TestRedis::start();
    let spec = Spec {
        rate: 50,
        burst: 20,
    };
    let lease = 5;
    let nodes: Vec<Arc<SharedLimiter>> = vec![
        Arc::new(SharedLimiter::new(
            server.client(Duration::from_millis(200)).await,
        )),
        Arc::new(SharedLimiter::new(
            server.client(Duration::from_millis(200)).await,
        )),
    ];
    let start = Instant::now();
    let run = Duration::from_millis(1000);
    let mut tasks = Vec::new();
    for n in &nodes {
        for _ in 0..4 {
            let n = n.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut calls) = (0u64, 0u64);
                while start.elapsed() < run {
                    calls += 1;
                    if n.check("svc/r", "tenant:a", spec, lease)
                        .await
                        .unwrap()
                        .allowed
                    {
                        ok += 1;
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                (ok, calls)
            }));
        }
    }
    let (mut admitted, mut requests) = (0, 0);
    for t in tasks {
        let (ok, calls) = t.await.unwrap();
        admitted += ok;
        requests += calls;
    }
    let secs = start.elapsed().as_secs_f64();
    let most = 20.0 + 50.0 * secs + 2.0 * f64::from(lease);
    let least = 20.0 + 50.0 * (secs - 0.1) - 2.0 * f64::from(lease);
    assert!(
        (admitted as f64) <= most && (admitted as f64) >= least,
        "admitted {admitted} of {requests} in {secs:.2}s; bound {least:.0}..={most:.0}"
    );
    assert!(requests > admitted * 3, "the limit was hit: {requests}");
    // Leases and the refusal cache keep Redis calls far below the request count.
    let calls: u64 = nodes
        .iter()
        .map(|n| n.redis.stats().view().unwrap().calls["ratelimit"])
        .sum();
    assert!(
        calls * 4 < requests,
        "{calls} Redis calls for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_an_error_at_once_and_leases_still_spend() {
    let mut server = TestRedis::start();
    let s = SharedLimiter::new(server.client(Duration::from_millis(30)).await);
    let spec = Spec {
        rate: 100,
        burst: 100,
    };
    // Lease 10: this request and 9 more are covered without Redis.
    assert!(s.check("svc/r", "k", spec, 10).await.unwrap().allowed);
    server.kill();
    for _ in 0..9 {
        assert!(s.check("svc/r", "k", spec, 10).await.unwrap().allowed);
    }
    for _ in 0..5 {
        let t = Instant::now();
        assert!(s.check("svc/r", "k", spec, 10).await.is_err());
        assert!(t.elapsed() < Duration::from_millis(80), "{:?}", t.elapsed());
    }
}
