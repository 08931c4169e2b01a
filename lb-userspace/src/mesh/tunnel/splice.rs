//! Bytes both ways between two streams, half-close kept (each side's EOF becomes a shutdown
//! of the other's write side), with bounded buffers.

use tokio::io::{AsyncRead, AsyncWrite};

use super::metrics::TunnelCounters;

/// Copies until both directions are done; counts bytes (`up`: towards the backend).
pub async fn splice<A, B>(mut client: A, mut server: B, buffer: usize, counters: &TunnelCounters)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let r =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, buffer, buffer).await;
    if let Ok((up, down)) = r {
        counters.bytes(up, down);
    }
}
