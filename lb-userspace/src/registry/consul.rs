//! Consul source: backends from Consul's health API, kept current with blocking queries.
//!
//! # What it reads
//!
//! For each watched service name, `GET /v1/health/service/<name>?passing=1` (only instances
//! whose checks all pass), plus `dc=<datacenter>` and the `X-Consul-Token` header (read from
//! `token_file` before every request, so a rotated token is picked up) when configured. Each
//! entry becomes one [`Endpoint`] of the config service with the same name:
//!
//! - address: `Service.Address`, or `Node.Address` when that is empty (Consul's own rule);
//!   an entry whose address is a host name, not an IP, is skipped with a warning;
//! - port: `Service.Port` (an entry with port 0 is skipped);
//! - weight: `Service.Weights.Passing` (default 1, at most [`MAX_WEIGHT`]);
//! - metadata: `Service.Meta` as is, plus `consul.node`, `consul.service_id` and `consul.tags`
//!   (comma-separated).
//!
//! The source publishes the union of all watched services as one complete set, first once
//! every service has answered (so a restarted source whose first query for one service fails
//! does not drop that service's backends), then after every change.
//!
//! # Blocking queries
//!
//! One loop per service follows Consul's documented rules for blocking queries:
//! `index=<X-Consul-Index of the previous reply>&wait=5m`, with a client timeout above
//! `wait + wait/16` (Consul adds up to `wait/16` of jitter). A reply is no promise of a change,
//! so a set is passed on only when it differs. The index is reset to 0 when it goes backwards
//! (a server restored from a snapshot, a different server) and is never below 1 after the
//! first reply; a query is never started less than [`MIN_QUERY_INTERVAL`] after the previous
//! one, so a loop that keeps returning at once cannot hammer the agent. After an error the
//! loop reports it, waits with [`Backoff`], and starts again with a non-blocking read (index
//! 0), so a server that restarted with lower indexes is not waited on for a whole `wait`.
//!
//! # Client
//!
//! Plain `reqwest`: HashiCorp publishes no official Rust client, and the community crates
//! are thin wrappers on their own release pace; this source needs one GET and one header.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Deserializer};
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tracing::{debug, warn};

use super::{Backoff, Endpoint, Source, SourceHandle, per_service::publish_union};
use crate::config::{ConsulSource, MAX_WEIGHT};

/// How long Consul may hold a blocking query open (its default; Consul caps it at 10 min).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The least time between the starts of two queries for one service.
pub const MIN_QUERY_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait for a TCP (and TLS) connection to the Consul agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Added to `wait + wait/16` for the client-side deadline of one query.
const REQUEST_SLACK: Duration = Duration::from_secs(10);
/// How much of an error response body goes into the error message.
const MAX_ERROR_BODY: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("consul address `{0}` is not an http:// or https:// URL")]
    BadAddress(String),
    #[error("no consul services to watch")]
    NoServices,
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("reading the ACL token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: reply has no valid X-Consul-Index header")]
    MissingIndex { url: String },
    #[error("{url}: reply is not a list of health entries: {source}")]
    Body {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The Consul source: runs as a [`Source`].
#[derive(Debug)]
pub struct ConsulWatcher {
    services: Vec<String>,
    query: Arc<Query>,
    backoff: Backoff,
    min_interval: Duration,
}

/// What every per-service loop needs to build and send its query.
#[derive(Debug)]
struct Query {
    base: reqwest::Url,
    datacenter: Option<String>,
    token_file: Option<PathBuf>,
    wait: Duration,
    client: reqwest::Client,
}

impl ConsulWatcher {
    pub fn new(config: &ConsulSource) -> Result<Self, ConsulError> {
        let bad = || ConsulError::BadAddress(config.address.clone());
        let base = reqwest::Url::parse(&config.address).map_err(|_| bad())?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad());
        }
        if config.services.is_empty() {
            return Err(ConsulError::NoServices);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Lets the kernel notice an agent that vanished during a 5-minute blocking query.
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(ConsulError::Client)?;
        let mut services = config.services.clone();
        services.sort();
        services.dedup();
        Ok(Self {
            services,
            query: Arc::new(Query {
                base,
                datacenter: config.datacenter.clone(),
                token_file: config.token_file.clone(),
                wait: DEFAULT_WAIT,
                client,
            }),
            backoff: Backoff::default(),
            min_interval: MIN_QUERY_INTERVAL,
        })
    }

    /// Replaces the delays after an error (default: 200 ms doubling to 30 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Replaces the blocking-query `wait` (default [`DEFAULT_WAIT`]) and the least time
    /// between two queries for one service (default [`MIN_QUERY_INTERVAL`]).
    pub fn with_timing(mut self, wait: Duration, min_interval: Duration) -> Self {
        Arc::get_mut(&mut self.query)
            .expect("the query is shared only once the source runs")
            .wait = wait;
        self.min_interval = min_interval;
        self
    }

    async fn run_loop(self, out: SourceHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        // Dropping the set (when this future returns or is aborted) stops every loop.
        let mut loops = JoinSet::new();
        for service in &self.services {
            let service_loop = ServiceLoop {
                service: service.clone(),
                query: Arc::clone(&self.query),
                backoff: self.backoff.clone(),
                min_interval: self.min_interval,
            };
            loops.spawn(service_loop.run(tx.clone(), out.clone()));
        }
        drop(tx);
        publish_union(&self.services, rx, &out).await;
    }
}

