//! Malformed and ambiguous HTTP/1.1 framing never reaches a backend: raw bytes over TCP, then
//! the status, the connection closed, and the backend's connection count.
//!
//! Who refuses what (hyper 1.12 + our checks):
//! - differing `Content-Length`s, `Transfer-Encoding` not ending in `chunked`, invalid header
//!   names, HTTP/1.0 with `Transfer-Encoding`: hyper, 400;
//! - headers over `max_header_bytes`: hyper, 431;
//! - `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked`): our check, 400;
//! - a bad chunk size: our first-chunk read, 400;
//! - `Content-Length` + `Transfer-Encoding`: hyper removes `Content-Length`, decodes chunked and
//!   closes the connection after the response (RFC 9112 6.1/6.3), before our code sees the
//!   request, so it cannot answer 400. The backend gets one re-framed request; whatever was
//!   smuggled after the chunked body is never parsed.

use std::sync::atomic::Ordering;

use super::*;

async fn refused(req: &[u8], want: u16) {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let (text, closed) = raw(proxy.addr, req).await;
    assert_eq!(status_of(&text), want, "{text}");
    assert!(closed, "connection must be closed after {want}");
    // Exactly one response: nothing after the bad request was parsed as another request.
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert_eq!(
        backend.conns.load(Ordering::SeqCst),
        0,
        "backend was contacted"
    );
    assert!(backend.requests().is_empty());
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n";

#[tokio::test]
async fn differing_content_lengths() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{SMUGGLED}"
    );
    refused(req.as_bytes(), 400).await;
}

#[tokio::test]
async fn chunked_not_last() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    refused(req.as_bytes(), 400).await;
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    refused(req.as_bytes(), 400).await;
}

#[tokio::test]
async fn two_transfer_encoding_lines() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    refused(req.as_bytes(), 400).await;
}

#[tokio::test]
async fn bad_chunk_size() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    refused(req.as_bytes(), 400).await;
}

#[tokio::test]
async fn invalid_header_name() {
    refused(
        b"GET / HTTP/1.1\r\nHost: api.test\r\nBad Name: x\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn invalid_header_value() {
    refused(
        b"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a\x01b\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn missing_host() {
    refused(b"GET / HTTP/1.1\r\n\r\n", 400).await;
}

#[tokio::test]
async fn oversized_headers() {
    let big = "a".repeat(super::super::server::DEFAULT_MAX_HEADER_BYTES + 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: api.test\r\nX-Big: {big}\r\n\r\n");
    refused(req.as_bytes(), 431).await;
}

/// hyper would re-frame it as chunked and close after it; a front proxy refuses it (some
/// backend might frame by the length): `framing` sees both headers in the raw bytes.
#[tokio::test]
async fn content_length_and_chunked_is_refused() {
    let req = format!(
        "POST /cl-te HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    refused(req.as_bytes(), 400).await;
    let te_first = format!(
        "POST /cl-te HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    refused(te_first.as_bytes(), 400).await;
}

/// The same after a clean keep-alive request with a body on the same connection.
#[tokio::test]
async fn content_length_and_chunked_after_a_clean_request_is_refused() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let req = format!(
        "POST /ok HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello\
         POST /cl-te HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let (text, closed) = raw(proxy.addr, req.as_bytes()).await;
    assert!(closed, "connection must be closed: {text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    let seen = backend.requests();
    assert!(
        seen.iter()
            .all(|s| s.method == "POST" && s.path_query == "/ok"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn connect_is_refused() {
    refused(
        b"CONNECT backend.test:443 HTTP/1.1\r\nHost: backend.test:443\r\n\r\n",
        405,
    )
    .await;
}
