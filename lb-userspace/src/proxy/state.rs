//! The gateway's view of one model snapshot, immutable: for each gateway frontend (VIP:port)
//! its route table, for each upstream service its serving backends. Requests read the
//! latest one through an `ArcSwap`; a request keeps the `Arc` it started with, so a reload
//! never changes a request in flight.
//!
//! Auth providers are built once per distinct config (they hold key caches, JWKS fetchers
//! and file watchers) and kept across snapshots in [`AuthProviders`]; rate-limit buckets
//! live in the limiter, keyed by route id. Both outlive any one state.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http::{HeaderName, Method};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{
    auth::{
        self, ApiKeySettings, ApiKeys, Authenticator, JwtProvider, JwtSettings, Keys, RedisApiKeys,
        TokenSource,
    },
    redis_conn::RedisClient,
    resilience::{Guards, ServiceGuard, outlier::BackendOutlier},
    route::{self, HeaderValueMatch, RouteError, RouteSpec, RouteTable},
    tls::{CertSpec, Tls, TlsSettings},
};
use crate::{
    config::{
        self, ApiKeyStore, AuthKind, AuthProvider, Config, FaultPolicy, LimitKey, Mode,
        RetryPolicy, RouteLimit, UpstreamPolicy,
    },
    model::Snapshot,
};

/// How often API key files are re-read.
const API_KEY_POLL: Duration = Duration::from_secs(1);
/// How often certificate files are re-read.
const TLS_POLL: Duration = Duration::from_secs(1);

/// What a matched route asks of a request, besides where it goes.
#[derive(Clone)]
pub struct RoutePolicy {
    /// `service/route`: stable across reloads; the limiter's and the metrics' key.
    pub id: Arc<str>,
    pub auth: Option<Authenticator>,
    pub scopes: Vec<String>,
    pub limit: Option<RouteLimit>,
    pub http2: bool,
    pub failure: Arc<RouteFailure>,
}

/// A route's timeouts, retries and faults, with the `[gateway]` defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    /// All tries and backoffs until a response head.
    pub timeout: Duration,
    pub per_try_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
}

/// One gateway service: what its VIP:port serves.
pub struct Frontend {
    pub name: Arc<str>,
    pub routes: RouteTable<RoutePolicy>,
    /// Certificates by SNI; `None`: plain HTTP.
    pub tls: Option<Arc<Tls>>,
}

/// A service's backends that take requests now (effective weight > 0), by weight, with
/// their outlier records (same order) and the service's failure handling.
#[derive(Debug, Default)]
pub struct Upstream {
    pub backends: Vec<(SocketAddr, u32)>,
    pub total: u64,
    pub outliers: Vec<Arc<BackendOutlier>>,
    pub guard: Option<Arc<ServiceGuard>>,
    pub policy: UpstreamPolicy,
}

impl Upstream {
    /// The backend for random value `r` (weighted), skipping ejected ones; `None` when none
    /// serves.
    pub fn pick(&self, r: u64) -> Option<SocketAddr> {
        self.pick_index(r, &[]).map(|i| self.backends[i].0)
    }

    /// The index of the backend for `r` among those neither ejected nor in `avoid`; if
    /// none is left, among those not ejected, then among all (a retry may go back to the
    /// only backend; ejection never empties a service).
    pub fn pick_index(&self, r: u64, avoid: &[SocketAddr]) -> Option<usize> {
        let ejecting = self.guard.as_ref().is_some_and(|g| g.slots.ejected() > 0);
        if !ejecting && avoid.is_empty() {
            return weighted(self.backends.iter().map(|b| b.1), self.total, r);
        }
        let eligible = |i: usize, avoiding: bool| {
            let ejected = self.outliers.get(i).is_some_and(|o| o.is_ejected());
            let tried = avoiding && avoid.contains(&self.backends[i].0);
            !(ejected || tried)
        };
        for avoiding in [true, false] {
            let weights = self
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| if eligible(i, avoiding) { b.1 } else { 0 });
            let total = weights.clone().map(u64::from).sum();
            if let Some(i) = weighted(weights, total, r) {
                return Some(i);
            }
        }
        weighted(self.backends.iter().map(|b| b.1), self.total, r)
    }
}