impl Source for ConsulWatcher {
    fn run(self, out: SourceHandle) -> impl Future<Output = ()> + Send + 'static {
        self.run_loop(out)
    }
}

/// The blocking-query loop of one Consul service.
struct ServiceLoop {
    service: String,
    query: Arc<Query>,
    backoff: Backoff,
    min_interval: Duration,
}

impl ServiceLoop {
    async fn run(
        mut self,
        sets: mpsc::UnboundedSender<(String, Vec<Endpoint>)>,
        out: SourceHandle,
    ) {
        let mut index = 0;
        let mut last: Option<Vec<Endpoint>> = None;
        while !out.is_closed() {
            let started = Instant::now();
            match self.query.fetch(&self.service, index).await {
                Ok(reply) => {
                    self.backoff.reset();
                    index = next_index(index, reply.index);
                    if last.as_ref() != Some(&reply.endpoints) {
                        debug!(service = %self.service, index, "consul set changed");
                        last = Some(reply.endpoints.clone());
                        if sets.send((self.service.clone(), reply.endpoints)).is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep_until(started + self.min_interval).await;
                }
                Err(e) => {
                    warn!(source = out.name(), service = %self.service, "consul: {e}");
                    out.error(format!("consul service `{}`: {e}", self.service));
                    // Start over with a plain read: the server may have restarted with lower
                    // indexes, and a blocking query on a stale index would wait a whole `wait`.
                    index = 0;
                    if !out.sleep_unless_closed(self.backoff.next_delay()).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Consul's rules for the next blocking index: reset to 0 when the index went backwards,
/// and never below 1 after a reply.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

/// One successful health query.
struct Reply {
    index: u64,
    endpoints: Vec<Endpoint>,
}

impl Query {
    fn url(&self, service: &str, index: u64) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in ConsulWatcher::new")
            .pop_if_empty()
            .extend(["v1", "health", "service", service]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("passing", "1");
            if index > 0 {
                q.append_pair("index", &index.to_string());
                q.append_pair("wait", &go_duration(self.wait));
            }
            if let Some(dc) = &self.datacenter {
                q.append_pair("dc", dc);
            }
        }
        url
    }

    async fn fetch(&self, service: &str, index: u64) -> Result<Reply, ConsulError> {
        let url = self.url(service, index);
        let shown = url.to_string();
        let http = |source| ConsulError::Http {
            url: shown.clone(),
            source,
        };
        let mut request = self
            .client
            .get(url)
            .timeout(self.wait + self.wait / 16 + REQUEST_SLACK);
        if let Some(token) = self.token()? {
            request = request.header("X-Consul-Token", token);
        }
        let response = request.send().await.map_err(http)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ConsulError::Status {
                url: shown,
                status: status.as_u16(),
                body: truncate(body.trim(), MAX_ERROR_BODY),
            });
        }
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ConsulError::MissingIndex { url: shown.clone() })?;
        let body = response.bytes().await.map_err(http)?;
        let entries: Vec<HealthEntry> =
            serde_json::from_slice(&body).map_err(|source| ConsulError::Body {
                url: shown.clone(),
                source,
            })?;
        let endpoints = entries
            .iter()
            .filter_map(|e| match e.endpoint(service) {
                Ok(ep) => Some(ep),
                Err(why) => {
                    warn!(service, instance = %e.service.id, "consul instance skipped: {why}");
                    None
                }
            })
            .collect();
        Ok(Reply { index, endpoints })
    }

    /// The ACL token, read afresh so a rotated file is picked up; empty means none.
    fn token(&self) -> Result<Option<String>, ConsulError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token = read_token(path)?;
        Ok((!token.is_empty()).then_some(token))
    }
}

fn read_token(path: &Path) -> Result<String, ConsulError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| ConsulError::TokenFile {
            path: path.to_owned(),
            source,
        })
}

/// One element of `/v1/health/service/:service` (only the fields used).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    tags: Vec<String>,
    #[serde(default)]
    address: String,
    #[serde(default, deserialize_with = "null_as_default")]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default = "one")]
    passing: u32,
}

fn one() -> u32 {
    1
}

/// Go marshals a nil slice or map as `null`.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl HealthEntry {
    fn endpoint(&self, service: &str) -> Result<Endpoint, String> {
        let address = if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        };
        let addr: IpAddr = address
            .parse()
            .map_err(|_| format!("address `{address}` is not an IP address"))?;
        if self.service.port == 0 {
            return Err("port is 0".into());
        }
        let weight = self.service.weights.as_ref().map_or(1, |w| w.passing);
        let mut metadata = self.service.meta.clone();
        metadata.insert("consul.node".into(), self.node.node.clone());
        metadata.insert("consul.service_id".into(), self.service.id.clone());
        if !self.service.tags.is_empty() {
            metadata.insert("consul.tags".into(), self.service.tags.join(","));
        }
        Ok(Endpoint {
            service: service.to_owned(),
            addr,
            port: self.service.port,
            weight: weight.min(MAX_WEIGHT),
            metadata,
        })
    }
}

/// A duration as Go's `time.ParseDuration` reads it (`5m`, `30s`, `250ms`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
pub(super) mod tests;
