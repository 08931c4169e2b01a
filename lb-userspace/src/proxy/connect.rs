//! How the gateway dials backends: TCP with `TCP_NODELAY`, a connect timeout, and local
//! ports kept out of the data plane's SNAT range.
//!
//! Why the port range: the XDP program translates every packet from a backend to
//! `node:port` when `port` is one of its SNAT ports and a NAT entry matches the 5-tuple. The
//! kernel picks the gateway's ephemeral ports without knowing the data plane's, so a
//! gateway connection could get the very 5-tuple of an L4 flow to the same backend and have
//! its replies stolen. `IP_LOCAL_PORT_RANGE` (Linux 6.3) narrows the kernel's choice for
//! these sockets to the part of `ip_local_port_range` outside the SNAT range.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use std::sync::Arc;

use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
};

use super::resilience::{Guards, breaker::ConnPermit};

/// `IP_LOCAL_PORT_RANGE` from `linux/in.h` (not in the libc crate yet).
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;

/// A hyper-util connector for `http://ip:port` authorities.
#[derive(Clone, Debug)]
pub struct BackendConnector {
    pub connect_timeout: Duration,
    /// Local ports to use (inclusive), or `None` for the kernel's whole range.
    pub local_ports: Option<(u16, u16)>,
    /// The upstream services' breakers: a connection over `max_connections` waits.
    pub guards: Option<Arc<Guards>>,
}

/// A backend connection, holding its place under the service's `max_connections`.
#[derive(Debug)]
pub struct BackendStream {
    pub stream: TcpStream,
    _permit: Option<ConnPermit>,
}

impl AsyncRead for BackendStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connection for BackendStream {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

impl tower_service::Service<Uri> for BackendConnector {
    type Response = TokioIo<BackendStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("backend authority is not ip:port: {uri}"),
                    )
                })?;
            // Over max_connections this waits (as a pending request) or fails.
            let permit = match this.guards.as_ref().and_then(|g| g.breaker_for(addr)) {
                None => None,
                Some(b) => Some(
                    b.connection(this.connect_timeout)
                        .await
                        .map_err(std::io::Error::other)?,
                ),
            };
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some((lo, hi)) = this.local_ports {
                set_local_port_range(&socket, lo, hi);
            }
            socket.set_nodelay(true)?;
            let stream = tokio::time::timeout(this.connect_timeout, socket.connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            Ok(TokioIo::new(BackendStream {
                stream,
                _permit: permit,
            }))
        })
    }
}

/// Best effort: a kernel without the option keeps its whole range (logged once by the
/// caller through [`local_ports_outside`]'s result, not here per connection).
fn set_local_port_range(socket: &TcpSocket, lo: u16, hi: u16) {
    use std::os::fd::AsRawFd;
    let v: u32 = u32::from(lo) | (u32::from(hi) << 16);
    // SAFETY: plain setsockopt with a u32 value on a socket we own.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_LOCAL_PORT_RANGE,
            (&raw const v).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        );
    }
}

/// The largest run of `ephemeral` (the kernel's `ip_local_port_range`) outside `snat`;
/// `None` when nothing is left (the ranges then overlap whatever we do).
pub fn local_ports_outside(ephemeral: (u16, u16), snat: (u16, u16)) -> Option<(u16, u16)> {
    let (lo, hi) = ephemeral;
    let below = (lo < snat.0).then(|| (lo, hi.min(snat.0 - 1)));
    let above = (hi > snat.1).then(|| (lo.max(snat.1 + 1), hi));
    let width = |r: &(u16, u16)| r.1.saturating_sub(r.0);
    match (below, above) {
        (Some(b), Some(a)) => Some(if width(&a) > width(&b) { a } else { b }),
        (b, a) => b.or(a),
    }
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
pub fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_outside_the_snat_range() {
        // Linux defaults and ours: below (7232 ports) beats above (1000).
        assert_eq!(
            local_ports_outside((32768, 60999), (40000, 59999)),
            Some((32768, 39999))
        );
        assert_eq!(
            local_ports_outside((32768, 60999), (30000, 50000)),
            Some((50001, 60999))
        );
        assert_eq!(local_ports_outside((32768, 60999), (1024, 65535)), None);
        assert_eq!(
            local_ports_outside((32768, 60999), (1024, 2000)),
            Some((32768, 60999))
        );
    }

    #[tokio::test]
    async fn connects_from_the_range() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut c = BackendConnector {
            connect_timeout: Duration::from_secs(2),
            local_ports: Some((34000, 34100)),
            guards: None,
        };
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let s = tower_service::Service::call(&mut c, uri).await.unwrap();
        let port = s.inner().stream.local_addr().unwrap().port();
        assert!((34000..=34100).contains(&port), "local port {port}");
        let (_, peer) = l.accept().await.unwrap();
        assert_eq!(peer.port(), port);
    }
}
