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

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use futures_util::StreamExt as _;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use tracing::{debug, info, warn};

use super::{Backoff, Endpoint, Source, SourceHandle};
use crate::config::{EtcdSource, MAX_WEIGHT};

/// How long to wait for a TCP (and TLS) connection to an etcd member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for a unary request (range, status) and for the watch's response headers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the liveness probe of a quiet watch (a status call answers at once).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Silence on the watch stream after which the server is probed.
pub const DEFAULT_IDLE_PROBE: Duration = Duration::from_secs(30);
/// How often a quiet source checks whether the agent still listens.
const CLOSE_CHECK: Duration = Duration::from_secs(1);
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

    async fn run_loop(mut self, out: SourceHandle) {
        let mut published: Option<Vec<Endpoint>> = None;
        let mut next_endpoint = 0;
        loop {
            let url = self.endpoints[next_endpoint % self.endpoints.len()].clone();
            match self.session(&url, &out, &mut published).await {
                SessionEnd::Closed => return,
                SessionEnd::Failed(e) => {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    warn!(source = %self.name, "etcd: {e}");
                    out.error(&e);
                    next_endpoint += 1;
                }
            }
            let delay = self.backoff.next_delay();
            if !sleep_unless_closed(&out, delay).await {
                return;
            }
        }
    }

    /// Range then watch on one endpoint, ranging again after compaction, until the agent
    /// stops listening or the endpoint fails.
    async fn session(
        &mut self,
        url: &str,
        out: &SourceHandle,
        published: &mut Option<Vec<Endpoint>>,
    ) -> SessionEnd {
        loop {
            if out.is_closed() {
                return SessionEnd::Closed;
            }
            let (mut snapshot, revision) = match self.range(url).await {
                Ok(r) => r,
                Err(e) => return SessionEnd::Failed(e),
            };
            info!(source = %self.name, %url, revision, endpoints = snapshot.valid(),
                skipped = snapshot.skipped(), "etcd: read the prefix, watching");
            self.publish_if_changed(&snapshot, out, published);
            match self
                .watch(url, revision + 1, &mut snapshot, out, published)
                .await
            {
                WatchEnd::Compacted(compacted) => {
                    info!(source = %self.name, %url, compacted, "etcd: watch start was compacted, reading again");
                }
                WatchEnd::Closed => return SessionEnd::Closed,
                WatchEnd::Failed(e) => return SessionEnd::Failed(e),
            }
        }
    }

    async fn range(&self, url: &str) -> Result<(Snapshot, i64), EtcdError> {
        let body = serde_json::json!({
            "key": BASE64.encode(range_key(&self.prefix)),
            "range_end": BASE64.encode(prefix_range_end(&self.prefix)),
        });
        let resp: RangeResponse = self
            .post_json(url, "/v3/kv/range", &body, REQUEST_TIMEOUT)
            .await?;
        let mut snapshot = Snapshot::default();
        for kv in &resp.kvs {
            let (key, value) = kv.decode().map_err(|message| EtcdError::Decode {
                url: url.to_owned(),
                message,
            })?;
            snapshot.put(&self.name, &self.prefix, key, &value);
        }
        self.note_skipped(&mut snapshot);
        Ok((snapshot, resp.header.revision))
    }

    /// Follows the watch stream, applying events to `snapshot` and publishing after each batch.
    async fn watch(
        &mut self,
        url: &str,
        start_revision: i64,
        snapshot: &mut Snapshot,
        out: &SourceHandle,
        published: &mut Option<Vec<Endpoint>>,
    ) -> WatchEnd {
        let body = serde_json::json!({
            "create_request": {
                "key": BASE64.encode(range_key(&self.prefix)),
                "range_end": BASE64.encode(prefix_range_end(&self.prefix)),
                "start_revision": start_revision.to_string(),
                "progress_notify": true,
            }
        });
        let request = self
            .client
            .post(format!("{url}/v3/watch"))
            // gRPC metadata through the gateway: end the watch if the member loses its leader
            // (a partitioned member would otherwise serve a silent, stale watch).
            .header("Grpc-Metadata-hasleader", "true")
            .json(&body)
            .send();
        let resp = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Err(_) => return WatchEnd::Failed(timeout(url, REQUEST_TIMEOUT)),
            Ok(Err(source)) => return WatchEnd::Failed(http(url, source)),
            Ok(Ok(r)) => r,
        };
        if let Err(e) = check_status(url, resp.status(), String::new) {
            return WatchEnd::Failed(e);
        }
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut last_message = Instant::now();
        loop {
            // `next()` is cancel-safe, so waking up to check on the agent loses no data.
            let chunk = match tokio::time::timeout(CLOSE_CHECK, stream.next()).await {
                Err(_) => {
                    if out.is_closed() {
                        return WatchEnd::Closed;
                    }
                    if last_message.elapsed() >= self.idle_probe {
                        if let Err(e) = self.probe(url).await {
                            return WatchEnd::Failed(e);
                        }
                        debug!(source = %self.name, %url, "etcd: quiet watch, server answers");
                        last_message = Instant::now();
                    }
                    continue;
                }
                Ok(None) => return WatchEnd::Failed(EtcdError::StreamEnded { url: url.into() }),
                Ok(Some(Err(source))) => return WatchEnd::Failed(http(url, source)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            last_message = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(newline) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=newline).collect();
                match self.on_watch_line(url, &line, snapshot) {
                    Ok(LineOutcome::Changed) => self.publish_if_changed(snapshot, out, published),
                    // Reset only once the watch stands: a server that answers the range but
                    // refuses watches must not be retried at the shortest delay forever.
                    Ok(LineOutcome::Created) => self.backoff.reset(),
                    Ok(LineOutcome::Nothing) => {}
                    Ok(LineOutcome::Compacted(rev)) => return WatchEnd::Compacted(rev),
                    Err(e) => return WatchEnd::Failed(e),
                }
            }
            if buf.len() > MAX_LINE {
                return WatchEnd::Failed(EtcdError::LineTooLong { url: url.into() });
            }
            if out.is_closed() {
                return WatchEnd::Closed;
            }
        }
    }

    fn on_watch_line(
        &self,
        url: &str,
        line: &[u8],
        snapshot: &mut Snapshot,
    ) -> Result<LineOutcome, EtcdError> {
        let decode = |message: String| EtcdError::Decode {
            url: url.to_owned(),
            message,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(LineOutcome::Nothing);
        }
        let result = match parse_watch_line(line).map_err(decode)? {
            WatchMessage::Result(r) => r,
            WatchMessage::Error { code, message } => {
                return Err(EtcdError::Server {
                    url: url.to_owned(),
                    code,
                    message,
                });
            }
        };
        if result.canceled {
            if result.compact_revision > 0 {
                return Ok(LineOutcome::Compacted(result.compact_revision));
            }
            return Err(EtcdError::Cancelled {
                url: url.to_owned(),
                reason: result.cancel_reason,
            });
        }
        if result.created {
            return Ok(LineOutcome::Created);
        }
        if result.events.is_empty() {
            // A progress notification: nothing changed.
            return Ok(LineOutcome::Nothing);
        }
        for event in &result.events {
            let (key, value) = event.kv.decode().map_err(decode)?;
            match event.kind {
                EventKind::Put => snapshot.put(&self.name, &self.prefix, key, &value),
                EventKind::Delete => snapshot.delete(&key),
            }
        }
        self.note_skipped(snapshot);
        Ok(LineOutcome::Changed)
    }

    /// Is the server alive? Used when the watch has been quiet for a while.
    async fn probe(&self, url: &str) -> Result<(), EtcdError> {
        let _: serde_json::Value = self
            .post_json(
                url,
                "/v3/maintenance/status",
                &serde_json::json!({}),
                PROBE_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        body: &serde_json::Value,
        deadline: Duration,
    ) -> Result<T, EtcdError> {
        let request = async {
            let resp = self
                .client
                .post(format!("{url}{path}"))
                .json(body)
                .send()
                .await
                .map_err(|e| http(url, e))?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| http(url, e))?;
            check_status(url, status, || {
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
            })?;
            serde_json::from_slice(&bytes).map_err(|e| EtcdError::Decode {
                url: url.to_owned(),
                message: format!("{path}: {e}"),
            })
        };
        tokio::time::timeout(deadline, request)
            .await
            .unwrap_or_else(|_| Err(timeout(url, deadline)))
    }

    fn publish_if_changed(
        &self,
        snapshot: &Snapshot,
        out: &SourceHandle,
        published: &mut Option<Vec<Endpoint>>,
    ) {
        let mut now = snapshot.endpoints();
        now.sort();
        now.dedup();
        if published.as_ref() != Some(&now) {
            out.publish(now.clone());
            *published = Some(now);
        }
    }

    fn note_skipped(&self, snapshot: &mut Snapshot) {
        self.stats
            .skipped_now
            .store(snapshot.skipped() as u64, Ordering::Relaxed);
        self.stats
            .skipped_total
            .fetch_add(snapshot.take_new_skips(), Ordering::Relaxed);
    }
}

