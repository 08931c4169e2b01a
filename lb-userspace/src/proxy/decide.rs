//! The request phases before the upstream, in a fixed order: identity headers stripped ->
//! frontend by VIP:port -> route -> auth (401/403) -> rate limits (429) -> service and
//! backend (503) -> path rewrite. Each local answer is counted by the caller's metrics.

use std::{sync::Arc, time::Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::{
    auth::{AuthFailure, Identity, strip_identity_headers},
    limit::{BucketKey, LimitSpec, RateLimiter},
    metrics::GatewayMetrics,
    pipeline::{ConnInfo, Decide, Decision, Forward},
    resilience::fault,
    shared_limit::{SharedLimiter, Spec},
    state::{GatewayState, limit_key},
};
use crate::config::OnRedisError;

/// The gateway's [`Decide`]: reads the current [`GatewayState`] once per request.
pub struct Gatekeeper {
    pub state: Arc<ArcSwap<GatewayState>>,
    pub limiter: Arc<RateLimiter>,
    /// Fleet-wide limits (`shared = "redis"`); `None` without `[gateway.redis]`.
    pub shared: Option<Arc<SharedLimiter>>,
    pub metrics: Arc<GatewayMetrics>,
}

/// A local answer with a short text body.
fn respond(
    route: Option<Arc<str>>,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: &'static str,
) -> Decision {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (n, v) in headers {
        r.headers_mut().append(n, v);
    }
    Decision::Respond { route, response: r }
}

fn auth_failed(route: &Arc<str>, f: AuthFailure) -> Decision {
    let headers = f
        .www_authenticate
        .map(|v| vec![(header::WWW_AUTHENTICATE, v)])
        .unwrap_or_default();
    let body = match f.status {
        StatusCode::FORBIDDEN => "forbidden\n",
        StatusCode::SERVICE_UNAVAILABLE => "authentication unavailable\n",
        _ => "unauthorized\n",
    };
    respond(Some(route.clone()), f.status, headers, body)
}

/// The request's host: the absolute-form authority, else `Host`.
fn host(req: &http::request::Parts) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// What a shared limit does without Redis (the route's `on_redis_error`).
enum Fallback {
    Open,
    Closed,
    Local,
}

impl Gatekeeper {
    fn redis_failed(&self, route: &str, mode: OnRedisError) -> Fallback {
        let (f, label) = match mode {
            OnRedisError::Open => (Fallback::Open, "open"),
            OnRedisError::Closed => (Fallback::Closed, "closed"),
            OnRedisError::Local => (Fallback::Local, "local"),
        };
        self.metrics.redis.fallback(route, label);
        f
    }
}

impl Decide for Gatekeeper {
    async fn decide(&self, conn: &ConnInfo, req: &mut http::request::Parts) -> Decision {
        let state = self.state.load_full();
        // Whatever the route, a client never sets the identity headers we set.
        strip_identity_headers(&mut req.headers, &state.identity_headers);
        let Some(frontend) = state.frontends.get(&conn.local) else {
            return respond(None, StatusCode::NOT_FOUND, vec![], "no gateway here\n");
        };
        let path_and_query = req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let matched =
            match frontend
                .routes
                .find(host(req), &req.method, &path_and_query, &req.headers)
            {
                Err(_) => {
                    return respond(None, StatusCode::BAD_REQUEST, vec![], "bad request path\n");
                }
                Ok(None) => return respond(None, StatusCode::NOT_FOUND, vec![], "no route\n"),
                Ok(Some(m)) => m,
            };
        let policy = matched.route.payload();
        let route = policy.id.clone();

        let identity: Option<Arc<Identity>> = match &policy.auth {
            None => None,
            Some(a) => match a.authenticate(&req.headers).await {
                Err(f) => {
                    self.metrics.auth_failure(&route, f.reason);
                    return auth_failed(&route, f);
                }
                Ok(id) => {
                    if let Err(f) = id.require_scopes(&policy.scopes) {
                        self.metrics.auth_failure(&route, f.reason);
                        return auth_failed(&route, f);
                    }
                    req.headers.remove(a.credential_header());
                    id.apply(&mut req.headers);
                    Some(id)
                }
            },
        };

        // Rate limits: the route's, then the API key's own; the tighter one shows in the
        // headers (the first refusal, else the fewest remaining).
        let now = Instant::now();
        let mut decisions = Vec::with_capacity(2);
        if let Some(l) = policy.limit {
            let key = limit_key(l.key, conn.peer.ip(), identity.as_deref());
            let local = |now| {
                self.limiter.check(
                    BucketKey {
                        route: &route,
                        key: &key,
                    },
                    LimitSpec {
                        rate_per_sec: l.rate,
                        burst: l.burst,
                    },
                    now,
                )
            };
            match (l.shared, &self.shared) {
                (Some(s), Some(shared)) => {
                    let spec = Spec {
                        rate: l.rate,
                        burst: l.burst,
                    };
                    match shared.check(&route, &key, spec, s.lease).await {
                        Ok(d) => decisions.push(d),
                        Err(_) => match self.redis_failed(&route, s.on_error) {
                            Fallback::Open => {}
                            Fallback::Local => decisions.push(local(Instant::now())),
                            Fallback::Closed => {
                                return respond(
                                    Some(route),
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    vec![],
                                    "rate limit unavailable\n",
                                );
                            }
                        },
                    }
                }
                _ => decisions.push(local(now)),
            }
        }
        if let Some(id) = &identity
            && let Some(k) = id.limits
        {
            let key = format!("key:{}", id.subject);
            decisions.push(self.limiter.check(
                BucketKey {
                    route: &route,
                    key: &key,
                },
                LimitSpec {
                    rate_per_sec: k.rate,
                    burst: k.burst,
                },
                now,
            ));
        }
        let shown = decisions
            .iter()
            .find(|d| !d.allowed)
            .or_else(|| decisions.iter().min_by_key(|d| d.remaining));
        let limit_headers = shown.map(|d| d.headers()).unwrap_or_default();
        if shown.is_some_and(|d| !d.allowed) {
            self.metrics.rate_limited(&route);
            return respond(
                Some(route),
                StatusCode::TOO_MANY_REQUESTS,
                limit_headers,
                "too many requests\n",
            );
        }

        let r = super::ids::fast_random();
        if let Some(f) = &policy.failure.fault {
            let fr = super::ids::fast_random();
            let faults = fault::choose(f, &req.headers, fr, fr.rotate_left(32));
            if let Some(delay) = faults.delay {
                self.metrics.fault(&route, "delay");
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = faults.abort {
                self.metrics.fault(&route, "abort");
                let h = vec![(
                    HeaderName::from_static("x-lb-fault"),
                    HeaderValue::from_static("abort"),
                )];
                return respond(Some(route), status, h, "fault injected\n");
            }
        }
        let service = matched.route.pick(r);
        let Some((service, upstream)) = state.upstreams.get_key_value(service) else {
            return respond(
                Some(route),
                StatusCode::SERVICE_UNAVAILABLE,
                limit_headers,
                "no such upstream\n",
            );
        };
        let Some(backend) = upstream.pick(r.rotate_left(32)) else {
            return respond(
                Some(route),
                StatusCode::SERVICE_UNAVAILABLE,
                limit_headers,
                "no healthy backend\n",
            );
        };
        if matched.path != path_and_query {
            match matched.path.parse::<http::uri::PathAndQuery>() {
                Ok(pq) => {
                    let mut parts = std::mem::take(&mut req.uri).into_parts();
                    parts.path_and_query = Some(pq);
                    req.uri = http::Uri::from_parts(parts).unwrap_or_default();
                }
                Err(_) => {
                    return respond(Some(route), StatusCode::BAD_REQUEST, vec![], "bad path\n");
                }
            }
        }
        Decision::Forward(Forward {
            route,
            service: service.clone(),
            backend,
            http2: policy.http2,
            response_headers: limit_headers,
            upstream: Some(upstream.clone()),
            failure: Some(policy.failure.clone()),
        })
    }
}
