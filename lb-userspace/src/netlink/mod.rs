//! The host's routes and neighbours over rtnetlink (`NETLINK_ROUTE`), in the calling
//! thread's network namespace: what the agent used to spawn `ip` for.
//!
//! - [`socket`]: one request, its answers and the kernel's ack ([`Rtnl`]).
//! - [`route`]: the route the kernel would use to reach an address; `local` routes.
//! - [`neigh`]: managed neighbour entries, and reading one entry.
//! - [`events`]: a subscription to neighbour and route changes ([`Events`]).
//!
//! The messages are `netlink-packet-route`'s; only the socket handling is ours (blocking
//! requests, as cheap as a syscall, and one async subscription).
//!
//! May depend on: nothing of the agent.

pub mod events;
pub mod neigh;
pub mod route;
pub mod socket;

pub use events::{Event, Events, RouteChange};
pub use neigh::Neighbour;
pub use route::RouteTo;
pub use socket::Rtnl;

use std::{ffi::CString, io};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused the request (its errno, e.g. "No such device").
    #[error("{0}")]
    Kernel(#[source] io::Error),
    #[error("malformed netlink message: {0}")]
    Decode(String),
    #[error("no answer to the netlink request")]
    NoAnswer,
    #[error("no interface named `{0}`")]
    NoInterface(String),
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// The index of interface `name` in this namespace.
pub fn ifindex(name: &str) -> Result<u32, NetlinkError> {
    let c = CString::new(name).map_err(|_| NetlinkError::NoInterface(name.into()))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(NetlinkError::NoInterface(name.into())),
        i => Ok(i),
    }
}

/// The name of interface `ifindex` in this namespace (the index, as text, if it has gone).
pub fn ifname(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return ifindex.to_string();
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_name_and_index_agree() {
        let i = ifindex("lo").unwrap();
        assert_eq!(ifname(i), "lo");
        assert!(matches!(
            ifindex("no-such-if0"),
            Err(NetlinkError::NoInterface(_))
        ));
    }
}
