//! The contract between the HTTP plumbing and the request phases the integrator plugs in
//! (route match, auth, rate limit, backend choice): [`Decide`].

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};
use http_body_util::Full;

/// What the connection tells a request: who called, which VIP:port they asked for (the accepted
/// socket's local address: the XDP/sk_lookup handoff keeps it), TLS facts.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// The SNI name the client sent (TLS only).
    pub sni: Option<Arc<str>>,
    /// ALPN chose `h2` (TLS only).
    pub alpn_h2: bool,
    /// Raised when the client's bytes held a request with both `Content-Length` and
    /// `Transfer-Encoding` (see `framing`).
    pub smuggled: super::framing::SmuggleFlag,
}

/// Send the request to one backend.
#[derive(Debug, Clone)]
pub struct Forward {
    /// For logs and metrics.
    pub route: Arc<str>,
    /// Upstream service name, for logs and metrics.
    pub service: Arc<str>,
    /// The backend chosen.
    pub backend: SocketAddr,
    /// Talk HTTP/2 (prior knowledge) to the backend.
    pub http2: bool,
    /// Added to the response (e.g. rate-limit headers).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The service's backends and failure handling (breaker, budget, outliers), for
    /// retries; `None`: one try, no breaker.
    pub upstream: Option<Arc<super::state::Upstream>>,
    /// The route's timeouts and retries; `None`: the upstream defaults, no retries.
    pub failure: Option<Arc<super::state::RouteFailure>>,
}

/// The outcome of the request phases.
#[derive(Debug)]
pub enum Decision {
    Forward(Forward),
    /// Answer locally (no route: 404, auth: 401/403, rate limit: 429 ...). `route` is the matched
    /// route if any, for logs and metrics.
    Respond {
        route: Option<Arc<str>>,
        response: Response<Full<Bytes>>,
    },
}

/// The request phases before the upstream.
pub trait Decide: Send + Sync + 'static {
    /// Request phases before the upstream: route match, auth, rate limit, backend choice. May
    /// rewrite the request's path (uri) and headers in place (strip/set identity headers).
    ///
    /// Called after the request checks and the forwarding headers (`X-Forwarded-*`,
    /// `Forwarded`, `X-Request-ID`, `traceparent`) are in place and hop-by-hop headers are gone.
    fn decide(
        &self,
        conn: &ConnInfo,
        req: &mut http::request::Parts,
    ) -> impl Future<Output = Decision> + Send;
}
