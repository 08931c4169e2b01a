//! The gateway's listening sockets: one per address family, bound to loopback on a port the
//! kernel picks. Connections reach them through the `sk_lookup_gateway` hook (which ignores
//! the bound address), so clients never connect to these addresses themselves; binding to
//! loopback keeps them unreachable from the network by any other way.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

/// Pending connections per socket (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
#[error("opening the gateway's {family} listening socket: {source}")]
pub struct ListenError {
    family: &'static str,
    #[source]
    source: std::io::Error,
}

/// The listening sockets, non-blocking, ready for the gateway's runtime.
#[derive(Debug)]
pub struct Listeners {
    pub v4: TcpListener,
    /// `None` when the host has IPv6 turned off.
    pub v6: Option<TcpListener>,
}

impl Listeners {
    pub fn open() -> Result<Self, ListenError> {
        let v4 =
            listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).map_err(|source| ListenError {
                family: "IPv4",
                source,
            })?;
        let v6 = match listen(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))) {
            Ok(l) => Some(l),
            Err(e)
                if e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                    || e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                None
            }
            Err(source) => {
                return Err(ListenError {
                    family: "IPv6",
                    source,
                });
            }
        };
        Ok(Self { v4, v6 })
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    // std's bind listens with a backlog of 128, too short for a gateway's bursts of new
    // connections: listen again with a longer one (allowed on a listening socket).
    let l = TcpListener::bind(addr)?;
    // SAFETY: plain syscall on a socket we own.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    l.set_nonblocking(true)?;
    Ok(l)
}
