//! The gateway part of the agent: its own thread and multi-threaded tokio runtime (proxying
//! is CPU-bound, the rest of the agent is not), fed by the model's snapshot channel.
//!
//! On every snapshot it rebuilds the [`GatewayState`] (routes, auth, upstream backends) and
//! swaps it in whole; a build that fails is logged and the previous state keeps serving. It
//! keeps a `local` route for each gateway VIP. On stop: the listeners stop accepting, the
//! requests in flight finish (bounded), the VIP routes go.

use std::{sync::Arc, thread::JoinHandle, time::Duration};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    access_log::{AccessLog, AccessLogSettings, LogFormat, LogTarget},
    connect,
    decide::Gatekeeper,
    limit::{LimiterSettings, RateLimiter},
    listen::Listeners,
    metrics::GatewayMetrics,
    redis_conn::RedisClient,
    resilience::{self, Guards},
    server::{self, Observers, ServerSettings, TlsChoice},
    shared_limit::SharedLimiter,
    state::{self, AuthProviders, GatewayState},
    upstream::{UpstreamSettings, Upstreams},
    vip_routes::VipRoutes,
};
use crate::{
    config::{AccessLog as AccessLogKind, Config, RedisSettings, ResilienceSettings},
    model::Subscriber,
};

/// How often idle rate-limit buckets are swept.
const LIMITER_SWEEP: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("starting the gateway's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What the rest of the agent keeps of the running gateway.
pub struct GatewayPart {
    thread: JoinHandle<()>,
    pub metrics: Arc<GatewayMetrics>,
    pub state: Arc<ArcSwap<GatewayState>>,
}

impl GatewayPart {
    /// Starts serving on `listeners` (already registered with the sk_lookup hook) until
    /// `stop`.
    pub fn start(
        config: &Config,
        listeners: Listeners,
        snapshots: Subscriber,
        stop: CancellationToken,
    ) -> Result<Self, GatewayError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.gateway.threads)
            .thread_name("lb-gateway")
            .enable_all()
            .build()
            .map_err(GatewayError::Runtime)?;
        let metrics = Arc::new(GatewayMetrics::new());
        let state = Arc::new(ArcSwap::from_pointee(GatewayState::empty()));
        let log = access_log_settings(config);
        let snat = (config.global.snat_port_min, config.global.snat_port_max);
        let (m, s) = (metrics.clone(), state.clone());
        // Read once: a changed `[gateway.redis]` takes a restart.
        let redis = config.gateway.redis.clone();
        let resil = config.gateway.resilience.clone();
        let thread = std::thread::Builder::new()
            .name("lb-gateway".into())
            .spawn(move || {
                runtime.block_on(run(
                    listeners, snapshots, s, m, log, snat, redis, resil, stop,
                ))
            })
            .map_err(GatewayError::Runtime)?;
        Ok(Self {
            thread,
            metrics,
            state,
        })
    }

    /// Waits for the gateway to have drained (after its stop token was cancelled).
    pub fn join(self) {
        if self.thread.join().is_err() {
            error!("the gateway thread panicked");
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

fn access_log_settings(c: &Config) -> Option<AccessLogSettings> {
    let format = match c.gateway.access_log {
        AccessLogKind::Off => return None,
        AccessLogKind::Text => LogFormat::Text,
        AccessLogKind::Json => LogFormat::Json,
    };
    Some(AccessLogSettings {
        format,
        target: c
            .gateway
            .access_log_file
            .clone()
            .map_or(LogTarget::Stdout, LogTarget::File),
        capacity: super::access_log::DEFAULT_CAPACITY,
    })
}

// One parameter per thing the agent hands over; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn run(
    listeners: Listeners,
    mut snapshots: Subscriber,
    state: Arc<ArcSwap<GatewayState>>,
    metrics: Arc<GatewayMetrics>,
    log: Option<AccessLogSettings>,
    snat_ports: (u16, u16),
    redis: Option<RedisSettings>,
    resil: ResilienceSettings,
    stop: CancellationToken,
) {
    let local_ports =
        connect::ephemeral_ports().and_then(|eph| connect::local_ports_outside(eph, snat_ports));
    match local_ports {
        Some((lo, hi)) => info!(
            lo,
            hi, "gateway connects to backends from ports outside the SNAT range"
        ),
        None => warn!(
            "the SNAT port range covers the whole ephemeral range: gateway connections to \
             backends may collide with L4 flows; move global.snat_ports"
        ),
    }
    let access_log = match log {
        None => AccessLog::disabled(),
        Some(s) => match AccessLog::start(s).await {
            Ok((log, _task)) => log,
            Err(e) => {
                error!(error = %e, "access log not opened; requests are served without it");
                AccessLog::disabled()
            }
        },
    };
    let limiter = Arc::new(RateLimiter::new(LimiterSettings::default()));
    let redis = redis.and_then(|s| {
        RedisClient::start(s, metrics.redis.clone(), stop.clone())
            .inspect_err(|e| error!(error = %e, "redis client not started"))
            .ok()
    });
    let shared = redis.clone().map(|r| Arc::new(SharedLimiter::new(r)));
    let gatekeeper = Arc::new(Gatekeeper {
        state: state.clone(),
        limiter: limiter.clone(),
        shared: shared.clone(),
        metrics: metrics.clone(),
    });
    // Breakers, budgets and outlier records outlive every state built below.
    let guards = Arc::new(Guards::default());
    // Connect and idle timeouts belong to the shared pools: read once at start.
    let upstreams = Arc::new(Upstreams::new(&UpstreamSettings {
        local_ports,
        connect_timeout: resil.connect_timeout,
        response_timeout: resil.request_timeout,
        idle_timeout: resil.idle_timeout,
        guards: Some(guards.clone()),
        ..UpstreamSettings::default()
    }));
    let observers = Observers {
        metrics: metrics.clone(),
        access_log,
    };
    let tls = {
        let state = state.clone();
        TlsChoice::by_local(move |local| {
            state
                .load()
                .frontends
                .get(local)
                .and_then(|f| f.tls.as_ref().map(|t| t.acceptor()))
        })
    };
    let mut servers = tokio::task::JoinSet::new();
    for l in std::iter::once(listeners.v4).chain(listeners.v6) {
        match server::listener_from_std(l) {
            Ok(l) => {
                servers.spawn(server::serve(
                    l,
                    tls.clone(),
                    gatekeeper.clone(),
                    upstreams.clone(),
                    observers.clone(),
                    ServerSettings::default(),
                    stop.clone(),
                ));
            }
            Err(e) => error!(error = %e, "gateway listener unusable"),
        }
    }

    let mut providers = AuthProviders::default();
    providers.redis = redis;
    let mut vip_routes = VipRoutes::default();
    let mut sweep = tokio::time::interval(LIMITER_SWEEP);
    let mut ejections = tokio::time::interval(resilience::SWEEP);
    // The first snapshot is already in the channel: build it at once.
    snapshots.mark_changed();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sweep.tick() => {
                limiter.sweep(std::time::Instant::now());
                if let Some(s) = &shared {
                    s.sweep(std::time::Instant::now());
                }
            }
            _ = ejections.tick() => guards.sweep(),
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                if snapshot.generation == 0 {
                    continue;
                }
                match state::build(&snapshot, &mut providers, &guards, &stop).await {
                    Ok(next) => {
                        if let Err(e) = vip_routes.sync(&next.vips()) {
                            warn!(error = %e, "gateway VIP routes not all in place");
                        }
                        let ids: std::collections::BTreeSet<String> = next
                            .frontends
                            .values()
                            .flat_map(|f| f.routes.routes().iter().map(|r| r.payload().id.to_string()))
                            .collect();
                        limiter.retain_routes(|r| ids.contains(r));
                        if next.generation != state.load().generation {
                            info!(
                                generation = next.generation,
                                frontends = next.frontends.len(),
                                "gateway config applied"
                            );
                        }
                        state.store(Arc::new(next));
                    }
                    Err(e) => error!(
                        error = %e,
                        "gateway state not rebuilt; the previous one keeps serving"
                    ),
                }
            }
        }
    }
    while servers.join_next().await.is_some() {}
    vip_routes.clear();
    info!("gateway stopped");
}
