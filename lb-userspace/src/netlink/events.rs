//! A subscription to the kernel's neighbour and route changes (`RTNLGRP_NEIGH`,
//! `RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE`), read on the tokio runtime.

use std::{io, net::IpAddr};

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::unix::AsyncFd;

use super::{
    NetlinkError,
    neigh::{self, Neighbour},
    socket::decode,
};

const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// Room for bursts (a flush of a large neighbour table) before the kernel drops events.
const RECV_BUFFER: usize = 1 << 20;

/// One change the kernel reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A neighbour entry was added or changed (state, link-layer address).
    Neighbour(Neighbour),
    /// A neighbour entry was removed.
    NeighbourGone(Neighbour),
    /// A route was added or removed (IPv4 or IPv6).
    Route(RouteChange),
    /// Events were lost (the socket's buffer overflowed): assume anything changed.
    Lost,
}

/// The destination of a route that was added or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteChange {
    /// `None` for a default route.
    pub dst: Option<IpAddr>,
    pub prefix_len: u8,
}

impl RouteChange {
    /// Whether the route's prefix holds `addr` (so it may be the route to it now).
    pub fn covers(&self, addr: IpAddr) -> bool {
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
                IpAddr::V6(a) => u128::from(a),
            }
        };
        let Some(dst) = self.dst else {
            return true;
        };
        if dst.is_ipv4() != addr.is_ipv4() {
            return false;
        }
        let len = u32::from(self.prefix_len);
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        bits(dst) & mask == bits(addr) & mask
    }
}

/// The subscription. Dropping it unsubscribes.
pub struct Events {
    fd: AsyncFd<Socket>,
}

impl Events {
    /// Subscribes in the calling thread's network namespace. Needs a tokio runtime.
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        for group in [RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE] {
            sock.add_membership(group).map_err(NetlinkError::Socket)?;
        }
        // Not fatal: the default buffer works, it only loses events sooner.
        let _ = sock.set_rx_buf_sz(RECV_BUFFER);
        sock.set_non_blocking(true).map_err(NetlinkError::Socket)?;
        // SAFETY: the socket owns its fd and keeps it open, unchanged, until it is dropped
        // with the AsyncFd.
        let fd = unsafe { AsyncFd::register(sock) }
            .map_err(|e| NetlinkError::Socket(io::Error::from(e)))?;
        Ok(Self { fd })
    }

    /// The next batch of events (one datagram's worth; never empty).
    pub async fn next(&mut self) -> Result<Vec<Event>, NetlinkError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(NetlinkError::Socket)?;
            let read = guard.try_io(|s| s.get_ref().recv_from_full().map(|(data, _)| data));
            let data = match read {
                Err(_would_block) => continue,
                Ok(Ok(data)) => data,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(vec![Event::Lost]);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(NetlinkError::Socket(e)),
            };
            let events = parse_events(&data)?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// The events in one datagram; messages of other kinds are skipped.
pub(crate) fn parse_events(data: &[u8]) -> Result<Vec<Event>, NetlinkError> {
    Ok(decode(data)?
        .into_iter()
        .filter_map(|m| match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                neigh::parse(&n).map(Event::Neighbour)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                neigh::parse(&n).map(Event::NeighbourGone)
            }
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r),
            ) => Some(Event::Route(route_change(&r))),
            NetlinkPayload::Overrun(_) => Some(Event::Lost),
            _ => None,
        })
        .collect())
}

fn route_change(r: &RouteMessage) -> RouteChange {
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    RouteChange {
        // An IPv4 route's prefix length applies to the address as IPv4.
        prefix_len: r.header.destination_prefix_length,
        dst,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};

    use super::*;
    use crate::netlink::socket::encode;

    #[test]
    fn a_datagram_of_several_messages_gives_each_event() {
        let mut n = NeighbourMessage::default();
        n.header.family = netlink_packet_route::AddressFamily::Inet;
        n.header.ifindex = 5;
        n.header.state = NeighbourState::Reachable;
        n.attributes.push(NeighbourAttribute::Destination(
            "10.0.2.2".parse::<std::net::IpAddr>().unwrap().into(),
        ));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 7]));
        let mut data = encode(RouteNetlinkMessage::NewNeighbour(n.clone()), 0, 0);
        let mut r = RouteMessage::default();
        r.header.address_family = netlink_packet_route::AddressFamily::Inet;
        r.header.destination_prefix_length = 24;
        r.attributes.push(RouteAttribute::Destination(
            "10.9.0.0".parse::<IpAddr>().unwrap().into(),
        ));
        data.extend(encode(RouteNetlinkMessage::NewRoute(r), 0, 0));
        data.extend(encode(RouteNetlinkMessage::DelNeighbour(n), 0, 0));
        let events = parse_events(&data).unwrap();
        let Event::Neighbour(first) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((first.ifindex, first.lladdr), (5, Some([2, 0, 0, 0, 0, 7])));
        let Event::Route(route) = events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(
            route,
            RouteChange {
                dst: Some("10.9.0.0".parse().unwrap()),
                prefix_len: 24
            }
        );
        assert!(matches!(events[2], Event::NeighbourGone(_)));
        assert_eq!(events.len(), 3);

        // A truncated datagram is an error, not a panic.
        assert!(parse_events(&data[..10]).is_err());
    }
}

#[cfg(test)]
mod covers {
    use super::*;

    fn change(dst: &str, prefix_len: u8) -> RouteChange {
        RouteChange {
            dst: Some(dst.parse().unwrap()),
            prefix_len,
        }
    }

    #[test]
    fn a_route_covers_the_addresses_of_its_prefix_only() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(change("10.9.0.0", 24).covers(a("10.9.0.7")));
        assert!(!change("10.9.0.0", 24).covers(a("10.9.1.7")));
        assert!(change("10.9.0.7", 32).covers(a("10.9.0.7")));
        assert!(change("0.0.0.0", 0).covers(a("192.0.2.1")));
        assert!(!change("10.9.0.0", 8).covers(a("fd00::1")));
        assert!(change("fd00:9::", 64).covers(a("fd00:9::2")));
        assert!(!change("fd00:9::", 64).covers(a("fd00:a::2")));
        let default = RouteChange {
            dst: None,
            prefix_len: 0,
        };
        assert!(default.covers(a("10.0.0.1")) && default.covers(a("fd00::1")));
    }
}