impl Source for EtcdWatcher {
    fn run(self, out: SourceHandle) -> impl Future<Output = ()> + Send + 'static {
        self.run_loop(out)
    }
}

enum SessionEnd {
    Closed,
    Failed(EtcdError),
}

enum WatchEnd {
    Closed,
    Compacted(i64),
    Failed(EtcdError),
}

enum LineOutcome {
    Created,
    Nothing,
    Changed,
    Compacted(i64),
}

/// Sleeps `delay`, waking every [`CLOSE_CHECK`]; false if the agent stopped listening.
async fn sleep_unless_closed(out: &SourceHandle, delay: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + delay;
    while tokio::time::Instant::now() < deadline {
        if out.is_closed() {
            return false;
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + CLOSE_CHECK)).await;
    }
    !out.is_closed()
}

fn http(url: &str, source: reqwest::Error) -> EtcdError {
    EtcdError::Http {
        url: url.to_owned(),
        source,
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

fn timeout(url: &str, after: Duration) -> EtcdError {
    EtcdError::Timeout {
        url: url.to_owned(),
        after,
    }
}

fn check_status(
    url: &str,
    status: reqwest::StatusCode,
    body: impl FnOnce() -> String,
) -> Result<(), EtcdError> {
    if status.is_success() {
        return Ok(());
    }
    Err(EtcdError::Status {
        url: url.to_owned(),
        status: status.as_u16(),
        body: body(),
    })
}

/// The entries under the prefix, by raw key; `None` marks a malformed entry.
#[derive(Debug, Default)]
struct Snapshot {
    entries: BTreeMap<Vec<u8>, Option<Endpoint>>,
    /// Malformed entries met since the last [`Snapshot::take_new_skips`].
    new_skips: u64,
}

impl Snapshot {
    fn put(&mut self, source: &str, prefix: &[u8], key: Vec<u8>, value: &[u8]) {
        let parsed = key
            .strip_prefix(prefix)
            .ok_or(EntryError::KeyShape)
            .and_then(|suffix| parse_entry(suffix, value));
        let entry = match parsed {
            Ok(endpoint) => Some(endpoint),
            Err(e) => {
                warn!(source, key = %String::from_utf8_lossy(&key), "etcd: skipping entry: {e}");
                self.new_skips += 1;
                None
            }
        };
        self.entries.insert(key, entry);
    }

    fn delete(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.entries.values().flatten().cloned().collect()
    }

    fn valid(&self) -> usize {
        self.entries.values().flatten().count()
    }

    fn skipped(&self) -> usize {
        self.entries.values().filter(|e| e.is_none()).count()
    }

    fn take_new_skips(&mut self) -> u64 {
        std::mem::take(&mut self.new_skips)
    }
}

/// Parses one entry: `suffix` is the key after the prefix (`<service>/<ip>:<port>`).
pub fn parse_entry(suffix: &[u8], value: &[u8]) -> Result<Endpoint, EntryError> {
    let suffix = std::str::from_utf8(suffix).map_err(|_| EntryError::KeyShape)?;
    let (service, address) = suffix.split_once('/').ok_or(EntryError::KeyShape)?;
    if address.contains('/') {
        return Err(EntryError::KeyShape);
    }
    let service_ok = (1..=63).contains(&service.len())
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !service_ok {
        return Err(EntryError::Service(service.to_owned()));
    }
    let socket: SocketAddr = address
        .parse()
        .map_err(|_| EntryError::Address(address.to_owned()))?;
    let ip = socket.ip();
    if socket.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
        return Err(EntryError::Address(address.to_owned()));
    }
    let value = parse_value(value)?;
    Ok(Endpoint {
        service: service.to_owned(),
        addr: ip,
        port: socket.port(),
        weight: value.weight,
        metadata: value.metadata,
    })
}

#[derive(Debug, Deserialize)]
struct EntryValue {
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

fn parse_value(value: &[u8]) -> Result<EntryValue, EntryError> {
    if value.iter().all(u8::is_ascii_whitespace) {
        return Ok(EntryValue {
            weight: 1,
            metadata: BTreeMap::new(),
        });
    }
    let json: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| EntryError::Value(e.to_string()))?;
    // Checked first: serde would also build the struct from an array.
    if !json.is_object() {
        return Err(EntryError::Value(format!("{json} is not an object")));
    }
    let v: EntryValue =
        serde_json::from_value(json).map_err(|e| EntryError::Value(e.to_string()))?;
    if v.weight > MAX_WEIGHT {
        return Err(EntryError::Weight(v.weight));
    }
    Ok(v)
}

/// The first key of the range: the prefix, or `\0` (all keys) for an empty prefix.
fn range_key(prefix: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.to_vec()
    }
}

