//! HTTP/2 CONNECT over TLS, the client side: open a connection to a peer node's agent, open
//! a CONNECT stream on it.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, SendStream, client::SendRequest};
use http::{Method, Request, StatusCode};
use tokio::net::TcpStream;

use super::{
    MeshAuth, TunnelError,
    metrics::{Side, TunnelCounters, handshake_reason},
    transport,
};

/// Idle connections are pinged this often, and closed when the answer takes longer than
/// [`PING_TIMEOUT`] (a peer node gone without a FIN).
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens CONNECT streams on one tunnel connection; knows when that connection ended.
#[derive(Clone)]
pub struct Sender {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Both halves of an open CONNECT stream.
pub struct Stream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
}

/// Opens an mTLS + HTTP/2 connection to `addr` presenting `tls`'s client certificate, and
/// drives it in a task (which holds an open-connection count until it ends). The server's
/// verified identity is counted (`auth` reads it).
pub async fn open(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    auth: &dyn MeshAuth,
    timeout: Duration,
    counters: Arc<TunnelCounters>,
) -> Result<Sender, TunnelError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| TunnelError::Timeout("connecting to the peer node"))?
        .map_err(|source| TunnelError::Connect { addr, source })?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(tls);
    let stream = match tokio::time::timeout(timeout, tls.connect(name, transport::io(tcp))).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            let reason = handshake_reason(&source);
            counters.handshake_failed(Side::Outbound, &reason);
            tracing::debug!(peer = %addr, reason, error = %source, "mesh outbound TLS handshake failed");
            return Err(TunnelError::Handshake { addr, source });
        }
        Err(_) => {
            counters.handshake_failed(Side::Outbound, "timeout");
            return Err(TunnelError::Timeout("TLS handshake with the peer node"));
        }
    };
    if let Some(id) = auth.peer_id(stream.get_ref().1) {
        counters.server(&id);
    }
    let (send, mut conn) = tokio::time::timeout(
        timeout,
        transport::client().handshake(transport::Batched(stream)),
    )
    .await
    .map_err(|_| TunnelError::Timeout("HTTP/2 handshake with the peer node"))?
    .map_err(|source| TunnelError::Http { addr, source })?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    let ping = conn.ping_pong();
    tokio::spawn(async move {
        let _open = counters.connection(Side::Outbound);
        let r = tokio::select! {
            r = &mut conn => r.map_err(|e| e.to_string()),
            e = keep_alive(ping) => Err(e),
        };
        ended.store(true, Ordering::Relaxed);
        if let Err(e) = r {
            tracing::debug!(peer = %addr, error = %e, "mesh tunnel connection ended");
        }
    });
    Ok(Sender { send, closed })
}

/// Pings the peer every [`PING_INTERVAL`]; returns why the connection should end.
async fn keep_alive(ping: Option<h2::PingPong>) -> String {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keep-alive ping: {e}"),
            Err(_) => return "keep-alive ping unanswered".into(),
        }
    }
}

/// Sends `CONNECT target` on `send` and returns the stream once the peer answered 200.
pub async fn connect_stream(
    send: &Sender,
    addr: SocketAddr,
    target: SocketAddr,
) -> Result<Stream, TunnelError> {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .expect("CONNECT request parts are valid");
    let http = |source| TunnelError::Http { addr, source };
    let mut ready = send.send.clone().ready().await.map_err(http)?;
    let (res, send) = ready.send_request(req, false).map_err(http)?;
    let res = res.await.map_err(http)?;
    if res.status() != StatusCode::OK {
        return Err(TunnelError::Refused {
            addr,
            target,
            status: res.status(),
        });
    }
    Ok(Stream {
        send,
        recv: res.into_body(),
    })
}
