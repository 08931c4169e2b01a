//! Conversions between wire-order map fields and host types (userspace side).

use crate::{Addr, FAMILY_V4, FAMILY_V6};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

impl From<Ipv4Addr> for Addr {
    fn from(a: Ipv4Addr) -> Self {
        Addr::v4(u32::from_ne_bytes(a.octets()))
    }
}

impl From<Ipv6Addr> for Addr {
    fn from(a: Ipv6Addr) -> Self {
        let o = a.octets();
        let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
        Addr::v6([w(0), w(4), w(8), w(12)])
    }
}

impl From<IpAddr> for Addr {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => a.into(),
            IpAddr::V6(a) => a.into(),
        }
    }
}

impl Addr {
    /// The address as `family` says it is.
    pub fn to_ip(&self, family: u8) -> IpAddr {
        if family == FAMILY_V6 {
            let mut o = [0u8; 16];
            for (i, w) in self.words.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.words[0].to_ne_bytes()))
        }
    }
}

/// `FAMILY_V4` or `FAMILY_V6` for an address.
pub fn family_of(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v4: IpAddr = "10.0.1.2".parse().unwrap();
        let v6: IpAddr = "fd00::1:2".parse().unwrap();
        assert_eq!(Addr::from(v4).to_ip(FAMILY_V4), v4);
        assert_eq!(Addr::from(v6).to_ip(FAMILY_V6), v6);
        // Wire order: first octet is the first byte in memory.
        assert_eq!(Addr::from(v4).words[0].to_ne_bytes(), [10, 0, 1, 2]);
    }

    #[test]
    fn v4_mapped_round_trips_and_other_v6_is_not_mapped() {
        let v4 = Addr::from("10.96.0.10".parse::<IpAddr>().unwrap()).words[0];
        let mapped = Addr::v4_mapped(v4);
        let std: IpAddr = "::ffff:10.96.0.10".parse().unwrap();
        assert_eq!(mapped, Addr::from(std));
        assert_eq!(mapped.unmapped_v4(), Some(v4));
        assert_eq!(
            Addr::from("fd00:96::10".parse::<IpAddr>().unwrap()).unmapped_v4(),
            None
        );
        // IPv4-compatible (the deprecated `::a.b.c.d`) is not mapped.
        assert_eq!(
            Addr::from("::10.96.0.10".parse::<IpAddr>().unwrap()).unmapped_v4(),
            None
        );
    }
}
