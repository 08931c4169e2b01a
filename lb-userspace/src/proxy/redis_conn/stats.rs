//! Counters of the gateway's Redis use, read by the metrics and `lb status`.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No connection at the time (not even tried).
    Down,
    /// No answer within the timeout.
    Timeout,
    /// An answer that is an error, or a broken connection.
    Error,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Default)]
pub struct RedisStats {
    configured: AtomicBool,
    up: AtomicBool,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    url: String,
    calls: BTreeMap<&'static str, u64>,
    errors: BTreeMap<(&'static str, ErrorKind), u64>,
    last_error: Option<String>,
    /// Requests a shared limit decided without Redis, by (route, fail mode).
    fallbacks: BTreeMap<(String, &'static str), u64>,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisStatsView {
    pub url: String,
    pub up: bool,
    pub reconnects: u64,
    pub connect_failures: u64,
    /// Calls by operation (answered or not).
    pub calls: BTreeMap<String, u64>,
    /// Failed calls by (operation, kind).
    pub errors: BTreeMap<(String, String), u64>,
    pub last_error: Option<String>,
    /// Requests decided by a fail mode, by (route, mode).
    pub fallbacks: BTreeMap<(String, String), u64>,
}

impl RedisStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn configure(&self, url: &str) {
        self.configured.store(true, Ordering::Relaxed);
        // Credentials in the URL stay out of status and logs.
        self.lock().url = redact(url);
    }

    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub(super) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn connect_failed(&self, why: &str) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.lock().last_error = Some(format!("connect: {why}"));
    }

    pub(super) fn call(&self, op: &'static str, error: Option<(ErrorKind, String)>) {
        let mut i = self.lock();
        *i.calls.entry(op).or_default() += 1;
        if let Some((kind, message)) = error {
            *i.errors.entry((op, kind)).or_default() += 1;
            i.last_error = Some(message);
        }
    }

    /// A request on `route` that fail mode `mode` decided because Redis failed.
    pub fn fallback(&self, route: &str, mode: &'static str) {
        *self
            .lock()
            .fallbacks
            .entry((route.to_owned(), mode))
            .or_default() += 1;
    }

    /// `None` when no Redis is configured.
    pub fn view(&self) -> Option<RedisStatsView> {
        if !self.configured.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.lock();
        Some(RedisStatsView {
            url: i.url.clone(),
            up: self.up.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            calls: i.calls.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            errors: i
                .errors
                .iter()
                .map(|((op, k), v)| (((*op).to_owned(), k.as_str().to_owned()), *v))
                .collect(),
            last_error: i.last_error.clone(),
            fallbacks: i
                .fallbacks
                .iter()
                .map(|((r, m), v)| ((r.clone(), (*m).to_owned()), *v))
                .collect(),
        })
    }
}

/// `redis://user:secret@host` -> `redis://user:***@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("redis://u:pw@10.0.0.1:6379/0"),
            "redis://u:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redact("redis://10.0.0.1:6379"),
            "redis://10.0.0.1:6379"
        );
        assert_eq!(super::redact("unix:///run/r.sock"), "unix:///run/r.sock");
    }
}
