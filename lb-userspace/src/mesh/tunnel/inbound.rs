//! The inbound listener: peers' agents open mTLS + HTTP/2 connections and CONNECT streams to
//! local backends of `mtls` services; each is authorized before the backend is dialled.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    LocalServices, MeshAuth, TunnelSettings,
    connect::Stream,
    metrics::{Side, TunnelCounters, handshake_reason},
    splice::splice,
    transport,
};

/// Everything a connection's handler needs.
struct Ctx {
    auth: Arc<dyn MeshAuth>,
    services: Arc<dyn LocalServices>,
    settings: TunnelSettings,
    counters: Arc<TunnelCounters>,
}

/// Accepts on `listener` until `stop`.
pub async fn serve_inbound(
    listener: TcpListener,
    auth: Arc<dyn MeshAuth>,
    services: Arc<dyn LocalServices>,
    settings: TunnelSettings,
    counters: Arc<TunnelCounters>,
    stop: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        auth,
        services,
        settings,
        counters,
    });
    loop {
        let Some((tcp, peer)) = super::accept(&listener, &stop, "inbound").await else {
            return;
        };
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move { connection(tcp, peer, ctx, stop).await });
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>, stop: CancellationToken) {
    let Ok(local) = tcp.local_addr() else { return };
    let timeout = ctx.settings.connect_timeout;
    // The peer dialled a backend's address: present the identity of the workload there.
    let configured = ctx.services.backend_identity(local.ip());
    let (server_id, config) = ctx.auth.server_for(local.ip(), configured.as_deref());
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(transport::io(tcp))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = handshake_reason(&e);
            ctx.counters.handshake_failed(Side::Inbound, &reason);
            warn!(peer = %peer, reason, error = %e, "mesh inbound TLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.counters.handshake_failed(Side::Inbound, "timeout");
            return;
        }
    };
    let Some(peer_id) = ctx.auth.peer_id(tls.get_ref().1) else {
        ctx.counters.handshake_failed(Side::Inbound, "no_spiffe_id");
        warn!(peer = %peer, "mesh inbound: peer certificate has no SPIFFE ID: closed");
        return;
    };
    debug!(peer = %peer, id = %peer_id, server = %server_id, "mesh inbound connection");
    let _open = ctx.counters.connection(Side::Inbound);
    let peer_id: Arc<str> = peer_id.into();
    let mut conn = match tokio::time::timeout(
        timeout,
        transport::server().handshake::<_, Bytes>(transport::Batched(tls)),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(peer = %peer, error = %e, "mesh inbound HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    // Accepting also drives the connection's I/O: it goes on until the connection is closed
    // (after a stop, once its streams are done).
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            r = conn.accept() => r,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match next {
            Some(Ok((req, respond))) => {
                tokio::spawn(stream(req, respond, local, peer_id.clone(), ctx.clone()));
            }
            Some(Err(e)) => {
                debug!(peer = %peer, error = %e, "mesh inbound connection ended");
                return;
            }
            None => return,
        }
    }
}

fn status(code: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = code;
    r
}

/// One stream: answered, then spliced to the backend if admitted.
async fn stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    local: SocketAddr,
    peer_id: Arc<str>,
    ctx: Arc<Ctx>,
) {
    let backend = match admit(&req, local, &peer_id, &ctx).await {
        Ok(b) => b,
        Err(code) => {
            let _ = respond.send_response(status(code), true);
            return;
        }
    };
    let Ok(send) = respond.send_response(status(StatusCode::OK), false) else {
        return;
    };
    let _open = ctx.counters.stream(Side::Inbound);
    let stream = Stream {
        send,
        recv: req.into_body(),
    };
    if let Some(m) = splice(backend, stream, ctx.settings.buffer).await {
        ctx.counters.bytes(m.to_socket, m.to_stream);
    }
}

/// Only `CONNECT <local backend of an mtls service>`, authorized: the backend, connected.
async fn admit(
    req: &Request<RecvStream>,
    local: SocketAddr,
    peer_id: &str,
    ctx: &Ctx,
) -> Result<TcpStream, StatusCode> {
    if req.method() != Method::CONNECT {
        ctx.counters.refused("not_connect");
        return Err(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        ctx.counters.refused("bad_target");
        return Err(StatusCode::BAD_REQUEST);
    };
    // Never an open relay: only backends on this node's address the peer dialled, of an
    // mtls service.
    let known = ctx.services.mtls_backend(target);
    let Some((service, port)) = known.filter(|_| target.ip() == local.ip()) else {
        ctx.counters.refused("not_local");
        warn!(peer = %peer_id, target = %target, "mesh inbound: CONNECT to no local mtls backend: 404");
        return Err(StatusCode::NOT_FOUND);
    };
    let v = ctx.auth.authorize(&service, port, peer_id);
    ctx.counters
        .decided(v.policy.as_deref(), &v.reason, v.allowed);
    if !v.allowed {
        warn!(peer = %peer_id, node = %ctx.auth.node_id(), service = %service, port,
            policy = v.policy.as_deref().unwrap_or(""), reason = %v.reason,
            "mesh: connection denied by policy");
        return Err(StatusCode::FORBIDDEN);
    }
    ctx.counters.peer(peer_id);
    let backend = match tokio::time::timeout(
        ctx.settings.connect_timeout,
        TcpStream::connect(target),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => {
            ctx.counters.refused("backend_unreachable");
            return Err(StatusCode::BAD_GATEWAY);
        }
    };
    let _ = backend.set_nodelay(true);
    debug!(peer = %peer_id, service = %service, target = %target, "mesh inbound stream");
    Ok(backend)
}
