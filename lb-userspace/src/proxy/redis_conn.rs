//! The gateway's Redis client: one multiplexed connection shared by every request, each call
//! bounded by a small timeout, and a background task that (re)connects with exponential
//! backoff.
//!
//! Requests never wait for a connection: while there is none (Redis down, or being
//! reconnected), a call fails at once with [`RedisError::Down`] and the caller applies its
//! fail mode. A call that times out or breaks the connection counts; an I/O error or
//! [`DROP_AFTER`] failures in a row drop the connection and wake the reconnect task (a
//! stopped or overloaded Redis is treated as gone, so requests stop paying the timeout).
//!
//! Every call and error is counted in [`RedisStats`] by operation (`ratelimit`, `apikey`),
//! for the metrics and `lb status`.

mod stats;
#[cfg(test)]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RedisSettings;

pub use stats::{ErrorKind, RedisStats, RedisStatsView};

/// Failures in a row after which the connection is dropped and made anew.
pub const DROP_AFTER: u32 = 3;
/// First and longest wait between connect attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: not connected")]
    Down,
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RedisError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Down => ErrorKind::Down,
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::Redis(_) => ErrorKind::Error,
        }
    }
}

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RedisSettings,
    client: redis::Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    failures: AtomicU32,
    /// Wakes the connect task when the connection was dropped.
    lost: Arc<Notify>,
    stats: Arc<RedisStats>,
}

impl RedisClient {
    /// Starts connecting (in the background, until `stop`); calls fail with `Down` until
    /// connected. Needs a tokio runtime. `settings.url` was checked by the config.
    pub fn start(
        settings: RedisSettings,
        stats: Arc<RedisStats>,
        stop: CancellationToken,
    ) -> Result<Self, RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        stats.configure(&settings.url);
        let inner = Arc::new(Inner {
            settings,
            client,
            conn: ArcSwapOption::empty(),
            failures: AtomicU32::new(0),
            lost: Arc::new(Notify::new()),
            stats,
        });
        tokio::spawn(connect_loop(Arc::downgrade(&inner), stop));
        Ok(Self { inner })
    }

    pub fn prefix(&self) -> &str {
        &self.inner.settings.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.inner.settings.timeout
    }

    pub fn stats(&self) -> &Arc<RedisStats> {
        &self.inner.stats
    }

    pub fn is_connected(&self) -> bool {
        self.inner.conn.load().is_some()
    }

    /// Runs `f` on the connection within the timeout, counted under `op`.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &self.inner;
        let result = match inner.conn.load_full() {
            None => Err(RedisError::Down),
            Some(conn) => {
                let timeout = inner.settings.timeout;
                match tokio::time::timeout(timeout, f((*conn).clone())).await {
                    Err(_) => Err(RedisError::Timeout(timeout)),
                    Ok(Err(e)) if e.is_timeout() => Err(RedisError::Timeout(timeout)),
                    Ok(r) => r.map_err(RedisError::from),
                }
            }
        };
        match &result {
            Ok(_) => {
                inner.failures.store(0, Ordering::Relaxed);
                inner.stats.call(op, None);
            }
            Err(e) => {
                inner.stats.call(op, Some((e.kind(), e.to_string())));
                let broken = matches!(e, RedisError::Redis(r)
                    if r.is_io_error() || r.is_connection_dropped() || r.is_unrecoverable_error());
                let streak = match e {
                    RedisError::Down => 0,
                    _ => inner.failures.fetch_add(1, Ordering::Relaxed) + 1,
                };
                if broken || streak >= DROP_AFTER {
                    self.drop_connection(e);
                }
            }
        }
        result
    }

    fn drop_connection(&self, why: &RedisError) {
        if self.inner.conn.swap(None).is_some() {
            warn!(error = %why, "redis connection dropped; reconnecting");
            self.inner.stats.set_up(false);
            self.inner.lost.notify_one();
        }
    }
}

/// Connects, then waits until the connection is dropped; between failed attempts it waits
/// `BACKOFF_MIN`, doubling up to `BACKOFF_MAX`.
async fn connect_loop(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.conn.load().is_some() {
            // A drop notified before we wait leaves a permit: not missed.
            let lost = i.lost.clone();
            drop(i);
            tokio::select! {
                () = stop.cancelled() => return,
                () = lost.notified() => continue,
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(i.settings.connect_timeout))
            .set_response_timeout(Some(i.settings.timeout));
        let attempt = tokio::time::timeout(
            i.settings.connect_timeout * 2,
            i.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                info!(url = %i.settings.url, "redis connected");
                i.failures.store(0, Ordering::Relaxed);
                i.conn.store(Some(Arc::new(conn)));
                i.stats.set_up(true);
                i.stats.reconnected();
                backoff = BACKOFF_MIN;
                continue;
            }
            Ok(Err(e)) => i.stats.connect_failed(&e.to_string()),
            Err(_) => i.stats.connect_failed("connect timed out"),
        }
        drop(i);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
