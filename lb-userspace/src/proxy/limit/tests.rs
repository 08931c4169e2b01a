//! Rate limiter: exact sequences under a fake clock, headers, eviction, threads.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use super::*;

const MS: Duration = Duration::from_millis(1);

fn key(k: &str) -> BucketKey<'_> {
    BucketKey { route: "r", key: k }
}

fn spec(rate_per_sec: u32, burst: u32) -> LimitSpec {
    LimitSpec {
        rate_per_sec,
        burst,
    }
}

fn limiter(max_keys: usize, shards: usize) -> RateLimiter {
    RateLimiter::new(LimiterSettings { max_keys, shards })
}

fn header_map(d: &LimitDecision) -> Vec<(String, String)> {
    d.headers()
        .into_iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn burst_then_reject_then_refill() {
    let l = limiter(100, 4);
    let t0 = Instant::now();
    let s = spec(2, 5);
    let remaining: Vec<u32> = (0..5)
        .map(|_| {
            let d = l.check(key("a"), s, t0);
            assert!(d.allowed);
            d.remaining
        })
        .collect();
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let d = l.check(key("a"), s, t0);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.retry_after, Duration::from_millis(500));
    assert_eq!(d.reset, Duration::from_millis(2500));
    // One token every 500 ms: not yet at 499 ms, yes at 500 ms, and only one.
    let d = l.check(key("a"), s, t0 + 499 * MS);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, MS);
    assert!(l.check(key("a"), s, t0 + 500 * MS).allowed);
    assert!(!l.check(key("a"), s, t0 + 500 * MS).allowed);
    // Recovery after the window: full again after 2.5 s idle, no more than the burst.
    let later = t0 + 500 * MS + Duration::from_secs(60);
    let admitted = (0..20)
        .filter(|_| l.check(key("a"), s, later).allowed)
        .count();
    assert_eq!(admitted, 5);
}

#[test]
fn refill_is_exact_without_drift() {
    // Rate 3/s: 1/3 s is not a whole number of ns; a million tiny steps must not lose any.
    let l = limiter(10, 1);
    let t0 = Instant::now();
    // A burst well above one token, so no refill is lost to the cap (that would be the
    // bucket overflowing, not drift).
    let s = spec(3, 100);
    for _ in 0..100 {
        assert!(l.check(key("a"), s, t0).allowed);
    }
    let mut admitted = 0;
    let mut t = t0;
    for _ in 0..1_000_000 {
        t += Duration::from_micros(7);
        admitted += usize::from(l.check(key("a"), s, t).allowed);
    }
    // 7 s elapsed at 3/s = 21 tokens, each taken as soon as it is whole.
    assert_eq!(admitted, 21);
}

#[test]
fn headers_values() {
    let l = limiter(10, 1);
    let t0 = Instant::now();
    let s = spec(10, 3);
    let d = l.check(key("a"), s, t0);
    assert_eq!(d.reset, Duration::from_millis(100));
    assert_eq!(
        header_map(&d),
        [
            ("x-ratelimit-limit".into(), "3".into()),
            ("x-ratelimit-remaining".into(), "2".into()),
            ("x-ratelimit-reset".into(), "1".into()),
        ]
    );
    l.check(key("a"), s, t0);
    l.check(key("a"), s, t0);
    let d = l.check(key("a"), s, t0);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Duration::from_millis(100));
    assert_eq!(
        header_map(&d),
        [
            ("x-ratelimit-limit".into(), "3".into()),
            ("x-ratelimit-remaining".into(), "0".into()),
            ("x-ratelimit-reset".into(), "1".into()),
            ("retry-after".into(), "1".into()),
        ]
    );
    // Slow refill: seconds round up.
    let s = spec(1, 1);
    l.check(key("slow"), s, t0);
    let d = l.check(key("slow"), s, t0 + 100 * MS);
    assert_eq!(d.retry_after, 900 * MS);
    let h = header_map(&d);
    assert_eq!(h[2].1, "1");
    assert_eq!(h[3], ("retry-after".into(), "1".into()));
    let s = spec(1, 100);
    let d = l.check(key("big"), s, t0);
    assert_eq!(header_map(&d)[2].1, "1");
    for _ in 0..99 {
        l.check(key("big"), s, t0);
    }
    let d = l.check(key("big"), s, t0 + 250 * MS);
    assert_eq!((d.reset, d.retry_after), (99750 * MS, 750 * MS));
    assert_eq!(header_map(&d)[2].1, "100");

    let mut map = HeaderMap::new();
    d.insert_headers(&mut map);
    assert_eq!(map["retry-after"], "1");
    assert_eq!(map.len(), 4);
}

#[test]
fn burst_zero_means_rate_and_rate_zero_is_refused() {
    let l = limiter(10, 1);
    let t0 = Instant::now();
    let d = l.check(key("a"), spec(4, 0), t0);
    assert_eq!((d.limit, d.remaining), (4, 3));
    assert_eq!(spec(0, 5).validate(), Err(LimitError::ZeroRate));
    assert_eq!(spec(1, 0).validate(), Ok(()));
    // Defensive: no panic, treated as 1/s.
    let d = l.check(key("z"), spec(0, 0), t0);
    assert_eq!((d.allowed, d.limit), (true, 1));
}

