//! Access log: one line per request, text or JSON, written by a background task through a
//! bounded channel so the request path never waits on I/O (a full channel drops the line and
//! counts it in `lb_gateway_access_log_dropped_total`).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{io::AsyncWriteExt, sync::mpsc, task::JoinHandle};

use super::metrics::GatewayMetrics;

/// Lines buffered before new ones are dropped.
pub const DEFAULT_CAPACITY: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    /// Appended to (created if missing).
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct AccessLogSettings {
    pub format: LogFormat,
    pub target: LogTarget,
    /// Channel capacity in lines.
    pub capacity: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("access log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub route: Option<Arc<str>>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Until the response body ended (or the client went away).
    pub duration_ms: f64,
    /// Until the upstream's response head arrived; `None` when answered locally.
    pub upstream_ms: Option<f64>,
    pub backend: Option<SocketAddr>,
    pub request_id: String,
    /// Response body bytes sent.
    pub bytes: u64,
    pub peer: SocketAddr,
}

impl AccessRecord {
    pub fn text(&self) -> String {
        let dash = || "-".to_owned();
        format!(
            "{peer} {route} \"{method} {path}\" {status} {bytes} {dur:.3}ms up={up} backend={backend} rid={rid}",
            peer = self.peer,
            route = self.route.as_deref().unwrap_or("-"),
            method = self.method,
            path = self.path.escape_debug(),
            status = self.status,
            bytes = self.bytes,
            dur = self.duration_ms,
            up = self
                .upstream_ms
                .map(|u| format!("{u:.3}ms"))
                .unwrap_or_else(dash),
            backend = self.backend.map(|b| b.to_string()).unwrap_or_else(dash),
            rid = self.request_id,
        )
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "peer": self.peer.to_string(),
            "route": self.route.as_deref(),
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "bytes": self.bytes,
            "duration_ms": self.duration_ms,
            "upstream_ms": self.upstream_ms,
            "backend": self.backend.map(|b| b.to_string()),
            "request_id": self.request_id,
        })
        .to_string()
    }
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Handle to the access log; `Clone` and cheap. [`AccessLog::disabled`] is the default.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    inner: Option<(mpsc::Sender<String>, LogFormat)>,
}

impl AccessLog {
    /// No logging (the default).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Open the target and start the writer task (ends when every handle is dropped).
    pub async fn start(
        settings: AccessLogSettings,
    ) -> Result<(Self, JoinHandle<()>), AccessLogError> {
        let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match &settings.target {
            LogTarget::Stdout => Box::new(tokio::io::stdout()),
            LogTarget::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|source| AccessLogError::Open {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        let (tx, mut rx) = mpsc::channel::<String>(settings.capacity.max(1));
        let task = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            while let Some(line) = rx.recv().await {
                buf.clear();
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                // Batch what is already queued into one write.
                while buf.len() < 60 * 1024 {
                    match rx.try_recv() {
                        Ok(l) => {
                            buf.extend_from_slice(l.as_bytes());
                            buf.push(b'\n');
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = out.write_all(&buf).await {
                    tracing::warn!("access log write failed: {e}");
                }
                let _ = out.flush().await;
            }
        });
        Ok((
            Self {
                inner: Some((tx, settings.format)),
            },
            task,
        ))
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queue `rec`; never waits. A full queue drops the line and counts it.
    pub fn log(&self, rec: &AccessRecord, metrics: &GatewayMetrics) {
        let Some((tx, format)) = &self.inner else {
            return;
        };
        let line = match format {
            LogFormat::Text => rec.text(),
            LogFormat::Json => rec.json(),
        };
        if tx.try_send(line).is_err() {
            metrics.access_log_dropped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> AccessRecord {
        AccessRecord {
            route: Some("api".into()),
            method: "GET".into(),
            path: "/v1/x?y=1".into(),
            status: 200,
            duration_ms: 1.5,
            upstream_ms: Some(1.0),
            backend: Some("127.0.0.1:8080".parse().unwrap()),
            request_id: "abc".into(),
            bytes: 12,
            peer: "192.0.2.1:4000".parse().unwrap(),
        }
    }

    #[test]
    fn formats() {
        assert_eq!(
            rec().text(),
            "192.0.2.1:4000 api \"GET /v1/x?y=1\" 200 12 1.500ms up=1.000ms backend=127.0.0.1:8080 rid=abc"
        );
        let v: serde_json::Value = serde_json::from_str(&rec().json()).unwrap();
        assert_eq!(v["route"], "api");
        assert_eq!(v["status"], 200);
        assert_eq!(v["backend"], "127.0.0.1:8080");
    }

    #[tokio::test]
    async fn writes_file_and_drops_when_full() {
        let dir = std::env::temp_dir().join(format!("lb-gw-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let m = GatewayMetrics::new();
        let (log, task) = AccessLog::start(AccessLogSettings {
            format: LogFormat::Json,
            target: LogTarget::File(path.clone()),
            capacity: 2,
        })
        .await
        .unwrap();
        // The writer task cannot run between these (current-thread runtime): 2 fit, 3 drop.
        for _ in 0..5 {
            log.log(&rec(), &m);
        }
        drop(log);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let mut reg = prometheus_client::registry::Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("lb_gateway_access_log_dropped_total 3"),
            "{out}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
