//! One request's exchange with its upstream: tries with per-try and whole-request
//! timeouts, retries (backoff with jitter, within the service's retry budget, to another
//! backend when there is one), and outlier records of every try.
//!
//! Only replayable requests are retried: the route retries, the method is idempotent (or
//! the route allows others), and the body was buffered whole (see [`ReqBody`]).

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode, request::Parts};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    metrics::{GatewayMetrics, UpstreamErrorKind},
    pipeline::Forward,
    resilience::{backoff::backoff, breaker::Overflow, outlier::Outcome},
    upstream::{ProxyBody, Upstreams},
};

/// Tries at most (the config's bound).
const MAX_TRIES: usize = 10;

/// A request body: streamed (one try only) or held whole (may be sent again).
pub(super) enum ReqBody {
    Stream(ProxyBody),
    Replay(Bytes),
}

/// Why no backend response is passed on.
#[derive(Debug)]
pub(super) enum Failed {
    /// The last try failed (502, or 504 for its timeout).
    Upstream(UpstreamErrorKind),
    /// The whole-request timeout expired.
    RequestTimeout,
    /// A per-try timeout expired and no retry followed.
    TryTimeout,
    /// The service's circuit breaker refused a connection.
    Overloaded(Overflow),
}

impl Failed {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Upstream(UpstreamErrorKind::Timeout)
            | Self::RequestTimeout
            | Self::TryTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Self::RequestTimeout => "upstream request timeout",
            Self::TryTimeout | Self::Upstream(UpstreamErrorKind::Timeout) => "upstream timed out",
            Self::Overloaded(_) => "upstream overloaded",
            Self::Upstream(_) => "upstream unavailable",
        }
    }
}

/// What the exchange came to, and the backend of its last try.
pub(super) struct Exchange {
    pub result: Result<Response<Incoming>, Failed>,
    pub backend: SocketAddr,
}

fn copy_head(p: &Parts) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r
}

fn replay(b: &Bytes) -> ProxyBody {
    Full::new(b.clone())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Runs the tries of `fwd` for the request `parts` + `body`.
pub(super) async fn exchange(
    upstreams: &Upstreams,
    metrics: &GatewayMetrics,
    fwd: &Forward,
    parts: Parts,
    body: ReqBody,
) -> Exchange {
    let failure = fwd.failure.as_deref();
    let timeout = failure.map_or(upstreams.response_timeout(), |f| f.timeout);
    let deadline = Instant::now() + timeout;
    let retry = match (&body, failure.and_then(|f| f.retry.as_ref())) {
        (ReqBody::Replay(_), Some(r)) if r.non_idempotent || parts.method.is_idempotent() => {
            Some(r)
        }
        _ => None,
    };
    let tries = retry.map_or(1, |r| (r.tries as usize).min(MAX_TRIES));
    let per_try = failure.and_then(|f| f.per_try_timeout);
    let upstream = fwd.upstream.as_deref();
    let mut tried = [fwd.backend; MAX_TRIES];
    let mut backend = fwd.backend;
    let mut head = Some(parts);
    let mut body = Some(body);
    // Held while a retry is in flight.
    let mut _permit = None;
    for attempt in 1..=tries {
        let last = attempt == tries;
        let req = if last {
            let parts = head.take().expect("the head is sent once, last");
            let body = match body.take().expect("the body is sent once, last") {
                ReqBody::Stream(b) => b,
                ReqBody::Replay(b) => replay(&b),
            };
            Request::from_parts(parts, body)
        } else {
            let (h, b) = (head.as_ref(), body.as_ref());
            let Some(ReqBody::Replay(bytes)) = b else {
                unreachable!("only a replayable body gets more than one try")
            };
            copy_head(h.expect("kept for the last try")).map(|()| replay(bytes))
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            metrics.timeout(&fwd.route, "request");
            return Exchange {
                result: Err(Failed::RequestTimeout),
                backend,
            };
        }
        let limit = per_try.map_or(remaining, |p| p.min(remaining));
        let try_limited = limit < remaining;
        let sent = upstreams.send_within(backend, fwd.http2, req, limit).await;
        // How it went: outlier outcome, retryable, and the result to pass on if final.
        let (outcome, retryable, result) = match sent {
            Ok(resp) => {
                let status = resp.status();
                let outcome = if status.is_server_error() {
                    Outcome::Status {
                        gateway: matches!(status.as_u16(), 502..=504),
                    }
                } else {
                    Outcome::Success
                };
                let again = retry.is_some_and(|r| r.statuses.contains(&status.as_u16()));
                (Some(outcome), again, Ok(resp))
            }
            Err(e) => {
                tracing::debug!(route = %fwd.route, "gateway: {e}");
                if let Some(o) = e.overflow {
                    // Refused here, not a backend failure: no retry, no outlier record.
                    (None, false, Err(Failed::Overloaded(o)))
                } else {
                    metrics.upstream_error(&fwd.service, e.kind);
                    let (outcome, again, failed) = match e.kind {
                        UpstreamErrorKind::Connect => (
                            Outcome::Connect,
                            retry.is_some_and(|r| r.on_connect_failure),
                            Failed::Upstream(e.kind),
                        ),
                        UpstreamErrorKind::Reset => (
                            Outcome::Reset,
                            retry.is_some_and(|r| r.on_reset),
                            Failed::Upstream(e.kind),
                        ),
                        UpstreamErrorKind::Timeout if try_limited => (
                            Outcome::Reset,
                            retry.is_some_and(|r| r.on_timeout),
                            Failed::TryTimeout,
                        ),
                        UpstreamErrorKind::Timeout => {
                            (Outcome::Reset, false, Failed::RequestTimeout)
                        }
                    };
                    (Some(outcome), again, Err(failed))
                }
            }
        };
        if let (Some(o), Some(u)) = (outcome, upstream)
            && let Some(g) = &u.guard
            && let Some(i) = u.backends.iter().position(|b| b.0 == backend)
            && let Some(rec) = u.outliers.get(i)
        {
            g.record(&u.policy, rec, o);
        }
        let pause = retry.map_or(Duration::ZERO, |r| {
            backoff(
                attempt as u32,
                r.backoff_base,
                r.backoff_max,
                super::ids::fast_random(),
            )
        });
        let time_left = deadline.saturating_duration_since(Instant::now()) > pause;
        let budget = match upstream.and_then(|u| u.guard.as_ref().map(|g| (u, g))) {
            Some((u, g)) if retryable && !last && time_left => {
                g.budget.try_retry(u.policy.budget, g.breaker.requests())
            }
            _ => None,
        };
        let (Some(permit), Some(u)) = (budget, upstream) else {
            if let Err(f) = &result {
                match f {
                    Failed::TryTimeout => metrics.timeout(&fwd.route, "per_try"),
                    Failed::RequestTimeout => metrics.timeout(&fwd.route, "request"),
                    _ => {}
                }
            }
            return Exchange { result, backend };
        };
        // The failed response (if any) is dropped: its connection is not reused.
        drop(result);
        _permit = Some(permit);
        metrics.retry(&fwd.route);
        tokio::time::sleep(pause).await;
        // Never the same backend twice while another serving one is left.
        if let Some(i) = u.pick_index(super::ids::fast_random(), &tried[..attempt]) {
            backend = u.backends[i].0;
        }
        tried[attempt] = backend;
    }
    unreachable!("the last try returns")
}