/// The end of the range holding every key that starts with `prefix` (etcd's rule: the prefix
/// with its last byte below 0xff incremented; `\0`, meaning "to the end", if there is none).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

// ---- The gateway's JSON shapes (proto3 JSON: int64 as strings, defaults omitted). ----

#[derive(Debug, Default, Deserialize)]
struct ResponseHeader {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: ResponseHeader,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

impl KeyValue {
    fn decode(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let key = BASE64
            .decode(&self.key)
            .map_err(|e| format!("key {:?} is not base64: {e}", self.key))?;
        let value = BASE64
            .decode(&self.value)
            .map_err(|e| format!("value of key {:?} is not base64: {e}", self.key))?;
        Ok((key, value))
    }
}

#[derive(Debug, Default, Deserialize)]
struct WatchResult {
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<WatchEvent>,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type", default)]
    kind: EventKind,
    kv: KeyValue,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    #[default]
    Put,
    Delete,
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The gateway writes enum names; numbers are valid proto3 JSON too.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "PUT" => Ok(EventKind::Put),
            serde_json::Value::String(s) if s == "DELETE" => Ok(EventKind::Delete),
            serde_json::Value::Number(n) if n.as_u64() == Some(0) => Ok(EventKind::Put),
            serde_json::Value::Number(n) if n.as_u64() == Some(1) => Ok(EventKind::Delete),
            other => Err(serde::de::Error::custom(format!(
                "unknown event type {other}"
            ))),
        }
    }
}

