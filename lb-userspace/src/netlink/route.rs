//! Routes: the one the kernel would use to reach an address (`ip route get`), and `local`
//! routes in the `local` table (`ip route replace|del local ADDR/LEN dev IF table local`).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
        RouteType, RouteVia,
    },
};

use super::{NetlinkError, Rtnl};

/// The `local` routing table.
const RT_TABLE_LOCAL: u8 = 255;

/// Where the kernel sends packets to an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTo {
    /// Egress interface.
    pub ifindex: u32,
    /// The gateway, if the address is not on-link.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would pick.
    pub pref_src: Option<IpAddr>,
}

/// The route to `dst`; `None` if the kernel's answer names no egress interface.
pub fn get(rtnl: &mut Rtnl, dst: IpAddr) -> Result<Option<RouteTo>, NetlinkError> {
    let answers = rtnl.request(RouteNetlinkMessage::GetRoute(get_message(dst)), 0)?;
    Ok(answers.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewRoute(r) => parse_route_to(r),
        _ => None,
    }))
}

/// Adds (or replaces) the `local` route for `addr` alone on `ifindex` (usually `lo`).
pub fn replace_local(rtnl: &mut Rtnl, addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    let msg = local_message(addr, ifindex, true);
    rtnl.request(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )?;
    Ok(())
}

/// Removes the `local` route for `addr` on `ifindex`.
pub fn delete_local(rtnl: &mut Rtnl, addr: IpAddr, ifindex: u32) -> Result<(), NetlinkError> {
    rtnl.request(
        RouteNetlinkMessage::DelRoute(local_message(addr, ifindex, false)),
        0,
    )?;
    Ok(())
}

fn family(a: IpAddr) -> (AddressFamily, u8) {
    match a {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    }
}

/// `RTM_GETROUTE` for `dst` (as `ip route get` sends it).
pub(crate) fn get_message(dst: IpAddr) -> RouteMessage {
    let mut m = RouteMessage::default();
    (m.header.address_family, m.header.destination_prefix_length) = family(dst);
    m.header.flags = RouteFlags::LookupTable;
    m.attributes.push(RouteAttribute::Destination(dst.into()));
    m
}

/// The `local` route for `addr` in the `local` table, as `ip` builds it: protocol `boot` and
/// scope `host` (IPv4) on add; on delete the protocol is left out so any matches.
pub(crate) fn local_message(addr: IpAddr, ifindex: u32, add: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    (m.header.address_family, m.header.destination_prefix_length) = family(addr);
    m.header.table = RT_TABLE_LOCAL;
    m.header.kind = RouteType::Local;
    m.header.scope = if addr.is_ipv4() {
        RouteScope::Host
    } else {
        RouteScope::Universe
    };
    m.header.protocol = if add {
        RouteProtocol::Boot
    } else {
        RouteProtocol::Unspec
    };
    m.attributes.push(RouteAttribute::Destination(addr.into()));
    m.attributes.push(RouteAttribute::Oif(ifindex));
    m
}

/// The egress interface, gateway and preferred source of a route answer.
pub(crate) fn parse_route_to(r: &RouteMessage) -> Option<RouteTo> {
    let mut out = RouteTo {
        ifindex: 0,
        gateway: None,
        pref_src: None,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => out.ifindex = *i,
            RouteAttribute::Gateway(g) => out.gateway = ip(g),
            // An IPv4 route via an IPv6 gateway (RFC 5549).
            RouteAttribute::Via(RouteVia::Inet6(g)) => out.gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Via(RouteVia::Inet(g)) => out.gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::PrefSource(s) => out.pref_src = ip(s),
            _ => {}
        }
    }
    (out.ifindex != 0).then_some(out)
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    fn roundtrip(m: &RouteMessage) -> Vec<u8> {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(&RouteMessage::parse(buf.as_slice()).unwrap(), m);
        buf
    }

    #[test]
    fn get_is_what_ip_route_get_sends() {
        // rtmsg: family 2, dst_len 32, table 0, protocol 0, scope 0, type 0, flags
        // RTM_F_LOOKUP_TABLE (0x1000); then RTA_DST (1) 10.0.2.2. (strace of `ip route get`.)
        let buf = roundtrip(&get_message("10.0.2.2".parse().unwrap()));
        assert_eq!(
            buf,
            [
                2, 32, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, // rtmsg
                8, 0, 1, 0, 10, 0, 2, 2, // RTA_DST
            ]
        );
        let v6 = get_message("fd00::2".parse().unwrap());
        assert_eq!(v6.header.address_family, AddressFamily::Inet6);
        assert_eq!(v6.header.destination_prefix_length, 128);
    }

    #[test]
    fn local_route_is_what_ip_sends() {
        // `ip route replace local 10.9.9.9/32 dev lo table local`: table 255, protocol boot
        // (3), scope host (254), type local (2), RTA_DST, RTA_OIF (4).
        let buf = roundtrip(&local_message("10.9.9.9".parse().unwrap(), 1, true));
        assert_eq!(
            buf,
            [
                2, 32, 0, 0, 255, 3, 254, 2, 0, 0, 0, 0, // rtmsg
                8, 0, 1, 0, 10, 9, 9, 9, // RTA_DST
                8, 0, 4, 0, 1, 0, 0, 0, // RTA_OIF
            ]
        );
        // Delete: any protocol. IPv6 local routes have universe scope (as `ip -6` sends).
        let del = local_message("fd00::9".parse().unwrap(), 1, false);
        assert_eq!(del.header.protocol, RouteProtocol::Unspec);
        assert_eq!(del.header.scope, RouteScope::Universe);
        assert_eq!(del.header.destination_prefix_length, 128);
        roundtrip(&del);
    }

    #[test]
    fn answers_give_interface_gateway_and_source() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.attributes = vec![
            RouteAttribute::Destination("10.9.0.1".parse::<IpAddr>().unwrap().into()),
            RouteAttribute::Oif(7),
            RouteAttribute::Gateway("10.0.2.254".parse::<IpAddr>().unwrap().into()),
            RouteAttribute::PrefSource("10.0.2.1".parse::<IpAddr>().unwrap().into()),
        ];
        // Through the wire format, as the kernel's answer comes.
        let buf = roundtrip(&r);
        let parsed = RouteMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(
            parse_route_to(&parsed),
            Some(RouteTo {
                ifindex: 7,
                gateway: Some("10.0.2.254".parse().unwrap()),
                pref_src: Some("10.0.2.1".parse().unwrap()),
            })
        );
        // On-link: no gateway. No interface: no route.
        r.attributes.remove(2);
        assert_eq!(parse_route_to(&r).unwrap().gateway, None);
        r.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        assert_eq!(parse_route_to(&r), None);
    }
}
