//! The listener: accept loop, optional TLS, per-connection HTTP/1.1 + HTTP/2 (hyper-util auto:
//! prior-knowledge h2c on plain TCP, ALPN on TLS), header timeouts and limits, graceful stop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio_rustls::TlsAcceptor;

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    access_log::AccessLog,
    framing::{Guarded, SmuggleFlag},
    handler::{Shared, handle},
    metrics::GatewayMetrics,
    pipeline::{ConnInfo, Decide},
    tls::Tls,
    upstream::Upstreams,
};

/// Time to receive a request's full header block (slowloris guard) and a chunked body's first
/// chunk. hyper starts it as soon as it waits for a request head, so on HTTP/1.1 it is also
/// the keep-alive idle timeout. 30 s is hyper's own default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request header block (HTTP/1.1 read buffer; HTTP/2 header list size). hyper
/// answers 431 beyond it on HTTP/1.1.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header lines in one HTTP/1.1 request (hyper answers 431 beyond).
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On stop, in-flight requests get this long before connections are closed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 PING interval for idle-connection liveness (nginx and Envoy use similar values).
pub const DEFAULT_H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// The listener's knobs; [`Default`] gives the documented constants.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub tls_handshake_timeout: Duration,
    pub drain_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_keepalive: Option<Duration>,
    /// A request without a valid `traceparent` starts a sampled trace.
    pub sample_new_traces: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            h2_keepalive: Some(DEFAULT_H2_KEEPALIVE),
            sample_new_traces: true,
        }
    }
}

/// Where the pipeline reports.
#[derive(Debug, Clone)]
pub struct Observers {
    pub metrics: Arc<GatewayMetrics>,
    pub access_log: AccessLog,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gateway listener: {0}")]
    Listener(std::io::Error),
}

/// A listener the integrator created itself (e.g. registered in a BPF sockmap), made usable
/// by [`serve`]: set non-blocking and handed to tokio.
pub fn listener_from_std(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

fn builder(s: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        // hyper needs at least 8 KiB.
        .max_buf_size(s.max_header_bytes.max(8192))
        .max_headers(s.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(s.h2_max_concurrent_streams)
        .keep_alive_interval(s.h2_keepalive);
    b
}

/// The TLS acceptor (if any) for a connection to this local address.
pub type AcceptorFor = dyn Fn(&SocketAddr) -> Option<TlsAcceptor> + Send + Sync;

/// Which connections get TLS. One listening socket serves every gateway VIP:port (the
/// sk_lookup hook hands them all to it), so the choice is per accepted connection, by the
/// local address the client asked for.
#[derive(Clone)]
pub enum TlsChoice {
    /// Plain HTTP on every connection.
    Plain,
    /// These certificates on every connection.
    All(Arc<Tls>),
    /// Whatever the function says for the connection's local address (`None`: plain).
    ByLocal(Arc<AcceptorFor>),
}

impl TlsChoice {
    pub fn by_local(
        f: impl Fn(&SocketAddr) -> Option<TlsAcceptor> + Send + Sync + 'static,
    ) -> Self {
        Self::ByLocal(Arc::new(f))
    }

    fn acceptor(&self, local: &SocketAddr) -> Option<TlsAcceptor> {
        match self {
            Self::Plain => None,
            Self::All(t) => Some(t.acceptor()),
            Self::ByLocal(f) => f(local),
        }
    }
}

impl From<Option<Arc<Tls>>> for TlsChoice {
    fn from(tls: Option<Arc<Tls>>) -> Self {
        tls.map_or(Self::Plain, Self::All)
    }
}

/// Serve the gateway on `listener` until `stop`; then stop accepting, let in-flight requests
/// finish for up to `settings.drain_timeout`, close what remains and return.
///
/// `tls`: per connection, terminate TLS (ALPN h2/http1.1) or serve plain HTTP (HTTP/1.1 or
/// HTTP/2 prior knowledge, detected per connection); `Option<Arc<Tls>>` converts.
pub async fn serve<D: Decide>(
    listener: TcpListener,
    tls: impl Into<TlsChoice>,
    decide: Arc<D>,
    upstreams: Arc<Upstreams>,
    observers: Observers,
    settings: ServerSettings,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let local_listen = listener.local_addr().map_err(ServeError::Listener)?;
    let closing = CancellationToken::new();
    let shared = Arc::new(Shared {
        decide,
        upstreams,
        metrics: observers.metrics,
        log: observers.access_log,
        settings: settings.clone(),
        closing: closing.clone(),
        tunnels: Arc::new(()),
    });
    let builder = Arc::new(builder(&settings));
    let tls: TlsChoice = tls.into();
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();

    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("gateway {local_listen}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(local_listen);
        let shared = shared.clone();
        let builder = builder.clone();
        let acceptor = tls.acceptor(&canonical(local));
        let watcher = graceful.watcher();
        let stop = stop.clone();
        let handshake_timeout = settings.tls_handshake_timeout;
        conns.spawn(async move {
            let mut info = ConnInfo {
                peer: canonical(peer),
                local: canonical(local),
                tls: false,
                sni: None,
                alpn_h2: false,
                smuggled: SmuggleFlag::default(),
            };
            let flag = info.smuggled.clone();
            match acceptor {
                None => {
                    let conn = Arc::new(info);
                    let svc = hyper::service::service_fn(move |req| {
                        handle(shared.clone(), conn.clone(), req)
                    });
                    let stream = Guarded::new(stream, flag);
                    let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let _ = watcher.watch(c.into_owned()).await;
                }
                Some(acceptor) => {
                    let hs = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => r,
                    };
                    let tls_stream = match hs {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "gateway TLS handshake: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let (_, session) = tls_stream.get_ref();
                    info.tls = true;
                    info.sni = session.server_name().map(Arc::from);
                    info.alpn_h2 = session.alpn_protocol() == Some(b"h2");
                    let conn = Arc::new(info);
                    let svc = hyper::service::service_fn(move |req| {
                        handle(shared.clone(), conn.clone(), req)
                    });
                    let tls_stream = Guarded::new(tls_stream, flag);
                    let c = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
                    let _ = watcher.watch(c.into_owned()).await;
                }
            }
        });
    }

    drop(listener);
    // In-flight requests finish; idle keep-alive connections close now; WebSocket tunnels
    // (which hyper no longer tracks) may run until the deadline.
    let deadline = tokio::time::Instant::now() + settings.drain_timeout;
    if tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "gateway {local_listen}: drain timeout, closing {} connections",
            conns.len()
        );
    }
    while Arc::strong_count(&shared.tunnels) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    closing.cancel();
    conns.shutdown().await;
    Ok(())
}

/// `::ffff:a.b.c.d` (a dual-stack socket) as plain IPv4, so logs and headers read naturally.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
