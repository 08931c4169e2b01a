//! Pooled connections to backends: one hyper-util `Client` for HTTP/1.1 and one for HTTP/2
//! prior knowledge, both keyed by the backend's authority.

use std::{error::Error as _, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, Uri, Version, uri::PathAndQuery};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};

use super::{
    connect::BackendConnector,
    metrics::UpstreamErrorKind,
    resilience::{Guards, breaker::Overflow},
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type sent to backends and to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Connect timeout default (like Envoy's 5 s; nginx uses 60 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time from sending the request until the response head arrives (nginx `proxy_read_timeout`).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled connections are closed after this (below common backend keep-alive of 60-75 s,
/// so the proxy, not the backend, closes first and races are rare).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Longest silence inside a response body before it is cut (nginx `proxy_read_timeout`).
/// gRPC streams that may be silent longer need a larger value or `None`.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per backend.
pub const DEFAULT_MAX_IDLE_PER_BACKEND: usize = 64;

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
    /// See [`DEFAULT_BODY_IDLE_TIMEOUT`]; `None` = no limit.
    pub body_idle_timeout: Option<Duration>,
    /// Local ports for backend connections (see `connect`); `None`: the kernel's range.
    pub local_ports: Option<(u16, u16)>,
    /// Circuit breakers limiting connections per upstream service.
    pub guards: Option<Arc<Guards>>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_idle_per_backend: DEFAULT_MAX_IDLE_PER_BACKEND,
            body_idle_timeout: Some(DEFAULT_BODY_IDLE_TIMEOUT),
            local_ports: None,
            guards: None,
        }
    }
}

/// A failed exchange with a backend.
#[derive(Debug, thiserror::Error)]
#[error("upstream {backend}: {kind:?}: {source}")]
pub struct UpstreamError {
    pub backend: SocketAddr,
    pub kind: UpstreamErrorKind,
    /// The service's circuit breaker refused a connection.
    pub overflow: Option<Overflow>,
    #[source]
    pub source: BoxError,
}

impl UpstreamError {
    /// 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self.kind {
            UpstreamErrorKind::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// The backend connection pools.
pub struct Upstreams {
    h1: Client<BackendConnector, ProxyBody>,
    h2: Client<BackendConnector, ProxyBody>,
    response_timeout: Duration,
    body_idle_timeout: Option<Duration>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

impl Upstreams {
    pub fn new(settings: &UpstreamSettings) -> Self {
        // The request carries the backend as an http://ip:port authority; nothing else is
        // dialled.
        let conn = BackendConnector {
            connect_timeout: settings.connect_timeout,
            local_ports: settings.local_ports,
            guards: settings.guards.clone(),
        };
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(settings.idle_timeout)
                .pool_max_idle_per_host(settings.max_idle_per_backend)
                // The client's Host header is forwarded as is.
                .set_host(false);
            b
        };
        Self {
            h1: builder().build(conn.clone()),
            h2: builder().http2_only(true).build(conn),
            response_timeout: settings.response_timeout,
            body_idle_timeout: settings.body_idle_timeout,
        }
    }

    pub fn body_idle_timeout(&self) -> Option<Duration> {
        self.body_idle_timeout
    }

    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Send `req` to `backend`: its URI becomes `http://<backend><path?query>`, its version
    /// HTTP/2 when `http2` else HTTP/1.1. Resolves when the response head arrives.
    pub async fn send(
        &self,
        backend: SocketAddr,
        http2: bool,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send_within(backend, http2, req, self.response_timeout)
            .await
    }

    /// [`Self::send`] with a response head expected within `timeout`.
    pub async fn send_within(
        &self,
        backend: SocketAddr,
        http2: bool,
        mut req: Request<ProxyBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(backend.to_string())
            .path_and_query(pq)
            .build()
            .map_err(|e| UpstreamError {
                backend,
                kind: UpstreamErrorKind::Connect,
                overflow: None,
                source: e.into(),
            })?;
        let client = if http2 {
            *req.version_mut() = Version::HTTP_2;
            &self.h2
        } else {
            *req.version_mut() = Version::HTTP_11;
            &self.h1
        };
        match tokio::time::timeout(timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError {
                backend,
                kind: UpstreamErrorKind::Timeout,
                overflow: None,
                source: "no response head within the response timeout".into(),
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(UpstreamError {
                backend,
                kind: classify(&e),
                overflow: overflow(&e),
                source: e.into(),
            }),
        }
    }
}

/// The breaker's refusal, if that is why the connect failed.
fn overflow(e: &hyper_util::client::legacy::Error) -> Option<Overflow> {
    let mut src = e.source();
    while let Some(s) = src {
        // An io::Error's source skips the error it wraps: look inside.
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|e| e.downcast_ref::<Overflow>());
        if let Some(o) = inner.or_else(|| s.downcast_ref::<Overflow>()) {
            return Some(*o);
        }
        src = s.source();
    }
    None
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamErrorKind {
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return UpstreamErrorKind::Timeout;
        }
        src = s.source();
    }
    if e.is_connect() {
        UpstreamErrorKind::Connect
    } else {
        UpstreamErrorKind::Reset
    }
}
