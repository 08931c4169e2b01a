//! The request pipeline, generic over [`Decide`]: request checks -> forwarding headers ->
//! `decide` -> upstream request -> response headers -> access log + metrics.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::{
    access_log::{AccessLog, AccessRecord, millis},
    body::{Finish, IdleTimeout, Observed},
    headers,
    metrics::{GatewayMetrics, UpstreamErrorKind},
    pipeline::{ConnInfo, Decide, Decision},
    resilience::breaker::RequestPermit,
    server::ServerSettings,
    tries::{self, Failed, ReqBody},
    upstream::{BoxError, ProxyBody, Upstreams},
};

/// Everything a request needs, shared by all connections of one listener.
pub(super) struct Shared<D> {
    pub decide: Arc<D>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<GatewayMetrics>,
    pub log: AccessLog,
    pub settings: ServerSettings,
    /// Cancelled when the server is done draining: ends upgraded (WebSocket) tunnels.
    pub closing: CancellationToken,
    /// One clone per live tunnel (strong count - 1 = tunnels), for the drain.
    pub tunnels: Arc<()>,
}

/// Why a request is refused before anything else runs: (status, reason).
fn check(req: &Request<Incoming>) -> Result<(), (StatusCode, &'static str)> {
    // A reverse proxy has no tunnel to offer (WebSocket uses GET + Upgrade).
    if req.method() == http::Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported"));
    }
    let bad = |why| (StatusCode::BAD_REQUEST, why);
    let h = req.headers();
    let h1 = req.version() <= Version::HTTP_11;
    // hyper already refuses a Transfer-Encoding that does not end in `chunked`; anything but
    // exactly `chunked` (e.g. `gzip, chunked`) is refused here: backends disagree on the rest.
    let te: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !te.is_empty() {
        if !h1 || te.len() != 1 || !te[0].as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(bad("unsupported transfer-encoding"));
        }
        // hyper drops Content-Length when both are present (RFC 9112 6.3); belt and braces.
        if h.contains_key(header::CONTENT_LENGTH) {
            return Err(bad("both content-length and transfer-encoding"));
        }
    }
    let mut cl = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = cl.next() {
        let parse = |v: &HeaderValue| {
            std::str::from_utf8(v.as_bytes())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
        };
        let n = parse(first).ok_or(bad("bad content-length"))?;
        if cl.any(|v| parse(v) != Some(n)) {
            return Err(bad("conflicting content-length"));
        }
    }
    if h1 && req.version() == Version::HTTP_11 && h.get_all(header::HOST).iter().count() != 1 {
        return Err(bad("one Host header required"));
    }
    Ok(())
}

