//! Fixtures: a recording backend (HTTP/1.1 + h2c, WebSocket echo, gRPC-shaped trailers), a
//! one-backend `Decide`, the proxy on an ephemeral port, and small clients.

mod roundtrip;
mod smuggling;
mod tls_certs;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    access_log::AccessLog,
    metrics::GatewayMetrics,
    pipeline::{ConnInfo, Decide, Decision, Forward},
    server::{Observers, ServeError, ServerSettings, serve},
    tls::Tls,
    upstream::{UpstreamSettings, Upstreams},
};

/// Upper bound for anything a test waits on.
pub(super) const LIMIT: Duration = Duration::from_secs(5);

/// A request as the backend saw it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub method: String,
    pub path_query: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type BackendBody = UnsyncBoxBody<Bytes, Infallible>;

/// A backend on 127.0.0.1 recording every request and counting TCP connections.
pub(super) struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub conns: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (s, c, st) = (seen.clone(), conns.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = st.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| backend_handle(s.clone(), req));
                    let b = auto::Builder::new(TokioExecutor::new());
                    let conn = b.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = st.cancelled() => {}
                    }
                });
            }
        });
        Backend {
            addr,
            seen,
            conns,
            stop,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn full_body(b: &'static str) -> BackendBody {
    Full::new(Bytes::from_static(b.as_bytes())).boxed_unsync()
}

async fn backend_handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<BackendBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let upgrade = (path == "/ws").then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path_query: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    });
    if let Some(up) = upgrade {
        tokio::spawn(async move {
            if let Ok(u) = up.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(u));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(full_body(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return Ok(r);
    }
    match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok(Response::new(full_body("slow done")))
        }
        "/stall" => {
            // One chunk, then nothing, forever.
            let first =
                futures_util::stream::iter(vec![Ok(Frame::data(Bytes::from_static(b"first")))]);
            let stalled = futures_util::StreamExt::chain(first, futures_util::stream::pending());
            Ok(Response::new(StreamBody::new(stalled).boxed_unsync()))
        }
        "/grpc" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("fine"));
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01a"))),
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01b"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            Ok(r)
        }
        _ => {
            let mut r = Response::new(full_body("ok"));
            // A hop-by-hop header the proxy must not pass on.
            r.headers_mut()
                .insert("keep-alive", HeaderValue::from_static("timeout=5"));
            Ok(r)
        }
    }
}

/// Routes everything to one backend; `/deny` is answered locally with 403; `/rewrite` is sent
/// upstream as `/rewritten?by=decide`.
pub(super) struct One {
    pub backend: SocketAddr,
    pub http2: bool,
    pub calls: AtomicUsize,
    /// The connection facts of the last request.
    pub last_conn: Arc<Mutex<Option<ConnInfo>>>,
}

impl One {
    pub fn new(backend: SocketAddr, http2: bool) -> Self {
        Self {
            backend,
            http2,
            calls: AtomicUsize::new(0),
            last_conn: Arc::default(),
        }
    }
}

impl Decide for One {
    fn decide(
        &self,
        conn: &ConnInfo,
        req: &mut http::request::Parts,
    ) -> impl Future<Output = Decision> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_conn.lock().unwrap() = Some(conn.clone());
        let d = match req.uri.path() {
            "/deny" => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"no")));
                *r.status_mut() = StatusCode::FORBIDDEN;
                Decision::Respond {
                    route: Some("r".into()),
                    response: r,
                }
            }
            p => {
                if p == "/rewrite" {
                    req.uri = "/rewritten?by=decide".parse().unwrap();
                }
                Decision::Forward(Forward {
                    route: "r".into(),
                    service: "svc".into(),
                    backend: self.backend,
                    http2: self.http2,
                    response_headers: vec![(
                        header::HeaderName::from_static("x-ratelimit-remaining"),
                        HeaderValue::from_static("9"),
                    )],
                    upstream: None,
                    failure: None,
                })
            }
        };
        std::future::ready(d)
    }
}

/// The proxy on 127.0.0.1:0; stops when dropped.
pub(super) struct Proxy {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: Option<JoinHandle<Result<(), ServeError>>>,
    pub metrics: Arc<GatewayMetrics>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(super) async fn start_proxy(
    decide: One,
    tls: Option<Arc<Tls>>,
    settings: ServerSettings,
    upstream: UpstreamSettings,
) -> Proxy {
    start_proxy_logging(decide, tls, settings, upstream, AccessLog::disabled()).await
}

pub(super) async fn start_proxy_logging(
    decide: One,
    tls: Option<Arc<Tls>>,
    settings: ServerSettings,
    upstream: UpstreamSettings,
    access_log: AccessLog,
) -> Proxy {
    // Through std, as the integrator will (sockmap-registered listener).
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = super::server::listener_from_std(std_listener).unwrap();
    let metrics = Arc::new(GatewayMetrics::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        tls,
        Arc::new(decide),
        Arc::new(Upstreams::new(&upstream)),
        Observers {
            metrics: metrics.clone(),
            access_log,
        },
        settings,
        stop.clone(),
    ));
    Proxy {
        addr,
        stop,
        task: Some(task),
        metrics,
    }
}

pub(super) async fn plain_proxy(backend: &Backend, http2: bool) -> Proxy {
    start_proxy(
        One::new(backend.addr, http2),
        None,
        ServerSettings::default(),
        UpstreamSettings::default(),
    )
    .await
}

pub(super) type Req = Request<Full<Bytes>>;

pub(super) fn get(path: &str) -> Req {
    Request::builder()
        .uri(path)
        .header(header::HOST, "api.test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One HTTP/1.1 client connection (keep-alive).
pub(super) async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

/// One HTTP/2 prior-knowledge (h2c) client connection.
pub(super) async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Body as bytes, bounded in time.
pub(super) async fn body_of(
    r: Response<Incoming>,
) -> (http::response::Parts, Bytes, Option<HeaderMap>) {
    let (parts, body) = r.into_parts();
    let c = tokio::time::timeout(LIMIT, body.collect())
        .await
        .unwrap()
        .unwrap();
    let t = c.trailers().cloned();
    (parts, c.to_bytes(), t)
}

/// Write raw bytes, read until the proxy closes: (response text, closed within LIMIT).
pub(super) async fn raw(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(LIMIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status code of the first response in `text`.
pub(super) fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
