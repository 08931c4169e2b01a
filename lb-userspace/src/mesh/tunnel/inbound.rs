//! The inbound listener: peers' agents open mTLS + HTTP/2 connections and CONNECT streams to
//! local backends of `mtls` services; each is authorized before the backend is dialled.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    LocalServices, MeshAuth, TunnelSettings,
    metrics::{Side, TunnelCounters, handshake_reason},
    splice::splice,
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
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "mesh inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move { connection(tcp, peer, ctx, stop).await });
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>, stop: CancellationToken) {
    let Ok(local) = tcp.local_addr() else { return };
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(ctx.auth.server_config());
    let tls = match tokio::time::timeout(ctx.settings.connect_timeout, acceptor.accept(tcp)).await {
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
    debug!(peer = %peer, id = %peer_id, "mesh inbound connection");
    let _open = ctx.counters.connection(Side::Inbound);
    let peer_id: Arc<str> = peer_id.into();
    let svc_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let (ctx, peer_id) = (svc_ctx.clone(), peer_id.clone());
        async move { Ok::<_, Infallible>(handle(req, local, &peer_id, ctx).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { debug!(peer = %peer, error = %e, "mesh inbound connection ended") },
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = code;
    r
}

/// One request: only `CONNECT <local backend of an mtls service>`, authorized.
async fn handle(
    mut req: Request<Incoming>,
    local: SocketAddr,
    peer_id: &str,
    ctx: Arc<Ctx>,
) -> Response<Empty<Bytes>> {
    if req.method() != Method::CONNECT {
        ctx.counters.refused("not_connect");
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        ctx.counters.refused("bad_target");
        return status(StatusCode::BAD_REQUEST);
    };
    // Never an open relay: only backends on this node's address the peer dialled, of an
    // mtls service.
    let known = ctx.services.mtls_backend(target);
    let Some((service, port)) = known.filter(|_| target.ip() == local.ip()) else {
        ctx.counters.refused("not_local");
        warn!(peer = %peer_id, target = %target, "mesh inbound: CONNECT to no local mtls backend: 404");
        return status(StatusCode::NOT_FOUND);
    };
    let v = ctx.auth.authorize(&service, port, peer_id);
    ctx.counters
        .decided(v.policy.as_deref(), &v.reason, v.allowed);
    if !v.allowed {
        warn!(peer = %peer_id, node = %ctx.auth.node_id(), service = %service, port,
            policy = v.policy.as_deref().unwrap_or(""), reason = %v.reason,
            "mesh: connection denied by policy");
        return status(StatusCode::FORBIDDEN);
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
            return status(StatusCode::BAD_GATEWAY);
        }
    };
    let _ = backend.set_nodelay(true);
    debug!(peer = %peer_id, service = %service, target = %target, "mesh inbound stream");
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        let _open = ctx.counters.stream(Side::Inbound);
        splice(
            TokioIo::new(up),
            backend,
            ctx.settings.buffer,
            &ctx.counters,
        )
        .await;
    });
    status(StatusCode::OK)
}
