//! HTTP/2 CONNECT over TLS: the client side (open a connection to a peer node's agent, open
//! a CONNECT stream on it) and the server side's response helpers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode, client::conn::http2::SendRequest, upgrade::Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{
    TunnelError,
    metrics::{Side, TunnelCounters, handshake_reason},
};

pub type Sender = SendRequest<Empty<Bytes>>;

/// Opens an mTLS + HTTP/2 connection to `addr` presenting `tls`'s client certificate, and
/// drives it in a task (which holds an open-connection count until it ends).
pub async fn open(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    counters: Arc<TunnelCounters>,
) -> Result<Sender, TunnelError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| TunnelError::Timeout("connecting to the peer node"))?
        .map_err(|source| TunnelError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(tls);
    let stream = match tokio::time::timeout(timeout, tls.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            counters.handshake_failed(Side::Outbound, &handshake_reason(&source));
            return Err(TunnelError::Handshake { addr, source });
        }
        Err(_) => {
            counters.handshake_failed(Side::Outbound, "timeout");
            return Err(TunnelError::Timeout("TLS handshake with the peer node"));
        }
    };
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .adaptive_window(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| TunnelError::Http { addr, source })?;
    tokio::spawn(async move {
        let _open = counters.connection(Side::Outbound);
        if let Err(e) = conn.await {
            tracing::debug!(peer = %addr, error = %e, "mesh tunnel connection ended");
        }
    });
    Ok(send)
}

/// Sends `CONNECT target` on `send` and returns the stream once the peer answered 200.
pub async fn connect_stream(
    send: &mut Sender,
    addr: SocketAddr,
    target: SocketAddr,
) -> Result<TokioIo<Upgraded>, TunnelError> {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(Empty::<Bytes>::new())
        .expect("CONNECT request parts are valid");
    send.ready()
        .await
        .map_err(|source| TunnelError::Http { addr, source })?;
    let res = send
        .send_request(req)
        .await
        .map_err(|source| TunnelError::Http { addr, source })?;
    if res.status() != StatusCode::OK {
        return Err(TunnelError::Refused {
            addr,
            target,
            status: res.status(),
        });
    }
    let up = hyper::upgrade::on(res)
        .await
        .map_err(|source| TunnelError::Http { addr, source })?;
    Ok(TokioIo::new(up))
}