/// One line of the watch stream.
#[derive(Debug)]
enum WatchMessage {
    Result(WatchResult),
    /// The gateway's in-stream error, e.g. `{"error":{"grpc_code":14,"message":"transport is closing",...}}`.
    Error {
        code: i64,
        message: String,
    },
}

fn parse_watch_line(line: &[u8]) -> Result<WatchMessage, String> {
    #[derive(Deserialize)]
    struct Line {
        result: Option<WatchResult>,
        error: Option<serde_json::Value>,
    }
    let parsed: Line = serde_json::from_slice(line).map_err(|e| {
        let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        format!("watch message {shown:?}: {e}")
    })?;
    if let Some(error) = parsed.error {
        let code = error
            .get("grpc_code")
            .or_else(|| error.get("code"))
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(-1);
        let message = error
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| error.to_string());
        return Ok(WatchMessage::Error { code, message });
    }
    parsed
        .result
        .map(WatchMessage::Result)
        .ok_or_else(|| "watch message with neither result nor error".to_owned())
}

/// proto3 JSON writes int64 as a string; accept a number too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an int64"))),
        other => Err(serde::de::Error::custom(format!("{other} is not an int64"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::ep;

    #[test]
    fn entries_follow_the_key_schema() {
        assert_eq!(
            parse_entry(b"web/10.0.2.2:8080", b""),
            Ok(ep("web", "10.0.2.2", 8080, 1))
        );
        assert_eq!(
            parse_entry(b"web/[fd00::2]:80", b"  "),
            Ok(ep("web", "fd00::2", 80, 1))
        );
        let with_meta = parse_entry(
            b"api/10.0.0.1:9",
            br#"{"weight": 7, "metadata": {"zone": "a"}, "extra": true}"#,
        )
        .unwrap();
        assert_eq!(with_meta.weight, 7);
        assert_eq!(
            with_meta.metadata.get("zone").map(String::as_str),
            Some("a")
        );
        assert_eq!(parse_entry(b"api/10.0.0.1:9", b"{}").unwrap().weight, 1);
        assert_eq!(
            parse_entry(b"api/10.0.0.1:9", br#"{"weight":0}"#)
                .unwrap()
                .weight,
            0
        );
    }

    #[test]
    fn malformed_entries_are_rejected() {
        type Case = (&'static [u8], &'static [u8], fn(&EntryError) -> bool);
        let bad: &[Case] = &[
            (b"web", b"", |e| *e == EntryError::KeyShape),
            (b"web/a/10.0.0.1:80", b"", |e| *e == EntryError::KeyShape),
            (b"/10.0.0.1:80", b"", |e| {
                matches!(e, EntryError::Service(_))
            }),
            (b"w b/10.0.0.1:80", b"", |e| {
                matches!(e, EntryError::Service(_))
            }),
            (b"web/10.0.0.1", b"", |e| {
                matches!(e, EntryError::Address(_))
            }),
            (b"web/fd00::1:80", b"", |e| {
                matches!(e, EntryError::Address(_))
            }),
            (b"web/10.0.0.1:0", b"", |e| {
                matches!(e, EntryError::Address(_))
            }),
            (b"web/0.0.0.0:80", b"", |e| {
                matches!(e, EntryError::Address(_))
            }),
            (b"web/10.0.0.1:80", b"{", |e| {
                matches!(e, EntryError::Value(_))
            }),
            (b"web/10.0.0.1:80", b"3", |e| {
                matches!(e, EntryError::Value(_))
            }),
            (b"web/10.0.0.1:80", br#"{"weight":-1}"#, |e| {
                matches!(e, EntryError::Value(_))
            }),
            (b"web/10.0.0.1:80", br#"{"metadata":{"k":1}}"#, |e| {
                matches!(e, EntryError::Value(_))
            }),
            (b"web/10.0.0.1:80", br#"{"weight":70000}"#, |e| {
                *e == EntryError::Weight(70000)
            }),
            (b"web/\xff:80", b"", |e| *e == EntryError::KeyShape),
        ];
        for (key, value, want) in bad {
            let got = parse_entry(key, value);
            assert!(
                matches!(&got, Err(e) if want(e)),
                "{:?} {:?} -> {got:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn prefix_range_end_follows_etcd() {
        assert_eq!(prefix_range_end(b"/lb/"), b"/lb0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
        assert_eq!(range_key(b""), b"\0");
    }

    // Lines as etcd 3.4.23's gateway writes them.
    #[test]
    fn watch_lines_decode() {
        let created = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"2","raft_term":"2"},"created":true}}"#;
        let WatchMessage::Result(r) = parse_watch_line(created).unwrap() else {
            panic!()
        };
        assert!(r.created && !r.canceled && r.events.is_empty());

        let events = br#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2xiL3dlYi8xMC4wLjAuMjo4MA==","create_revision":"3","mod_revision":"3","version":"1","value":"eyJ3ZWlnaHQiOjN9"}},{"type":"DELETE","kv":{"key":"L2xiL3dlYi8xMC4wLjAuMTo4MA==","mod_revision":"4"}}]}}"#;
        let WatchMessage::Result(r) = parse_watch_line(events).unwrap() else {
            panic!()
        };
        assert_eq!(r.events.len(), 2);
        assert_eq!(r.events[0].kind, EventKind::Put);
        assert_eq!(
            r.events[0].kv.decode().unwrap(),
            (b"/lb/web/10.0.0.2:80".to_vec(), br#"{"weight":3}"#.to_vec())
        );
        assert_eq!(r.events[1].kind, EventKind::Delete);
        assert_eq!(r.events[1].kv.decode().unwrap().1, b"");

        let compacted = br#"{"result":{"header":{"cluster_id":"3","raft_term":"2"},"canceled":true,"compact_revision":"5"}}"#;
        let WatchMessage::Result(r) = parse_watch_line(compacted).unwrap() else {
            panic!()
        };
        assert!(r.canceled);
        assert_eq!(r.compact_revision, 5);

        let error = br#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#;
        assert!(matches!(
            parse_watch_line(error).unwrap(),
            WatchMessage::Error { code: 14, ref message } if message == "transport is closing"
        ));
        assert!(parse_watch_line(b"{}").is_err());
        assert!(parse_watch_line(b"not json").is_err());
    }

    #[test]
    fn snapshot_skips_malformed_and_replaces_on_put() {
        let mut s = Snapshot::default();
        s.put("t", b"/lb/", b"/lb/web/10.0.0.1:80".to_vec(), b"");
        s.put("t", b"/lb/", b"/lb/web/bad".to_vec(), b"");
        assert_eq!(s.endpoints(), vec![ep("web", "10.0.0.1", 80, 1)]);
        assert_eq!((s.valid(), s.skipped(), s.take_new_skips()), (1, 1, 1));
        // A valid key overwritten with a bad value leaves the set; deleting the bad key
        // clears the skip.
        s.put("t", b"/lb/", b"/lb/web/10.0.0.1:80".to_vec(), b"{");
        assert!(s.endpoints().is_empty());
        s.delete(b"/lb/web/bad");
        s.delete(b"/lb/web/10.0.0.1:80");
        assert_eq!((s.valid(), s.skipped()), (0, 0));
    }

    /// A stand-in for the gateway that cancels the first watch as compacted, the one case a
    /// real etcd cannot be made to produce on demand (a caught-up watch is never cancelled by
    /// compaction; only one created below the compacted revision is). The JSON is etcd 3.4's.
    mod compacted_watch {
        use super::*;
        use std::sync::Mutex;
        use tokio::{
            io::{AsyncReadExt, AsyncWriteExt},
            net::{TcpListener, TcpStream},
        };

        fn kv(key: &str) -> String {
            format!(
                r#"{{"key":"{}","mod_revision":"3","version":"1"}}"#,
                BASE64.encode(key)
            )
        }

        /// Reads one request; returns its path and body.
        async fn read_request(conn: &mut TcpStream) -> Option<(String, serde_json::Value)> {
            let mut buf = Vec::new();
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let path = head.split_whitespace().nth(1)?.to_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = serde_json::from_slice(&buf[head_end..head_end + length]).ok()?;
            Some((path, body))
        }

        async fn serve(conn: TcpStream, starts: Arc<Mutex<Vec<String>>>, ranges: Arc<AtomicU64>) {
            let mut conn = conn;
            while let Some((path, body)) = read_request(&mut conn).await {
                let header = |rev: u32| {
                    format!(
                        r#"{{"cluster_id":"1","member_id":"2","revision":"{rev}","raft_term":"2"}}"#
                    )
                };
                if path == "/v3/kv/range" {
                    let body = if ranges.fetch_add(1, Ordering::SeqCst) == 0 {
                        format!(
                            r#"{{"header":{},"kvs":[{}],"count":"1"}}"#,
                            header(5),
                            kv("/lb/web/10.0.0.1:80")
                        )
                    } else {
                        format!(
                            r#"{{"header":{},"kvs":[{}],"count":"1"}}"#,
                            header(9),
                            kv("/lb/web/10.0.0.2:80")
                        )
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    conn.write_all(resp.as_bytes()).await.unwrap();
                    continue;
                }
                assert_eq!(path, "/v3/watch");
                let start = body["create_request"]["start_revision"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let first = {
                    let mut s = starts.lock().unwrap();
                    s.push(start);
                    s.len() == 1
                };
                let mut lines =
                    format!(r#"{{"result":{{"header":{},"created":true}}}}"#, header(9)) + "\n";
                if first {
                    // etcd keeps the stream open after cancelling; the source must not wait on it.
                    lines += r#"{"result":{"header":{"cluster_id":"1","member_id":"2","raft_term":"2"},"canceled":true,"compact_revision":"8"}}"#;
                } else {
                    lines += &format!(
                        r#"{{"result":{{"header":{},"events":[{{"kv":{}}}]}}}}"#,
                        header(10),
                        kv("/lb/web/10.0.0.3:80")
                    );
                }
                lines += "\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{lines}"
                );
                conn.write_all(resp.as_bytes()).await.unwrap();
                // Hold the stream open until the client goes away.
                let mut sink = [0u8; 64];
                while conn.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                return;
            }
        }

        #[tokio::test]
        async fn compacted_watch_reads_again_and_watches_from_the_new_revision() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let starts = Arc::new(Mutex::new(Vec::new()));
            let ranges = Arc::new(AtomicU64::new(0));
            let server = {
                let (starts, ranges) = (Arc::clone(&starts), Arc::clone(&ranges));
                tokio::spawn(async move {
                    loop {
                        let (conn, _) = listener.accept().await.unwrap();
                        tokio::spawn(serve(conn, Arc::clone(&starts), Arc::clone(&ranges)));
                    }
                })
            };
            let watcher = EtcdWatcher::new(&EtcdSource {
                name: "etcd".into(),
                endpoints: vec![url],
                prefix: "/lb/".into(),
            })
            .unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(watcher.run(SourceHandle::new("etcd", tx)));
            let mut sets = Vec::new();
            while sets.len() < 3 {
                let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("a message within 10 s")
                    .unwrap();
                match msg.update {
                    crate::registry::SourceUpdate::Endpoints(set) => sets.push(set),
                    crate::registry::SourceUpdate::Error(e) => panic!("unexpected error: {e}"),
                }
            }
            assert_eq!(
                sets,
                vec![
                    vec![ep("web", "10.0.0.1", 80, 1)],
                    vec![ep("web", "10.0.0.2", 80, 1)],
                    vec![ep("web", "10.0.0.2", 80, 1), ep("web", "10.0.0.3", 80, 1)],
                ]
            );
            assert_eq!(*starts.lock().unwrap(), vec!["6", "10"]);
            assert_eq!(ranges.load(Ordering::SeqCst), 2);
            drop(rx);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("returns once the agent stops listening")
                .unwrap();
            server.abort();
        }
    }

    #[test]
    fn constructor_checks_endpoints() {
        let cfg = |endpoints: &[&str]| EtcdSource {
            name: "etcd".into(),
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            prefix: "/lb/".into(),
        };
        assert!(matches!(
            EtcdWatcher::new(&cfg(&[])),
            Err(EtcdError::NoEndpoints)
        ));
        assert!(matches!(
            EtcdWatcher::new(&cfg(&["127.0.0.1:2379"])),
            Err(EtcdError::BadEndpoint(_))
        ));
        let w = EtcdWatcher::new(&cfg(&["http://127.0.0.1:2379/"])).unwrap();
        assert_eq!(w.endpoints, vec!["http://127.0.0.1:2379"]);
    }
}
