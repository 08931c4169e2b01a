//! Neighbour entries: managed ones the kernel keeps resolved (`ip neigh replace ADDR dev IF
//! managed extern_learn`, kernel 5.16+), their removal, and reading one entry.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
        NeighbourState,
    },
};

use super::{NetlinkError, Rtnl};

/// One neighbour entry, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub addr: IpAddr,
    pub ifindex: u32,
    /// Its link-layer address, if it has an Ethernet one.
    pub lladdr: Option<[u8; 6]>,
    pub state: NeighbourState,
}

impl Neighbour {
    /// The kernel has a link-layer address it would use (not failed, not still resolving).
    pub fn is_resolved(&self) -> bool {
        self.lladdr.is_some()
            && !matches!(
                self.state,
                NeighbourState::Failed | NeighbourState::Incomplete | NeighbourState::None
            )
    }
}

/// Adds (or replaces) a managed, externally learned entry for `addr` on `ifindex`: the kernel
/// resolves it and keeps it fresh, and does not garbage-collect it.
pub fn replace_managed(rtnl: &mut Rtnl, addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    rtnl.request(
        RouteNetlinkMessage::NewNeighbour(managed_message(addr, ifindex)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )?;
    Ok(())
}

/// Removes the entry for `addr` on `ifindex`.
pub fn delete(rtnl: &mut Rtnl, addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    let mut m = message(addr, ifindex);
    // As `ip neigh del` sends it.
    m.header.state = NeighbourState::Permanent;
    rtnl.request(RouteNetlinkMessage::DelNeighbour(m), 0)?;
    Ok(())
}

/// The entry for `addr` on `ifindex`, if the kernel has one.
pub fn get(rtnl: &mut Rtnl, addr: IpAddr, ifindex: u32) -> Result<Option<Neighbour>, NetlinkError> {
    match rtnl.request(RouteNetlinkMessage::GetNeighbour(message(addr, ifindex)), 0) {
        Ok(answers) => Ok(answers.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => parse(n),
            _ => None,
        })),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The header and destination every neighbour request carries.
fn message(addr: IpAddr, ifindex: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.ifindex = ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(addr.into()));
    m
}

/// `RTM_NEWNEIGH` for a managed entry: state none (the kernel resolves it), flag
/// `extern_learn`, extended flag `managed` (as `ip` sends it).
pub(crate) fn managed_message(addr: IpAddr, ifindex: u32) -> NeighbourMessage {
    let mut m = message(addr, ifindex);
    m.header.state = NeighbourState::None;
    m.header.flags = NeighbourFlags::ExtLearned;
    m.attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    m
}

/// An entry from a kernel message (answer or event); `None` without a usable destination.
pub(crate) fn parse(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut addr = None;
    let mut lladdr = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = <[u8; 6]>::try_from(&l[..]).ok(),
            _ => {}
        }
    }
    Some(Neighbour {
        addr: addr?,
        ifindex: m.header.ifindex,
        lladdr,
        state: m.header.state,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    #[test]
    fn managed_entry_is_what_ip_sends() {
        // strace of `ip neigh replace 10.9.0.3 dev va managed extern_learn` (ifindex 3):
        // ndmsg family 2, ifindex, state NUD_NONE, flags NTF_EXT_LEARNED (0x10), type 0;
        // NDA_DST (1); NDA_FLAGS_EXT (15) = NTF_EXT_MANAGED.
        let m = managed_message("10.9.0.3".parse().unwrap(), 3);
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(
            buf,
            [
                2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0x10, 0, // ndmsg
                8, 0, 1, 0, 10, 9, 0, 3, // NDA_DST
                8, 0, 15, 0, 1, 0, 0, 0, // NDA_FLAGS_EXT
            ]
        );
        assert_eq!(NeighbourMessage::parse(&buf).unwrap(), m);
    }

    #[test]
    fn entries_parse_with_and_without_a_link_layer_address() {
        let mut m = message("fd00::2".parse().unwrap(), 4);
        m.header.state = NeighbourState::Reachable;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9]));
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let n = parse(&NeighbourMessage::parse(&buf).unwrap()).unwrap();
        assert_eq!(n.addr, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!((n.ifindex, n.lladdr), (4, Some([2, 0, 0, 0, 0, 9])));
        assert!(n.is_resolved());

        // Still resolving: no address, not resolved. Failed with a stale address: neither.
        let mut pending = message("10.0.0.2".parse().unwrap(), 4);
        pending.header.state = NeighbourState::Incomplete;
        assert!(!parse(&pending).unwrap().is_resolved());
        let mut failed = m.clone();
        failed.header.state = NeighbourState::Failed;
        assert!(!parse(&failed).unwrap().is_resolved());

        // No destination: nothing to report.
        assert_eq!(parse(&NeighbourMessage::default()), None);
    }
}
