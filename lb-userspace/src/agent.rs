//! The composition root of `lb run`: loads the config once, builds the parts, wires them
//! together, and turns signals and config-file edits into reloads and a shutdown.
//!
//! ```text
//!  config file (start, SIGHUP, edit) --> agent: loaded once per generation, which goes
//!                                        1. to l4.prepare (interfaces, settings), then
//!                                        2. to control.set_config (publishes it)
//!  sources, health checks --> control --model::Snapshot (watch)--> l4 --> XDP maps
//!                                                              |--> gateway (own threads)
//!                                                              `--> later: socket LB
//!  admin API --StatusSource--> control's view + l4's view
//! ```
//!
//! Each part has one job and its own stop token; none holds another's state. Shutdown
//! stops them in order: admin (no more requests), the gateway (drains its requests), control
//! plane (sources and health checks with it), then the L4 data plane, which is then detached
//! or left pinned.
//!
//! May depend on every module; nothing depends on it but `main`.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminError},
    config::{self, Config, ConfigErrors},
    control::{ControlHandle, ControlPlane},
    l4::{L4Dataplane, L4Error, L4Handle, L4Options},
    mesh::{
        self,
        identity::{Authorizer, Identities, IdentityError},
        tunnel::{
            IdentityAuth, KernelOrigDst, SnapshotServices, TunnelError, TunnelPart, TunnelSettings,
        },
    },
    proxy::{
        GatewayError, GatewayPart,
        listen::{ListenError, Listeners},
    },
    registry::{
        SourceHandle,
        builtin::{self, Registry, RegistryError},
    },
    status::{GatewayView, StatusSource},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    L4(#[from] L4Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Gateway(#[from] ListenError),
    #[error(transparent)]
    GatewayStart(#[from] GatewayError),
    #[error("mesh identities: {0}")]
    MeshIdentity(#[from] IdentityError),
    #[error("mesh tunnel: {0}")]
    MeshTunnel(#[from] TunnelError),
    #[error("mesh: `outbound` must be an IPv4 address (the socket LB steers IPv4 connects)")]
    MeshOutbound,
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A part's task ended before it was told to stop (it panicked): the agent exits rather
    /// than run half (a pinned data plane keeps forwarding for the next start).
    #[error("the {0} stopped unexpectedly: {1}")]
    PartFailed(&'static str, String),
}

/// `lb run`'s options.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub path: PathBuf,
    /// Force generic (SKB) XDP whatever the config says.
    pub generic: bool,
    /// Print the status table every this many seconds (0: never).
    pub stats_interval: u64,
    /// Reload when the file changes (not only on SIGHUP).
    pub watch: bool,
    /// On SIGTERM/SIGINT leave the data plane pinned and forwarding.
    pub keep_dataplane: bool,
}

/// Fingerprint of the config file, to notice edits (mtime alone misses same-second writes).
fn file_fingerprint(path: &std::path::Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// Runs the agent until SIGINT/SIGTERM. Must run inside a tokio runtime.
pub async fn run(o: RunOptions) -> Result<(), AgentError> {
    let path = o.path.clone();
    let mut config = Arc::new(config::load(&path)?);

    // The built-in registry first, so the first tables already hold its persisted
    // instances (an adopted data plane then sees no change at all).
    let (source_tx, source_rx) = mpsc::unbounded_channel();
    let registry = Registry::open(
        config.registry.clone(),
        SourceHandle::new(builtin::SOURCE_NAME, source_tx.clone()),
    )?;

    // L4 data plane: programs and maps loaded (or adopted), nothing attached yet.
    let mut l4 = L4Dataplane::load(
        &config,
        L4Options {
            force_generic: o.generic,
        },
    )?;

    // Control plane: sources started; the first generation waits for their first reports.
    let control_stop = CancellationToken::new();
    let (mut control, snapshots) =
        ControlPlane::start(config.clone(), source_tx, source_rx, &control_stop);
    control.first_reports().await;

    // The mesh: its outbound address goes into the socket LB's settings before the socket
    // LB first attaches (in `take_over_links`).
    let mesh_outbound = match (config.mesh.enabled, config.mesh.outbound) {
        (false, _) => None,
        (true, std::net::SocketAddr::V4(a)) => Some(a),
        (true, _) => return Err(AgentError::MeshOutbound),
    };
    l4.set_mesh_outbound(mesh_outbound);

    // Generation 1: interfaces, then the snapshot into the maps, then the links taken over.
    l4.prepare(&config)?;
    let first = control.set_config(config.clone());
    l4.apply(&first)?;
    l4.take_over_links(&config)?;
    let mut generation = first.generation;

    // The L7 gateway: its listening sockets go to the sk_lookup hook, then it runs on its
    // own threads (proxying is CPU-bound, unlike the rest), fed by the same snapshots.
    let listeners = Listeners::open().map_err(AgentError::Gateway)?;
    if let Err(e) = l4.attach_gateway(&listeners.v4, listeners.v6.as_ref()) {
        // Not fatal: the L4 services work without it; `mode = "http"` services then get
        // their packets to a VIP nobody answers (counted as to_gateway).
        error!(error = %e, "the gateway's sk_lookup handoff is unavailable; http services will not answer");
    }
    let gateway_stop = CancellationToken::new();
    let gateway = GatewayPart::start(&config, listeners, snapshots.clone(), gateway_stop.clone())
        .map_err(AgentError::GatewayStart)?;

    // The mesh tunnel (`[mesh] enabled`): identities first (certificates issued or read),
    // then both listeners.
    let mesh_stop = CancellationToken::new();
    let mesh = if config.mesh.enabled {
        let ids = Identities::start(&config.mesh).await?;
        // The pod watch follows reloads (it reads each generation's config).
        let pods = mesh::pods::follow(snapshots.clone(), ids.clone(), mesh_stop.clone());
        let auth = Arc::new(IdentityAuth::new(
            ids,
            Authorizer::new(&config.mesh.policies),
        ));
        let origdst = Arc::new(KernelOrigDst::new(l4.mesh_origdst()?));
        let services = Arc::new(SnapshotServices::new(snapshots.clone(), |c, name| {
            c.services.iter().any(|s| s.name == name && s.mtls)
        }));
        let part = TunnelPart::start(
            config.mesh.listen,
            config.mesh.outbound,
            auth,
            origdst,
            services,
            TunnelSettings::default(),
            mesh_stop.clone(),
        )
        .await?;
        info!(listen = %config.mesh.listen, outbound = %config.mesh.outbound, "mesh tunnel running");
        Some((part, pods))
    } else {
        None
    };

    let (control_handle, control_requests) = ControlPlane::channel();
    let mut control_task = tokio::spawn(control.run(control_requests, control_stop.clone()));
    let l4_stop = CancellationToken::new();
    let (l4_handle, l4_requests) = L4Dataplane::channel();
    let mut l4_task = tokio::spawn(l4.run(snapshots, l4_requests, l4_stop.clone()));

    let mut status = StatusSource::new(
        control_handle.clone(),
        l4_handle.clone(),
        Some(GatewayView {
            metrics: gateway.metrics.clone(),
            state: gateway.state.clone(),
        }),
    );
    if let Some((m, _)) = &mesh {
        status = status.with_mesh(m.view.clone());
    }
    let admin_stop = CancellationToken::new();
    let admin_task = admin::start(
        &config.admin,
        Arc::new(Mutex::new(registry)),
        status.clone(),
        admin_stop.clone(),
    )
    .await?;
    info!(config = %path.display(), admin = %config.admin.listen, "running");

    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    // interval_at: the first tick one period from now, not at once.
    let every = |secs: u64| {
        let period = Duration::from_secs(secs.max(1));
        tokio::time::interval_at(tokio::time::Instant::now() + period, period)
    };
    let mut poll = every(1);
    let mut gateway_check = every(1);
    let mut stats = every(o.stats_interval);
    let mut seen = file_fingerprint(&path);
    let parts = Parts {
        control: control_handle,
        l4: l4_handle,
    };
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP: reloading",
            _ = poll.tick(), if o.watch => {
                let now = file_fingerprint(&path);
                if now.is_none() || now == seen {
                    continue;
                }
                "config file changed: reloading"
            }
            _ = stats.tick(), if o.stats_interval > 0 => {
                print_stats(&status).await;
                continue;
            }
            _ = gateway_check.tick() => {
                if gateway.is_finished() {
                    return Err(failed("gateway", None));
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = &mut control_task => return Err(failed("control plane", r.err())),
            r = &mut l4_task => return Err(failed("L4 data plane", r.err())),
        };
        info!("{why}");
        seen = file_fingerprint(&path);
        match parts.reload(&path, &config).await {
            Ok(Some((c, g))) => (config, generation) = (c, g),
            Ok(None) => {}
            Err(e) => error!(
                generation,
                "reload rejected, generation {generation} keeps running:\n{e}"
            ),
        }
    }

    info!("shutting down");
    admin_stop.cancel();
    let _ = admin_task.await;
    if o.stats_interval > 0 {
        print_stats(&status).await;
    }
    // The gateway drains its requests in flight before the backends' data plane goes.
    gateway_stop.cancel();
    let _ = tokio::task::spawn_blocking(move || gateway.join()).await;
    mesh_stop.cancel();
    if let Some((m, pods)) = mesh {
        m.join().await;
        let _ = pods.await;
    }
    control_stop.cancel();
    let _ = control_task.await;
    l4_stop.cancel();
    match l4_task.await {
        Ok(l4) if o.keep_dataplane => l4.shutdown_keep(),
        Ok(l4) => l4.shutdown(),
        Err(e) => warn!(error = %e, "the L4 data plane task failed; nothing to detach"),
    }
    Ok(())
}

fn failed(part: &'static str, e: Option<tokio::task::JoinError>) -> AgentError {
    let why = e.map_or_else(|| "returned".to_owned(), |e| e.to_string());
    error!(
        part,
        why, "a part of the agent stopped unexpectedly; exiting"
    );
    AgentError::PartFailed(part, why)
}

async fn print_stats(status: &StatusSource) {
    if let Some(s) = status.get().await {
        println!("{}", s.table());
    }
}

/// The running parts a reload goes through.
struct Parts {
    control: ControlHandle,
    l4: L4Handle,
}

#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    L4(#[from] L4Error),
    #[error("the control plane is not running")]
    Stopped,
}

impl Parts {
    /// Reads the config file and, if it changed, makes it the next generation: the L4 data
    /// plane prepares (interfaces, settings), then the control plane publishes its
    /// snapshot, which the L4 data plane applies (and logs `config applied`). On any error
    /// the running generation stays as it was. The new config and generation, if any.
    async fn reload(
        &self,
        path: &std::path::Path,
        current: &Config,
    ) -> Result<Option<(Arc<Config>, u64)>, ReloadError> {
        let config = config::load(path)?;
        if config == *current {
            return Ok(None);
        }
        if config.admin != current.admin || config.registry != current.registry {
            warn!("[admin] and [registry] changes take effect at the next restart");
        }
        if config.global.conntrack.max_entries != current.global.conntrack.max_entries {
            warn!(
                old = current.global.conntrack.max_entries,
                new = config.global.conntrack.max_entries,
                "conntrack.max_entries changes take effect at the next start without pinned maps (after a clean shutdown)"
            );
        }
        let config = Arc::new(config);
        self.l4.prepare(config.clone()).await?;
        let generation = self
            .control
            .set_config(config.clone())
            .await
            .ok_or(ReloadError::Stopped)?;
        Ok(Some((config, generation)))
    }
}
