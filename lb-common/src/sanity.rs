//! What a router refuses to forward: the pure rules the XDP program applies to every packet
//! it would forward, kept here so they are unit-tested on the host.
//!
//! The program's rule (see `Reason`): a packet it owns (to a service, or a backend's reply)
//! that breaks one of these is dropped and counted, never forwarded half-valid.

use crate::flow_state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

pub const TCP_URG: u8 = 0x20;

/// The flag bits Linux conntrack judges (`tcp_valid_flags` in nf_conntrack_proto_tcp.c):
/// PSH, ECE and CWR do not matter.
const JUDGED_FLAGS: u8 = TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK | TCP_URG;

const fn bit(flags: u8) -> u64 {
    1 << flags
}

/// The combinations of judged flags Linux conntrack accepts; every other one (no flags,
/// SYN+FIN, SYN+RST, FIN without ACK, "Christmas tree", ...) is invalid.
const VALID_TCP_FLAGS: u64 = bit(TCP_SYN)
    | bit(TCP_SYN | TCP_URG)
    | bit(TCP_SYN | TCP_ACK)
    | bit(TCP_RST)
    | bit(TCP_RST | TCP_ACK)
    | bit(TCP_FIN | TCP_ACK)
    | bit(TCP_FIN | TCP_ACK | TCP_URG)
    | bit(TCP_ACK)
    | bit(TCP_ACK | TCP_URG);

/// True if Linux conntrack would accept this TCP flag byte.
#[inline(always)]
pub const fn tcp_flags_valid(flags: u8) -> bool {
    (VALID_TCP_FLAGS >> (flags & JUDGED_FLAGS)) & 1 != 0
}

/// True if `wire` (an IPv4 address in wire order) may not be a packet's source: "this
/// network" 0/8, loopback 127/8, link-local 169.254/16, multicast 224/4 and reserved 240/4
/// (with the limited broadcast 255.255.255.255) (RFC 6890).
#[inline(always)]
pub const fn martian_v4(wire: u32) -> bool {
    let b = wire.to_ne_bytes();
    b[0] == 0 || b[0] == 127 || b[0] >= 224 || (b[0] == 169 && b[1] == 254)
}

/// The same for IPv6 (RFC 4291): multicast ff00::/8, link-local fe80::/10, and ::/96 (the
/// unspecified address, loopback, IPv4-compatible) and ::ffff:0:0/96 (IPv4-mapped, which
/// must never appear on the wire).
#[inline(always)]
pub const fn martian_v6(w: &[u32; 4]) -> bool {
    let b = w[0].to_ne_bytes();
    if b[0] == 0xff || (b[0] == 0xfe && b[1] & 0xc0 == 0x80) {
        return true;
    }
    w[0] == 0 && w[1] == 0 && (w[2] == 0 || w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]))
}

/// True if a MAC address is a group (multicast or broadcast) address: the I/G bit.
#[inline(always)]
pub const fn group_mac(first_octet: u8) -> bool {
    first_octet & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSH: u8 = 0x08;
    const ECE: u8 = 0x40;
    const CWR: u8 = 0x80;

    #[test]
    fn tcp_flags_as_linux_conntrack() {
        for f in [
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_ACK,
            TCP_ACK | PSH,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
            TCP_ACK | TCP_URG,
            TCP_SYN | ECE | CWR,
            TCP_FIN | TCP_ACK | PSH | TCP_URG,
        ] {
            assert!(tcp_flags_valid(f), "{f:#04x} must be valid");
        }
        for f in [
            0,
            PSH,
            TCP_FIN,
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_RST,
            TCP_SYN | TCP_FIN | TCP_ACK,
            TCP_FIN | TCP_RST | TCP_ACK,
            TCP_FIN | PSH | TCP_URG,
            0x3f,
            0xff,
            TCP_URG,
        ] {
            assert!(!tcp_flags_valid(f), "{f:#04x} must be invalid");
        }
    }

    fn v4(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn martian_ipv4() {
        for a in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [169, 254, 1, 1],
            [224, 0, 0, 1],
            [239, 255, 255, 255],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            assert!(martian_v4(v4(a)), "{a:?} is martian");
        }
        for a in [
            [10, 0, 0, 1],
            [169, 253, 1, 1],
            [192, 0, 2, 1],
            [223, 255, 255, 254],
        ] {
            assert!(!martian_v4(v4(a)), "{a:?} is not martian");
        }
    }

    fn v6(s: &str) -> [u32; 4] {
        let o = s.parse::<core::net::Ipv6Addr>().unwrap().octets();
        core::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        })
    }

    #[test]
    fn martian_ipv6() {
        for a in [
            "::",
            "::1",
            "::10.0.0.1",
            "::ffff:10.0.0.1",
            "ff02::1",
            "fe80::1",
            "febf::1",
        ] {
            assert!(martian_v6(&v6(a)), "{a} is martian");
        }
        for a in [
            "fd00::1",
            "2001:db8::1",
            "fec0::1",
            "64:ff9b::a00:1",
            "::1:0:0:1",
        ] {
            assert!(!martian_v6(&v6(a)), "{a} is not martian");
        }
    }

    #[test]
    fn group_macs() {
        assert!(group_mac(0xff) && group_mac(0x01) && group_mac(0x33));
        assert!(!group_mac(0x02) && !group_mac(0x00));
    }
}
