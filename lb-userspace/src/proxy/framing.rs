//! Request-smuggling guard for HTTP/1.1 connections: follows the framing of the raw bytes a
//! client sends (heads parsed with `httparse`, bodies skipped by `Content-Length` or by chunk
//! sizes) and flags the connection when a request head carries both `Content-Length` and
//! `Transfer-Encoding`.
//!
//! Why outside hyper: hyper accepts such a request (RFC 9112 lets a server drop the length
//! and close after it) and removes `Content-Length` before the handler sees the request, so
//! the handler cannot tell. A front proxy should refuse it outright (400), as nginx and
//! Envoy do: some backend might frame it by the length and read a second, smuggled request.
//!
//! The guard only reads; the bytes go to hyper unchanged. It stops following (and never
//! flags) once framing is not plain HTTP/1.1 requests: the HTTP/2 preface, an upgrade or
//! CONNECT (raw bytes follow), a head hyper will refuse anyway (too large, unparsable).

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest head followed; hyper refuses larger ones (431) before they matter.
const MAX_HEAD: usize = 64 * 1024 + 4;
/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

/// Set when a request on the connection had both framing headers; the handler answers
/// 400 and closes.
#[derive(Clone, Debug, Default)]
pub struct SmuggleFlag(Arc<AtomicBool>);

impl SmuggleFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping a body of this many bytes.
    Body(u64),
    /// Chunked body: collecting a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF (the `+ 2`).
    ChunkData(u64),
    /// Collecting trailer lines until an empty one.
    Trailers(Vec<u8>),
    /// Not following any more.
    Off,
}

/// The framing follower. Feed it every byte the client sends, in order.
#[derive(Debug)]
pub struct Framing {
    state: State,
    flag: SmuggleFlag,
}

impl Framing {
    pub fn new(flag: SmuggleFlag) -> Self {
        Self {
            state: State::Head(Vec::new()),
            flag,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            data = match &mut self.state {
                State::Off => return,
                State::Body(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    &data[n..]
                }
                State::ChunkData(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                    &data[n..]
                }
                State::Head(buf) => {
                    let Some(rest) = take_until(buf, data, b"\r\n\r\n", MAX_HEAD) else {
                        if buf.len() >= MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let head = std::mem::take(buf);
                    self.state = self.after_head(&head);
                    rest
                }
                State::ChunkSize(buf) => {
                    let Some(rest) = take_until(buf, data, b"\n", MAX_LINE) else {
                        if buf.len() >= MAX_LINE {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let line = std::mem::take(buf);
                    self.state = match chunk_size(&line) {
                        Some(0) => State::Trailers(Vec::new()),
                        // The data, then its CRLF.
                        Some(n) => State::ChunkData(n.saturating_add(2)),
                        None => State::Off,
                    };
                    rest
                }
                State::Trailers(buf) => {
                    let Some(rest) = take_until(buf, data, b"\n", MAX_LINE) else {
                        if buf.len() >= MAX_LINE {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let line = std::mem::take(buf);
                    if line == b"\r\n" || line == b"\n" {
                        self.state = State::Head(Vec::new());
                    }
                    rest
                }
            };
        }
    }

    /// What follows a complete head.
    fn after_head(&self, head: &[u8]) -> State {
        // Blank lines before a request line are allowed (RFC 9112 2.2).
        let start = head.iter().position(|b| *b != b'\r' && *b != b'\n');
        let Some(start) = start else {
            return State::Head(Vec::new());
        };
        let head = &head[start..];
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
            return State::Off;
        };
        let (mut cl, mut te, mut upgrade) = (None, false, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .or(Some(u64::MAX));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if te && cl.is_some() {
            self.flag.set();
            return State::Off;
        }
        if upgrade || req.method == Some("CONNECT") {
            return State::Off;
        }
        match (te, cl) {
            (true, _) => State::ChunkSize(Vec::new()),
            (false, Some(u64::MAX)) => State::Off,
            (false, Some(0)) | (false, None) => State::Head(Vec::new()),
            (false, Some(n)) => State::Body(n),
        }
    }
}

/// Appends `data` to `buf` up to and including the first `delim` (searching across the
/// boundary); `Some(rest of data)` when found, `None` (everything taken) otherwise. Never
/// lets `buf` grow past `max`.
fn take_until<'a>(buf: &mut Vec<u8>, data: &'a [u8], delim: &[u8], max: usize) -> Option<&'a [u8]> {
    let from = buf.len().saturating_sub(delim.len() - 1);
    let room = max.saturating_sub(buf.len());
    let take = data.len().min(room);
    buf.extend_from_slice(&data[..take]);
    let at = buf[from..]
        .windows(delim.len())
        .position(|w| w == delim)
        .map(|p| from + p + delim.len())?;
    let used_from_data = at - (buf.len() - take);
    buf.truncate(at);
    Some(&data[used_from_data..])
}

/// The hex size of a chunk-size line (`1a;ext\r\n`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let hex = text.split([';', '\r', '\n']).next()?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// A client stream whose reads also go through a [`Framing`] follower.
pub struct Guarded<S> {
    inner: S,
    framing: Framing,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, flag: SmuggleFlag) -> Self {
        Self {
            inner,
            framing: Framing::new(flag),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let this = &mut *self;
            this.framing.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; whether the flag went up.
    fn flagged(wire: &[u8], step: usize) -> bool {
        let flag = SmuggleFlag::default();
        let mut f = Framing::new(flag.clone());
        for piece in wire.chunks(step) {
            f.feed(piece);
        }
        flag.is_set()
    }

    const SMUGGLE: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG";

    #[test]
    fn cl_and_te_in_the_first_request_at_any_split() {
        for step in [1, 2, 3, 7, 64, 4096] {
            assert!(flagged(SMUGGLE, step), "step {step}");
        }
        let te_first = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\ncontent-length: 3\r\n\r\n0\r\n\r\n";
        assert!(flagged(te_first, 5));
    }

    #[test]
    fn after_bodies_of_both_kinds() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // A body that looks like a smuggling head must not count: it is a body.
        let body = b"X\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        wire.extend_from_slice(
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        wire.extend_from_slice(body);
        wire.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        wire.extend_from_slice(b"5;ext=1\r\nhello\r\n4\r\n\r\n\r\n\r\n0\r\nTrailer: x\r\n\r\n");
        for step in [1, 3, 9, 1000] {
            assert!(!flagged(&wire, step), "clean stream flagged at step {step}");
        }
        wire.extend_from_slice(SMUGGLE);
        for step in [1, 3, 9, 1000] {
            assert!(
                flagged(&wire, step),
                "smuggle after bodies missed at step {step}"
            );
        }
    }

    #[test]
    fn stops_following_where_framing_ends() {
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(SMUGGLE);
        assert!(!flagged(&h2, 10), "HTTP/2 bytes are not HTTP/1 heads");
        let mut ws =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_vec();
        ws.extend_from_slice(SMUGGLE);
        assert!(
            !flagged(&ws, 10),
            "tunnel bytes after an upgrade are not heads"
        );
    }

    #[test]
    fn oversized_head_stops_following() {
        let mut wire = b"GET / HTTP/1.1\r\nX: ".to_vec();
        wire.resize(MAX_HEAD + 10, b'a');
        wire.extend_from_slice(b"\r\n\r\n");
        wire.extend_from_slice(SMUGGLE);
        assert!(!flagged(&wire, 512));
    }
}
