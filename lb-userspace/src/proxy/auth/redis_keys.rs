//! API keys kept in Redis (shared by every gateway of the fleet), cached per node.
//!
//! # Layout
//!
//! One hash per key at `<prefix>apikey:<sha256 hex of the key as sent>` with fields `name`
//! (required: the subject, X-User-ID), `tenant`, `scopes` (space-separated), `rate` and
//! `burst` (the key's own limit, as in key files). For example:
//!
//! ```text
//! redis-cli HSET lb:apikey:$(printf %s "$KEY" | sha256sum | cut -c1-64) name ci tenant acme scopes "read write" rate 10
//! redis-cli DEL  lb:apikey:<hash>      # revoke
//! ```
//!
//! # Cache
//!
//! Every answer is cached for the TTL, found and not found alike (a revoked or added key
//! takes effect on every node within the TTL). A hash without a usable `name` counts as no
//! key (and is logged). When Redis does not answer within its timeout and the cache has no
//! fresh entry, the request gets 503 `unavailable`: an auth check never fails open, and a
//! stale entry is never used (it could be a revoked key).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::super::redis_conn::{RedisClient, RedisError};
use super::failure::{AuthFailure, Scheme, reason};
use super::identity::{AuthMethod, Identity, KeyLimits};

/// Cached answers at most; when full, expired ones go, then all.
const MAX_CACHED: usize = 100_000;

/// Answers by key digest: the identity (`None`: no such key) and until when it holds.
type Cache = HashMap<[u8; 32], (Option<Arc<Identity>>, Instant)>;

/// Redis-stored API keys with a local cache; share one per provider.
pub struct RedisApiKeys {
    redis: RedisClient,
    header: HeaderName,
    ttl: Duration,
    cache: Mutex<Cache>,
}

impl RedisApiKeys {
    pub fn new(redis: RedisClient, header: HeaderName, ttl: Duration) -> Self {
        Self {
            redis,
            header,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The Redis key of a key with SHA-256 `digest`.
    pub fn redis_key(&self, digest: &[u8; 32]) -> String {
        format!("{}apikey:{}", self.redis.prefix(), hex::encode(digest))
    }

    /// Reads the configured header and looks the key up (cache, then Redis).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthFailure> {
        let fail = |r| AuthFailure::unauthorized(Scheme::ApiKey, r);
        let mut values = headers.get_all(&self.header).iter();
        let value = match (values.next(), values.next()) {
            (None, _) => return Err(fail(reason::MISSING)),
            (Some(_), Some(_)) => return Err(fail(reason::MALFORMED)),
            (Some(v), None) if v.is_empty() => return Err(fail(reason::MALFORMED)),
            (Some(v), None) => v,
        };
        match self.lookup(value.as_bytes()).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(fail(reason::UNKNOWN_KEY)),
            Err(_) => Err(AuthFailure::unavailable()),
        }
    }

    /// The identity of `key` (raw bytes): `Ok(None)` if Redis has none, `Err` if Redis did
    /// not answer and nothing fresh is cached.
    pub async fn lookup(&self, key: &[u8]) -> Result<Option<Arc<Identity>>, RedisError> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let now = Instant::now();
        if let Some((id, until)) = self.lock().get(&digest)
            && now < *until
        {
            return Ok(id.clone());
        }
        let rkey = self.redis_key(&digest);
        let fields: HashMap<String, String> = self
            .redis
            .call("apikey", |mut conn| async move {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(&rkey);
                cmd.query_async(&mut conn).await
            })
            .await?;
        let id = identity(&fields).map(Arc::new);
        if id.is_none() && !fields.is_empty() {
            warn!(key = %self.redis_key(&digest), "redis api key without a usable `name`, or with bad values: refused");
        }
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(digest, (id.clone(), now + self.ttl));
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The identity a key's hash describes; `None` if it is empty or unusable.
fn identity(f: &HashMap<String, String>) -> Option<Identity> {
    let name = f.get("name").filter(|n| !n.is_empty())?.clone();
    let tenant = f.get("tenant").filter(|t| !t.is_empty()).cloned();
    let scopes = f
        .get("scopes")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let num = |k: &str| -> Option<Option<u32>> {
        match f.get(k) {
            None => Some(None),
            Some(v) => v.parse::<u32>().ok().filter(|n| *n > 0).map(Some),
        }
    };
    let limits = match (num("rate")?, num("burst")?) {
        (Some(rate), burst) => Some(KeyLimits {
            rate,
            burst: burst.unwrap_or(rate),
        }),
        (None, None) => None,
        (None, Some(_)) => return None,
    };
    Identity::new(AuthMethod::ApiKey, name, tenant, scopes, limits, Vec::new()).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::identity;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hash_fields_make_the_identity() {
        let id = identity(&map(&[
            ("name", "ci"),
            ("tenant", "acme"),
            ("scopes", "read  write"),
            ("rate", "10"),
        ]))
        .unwrap();
        assert_eq!(id.subject, "ci");
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.scopes, ["read", "write"]);
        let l = id.limits.unwrap();
        assert_eq!((l.rate, l.burst), (10, 10));
        assert!(identity(&map(&[])).is_none());
        assert!(identity(&map(&[("tenant", "acme")])).is_none());
        assert!(identity(&map(&[("name", "x"), ("rate", "ten")])).is_none());
        assert!(identity(&map(&[("name", "x"), ("burst", "5")])).is_none());
        assert!(identity(&map(&[("name", "a\nb")])).is_none());
        assert!(identity(&map(&[("name", "x")])).unwrap().limits.is_none());
    }
}
