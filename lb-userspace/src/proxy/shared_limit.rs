//! Fleet-wide rate limits: one token bucket per (route, key) in Redis, shared by every
//! gateway, with a local lease in front so a node far below the limit rarely asks Redis.
//!
//! # How
//!
//! The bucket (rate, burst) lives in a Redis hash and is refilled from Redis's clock by a
//! Lua script (`take.lua`) that takes up to `lease` tokens in one atomic round trip. The
//! node spends them locally, one per request, for at most [`LEASE_TTL`]; when it has none
//! it asks again. When Redis has none, the node refuses locally until Redis says a token
//! is back (at most [`MAX_DENY_CACHE`]), so a client hammering a full limit costs Redis
//! about one call per node per refill, not one per request. Concurrent requests of one key
//! queue behind one Redis call (they share its lease).
//!
//! # Error bound
//!
//! Redis hands out no more than one bucket would, so tokens *taken* over any time `T` are
//! at most `burst + rate * T`. Tokens are *spent* up to [`LEASE_TTL`] after they were taken,
//! so requests admitted across the fleet in any window of length `T` are at most
//! `burst + rate * T + nodes * lease` (leases outstanding when the window opened). The
//! other way, a node may refuse while up to `(nodes - 1) * lease` tokens sit unspent on
//! other nodes (for at most `LEASE_TTL`).
//!
//! # When Redis fails
//!
//! A call that does not answer within the client's timeout, or no connection at all, is an
//! `Err`: the caller applies the route's `on_redis_error` (see `decide`). Tokens already
//! leased are spent as usual, so a short outage is often not even seen.

mod lease;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use super::{
    limit::LimitDecision,
    redis_conn::{RedisClient, RedisError},
};

pub use lease::{Grant, LEASE_TTL, Lease, MAX_DENY_CACHE, Spec};

const SHARDS: usize = 64;

/// One (route, key)'s lease, and the lock that lets one request at a time ask Redis.
struct Slot {
    lease: Mutex<Lease>,
    fetch: tokio::sync::Mutex<()>,
}

/// Slots by `route \0 key`.
type Shard = Mutex<HashMap<String, Arc<Slot>>>;

/// The fleet-wide limiter; share one per gateway.
pub struct SharedLimiter {
    redis: RedisClient,
    script: redis::Script,
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl SharedLimiter {
    pub fn new(redis: RedisClient) -> Self {
        Self {
            redis,
            script: redis::Script::new(include_str!("shared_limit/take.lua")),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The Redis key of (route, key).
    pub fn redis_key(&self, route: &str, key: &str) -> String {
        format!("{}rl:{route}:{key}", self.redis.prefix())
    }

    fn slot(&self, route: &str, key: &str) -> Arc<Slot> {
        let id = format!("{route}\0{key}");
        let shard = &self.shards[self.hasher.hash_one(&id) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        shard
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Slot {
                    lease: Mutex::new(Lease::new(Instant::now())),
                    fetch: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// One request of `key` on `route`: allowed or refused from the lease or a Redis call;
    /// `Err` when Redis did not answer (within the timeout, queueing included).
    pub async fn check(
        &self,
        route: &str,
        key: &str,
        spec: Spec,
        lease: u32,
    ) -> Result<LimitDecision, RedisError> {
        let slot = self.slot(route, key);
        if let Some(d) = lock(&slot.lease).try_local(spec, Instant::now()) {
            return Ok(d);
        }
        // Queueing behind another request's call counts against the same timeout.
        let timeout = self.redis.timeout();
        let guard = tokio::time::timeout(timeout, slot.fetch.lock())
            .await
            .map_err(|_| RedisError::Timeout(timeout))?;
        // That call may have leased enough for this request too.
        if let Some(d) = lock(&slot.lease).try_local(spec, Instant::now()) {
            return Ok(d);
        }
        let grant = self.take(route, key, spec, lease).await;
        drop(guard);
        Ok(lock(&slot.lease).apply(grant?, spec, Instant::now()))
    }

    /// Up to `want` tokens from the Redis bucket of (route, key).
    pub async fn take(
        &self,
        route: &str,
        key: &str,
        spec: Spec,
        want: u32,
    ) -> Result<Grant, RedisError> {
        let rkey = self.redis_key(route, key);
        let (granted, left, wait_us): (i64, i64, i64) = self
            .redis
            .call("ratelimit", |mut conn| async move {
                let mut invocation = self.script.prepare_invoke();
                invocation
                    .key(rkey)
                    .arg(spec.rate.max(1))
                    .arg(spec.burst.max(1))
                    .arg(want.max(1));
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        let clamp = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        Ok(Grant {
            granted: clamp(granted),
            left: clamp(left),
            wait: std::time::Duration::from_micros(wait_us.max(0) as u64),
        })
    }

    /// Forgets the slots that hold nothing (call now and then).
    pub fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|_, slot| {
                // A slot in use elsewhere (a request holds its Arc) stays.
                let keep = Arc::strong_count(slot) > 1 || !lock(&slot.lease).idle(now);
                removed += usize::from(!keep);
                keep
            });
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