/// The index `r` falls on among `weights` summing to `total`.
fn weighted(weights: impl Iterator<Item = u32>, total: u64, r: u64) -> Option<usize> {
    if total == 0 {
        return None;
    }
    let mut at = r % total;
    for (i, w) in weights.enumerate() {
        if at < u64::from(w) {
            return Some(i);
        }
        at -= u64::from(w);
    }
    None
}

/// Everything a request reads.
pub struct GatewayState {
    pub generation: u64,
    pub frontends: HashMap<SocketAddr, Frontend>,
    pub upstreams: HashMap<Arc<str>, Arc<Upstream>>,
    /// Headers the gateway sets from identities: stripped from every request first.
    pub identity_headers: Vec<HeaderName>,
    /// Breakers, budgets, outlier records: shared by every state (they outlive reloads).
    pub guards: Arc<Guards>,
}

impl GatewayState {
    pub fn empty() -> Self {
        Self {
            generation: 0,
            frontends: HashMap::new(),
            upstreams: HashMap::new(),
            identity_headers: auth::identity_headers([]),
            guards: Arc::new(Guards::default()),
        }
    }

    /// The gateway VIPs (for their local routes).
    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.frontends.keys().map(SocketAddr::ip).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("service `{service}`: {source}")]
    Route {
        service: String,
        #[source]
        source: RouteError,
    },
    #[error("auth provider `{name}`: {source}")]
    Auth {
        name: String,
        #[source]
        source: auth::AuthError,
    },
    #[error("service `{service}` TLS: {source}")]
    Tls {
        service: String,
        #[source]
        source: super::tls::TlsError,
    },
}

/// Auth providers and TLS certificate sets by config, kept while the config keeps them.
#[derive(Default)]
pub struct AuthProviders {
    built: HashMap<String, (AuthProvider, Authenticator, CancellationToken)>,
    tls: HashMap<Vec<config::TlsCert>, (Arc<Tls>, CancellationToken)>,
    /// For Redis-stored API keys (`[gateway.redis]`).
    pub redis: Option<RedisClient>,
}

impl AuthProviders {
    /// The authenticator of `p`, built (keys fetched or read, watchers started) unless an
    /// equal provider already was.
    async fn get(
        &mut self,
        p: &AuthProvider,
        stop: &CancellationToken,
    ) -> Result<Authenticator, StateError> {
        if let Some((cfg, a, _)) = self.built.get(&p.name)
            && cfg == p
        {
            return Ok(a.clone());
        }
        let err = |source| StateError::Auth {
            name: p.name.clone(),
            source,
        };
        let token = stop.child_token();
        let a = match &p.kind {
            AuthKind::Jwt(j) => {
                let settings = jwt_settings(j);
                Authenticator::Jwt(Arc::new(
                    JwtProvider::new(settings, &token).await.map_err(err)?,
                ))
            }
            AuthKind::ApiKey(k) => {
                let header = HeaderName::from_bytes(k.header.as_bytes())
                    .expect("config checked the header name");
                match &k.store {
                    ApiKeyStore::File(file) => {
                        let mut s = ApiKeySettings::new(file.clone());
                        s.header = header;
                        Authenticator::ApiKey(
                            ApiKeys::watch(s, API_KEY_POLL, token.clone())
                                .map_err(|e| err(auth::AuthError::ApiKeys(e)))?,
                        )
                    }
                    ApiKeyStore::Redis { cache_ttl } => {
                        let redis = self
                            .redis
                            .clone()
                            .ok_or_else(|| err(auth::AuthError::NoRedis))?;
                        Authenticator::RedisApiKey(Arc::new(RedisApiKeys::new(
                            redis, header, *cache_ttl,
                        )))
                    }
                }
            }
        };
        if let Some((_, _, old)) = self
            .built
            .insert(p.name.clone(), (p.clone(), a.clone(), token))
        {
            old.cancel();
        }
        info!(provider = %p.name, "auth provider ready");
        Ok(a)
    }

