//! etcd v3 source: backends from keys under a prefix, kept current with a watch.
//!
//! # Key schema
//!
//! One key per instance: `<prefix><service>/<ip>:<port>`, e.g. `/lb/web/10.0.2.2:8080` or
//! `/lb/web/[fd00::2]:8080` (IPv6 in brackets). The value is either empty (weight 1, no
//! metadata) or JSON `{"weight": N, "metadata": {"k": "v"}}`, both fields optional (weight
//! defaults to 1, at most [`MAX_WEIGHT`]; 0 drains) and unknown fields ignored.
//! `<service>` is a config service name (`[A-Za-z0-9_.-]{1,63}`).
//!
//! Instances usually attach their key to a lease they keep alive, so the key disappears
//! when they stop heartbeating:
//!
//! ```sh
//! etcdctl lease grant 10                      # -> lease 694d... granted with TTL(10s)
//! etcdctl put --lease=694d... /lb/web/10.0.2.2:8080 '{"weight": 2}'
//! etcdctl lease keep-alive 694d...
//! ```
//!
//! A key or value that does not follow the schema is skipped with a warning and counted
//! ([`EtcdStats`]); the rest of the set is still used.
//!
//! # Protocol
//!
//! etcd's v3 JSON gateway over HTTP (keys and values base64): `POST /v3/kv/range` over the
//! prefix, publish the complete set, then `POST /v3/watch` from the range's revision + 1, a
//! long-lived response of newline-delimited `{"result": WatchResponse}` objects. After every
//! event batch the complete set is published again (when it changed).
//!
//! - Watch cancelled because its start revision was compacted: range and watch again.
//! - Server unreachable, stream ended or broken: report through [`SourceHandle::error`] (the
//!   agent keeps the last set), wait with [`Backoff`], try the next endpoint, and range again.
//! - A silent stream is normal (no changes); after [`DEFAULT_IDLE_PROBE`] without a message
//!   the server is asked for its status, so a server that vanished without closing the
//!   connection is noticed. The watch also asks for etcd's progress notifications and, like
//!   etcd's own client, for cancellation when the member loses its leader.
//!
//! Files: `session` (the range/watch loop), `keys` (the key schema and the prefix's
//! entries), `wire` (the gateway's JSON shapes), `tests`.

mod keys;
mod session;
mod wire;

#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{Backoff, Source, SourceHandle};
use crate::config::{EtcdSource, MAX_WEIGHT};

pub use keys::parse_entry;

/// How long to wait for a TCP (and TLS) connection to an etcd member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for a unary request (range, status) and for the watch's response headers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the liveness probe of a quiet watch (a status call answers at once).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Silence on the watch stream after which the server is probed.
pub const DEFAULT_IDLE_PROBE: Duration = Duration::from_secs(30);
/// A single watch message larger than this is treated as a broken stream.
const MAX_LINE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoints configured")]
    NoEndpoints,
    #[error("endpoint `{0}` is not an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{url}: {}", error_chain(.source))]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: unexpected response: {message}")]
    Decode { url: String, message: String },
    #[error("{url}: {message} (gRPC code {code})")]
    Server {
        url: String,
        code: i64,
        message: String,
    },
    #[error("{url}: watch stream ended")]
    StreamEnded { url: String },
    #[error("{url}: watch cancelled by the server: {reason}")]
    Cancelled { url: String, reason: String },
    #[error("{url}: watch message over {MAX_LINE} bytes")]
    LineTooLong { url: String },
}

/// Why an entry under the prefix was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("key is not <service>/<ip>:<port>")]
    KeyShape,
    #[error("service name `{0}` is not 1 to 63 of A-Z a-z 0-9 _ . -")]
    Service(String),
    #[error("`{0}` is not <ip>:<port> (IPv6 as [addr]:port) with a usable address and port")]
    Address(String),
    #[error("value is not empty or JSON {{\"weight\": N, \"metadata\": {{...}}}}: {0}")]
    Value(String),
    #[error("weight {0} is above the maximum {MAX_WEIGHT}")]
    Weight(u32),
}

/// Counters a metrics exporter can read while the source runs.
#[derive(Debug, Default)]
pub struct EtcdStats {
    skipped_now: AtomicU64,
    skipped_total: AtomicU64,
    reconnects: AtomicU64,
}

impl EtcdStats {
    /// Keys under the prefix currently skipped as malformed.
    pub fn skipped_now(&self) -> u64 {
        self.skipped_now.load(Ordering::Relaxed)
    }

    /// Malformed entries met so far (each read of one counts).
    pub fn skipped_total(&self) -> u64 {
        self.skipped_total.load(Ordering::Relaxed)
    }

    /// Failed sessions (connect, range or watch) so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

/// The etcd source: runs as a [`Source`].
#[derive(Debug)]
pub struct EtcdWatcher {
    name: String,
    /// Base URLs without a trailing `/`.
    endpoints: Vec<String>,
    prefix: Vec<u8>,
    client: reqwest::Client,
    backoff: Backoff,
    idle_probe: Duration,
    stats: Arc<EtcdStats>,
}

impl EtcdWatcher {
    pub fn new(config: &EtcdSource) -> Result<Self, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                let ok = e.starts_with("http://") || e.starts_with("https://");
                ok.then(|| e.trim_end_matches('/').to_owned())
                    .ok_or_else(|| EtcdError::BadEndpoint(e.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Lets the kernel notice a peer that vanished without closing the connection.
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(EtcdError::Client)?;
        Ok(Self {
            name: config.name.clone(),
            endpoints,
            prefix: config.prefix.as_bytes().to_vec(),
            client,
            backoff: Backoff::default(),
            idle_probe: DEFAULT_IDLE_PROBE,
            stats: Arc::default(),
        })
    }

    /// Replaces the reconnect delays (default: 200 ms doubling to 30 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Replaces the silence after which the server is probed (default [`DEFAULT_IDLE_PROBE`]).
    pub fn with_idle_probe(mut self, idle: Duration) -> Self {
        self.idle_probe = idle;
        self
    }

    pub fn stats(&self) -> Arc<EtcdStats> {
        Arc::clone(&self.stats)
    }
}

impl Source for EtcdWatcher {
    fn run(self, out: SourceHandle) -> impl Future<Output = ()> + Send + 'static {
        self.run_loop(out)
    }
}

/// `error: cause: cause...`: reqwest's own message alone ("error sending request") hides
/// whether the connection was refused, reset or timed out.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}
