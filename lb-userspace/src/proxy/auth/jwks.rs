//! A JWKS URL's keys: fetched at start, cached, refreshed in the background and refetched
//! (rate-bounded) on an unknown `kid`.
//!
//! A fetch that fails (IdP down, non-2xx, garbage, no usable key) keeps the last good key set
//! and is recorded in [`JwksStatus`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::keyset::KeySet;

/// A JWKS response larger than this is refused (garbage must not eat memory).
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The state of a JWKS URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    pub url: String,
    /// Keys in the set in use (the last good one).
    pub keys: usize,
    /// Fetch attempts since start.
    pub fetches: u64,
    pub last_success: Option<SystemTime>,
    /// The last failed fetch, when and why (healthy if older than `last_success`).
    pub last_failure: Option<(SystemTime, String)>,
}

/// A JWKS URL's key set, kept fresh by a background task.
pub(super) struct JwksStore {
    inner: Arc<Remote>,
}

struct Remote {
    url: reqwest::Url,
    client: reqwest::Client,
    min_refetch: Duration,
    keys: ArcSwap<KeySet>,
    /// Bumped whenever the key set changes (the token cache drops older entries).
    generation: AtomicU64,
    /// One fetch at a time; waiters then see the new set.
    fetch_lock: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    body_hash: Mutex<Option<[u8; 32]>>,
    status: Mutex<JwksStatus>,
}

impl JwksStore {
    /// Fetches `url` once (a failure is logged and in the status, not an error: the refresh
    /// task retries), then refreshes every `refresh` (every `min_refetch`, at least 1 s,
    /// while no key set was ever fetched) until `stop`.
    pub async fn start(
        url: &str,
        refresh: Duration,
        min_refetch: Duration,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("the scheme must be http or https".into());
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let inner = Arc::new(Remote {
            url: parsed,
            client,
            min_refetch,
            keys: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            body_hash: Mutex::new(None),
            status: Mutex::new(JwksStatus {
                url: url.to_owned(),
                keys: 0,
                fetches: 0,
                last_success: None,
                last_failure: None,
            }),
        });
        inner.fetch_now().await;
        tokio::spawn(refresh_loop(Arc::downgrade(&inner), refresh, stop.clone()));
        Ok(Self { inner })
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.inner.keys.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// A token named a `kid` we lack: refetch, unless a fetch started less than
    /// `min_refetch` ago (then only wait for one in flight). Garbage `kid`s thus cost the IdP
    /// at most one request per `min_refetch`.
    pub async fn refetch_for_unknown_kid(&self) {
        let _one = self.inner.fetch_lock.lock().await;
        if !self.inner.claim_attempt(Instant::now()) {
            return;
        }
        self.inner.fetch_locked().await;
    }

    pub fn status(&self) -> JwksStatus {
        lock(&self.inner.status).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn refresh_loop(remote: Weak<Remote>, refresh: Duration, stop: CancellationToken) {
    loop {
        let Some(r) = remote.upgrade() else { return };
        let wait = if lock(&r.status).last_success.is_none() {
            r.min_refetch.max(Duration::from_secs(1)).min(refresh)
        } else {
            refresh
        };
        drop(r);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(r) = remote.upgrade() else { return };
        r.fetch_now().await;
    }
}

impl Remote {
    /// Records an attempt at `now` unless one was made less than `min_refetch` ago.
    fn claim_attempt(&self, now: Instant) -> bool {
        let mut last = lock(&self.last_attempt);
        if last.is_some_and(|t| now.duration_since(t) < self.min_refetch) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// A scheduled fetch (start, refresh): not rate-bounded, but counts as an attempt.
    async fn fetch_now(&self) {
        let _one = self.fetch_lock.lock().await;
        *lock(&self.last_attempt) = Some(Instant::now());
        self.fetch_locked().await;
    }

    /// One fetch; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) {
        lock(&self.status).fetches += 1;
        match self.get().await {
            Ok(body) => match KeySet::from_jwks(&body) {
                Ok(set) => self.install(&body, set),
                Err(e) => self.failed(e),
            },
            Err(e) => self.failed(e),
        }
    }

    async fn get(&self) -> Result<Vec<u8>, String> {
        let mut resp = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| format!("fetch failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("body larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn install(&self, body: &[u8], set: KeySet) {
        let hash: [u8; 32] = Sha256::digest(body).into();
        let mut st = lock(&self.status);
        st.last_success = Some(SystemTime::now());
        let mut last = lock(&self.body_hash);
        if *last == Some(hash) {
            return;
        }
        *last = Some(hash);
        st.keys = set.len();
        tracing::info!(url = %self.url, keys = set.len(), "jwks: key set updated");
        self.keys.store(Arc::new(set));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn failed(&self, error: String) {
        tracing::warn!(url = %self.url, %error, "jwks: fetch failed, keeping the last good key set");
        lock(&self.status).last_failure = Some((SystemTime::now(), error));
    }
}