    async fn tls(
        &mut self,
        service: &str,
        certs: &[config::TlsCert],
        stop: &CancellationToken,
    ) -> Result<Arc<Tls>, StateError> {
        if let Some((t, _)) = self.tls.get(certs) {
            return Ok(t.clone());
        }
        let settings = TlsSettings {
            certs: certs
                .iter()
                .enumerate()
                .map(|(i, c)| CertSpec {
                    names: c.names.clone(),
                    cert_file: c.cert_file.clone(),
                    key_file: c.key_file.clone(),
                    // The first is the one for clients without (a known) SNI.
                    default: i == 0,
                })
                .collect(),
            reload_interval: TLS_POLL,
        };
        let tls = Tls::load(settings).map_err(|source| StateError::Tls {
            service: service.to_owned(),
            source,
        })?;
        let token = stop.child_token();
        tokio::spawn(tls.clone().watch(token.clone()));
        self.tls.insert(certs.to_vec(), (tls.clone(), token));
        Ok(tls)
    }

    /// Stops and forgets what `config` no longer names.
    fn retain(&mut self, config: &Config) {
        self.built.retain(|name, (_, _, token)| {
            let keep = config.auth_provider(name).is_some();
            if !keep {
                token.cancel();
            }
            keep
        });
        let in_use: BTreeSet<&Vec<config::TlsCert>> = config
            .services
            .iter()
            .filter_map(|s| s.http.as_ref().map(|h| &h.tls))
            .collect();
        self.tls.retain(|certs, (_, token)| {
            let keep = in_use.contains(certs);
            if !keep {
                token.cancel();
            }
            keep
        });
    }
}

fn jwt_settings(j: &config::JwtAuth) -> JwtSettings {
    let keys = match &j.keys {
        config::JwtKeys::File(f) => Keys::File(f.clone()),
        config::JwtKeys::Url {
            url,
            refresh,
            min_refetch,
        } => Keys::Jwks {
            url: url.clone(),
            refresh: *refresh,
            min_refetch: *min_refetch,
        },
    };
    let mut s = JwtSettings::new(keys);
    s.issuer = j.issuer.clone();
    s.audiences = j.audiences.clone();
    s.algorithms = j
        .algorithms
        .iter()
        .filter_map(|a| a.parse::<auth::Algorithm>().ok())
        .collect();
    s.leeway = j.leeway;
    s.token_source = match &j.header {
        None => TokenSource::Bearer,
        Some(h) => TokenSource::Header(
            HeaderName::from_bytes(h.as_bytes()).expect("config checked the header name"),
        ),
    };
    s.tenant_claim = j.tenant_claim.clone();
    s.claim_headers = j
        .claim_headers
        .iter()
        .map(|(c, h)| {
            (
                c.clone(),
                HeaderName::from_bytes(h.as_bytes()).expect("config checked the header name"),
            )
        })
        .collect();
    s
}

