//! How a tunnel connection is built under its CONNECT streams, the same on both sides: TCP
//! options, reads batched under TLS, and the HTTP/2 windows and frame size announced.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, BufReader, ReadBuf},
    net::TcpStream,
};

/// Receive window per stream. Fixed and large (ztunnel uses the same): hyper's adaptive
/// window starts at 64 KiB and grows only with its ping estimates, which stalled bulk
/// transfers between busy agents.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Receive window of the whole connection (every stream between two nodes shares it).
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest DATA frame the peer may send us: one splice read (64 KiB) travels as one frame
/// instead of four 16 KiB ones (fewer frames to parse, wake and write out).
pub const MAX_FRAME: u32 = 64 << 10;
/// Bytes read from the socket per read under TLS: rustls asks for 4 KiB at a time, which made
/// four or more `read` calls per 16 KiB record in bulk transfers.
pub const SOCKET_READ_BUFFER: usize = 64 << 10;

/// The socket a TLS session runs on.
pub type Io = BufReader<TcpStream>;

/// Wraps a connected socket for TLS: no Nagle delay (small requests go out at once), reads
/// in large batches.
pub fn io(tcp: TcpStream) -> Io {
    let _ = tcp.set_nodelay(true);
    BufReader::with_capacity(SOCKET_READ_BUFFER, tcp)
}

/// HTTP/2 settings of the side that opens tunnel connections.
pub fn client() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .enable_push(false);
    b
}

/// HTTP/2 settings of the side that accepts them.
pub fn server() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    b
}

/// A TLS session as HTTP/2 is given it: writes declared not vectored. h2 then copies DATA
/// frames under 1 KiB into its write buffer (with vectored writes only those under 256 bytes)
/// and flushes once per batch; a small HTTP response (~260 bytes) no longer costs a TLS
/// record, a `writev` and a wake-up of the peer agent each.
pub struct Batched<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Batched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}
