//! A subscription to the kernel's neighbour and route changes (`RTNLGRP_NEIGH`,
//! `RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE`), read on the tokio runtime.

use std::io;

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
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
    Route,
    /// Events were lost (the socket's buffer overflowed): assume anything changed.
    Lost,
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
                RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_),
            ) => Some(Event::Route),
            NetlinkPayload::Overrun(_) => Some(Event::Lost),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::RouteMessage,
    };

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
        data.extend(encode(
            RouteNetlinkMessage::NewRoute(RouteMessage::default()),
            0,
            0,
        ));
        data.extend(encode(RouteNetlinkMessage::DelNeighbour(n), 0, 0));
        let events = parse_events(&data).unwrap();
        let Event::Neighbour(first) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((first.ifindex, first.lladdr), (5, Some([2, 0, 0, 0, 0, 7])));
        assert_eq!(events[1], Event::Route);
        assert!(matches!(events[2], Event::NeighbourGone(_)));
        assert_eq!(events.len(), 3);

        // A truncated datagram is an error, not a panic.
        assert!(parse_events(&data[..10]).is_err());
    }
}
