//! The gateway's local rate limiter: token buckets keyed by (route, key), where the key is
//! whatever the caller limits on (client IP, API key name, tenant, a claim value). Pure
//! logic; the caller passes `now`, so tests drive time.
//!
//! # Use
//!
//! ```text
//! // Once, outside config snapshots, so a reload keeps the counts (buckets are keyed by
//! // route *name*, stable across reloads):
//! let limiter = RateLimiter::new(LimiterSettings { max_keys: 100_000, shards: 64 });
//! // Per request:
//! let d = limiter.check(BucketKey { route: "users", key: &client_ip }, spec, Instant::now());
//! d.insert_headers(response.headers_mut());   // X-RateLimit-*, Retry-After when refused
//! if !d.allowed { /* 429 */ }
//! // Now and then (and after a reload): limiter.sweep(now); limiter.retain_routes(|r| ...);
//! ```
//!
//! # Semantics
//!
//! A bucket holds up to `burst` tokens (`burst == 0` means `rate_per_sec`), starts full,
//! refills at `rate_per_sec`, and each request takes one. Arithmetic is integer fixed
//! point (1 token = 10^9 units, refill = `rate` units per ns): exact, no drift. A changed
//! spec applies from the next check (a smaller burst cuts the stored tokens).
//!
//! `LimitDecision`: `limit` = capacity; `remaining` = whole tokens left after this request;
//! `reset` = time until the bucket is full again; `retry_after` = time until one token is
//! there (0 when allowed). Headers give seconds rounded up, so `X-RateLimit-Reset` is >= 1
//! whenever the bucket is not full, and `Retry-After` (only when refused) >= 1.
//!
//! # Concurrency and memory
//!
//! Buckets live in `shards` independently locked maps (key hash picks the shard), so
//! unrelated keys rarely contend; one lock is held only for a hash lookup and a few integer
//! operations. At most `max_keys` buckets exist (each shard holds `max_keys / shards`; fewer
//! shards are used if `max_keys` is smaller). A new key in a full shard first drops the
//! shard's full (idle) buckets, which forgets nothing; if none is full, it drops the 1/8 of
//! the shard closest to full (those lose the least), so a flood of new keys costs O(1)
//! amortized per key. Evicting a non-full bucket gives its key a fresh burst: size
//! `max_keys` above the expected number of concurrently active keys.

mod bucket;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue, header::RETRY_AFTER};
use thiserror::Error;

use bucket::Bucket;

/// Rate and burst of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    /// Tokens per second; must be above 0 (see `validate`; `check` treats 0 as 1).
    pub rate_per_sec: u32,
    /// Bucket size; 0 means `rate_per_sec`.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LimitError {
    #[error("rate_per_sec must be above 0")]
    ZeroRate,
}

impl LimitSpec {
    /// For the integrator's config check.
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.rate_per_sec == 0 {
            return Err(LimitError::ZeroRate);
        }
        Ok(())
    }
}

/// Which bucket: a stable route id (its name) and the caller's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketKey<'a> {
    pub route: &'a str,
    pub key: &'a str,
}

/// The outcome of one `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDecision {
    pub allowed: bool,
    /// The bucket's capacity.
    pub limit: u32,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Until the bucket is full.
    pub reset: Duration,
    /// Until a request would be allowed; zero when allowed.
    pub retry_after: Duration,
}

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl LimitDecision {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (seconds until full, rounded up), and
    /// `Retry-After` (seconds, rounded up) when refused.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![
            (X_RATELIMIT_LIMIT, HeaderValue::from(self.limit)),
            (X_RATELIMIT_REMAINING, HeaderValue::from(self.remaining)),
            (X_RATELIMIT_RESET, HeaderValue::from(ceil_secs(self.reset))),
        ];
        if !self.allowed {
            h.push((RETRY_AFTER, HeaderValue::from(ceil_secs(self.retry_after))));
        }
        h
    }

    /// `headers()` into a response's map, replacing any earlier values.
    pub fn insert_headers(&self, map: &mut HeaderMap) {
        for (name, value) in self.headers() {
            map.insert(name, value);
        }
    }
}

