//! The outbound listener: connections the socket LB steered here from local workloads go to
//! the backend's node over the tunnel, as the workload's identity.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::mesh::identity::VerifyFailure::WrongServerIdentity;

use super::{
    LocalServices, MeshAuth, OrigDstSource, TunnelError, TunnelSettings,
    connect::connect_stream,
    metrics::{Side, TunnelCounters, verify_failure},
    pool::{Key, Pool},
    splice::splice,
};

/// Accepts on `listener` until `stop`.
pub async fn serve_outbound(
    listener: TcpListener,
    auth: Arc<dyn MeshAuth>,
    origdst: Arc<dyn OrigDstSource>,
    services: Arc<dyn LocalServices>,
    settings: TunnelSettings,
    counters: Arc<TunnelCounters>,
    stop: CancellationToken,
) {
    let pool = Arc::new(Pool::default());
    let ctx = Arc::new(Ctx {
        auth,
        origdst,
        services,
        settings,
        counters,
        pool,
    });
    loop {
        let Some((tcp, peer)) = super::accept(&listener, &stop, "outbound").await else {
            return;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = one(tcp, peer, &ctx).await {
                debug!(client = %peer, error = %e, "mesh outbound connection failed");
            }
        });
    }
}

/// Everything a connection's handler needs.
struct Ctx {
    auth: Arc<dyn MeshAuth>,
    origdst: Arc<dyn OrigDstSource>,
    services: Arc<dyn LocalServices>,
    settings: TunnelSettings,
    counters: Arc<TunnelCounters>,
    pool: Arc<Pool>,
}

/// Why an outbound connection was closed without a tunnel (the `refused` counter's label).
fn refuse(counters: &TunnelCounters, reason: &'static str) -> Result<(), TunnelError> {
    counters.refused(reason);
    Ok(())
}

async fn one(tcp: TcpStream, peer: SocketAddr, ctx: &Ctx) -> Result<(), TunnelError> {
    let (auth, settings, counters, pool) = (&*ctx.auth, &ctx.settings, &ctx.counters, &ctx.pool);
    let SocketAddr::V4(peer4) = peer else {
        return refuse(counters, "no_origdst");
    };
    // Steered connections come from this host: the client's own address is its key.
    let Some(orig) = ctx
        .origdst
        .take(SocketAddrV4::new(*peer4.ip(), peer4.port()))
    else {
        warn!(client = %peer, "mesh outbound: connection not steered by the socket LB: closed");
        return refuse(counters, "no_origdst");
    };
    // Who must answer at the backend's address (none known: any trusted identity).
    let configured = ctx.services.service_identity(orig.service);
    let expected = auth.expected_server(orig.backend.ip(), configured.as_deref());
    // The client socket's own address: a pod's IP when the workload is a pod.
    let Some((source, tls)) = auth.client_for(orig.cgroup_id, peer.ip(), expected.as_deref())
    else {
        warn!(client = %peer, cgroup = orig.cgroup_id, service = %orig.service,
            "mesh outbound: workload has no identity: refused");
        return refuse(counters, "no_identity");
    };
    let node = SocketAddr::new(orig.backend.ip(), settings.peer_port);
    let _ = tcp.set_nodelay(true);
    // A pooled connection may have just closed: one retry on a fresh one.
    let mut stream = None;
    for attempt in 0..2 {
        let key = Key {
            source: source.clone(),
            node,
            expected_server: expected.clone(),
        };
        let send = match pool
            .get(key, tls.clone(), auth, settings.connect_timeout, counters)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                log_wrong_server(&e, &orig);
                return Err(e);
            }
        };
        match connect_stream(&send, node, orig.backend).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(TunnelError::Http { .. }) if attempt == 0 => {
                pool.drop_conn(&source, node, expected.as_deref()).await
            }
            Err(e) => {
                counters.refused("connect_refused");
                return Err(e);
            }
        }
    }
    let Some(stream) = stream else {
        return Err(TunnelError::Timeout("no usable tunnel connection"));
    };
    let _open = counters.stream(Side::Outbound);
    if let Some(m) = splice(tcp, stream, settings.buffer).await {
        counters.bytes(m.to_stream, m.to_socket);
    }
    Ok(())
}

/// The refusal of a destination that proved another identity than expected, logged with
/// both (it is either a misconfiguration or an impostor: an operator must see it).
fn log_wrong_server(e: &TunnelError, orig: &super::OrigDst) {
    let TunnelError::Handshake { addr, source } = e else {
        return;
    };
    if let Some(WrongServerIdentity {
        expected,
        presented,
    }) = verify_failure(source)
    {
        warn!(peer = %addr, service = %orig.service, backend = %orig.backend,
            expected = %expected, presented = %presented,
            "mesh outbound: the destination presented another identity than expected: refused");
    }
}