fn full(status: StatusCode, msg: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(msg.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn boxed_full(r: Response<Full<Bytes>>) -> Response<ProxyBody> {
    r.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// Run one request through the pipeline. Never fails: errors become responses.
pub(super) async fn handle<D: Decide>(
    shared: Arc<Shared<D>>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let h1 = req.version() <= Version::HTTP_11;
    let mut record = AccessRecord {
        route: None,
        method: req.method().to_string(),
        // The path only: query strings often carry tokens.
        path: req.uri().path().to_owned(),
        status: 0,
        duration_ms: 0.0,
        upstream_ms: None,
        backend: None,
        request_id: String::new(),
        bytes: 0,
        peer: conn.peer,
    };
    // The request's place under its service's max_requests, held until the body ends
    // (a Mutex only to be Sync: never contended, one request owns it).
    let hold: Mutex<Option<RequestPermit>> = Mutex::new(None);
    let finish = |record: AccessRecord, resp: Response<ProxyBody>| {
        let mut record = record;
        record.status = resp.status().as_u16();
        Ok(resp.map(|b| {
            Observed::new(
                b,
                Finish {
                    record,
                    start,
                    metrics: shared.metrics.clone(),
                    log: shared.log.clone(),
                    _hold: hold.lock().ok().and_then(|mut h| h.take()),
                },
            )
            .boxed_unsync()
        }))
    };

    // 1. Request checks: refuse and close, so nothing after a bad framing is ever read.
    let smuggled = conn.smuggled.is_set().then_some((
        StatusCode::BAD_REQUEST,
        "both content-length and transfer-encoding",
    ));
    if let Some((status, why)) = smuggled.map_or_else(|| check(&req).err(), Some) {
        tracing::debug!(peer = %conn.peer, "gateway: refused: {why}");
        let mut r = boxed_full(full(status, why));
        if h1 {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        record.request_id = "-".into();
        return finish(record, r);
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let upgrading = h1 && headers::wants_websocket(req.method(), req.headers());
    let client_upgrade: Option<OnUpgrade> = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // 2. Forwarding headers.
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()));
    // RFC 9112 3.2.2: an absolute-form target's authority overrides Host.
    let host = match (h1, parts.uri.authority()) {
        (true, Some(a)) => Some(a.as_str().to_owned()),
        _ => host,
    };
    // Also an HTTP/2 client's :authority becomes Host for HTTP/1.1 backends; an HTTP/1.0
    // request without one gets the VIP the client connected to.
    let host_header = host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
        .or_else(|| HeaderValue::from_str(&conn.local.to_string()).ok());
    if let Some(v) = host_header {
        parts.headers.insert(header::HOST, v);
    }
    let request_id = headers::ensure_request_id(&mut parts.headers);
    record.request_id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
    headers::propagate_trace(&mut parts.headers, shared.settings.sample_new_traces);
    headers::strip_hop_by_hop(&mut parts.headers, upgrading);
    // This hop answered any 100-continue itself (hyper does when the body is read).
    parts.headers.remove(header::EXPECT);
    headers::add_forwarding(&mut parts.headers, &conn, host.as_deref());

    // 3. Decide.
    let fwd = match shared.decide.decide(&conn, &mut parts).await {
        Decision::Respond { route, response } => {
            record.route = route;
            let mut r = boxed_full(response);
            r.headers_mut()
                .insert(headers::X_REQUEST_ID, request_id.clone());
            return finish(record, r);
        }
        Decision::Forward(f) => f,
    };
    record.route = Some(fwd.route.clone());
    record.backend = Some(fwd.backend);

    // 4. Upstream request: within the service's circuit breaker.
    if let Some(g) = fwd.upstream.as_ref().and_then(|u| u.guard.as_ref()) {
        match g.breaker.enter() {
            Ok(p) => {
                if let Ok(mut h) = hold.lock() {
                    *h = Some(p);
                }
            }
            Err(o) => {
                shared.metrics.overloaded(&fwd.route);
                let r = overloaded(o.as_str(), &request_id);
                return finish(record, r);
            }
        }
    }
    // A body that may be retried is read whole first (bounded by the route's limit);
    // anything else streams. A chunked HTTP/1.1 body is read up to its first chunk before
    // the backend is contacted, so a bad chunk size gets a 400 and the backend sees nothing.
    let replay_limit = fwd
        .failure
        .as_ref()
        .and_then(|f| f.retry.as_ref())
        .filter(|r| !upgrading && !chunked && (r.non_idempotent || parts.method.is_idempotent()))
        .map(|r| r.max_body_bytes);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match replay_limit {
        Some(_) if hyper::body::Body::is_end_stream(&body) => ReqBody::Replay(Bytes::new()),
        Some(limit) if declared.is_some_and(|n| n <= limit) => {
            let read = tokio::time::timeout(shared.settings.header_read_timeout, body.collect());
            match read.await {
                Ok(Ok(c)) => ReqBody::Replay(c.to_bytes()),
                Ok(Err(_)) => {
                    let r = boxed_full(full(StatusCode::BAD_REQUEST, "bad request body"));
                    return finish(record, r);
                }
                Err(_) => {
                    let mut r =
                        boxed_full(full(StatusCode::REQUEST_TIMEOUT, "request body timeout"));
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return finish(record, r);
                }
            }
        }
        _ if chunked => {
            let mut body = body;
            let first =
                tokio::time::timeout(shared.settings.header_read_timeout, body.frame()).await;
            match first {
                Ok(None) => {
                    ReqBody::Stream(Empty::new().map_err(|never| match never {}).boxed_unsync())
                }
                Ok(Some(Ok(frame))) => {
                    let head =
                        futures_util::stream::once(std::future::ready(Ok::<_, BoxError>(frame)));
                    let rest = futures_util::StreamExt::map(body.into_data_stream(), |r| {
                        r.map(hyper::body::Frame::data).map_err(BoxError::from)
                    });
                    // Trailers of a chunked request are not forwarded (rare; gRPC is HTTP/2).
                    ReqBody::Stream(
                        StreamBody::new(futures_util::StreamExt::chain(head, rest)).boxed_unsync(),
                    )
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(peer = %conn.peer, "gateway: bad chunked body: {e}");
                    let mut r = boxed_full(full(StatusCode::BAD_REQUEST, "bad chunked body"));
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return finish(record, r);
                }
                Err(_) => {
                    let mut r =
                        boxed_full(full(StatusCode::REQUEST_TIMEOUT, "request body timeout"));
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return finish(record, r);
                }
            }
        }
        _ => ReqBody::Stream(body.map_err(BoxError::from).boxed_unsync()),
    };
    let up_start = Instant::now();
    let sent = tries::exchange(&shared.upstreams, &shared.metrics, &fwd, parts, body).await;
    record.upstream_ms = Some(millis(up_start.elapsed()));
    record.backend = Some(sent.backend);
    let mut resp = match sent.result {
        Ok(r) => r,
        Err(Failed::Overloaded(o)) => {
            shared.metrics.overloaded(&fwd.route);
            return finish(record, overloaded(o.as_str(), &request_id));
        }
        Err(e) => {
            let mut r = boxed_full(full(e.status(), e.message()));
            r.headers_mut()
                .insert(headers::X_REQUEST_ID, request_id.clone());
            return finish(record, r);
        }
    };

    // 5. Response headers (and the tunnel for an accepted upgrade).
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, client_upgrade) {
        (true, Some(client)) => {
            let upstream = hyper::upgrade::on(&mut resp);
            let guard = shared.tunnels.clone();
            tokio::spawn(tunnel(client, upstream, shared.closing.clone(), guard));
        }
        (true, None) => {
            shared
                .metrics
                .upstream_error(&fwd.service, UpstreamErrorKind::Reset);
            let r = boxed_full(full(
                StatusCode::BAD_GATEWAY,
                "unexpected 101 from upstream",
            ));
            return finish(record, r);
        }
        _ => {}
    }
    let (mut rparts, rbody) = resp.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers, switching);
    if !h1 {
        // HTTP/2 to the client carries no connection-specific headers at all.
        rparts.headers.remove(header::TE);
    }
    add_response_headers(&mut rparts.headers, fwd.response_headers);
    rparts.headers.insert(headers::X_REQUEST_ID, request_id);
    let (metrics, service) = (shared.metrics.clone(), fwd.service.clone());
    let body = rbody
        .map_err(move |e| {
            // The backend broke off mid-body; the client sees its stream reset.
            metrics.upstream_error(&service, UpstreamErrorKind::Reset);
            BoxError::from(e)
        })
        .boxed_unsync();
    let body = match shared.upstreams.body_idle_timeout() {
        Some(idle) => {
            IdleTimeout::new(body, idle, shared.metrics.clone(), fwd.service.clone()).boxed_unsync()
        }
        None => body,
    };
    finish(record, Response::from_parts(rparts, body))
}

/// 503 at once: the service's circuit breaker is open for `reason`.
fn overloaded(reason: &'static str, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut r = boxed_full(full(StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded"));
    r.headers_mut().insert(
        http::HeaderName::from_static("x-lb-overloaded"),
        HeaderValue::from_static(reason),
    );
    r.headers_mut()
        .insert(headers::X_REQUEST_ID, request_id.clone());
    r
}

fn add_response_headers(h: &mut HeaderMap, extra: Vec<(http::HeaderName, HeaderValue)>) {
    for (k, v) in extra {
        h.append(k, v);
    }
}

/// Join an accepted upgrade's two sides until either closes or the server is closing.
/// `_live` is held while the tunnel runs: the server's drain waits for it.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    closing: CancellationToken,
    _live: Arc<()>,
) {
    let (c, u) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("gateway: upgrade failed: {e}");
            return;
        }
    };
    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
            if let Err(e) = r {
                tracing::debug!("gateway: tunnel ended: {e}");
            }
        }
        _ = closing.cancelled() => {}
    }
}