#[test]
fn keys_and_routes_are_independent() {
    let l = limiter(1000, 8);
    let t0 = Instant::now();
    let s = spec(1, 2);
    for k in 0..50 {
        let k = k.to_string();
        assert!(l.check(key(&k), s, t0).allowed);
        assert!(l.check(key(&k), s, t0).allowed);
        assert!(!l.check(key(&k), s, t0).allowed);
    }
    let other = BucketKey {
        route: "other",
        key: "0",
    };
    assert!(l.check(other, s, t0).allowed);
    // `route` and `key` are not concatenated: ("r", "x1") is not ("r x", "1").
    let a = BucketKey {
        route: "ab",
        key: "c",
    };
    let b = BucketKey {
        route: "a",
        key: "bc",
    };
    assert_eq!(l.check(a, spec(1, 1), t0).remaining, 0);
    assert!(l.check(b, spec(1, 1), t0).allowed);
    assert_eq!(l.len(), 53);
}

#[test]
fn same_route_name_after_reload_keeps_counts_and_new_burst_applies() {
    let l = limiter(10, 1);
    let t0 = Instant::now();
    for _ in 0..3 {
        l.check(key("a"), spec(1, 10), t0);
    }
    // A "reload": same name, smaller burst: the 7 left are cut to 5.
    let d = l.check(key("a"), spec(1, 5), t0);
    assert_eq!((d.limit, d.remaining), (5, 4));
    assert_eq!(l.retain_routes(|r| r != "r"), 1);
    assert!(l.is_empty());
}

#[test]
fn sweep_drops_only_full_buckets() {
    let l = limiter(100, 4);
    let t0 = Instant::now();
    l.check(key("fast"), spec(1000, 1), t0);
    l.check(key("slow"), spec(1, 10), t0);
    assert_eq!(l.sweep(t0), 0);
    assert_eq!(l.sweep(t0 + MS), 1);
    assert_eq!(l.len(), 1);
    assert_eq!(l.sweep(t0 + Duration::from_secs(1)), 1);
    assert!(l.is_empty());
}

#[test]
fn eviction_keeps_the_bound() {
    let l = limiter(100, 4);
    let t0 = Instant::now();
    for i in 0..5000u32 {
        // One token taken: no bucket is ever full at the same instant.
        l.check(key(&i.to_string()), spec(1, 10), t0);
        assert!(l.len() <= 100, "{} at {i}", l.len());
    }
    assert!(l.len() >= 100 - 100 / 8 - 4, "{}", l.len());
}

#[test]
fn eviction_drops_idle_buckets_first_then_the_closest_to_full() {
    let l = limiter(3, 1);
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(1);
    // `busy` keeps a debt for 10 s; `x` and `y` are full again after 10 ms.
    for _ in 0..3 {
        l.check(key("busy"), spec(1, 10), t1);
    }
    l.check(key("x"), spec(100, 1), t0);
    l.check(key("y"), spec(100, 1), t0);
    l.check(key("new"), spec(1, 10), t1);
    assert_eq!(l.len(), 2);
    assert_eq!(l.check(key("busy"), spec(1, 10), t1).remaining, 6);
    l.check(key("other"), spec(1, 10), t1);
    // Nothing idle now: a new key evicts `new` or `other` (1 s to full), not `busy` (4 s).
    l.check(key("third"), spec(1, 10), t1);
    assert_eq!(l.len(), 3);
    assert_eq!(l.check(key("busy"), spec(1, 10), t1).remaining, 5);
}

#[test]
fn threads_never_over_admit_at_one_instant() {
    let l = Arc::new(limiter(1000, 16));
    let t0 = Instant::now();
    let admitted = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (l, admitted) = (l.clone(), admitted.clone());
            thread::spawn(move || {
                for _ in 0..1000 {
                    if l.check(key("hot"), spec(100, 50), t0).allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 50);
}

#[test]
fn threads_never_over_admit_in_real_time() {
    let l = Arc::new(limiter(1000, 16));
    let (rate, burst) = (1000u32, 20u32);
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (l, admitted) = (l.clone(), admitted.clone());
            thread::spawn(move || {
                // Each thread also hammers its own key, to mix in uncontended shards.
                let own = format!("own{i}");
                while start.elapsed() < Duration::from_millis(200) {
                    if l.check(key("hot"), spec(rate, burst), Instant::now())
                        .allowed
                    {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    l.check(key(&own), spec(rate, burst), Instant::now());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed();
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = u64::from(burst) + (u128::from(rate) * elapsed.as_nanos() / 1_000_000_000) as u64;
    assert!(admitted <= bound, "{admitted} > {bound}");
    assert!(admitted >= u64::from(burst), "{admitted}");
}
