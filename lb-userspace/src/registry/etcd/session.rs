//! The session loop: range the prefix, publish, watch from the next revision, publish after
//! every batch; on failure report, back off and go to the next endpoint.

use std::time::{Duration, Instant};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::{
    EtcdError, EtcdWatcher, MAX_LINE, PROBE_TIMEOUT, REQUEST_TIMEOUT,
    keys::{Snapshot, prefix_range_end, range_key},
    wire::{EventKind, RangeResponse, WatchMessage, parse_watch_line},
};
use crate::registry::{Endpoint, SourceHandle};
use std::sync::atomic::Ordering;

impl EtcdWatcher {
    pub(super) async fn run_loop(mut self, out: SourceHandle) {
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
            if !out.sleep_unless_closed(delay).await {
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
            // `next()` is cancel-safe: giving up on it to stop or to probe loses no data.
            let quiet_left = self.idle_probe.saturating_sub(last_message.elapsed());
            let next = tokio::select! {
                () = out.closed() => return WatchEnd::Closed,
                next = tokio::time::timeout(quiet_left, stream.next()) => next,
            };
            let chunk = match next {
                Err(_) => {
                    if let Err(e) = self.probe(url).await {
                        return WatchEnd::Failed(e);
                    }
                    debug!(source = %self.name, %url, "etcd: quiet watch, server answers");
                    last_message = Instant::now();
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

pub(super) enum SessionEnd {
    Closed,
    Failed(EtcdError),
}

pub(super) enum WatchEnd {
    Closed,
    Compacted(i64),
    Failed(EtcdError),
}

pub(super) enum LineOutcome {
    Created,
    Nothing,
    Changed,
    Compacted(i64),
}

fn http(url: &str, source: reqwest::Error) -> EtcdError {
    EtcdError::Http {
        url: url.to_owned(),
        source,
    }
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