/// Builds the state for `snapshot`. Errors leave the caller's current state in place.
pub async fn build(
    snapshot: &Snapshot,
    providers: &mut AuthProviders,
    guards: &Arc<Guards>,
    stop: &CancellationToken,
) -> Result<GatewayState, StateError> {
    let config = &snapshot.config;
    let mut frontends = HashMap::new();
    for s in config.services.iter().filter(|s| s.mode == Mode::Http) {
        let (Some(frontend), Some(http)) = (s.frontend, &s.http) else {
            continue;
        };
        let mut specs = Vec::with_capacity(http.routes.len());
        for r in &http.routes {
            let auth = match &r.auth {
                None => None,
                Some(name) => {
                    let p = config
                        .auth_provider(name)
                        .expect("config checked route auth names");
                    Some(providers.get(p, stop).await?)
                }
            };
            specs.push(spec(&s.name, r, auth, &config.gateway.resilience));
        }
        let routes = RouteTable::build(specs).map_err(|source| StateError::Route {
            service: s.name.clone(),
            source,
        })?;
        let tls = if http.tls.is_empty() {
            None
        } else {
            Some(providers.tls(&s.name, &http.tls, stop).await?)
        };
        frontends.insert(
            frontend,
            Frontend {
                name: s.name.as_str().into(),
                routes,
                tls,
            },
        );
    }
    providers.retain(config);
    let upstreams = snapshot
        .services
        .iter()
        .map(|s| {
            let backends: Vec<(SocketAddr, u32)> = s
                .backends
                .iter()
                .filter(|b| b.effective_weight > 0)
                .map(|b| (SocketAddr::new(b.key.addr, b.key.port), b.effective_weight))
                .collect();
            let total = backends.iter().map(|(_, w)| u64::from(*w)).sum();
            let policy = config.gateway.resilience.upstream(&s.name);
            let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.0).collect();
            let (guard, outliers) = guards.service(&s.name, &policy, &addrs);
            let upstream = Upstream {
                backends,
                total,
                outliers,
                guard: Some(guard),
                policy,
            };
            (s.name.as_str().into(), Arc::new(upstream))
        })
        .collect();
    guards.retain(&snapshot.services.iter().map(|s| s.name.as_str()).collect());
    let jwt: Vec<JwtSettings> = config
        .auth
        .iter()
        .filter_map(|a| match &a.kind {
            AuthKind::Jwt(j) => Some(jwt_settings(j)),
            AuthKind::ApiKey(_) => None,
        })
        .collect();
    Ok(GatewayState {
        generation: snapshot.generation,
        frontends,
        upstreams,
        identity_headers: auth::identity_headers(&jwt),
        guards: guards.clone(),
    })
}

fn spec(
    service: &str,
    r: &config::Route,
    auth: Option<Authenticator>,
    defaults: &config::ResilienceSettings,
) -> RouteSpec<RoutePolicy> {
    let f = &r.resilience;
    let failure = Arc::new(RouteFailure {
        timeout: f.timeout.unwrap_or(defaults.request_timeout),
        per_try_timeout: f.per_try_timeout,
        retry: f.retry.clone(),
        fault: f.fault.clone(),
    });
    let policy = RoutePolicy {
        id: format!("{service}/{}", r.name).into(),
        auth,
        scopes: r.scopes.clone(),
        limit: r.rate_limit,
        http2: r.http2,
        failure,
    };
    RouteSpec {
        name: r.name.clone(),
        hosts: r.hosts.clone(),
        path: match &r.path {
            config::PathMatch::Exact(p) => route::PathMatch::Exact(p.clone()),
            config::PathMatch::Prefix(p) => route::PathMatch::Prefix(p.clone()),
        },
        methods: r
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect(),
        headers: r
            .headers
            .iter()
            .map(|(name, m)| route::HeaderMatch {
                name: name.clone(),
                value: match m {
                    config::HeaderMatch::Present => HeaderValueMatch::Present,
                    config::HeaderMatch::Exact(v) => HeaderValueMatch::Exact(v.clone()),
                },
                invert: false,
            })
            .collect(),
        rewrite: match &r.rewrite {
            config::Rewrite::None => route::Rewrite::None,
            config::Rewrite::StripPrefix => route::Rewrite::StripPrefix,
            config::Rewrite::ReplacePrefix(p) => route::Rewrite::ReplacePrefix(p.clone()),
            config::Rewrite::ReplacePath(p) => route::Rewrite::ReplacePath(p.clone()),
        },
        targets: r
            .targets
            .iter()
            .map(|t| (t.service.clone(), t.weight))
            .collect(),
        payload: policy,
    }
}

/// The bucket key a route's limit counts by, for a request from `peer` with `identity`.
pub fn limit_key(key: LimitKey, peer: IpAddr, identity: Option<&auth::Identity>) -> String {
    match (key, identity) {
        (LimitKey::Route, _) => String::new(),
        (LimitKey::Identity, Some(id)) => format!("sub:{}", id.subject),
        (LimitKey::Tenant, Some(id)) if id.tenant.is_some() => {
            format!("tenant:{}", id.tenant.as_deref().unwrap_or_default())
        }
        _ => format!("ip:{peer}"),
    }
}
