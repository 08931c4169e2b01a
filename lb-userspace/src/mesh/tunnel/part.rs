//! The tunnel as a part of the agent: binds both listeners and runs them until stopped.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    LocalServices, MeshAuth, OrigDstSource, TunnelCounters, TunnelError, TunnelSettings,
    metrics::MeshView, serve_inbound, serve_outbound,
};

/// The running tunnel.
pub struct TunnelPart {
    pub view: MeshView,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, TunnelError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TunnelError::Bind {
            which,
            addr,
            source,
        })
}

impl TunnelPart {
    /// Binds `listen` (inbound) and `outbound`, then serves both until `stop`.
    pub async fn start(
        listen: SocketAddr,
        outbound: SocketAddr,
        auth: Arc<dyn MeshAuth>,
        origdst: Arc<dyn OrigDstSource>,
        services: Arc<dyn LocalServices>,
        settings: TunnelSettings,
        stop: CancellationToken,
    ) -> Result<Self, TunnelError> {
        let inl = bind("inbound", listen).await?;
        let outl = bind("outbound", outbound).await?;
        let counters = Arc::new(TunnelCounters::default());
        let tasks = vec![
            tokio::spawn(serve_inbound(
                inl,
                auth.clone(),
                services.clone(),
                settings.clone(),
                counters.clone(),
                stop.clone(),
            )),
            tokio::spawn(serve_outbound(
                outl,
                auth.clone(),
                origdst,
                services,
                settings,
                counters.clone(),
                stop,
            )),
        ];
        Ok(Self {
            view: MeshView { counters, auth },
            tasks,
        })
    }

    /// Waits for both listeners to stop (after the stop token fired).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
