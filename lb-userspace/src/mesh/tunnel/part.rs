//! The tunnel as a part of the agent: binds both listeners and runs them until stopped, on
//! its own multi-threaded runtime (`threads` workers; 0: on the agent's runtime). On the
//! agent's one thread, all TLS and HTTP/2 work of a node gets one thread's share of the CPU.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    LocalServices, MeshAuth, OrigDstSource, TunnelCounters, TunnelError, TunnelSettings,
    metrics::MeshView, serve_inbound, serve_outbound,
};

/// Where the listeners run.
enum Running {
    Here(Vec<JoinHandle<()>>),
    Own(std::thread::JoinHandle<()>),
}

/// The running tunnel.
pub struct TunnelPart {
    pub view: MeshView,
    running: Running,
}

/// What the listeners share.
struct Shared {
    auth: Arc<dyn MeshAuth>,
    origdst: Arc<dyn OrigDstSource>,
    services: Arc<dyn LocalServices>,
    settings: TunnelSettings,
    counters: Arc<TunnelCounters>,
    stop: CancellationToken,
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

/// Binds both listeners on the current runtime and spawns their loops there.
async fn serve(
    listen: SocketAddr,
    outbound: SocketAddr,
    s: Shared,
) -> Result<Vec<JoinHandle<()>>, TunnelError> {
    let inl = bind("inbound", listen).await?;
    let outl = bind("outbound", outbound).await?;
    Ok(vec![
        tokio::spawn(serve_inbound(
            inl,
            s.auth.clone(),
            s.services,
            s.settings.clone(),
            s.counters.clone(),
            s.stop.clone(),
        )),
        tokio::spawn(serve_outbound(
            outl, s.auth, s.origdst, s.settings, s.counters, s.stop,
        )),
    ])
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
        let counters = Arc::new(TunnelCounters::default());
        let view = MeshView {
            counters: counters.clone(),
            auth: auth.clone(),
        };
        let threads = settings.threads;
        let shared = Shared {
            auth,
            origdst,
            services,
            settings,
            counters,
            stop,
        };
        if threads == 0 {
            let tasks = serve(listen, outbound, shared).await?;
            return Ok(Self {
                view,
                running: Running::Here(tasks),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("lb-mesh")
            .enable_all()
            .build()
            .map_err(TunnelError::Runtime)?;
        let (bound_tx, bound) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("lb-mesh".into())
            .spawn(move || {
                // The runtime ends (and drops what is left of its tasks) with this thread.
                runtime.block_on(async move {
                    match serve(listen, outbound, shared).await {
                        Ok(tasks) => {
                            let _ = bound_tx.send(Ok(()));
                            for t in tasks {
                                let _ = t.await;
                            }
                        }
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                        }
                    }
                })
            })
            .map_err(TunnelError::Runtime)?;
        match bound.await {
            Ok(Ok(())) => Ok(Self {
                view,
                running: Running::Own(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TunnelError::Timeout("the mesh runtime ended while binding")),
        }
    }

    /// Waits for both listeners to stop (after the stop token fired).
    pub async fn join(self) {
        match self.running {
            Running::Here(tasks) => {
                for t in tasks {
                    let _ = t.await;
                }
            }
            Running::Own(thread) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }
}
