//! The outbound listener: connections the socket LB steered here from local workloads go to
//! the backend's node over the tunnel, as the workload's identity.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    MeshAuth, OrigDstSource, TunnelError, TunnelSettings,
    connect::connect_stream,
    metrics::{Side, TunnelCounters},
    pool::Pool,
    splice::splice,
};

/// Accepts on `listener` until `stop`.
pub async fn serve_outbound(
    listener: TcpListener,
    auth: Arc<dyn MeshAuth>,
    origdst: Arc<dyn OrigDstSource>,
    settings: TunnelSettings,
    counters: Arc<TunnelCounters>,
    stop: CancellationToken,
) {
    let pool = Arc::new(Pool::default());
    loop {
        let Some((tcp, peer)) = super::accept(&listener, &stop, "outbound").await else {
            return;
        };
        let (auth, origdst, settings, counters, pool) = (
            auth.clone(),
            origdst.clone(),
            settings.clone(),
            counters.clone(),
            pool.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = one(tcp, peer, &*auth, &*origdst, &settings, &counters, &pool).await {
                debug!(client = %peer, error = %e, "mesh outbound connection failed");
            }
        });
    }
}

/// Why an outbound connection was closed without a tunnel (the `refused` counter's label).
fn refuse(counters: &TunnelCounters, reason: &'static str) -> Result<(), TunnelError> {
    counters.refused(reason);
    Ok(())
}

async fn one(
    tcp: TcpStream,
    peer: SocketAddr,
    auth: &dyn MeshAuth,
    origdst: &dyn OrigDstSource,
    settings: &TunnelSettings,
    counters: &Arc<TunnelCounters>,
    pool: &Pool,
) -> Result<(), TunnelError> {
    let SocketAddr::V4(peer4) = peer else {
        return refuse(counters, "no_origdst");
    };
    // Steered connections come from this host: the client's own address is its key.
    let Some(orig) = origdst.take(SocketAddrV4::new(*peer4.ip(), peer4.port())) else {
        warn!(client = %peer, "mesh outbound: connection not steered by the socket LB: closed");
        return refuse(counters, "no_origdst");
    };
    // The client socket's own address: a pod's IP when the workload is a pod.
    let Some((source, tls)) = auth.client_for(orig.cgroup_id, peer.ip()) else {
        warn!(client = %peer, cgroup = orig.cgroup_id, service = %orig.service,
            "mesh outbound: workload has no identity: refused");
        return refuse(counters, "no_identity");
    };
    let node = SocketAddr::new(orig.backend.ip(), settings.peer_port);
    let _ = tcp.set_nodelay(true);
    // A pooled connection may have just closed: one retry on a fresh one.
    let mut stream = None;
    for attempt in 0..2 {
        let send = pool
            .get(
                &source,
                node,
                tls.clone(),
                settings.connect_timeout,
                counters,
            )
            .await?;
        match connect_stream(&send, node, orig.backend).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(TunnelError::Http { .. }) if attempt == 0 => pool.drop_conn(&source, node).await,
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
