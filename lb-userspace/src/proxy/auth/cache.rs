//! Verified-token cache: SHA-256 of the token -> identity, so a valid token is verified once,
//! not per request.
//!
//! Bounded by two generations of at most `capacity / 2` entries each: inserts go to the
//! current one; when it is full it becomes the previous one (the older previous is dropped).
//! A hit in the previous generation moves back to the current one, so tokens in use survive.
//! O(1), no per-entry bookkeeping. An entry is never returned past its deadline (the token's
//! `exp`, capped by a max TTL) nor once the key set it was verified with has changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::identity::Identity;

pub(super) type TokenHash = [u8; 32];

struct Entry {
    identity: Arc<Identity>,
    deadline: Instant,
    /// Key-set generation it was verified under.
    generation: u64,
}

#[derive(Default)]
struct Generations {
    current: HashMap<TokenHash, Entry>,
    previous: HashMap<TokenHash, Entry>,
}

pub(super) struct TokenCache {
    inner: Mutex<Generations>,
    /// Entries per generation; 0 disables the cache.
    half: usize,
    max_ttl: Duration,
}

impl TokenCache {
    pub fn new(capacity: usize, max_ttl: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            half: capacity / 2,
            max_ttl,
        }
    }

    /// The identity cached for `hash`, if still valid at `now` under key-set `generation`.
    /// Allocation-free: a lock, a lookup, an `Arc` clone.
    pub fn get(&self, hash: &TokenHash, now: Instant, generation: u64) -> Option<Arc<Identity>> {
        if self.half == 0 {
            return None;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = |e: &Entry| e.deadline > now && e.generation == generation;
        if let Some(e) = g.current.get(hash) {
            if fresh(e) {
                return Some(e.identity.clone());
            }
            g.current.remove(hash);
            return None;
        }
        let e = g.previous.remove(hash)?;
        if !fresh(&e) {
            return None;
        }
        let identity = e.identity.clone();
        g.put(*hash, e, self.half);
        Some(identity)
    }

    /// Caches `identity` until `exp` (unix seconds; `wall` is the current time, so the
    /// deadline keeps sub-second precision), at most `max_ttl`. A token expiring now or
    /// earlier is not cached.
    pub fn insert(
        &self,
        hash: TokenHash,
        identity: Arc<Identity>,
        exp: Option<u64>,
        wall: SystemTime,
        now: Instant,
        generation: u64,
    ) {
        let left = match exp {
            Some(exp) => match (UNIX_EPOCH + Duration::from_secs(exp)).duration_since(wall) {
                Ok(left) => left.min(self.max_ttl),
                Err(_) => return,
            },
            None => self.max_ttl,
        };
        if self.half == 0 || left.is_zero() {
            return;
        }
        let entry = Entry {
            identity,
            deadline: now + left,
            generation,
        };
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.put(hash, entry, self.half);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap();
        g.current.len() + g.previous.len()
    }
}

impl Generations {
    fn put(&mut self, hash: TokenHash, entry: Entry, half: usize) {
        if self.current.len() >= half && !self.current.contains_key(&hash) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&hash);
        self.current.insert(hash, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::super::identity::AuthMethod;
    use super::*;

    fn id(name: &str) -> Arc<Identity> {
        Arc::new(Identity::new(AuthMethod::Jwt, name.into(), None, vec![], None, vec![]).unwrap())
    }

    /// Wall clock at unix second 1000.
    fn at1000() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1000)
    }

    fn h(i: u32) -> TokenHash {
        let mut h = [0; 32];
        h[..4].copy_from_slice(&i.to_be_bytes());
        h
    }

    #[test]
    fn bounded_and_keeps_entries_in_use() {
        let c = TokenCache::new(10, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..100 {
            c.insert(h(i), id("x"), Some(2000), at1000(), now, 0);
            // Token 0 is used all along: it must stay.
            assert!(c.get(&h(0), now, 0).is_some(), "token 0 evicted at {i}");
            assert!(c.len() <= 10, "{} entries", c.len());
        }
        assert!(c.get(&h(1), now, 0).is_none(), "old unused entry kept");
        assert!(c.get(&h(99), now, 0).is_some());
    }

    #[test]
    fn never_past_exp_nor_max_ttl_nor_key_change() {
        let c = TokenCache::new(10, Duration::from_secs(60));
        let now = Instant::now();
        c.insert(h(1), id("a"), Some(1010), at1000(), now, 7);
        assert!(c.get(&h(1), now + Duration::from_secs(9), 7).is_some());
        assert!(c.get(&h(1), now + Duration::from_secs(10), 7).is_none());
        c.insert(h(2), id("b"), Some(1_000_000), at1000(), now, 7);
        assert!(c.get(&h(2), now + Duration::from_secs(59), 7).is_some());
        assert!(c.get(&h(2), now + Duration::from_secs(60), 7).is_none());
        c.insert(h(3), id("c"), None, at1000(), now, 7);
        assert!(c.get(&h(3), now, 8).is_none(), "survived a key-set change");
        c.insert(h(4), id("d"), Some(1000), at1000(), now, 7);
        assert!(
            c.get(&h(4), now, 7).is_none(),
            "cached a token expiring now"
        );
    }

    #[test]
    fn zero_capacity_disables() {
        let c = TokenCache::new(0, Duration::from_secs(60));
        let now = Instant::now();
        c.insert(h(1), id("a"), None, at1000(), now, 0);
        assert!(c.get(&h(1), now, 0).is_none());
    }
}
