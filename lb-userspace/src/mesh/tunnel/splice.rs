//! Bytes both ways between a plain TCP socket and a CONNECT stream, half-close kept (the
//! socket's EOF ends the stream's sending side, the stream's end shuts the socket's write
//! side). Data read from the socket is handed to HTTP/2 as is (no copy); what arrives on
//! the stream is written out before its flow-control window is given back.

use std::{future::poll_fn, io};

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};

use super::connect::Stream;

/// Bytes moved by a finished splice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    /// From the socket into the stream.
    pub to_stream: u64,
    /// From the stream out of the socket.
    pub to_socket: u64,
}

/// Copies until both directions are done (`None`: one failed and both were dropped, which
/// resets the stream and closes the socket). `buffer`: most bytes read from the socket at once.
pub async fn splice(mut tcp: TcpStream, stream: Stream, buffer: usize) -> Option<Moved> {
    let (r, w) = tcp.split();
    let Stream { send, recv } = stream;
    let (to_stream, to_socket) =
        tokio::try_join!(socket_to_stream(r, send, buffer), stream_to_socket(recv, w)).ok()?;
    Some(Moved {
        to_stream,
        to_socket,
    })
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
    } else {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
    }
}

/// Smallest free space a read is given before a fresh buffer is taken (the old one stays
/// with HTTP/2 until sent).
const MIN_READ: usize = 4 << 10;

async fn socket_to_stream(
    mut r: ReadHalf<'_>,
    mut send: SendStream<Bytes>,
    buffer: usize,
) -> io::Result<u64> {
    let mut buf = BytesMut::with_capacity(buffer);
    let mut total = 0;
    loop {
        if buf.capacity() < MIN_READ {
            buf.reserve(buffer);
        }
        if r.read_buf(&mut buf).await? == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(total);
        }
        let mut data = buf.split().freeze();
        total += data.len() as u64;
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(h2_io(e)),
                None => return Err(io::ErrorKind::BrokenPipe.into()),
            };
            if granted > 0 {
                let n = granted.min(data.len());
                send.send_data(data.split_to(n), false).map_err(h2_io)?;
            }
        }
    }
}

async fn stream_to_socket(mut recv: RecvStream, mut w: WriteHalf<'_>) -> io::Result<u64> {
    let mut total = 0;
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                w.write_all(&data).await?;
                total += data.len() as u64;
                let _ = recv.flow_control().release_capacity(data.len());
            }
            // The peer closed its sending side (or cancelled it cleanly): pass the EOF on.
            None => break,
            Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => {
                break;
            }
            Some(Err(e)) => return Err(h2_io(e)),
        }
    }
    w.shutdown().await?;
    Ok(total)
}