/// Size of the limiter's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterSettings {
    /// Upper bound on buckets kept (>= 1).
    pub max_keys: usize,
    /// Independently locked parts (>= 1; more = less contention).
    pub shards: usize,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            shards: 64,
        }
    }
}

/// Token buckets for all routes; share one (e.g. in an `Arc`) for the process lifetime.
#[derive(Debug)]
pub struct RateLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
}

/// route -> key -> bucket; two levels so a lookup borrows `&str`s and allocates nothing.
#[derive(Debug, Default)]
struct Shard {
    routes: HashMap<String, HashMap<String, Bucket>>,
    len: usize,
}

impl RateLimiter {
    pub fn new(settings: LimiterSettings) -> Self {
        let max_keys = settings.max_keys.max(1);
        let shards = settings.shards.clamp(1, max_keys);
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: max_keys / shards,
        }
    }

    /// Take one token from `key`'s bucket (created full on first use) under `spec`.
    pub fn check(&self, key: BucketKey<'_>, spec: LimitSpec, now: Instant) -> LimitDecision {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = shard
            .routes
            .get_mut(key.route)
            .and_then(|m| m.get_mut(key.key))
        {
            return b.take(spec, now);
        }
        if shard.len >= self.per_shard {
            shard.make_room(self.per_shard, now);
        }
        let mut b = Bucket::full(spec, now);
        let decision = b.take(spec, now);
        shard
            .routes
            .entry(key.route.to_owned())
            .or_default()
            .insert(key.key.to_owned(), b);
        shard.len += 1;
        decision
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.each_shard(|s| s.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop the buckets that are full at `now` (forgetting them changes nothing); returns
    /// how many. Call now and then to give memory back.
    pub fn sweep(&self, now: Instant) -> usize {
        self.each_shard(|s| s.remove(|b| b.nanos_to_full(now) == 0))
    }

    /// Drop the buckets of routes `keep` refuses (e.g. routes gone after a reload); returns
    /// how many.
    pub fn retain_routes(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.each_shard(|s| {
            let mut removed = 0;
            s.routes.retain(|route, keys| {
                let k = keep(route);
                if !k {
                    removed += keys.len();
                }
                k
            });
            s.len -= removed;
            removed
        })
    }

    fn each_shard(&self, mut f: impl FnMut(&mut Shard) -> usize) -> usize {
        self.shards
            .iter()
            .map(|s| f(&mut s.lock().unwrap_or_else(PoisonError::into_inner)))
            .sum()
    }
}

impl Shard {
    /// Removes the buckets `drop` picks; returns how many.
    fn remove(&mut self, mut drop: impl FnMut(&Bucket) -> bool) -> usize {
        let mut removed = 0;
        self.routes.retain(|_, keys| {
            keys.retain(|_, b| {
                let d = drop(b);
                removed += usize::from(d);
                !d
            });
            !keys.is_empty()
        });
        self.len -= removed;
        removed
    }

    /// Called when full, before adding a key: drop the full buckets, else the eighth of the
    /// shard closest to full.
    fn make_room(&mut self, per_shard: usize, now: Instant) {
        if self.remove(|b| b.nanos_to_full(now) == 0) > 0 && self.len < per_shard {
            return;
        }
        let want = (self.len + 1)
            .saturating_sub(per_shard)
            .max(per_shard / 8)
            .max(1);
        let mut ttf: Vec<u64> = self
            .routes
            .values()
            .flat_map(|m| m.values())
            .map(|b| b.nanos_to_full(now))
            .collect();
        if ttf.is_empty() {
            return;
        }
        let want = want.min(ttf.len());
        let (_, &mut threshold, _) = ttf.select_nth_unstable(want - 1);
        // Everything below the threshold, then ties until `want`.
        let below = ttf.iter().filter(|&&t| t < threshold).count();
        let mut ties = want - below;
        self.remove(|b| {
            let t = b.nanos_to_full(now);
            if t < threshold {
                true
            } else if t == threshold && ties > 0 {
                ties -= 1;
                true
            } else {
                false
            }
        });
    }
}
