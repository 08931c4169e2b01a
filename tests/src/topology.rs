//! Test networks: a client, a load balancer and backends, each in its own namespace.
//!
//! Two shapes:
//! - [`Topology::two_arm`]: the LB routes between a client subnet and one subnet per backend
//!   (the usual NAT deployment). The client reaches the VIP only through the LB's XDP program:
//!   forwarding is off in the LB namespace, so the kernel never forwards behind XDP's back.
//! - [`Topology::one_arm`]: one L2 segment (a bridge in its own namespace) shared by all, for
//!   DSR / hairpin tests where the LB sends frames back out of the interface they came in on.
//!
//! Addresses (IPv4 `10.200.S.H` has MAC `02:00:0a:c8:S:H`, so captures are easy to read):
//!
//! | two-arm            | interface | IPv4            | IPv6                |
//! |--------------------|-----------|-----------------|---------------------|
//! | client             | `cl0`     | 10.200.1.2/24   | fd00:200:1::2/64    |
//! | lb, client side    | `lb-c`    | 10.200.1.1/24   | fd00:200:1::1/64    |
//! | lb, backend i side | `lb-bI`   | 10.200.1I.1/24  | fd00:200:1I::1/64   |
//! | backend i          | `eth0`    | 10.200.1I.2/24  | fd00:200:1I::2/64   |
//!
//! | one-arm (10.200.50.0/24, fd00:200:50::/64) | interface | host part |
//! |--------------------------------------------|-----------|-----------|
//! | client                                     | `cl0`     | .2 / ::2  |
//! | lb                                         | `lb-0`    | .1 / ::1  |
//! | backend i                                  | `eth0`    | .1I / ::1I|
//!
//! Backends do not hold the VIPs ([`VIP4`], [`VIP6`]): in NAT mode they see their own address.
//! DSR tests add the VIP to a backend's `lo` themselves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};

use crate::netns::Netns;
use crate::xdp::{XdpLink, attach_xdp_pass};

/// The IPv4 service address the demo and tests use.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 1);
/// The IPv6 service address the demo and tests use.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0x100, 0, 0, 0, 0, 1);

/// How the peers of the LB's interfaces are made able to receive `XDP_TX`/`XDP_REDIRECT` frames
/// (without either, veth drops them; see [`crate::xdp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerMode {
    /// `ethtool -K PEER gro on` (enables the peer's NAPI). Enough for `XDP_REDIRECT` (all a
    /// two-arm LB does), and nothing stays attached: the default of [`Topology::two_arm`].
    ///
    /// Not enough for `XDP_TX`: veth wakes the peer after `XDP_TX` only if the peer runs an XDP
    /// program, so with GRO alone bounced frames wait until other traffic wakes it (measured:
    /// sometimes all arrive, sometimes none).
    #[default]
    Gro,
    /// A native-mode `XDP_PASS` program on each peer (kept attached while the topology lives).
    /// Works for `XDP_TX` too: the default of [`Topology::one_arm`], where the LB sends frames
    /// back out of the interface they came in on.
    XdpPass,
}

/// Which shape a topology has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Client and backends on separate subnets routed by the LB.
    TwoArm,
    /// Everyone on one bridged subnet.
    OneArm,
}

/// One end of a link: an interface with its addresses and MAC.
#[derive(Debug, Clone)]
pub struct Iface {
    /// Interface name inside its namespace.
    pub name: String,
    /// IPv4 address (prefix length in `prefix4`).
    pub ip4: Ipv4Addr,
    /// IPv4 prefix length.
    pub prefix4: u8,
    /// IPv6 address (prefix length in `prefix6`).
    pub ip6: Ipv6Addr,
    /// IPv6 prefix length.
    pub prefix6: u8,
    /// MAC address (set explicitly, see the module docs).
    pub mac: [u8; 6],
}

impl Iface {
    fn new(name: &str, subnet: u8, host: u8, prefix4: u8) -> Iface {
        Iface {
            name: name.to_owned(),
            ip4: Ipv4Addr::new(10, 200, subnet, host),
            prefix4,
            // fd00:200:S::H with S and H written in the same decimal digits as the IPv4 address.
            ip6: Ipv6Addr::new(0xfd00, 0x200, hexlike(subnet), 0, 0, 0, 0, hexlike(host)),
            prefix6: if prefix4 == 32 { 128 } else { 64 },
            mac: [0x02, 0x00, 10, 200, subnet, host],
        }
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        mac_string(&self.mac)
    }

    /// The address of the given family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.ip6)
        } else {
            IpAddr::V4(self.ip4)
        }
    }
}

/// `11` -> `0x11`: IPv6 groups that read like the IPv4 octet (fd00:200:11::2 for 10.200.11.2).
fn hexlike(n: u8) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits")
}

/// Formats a MAC address.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A client or backend: its namespace and its one interface.
#[derive(Debug)]
pub struct Host {
    /// Short role name: `client`, `b1`, `b2`, ... (the name servers answer with it).
    pub name: String,
    /// The host's namespace.
    pub ns: Netns,
    /// Its interface (`cl0` or `eth0`).
    pub iface: Iface,
}

impl Host {
    /// Its IPv4 address.
    pub fn ip4(&self) -> Ipv4Addr {
        self.iface.ip4
    }
    /// Its IPv6 address.
    pub fn ip6(&self) -> Ipv6Addr {
        self.iface.ip6
    }
}

/// A built test network. Dropping it removes every namespace (and so every link) it made,
/// after killing the processes left inside them.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: detach XDP programs first, then delete the namespaces.
    xdp_links: Vec<XdpLink>,
    /// Which shape this is.
    pub shape: Shape,
    /// The client.
    pub client: Host,
    /// The load balancer's namespace (the agent runs here).
    pub lb: Netns,
    /// The LB's interfaces: `lb-c`, `lb-b1`.. (two-arm) or `lb-0` (one-arm).
    pub lb_ifaces: Vec<Iface>,
    /// The backends, `b1`..`bN`.
    pub backends: Vec<Host>,
    /// The bridge namespace of a one-arm topology.
    pub switch: Option<Netns>,
    /// How the LB interfaces' peers were made ready for XDP frames.
    pub peer_mode: PeerMode,
}

/// Interfaces of the client/backends whose offloads are switched off.
const NO_OFFLOAD: [&str; 4] = ["tx", "off", "rx", "off"];

impl Topology {
    /// Two-arm topology with `n_backends` (1..=9) backends, peers made ready with GRO
    /// (the LB only redirects between its interfaces; see [`PeerMode`]).
    pub fn two_arm(n_backends: usize) -> Result<Topology> {
        Self::two_arm_with(n_backends, PeerMode::default())
    }

    /// Two-arm topology with an explicit [`PeerMode`].
    pub fn two_arm_with(n_backends: usize, peer_mode: PeerMode) -> Result<Topology> {
        ensure!(
            (1..=9).contains(&n_backends),
            "1..=9 backends, not {n_backends}"
        );
        // Each guard is a local until the end: an error half-way drops (deletes) what exists.
        let client_ns = new_ns("cl")?;
        let lb = new_ns("lb")?;
        lb.sysctl("net.ipv4.ip_forward", "0")?;
        lb.sysctl("net.ipv6.conf.all.forwarding", "0")?;

        let cl_if = Iface::new("cl0", 1, 2, 24);
        let lbc_if = Iface::new("lb-c", 1, 1, 24);
        veth(&lb, &lbc_if, &client_ns, &cl_if)?;
        default_routes(&client_ns, &lbc_if)?;

        let mut lb_ifaces = vec![lbc_if];
        let mut backends = Vec::with_capacity(n_backends);
        for i in 1..=n_backends {
            let subnet = 10 + i as u8;
            let ns = new_ns(&format!("b{i}"))?;
            let b_if = Iface::new("eth0", subnet, 2, 24);
            let lb_if = Iface::new(&format!("lb-b{i}"), subnet, 1, 24);
            veth(&lb, &lb_if, &ns, &b_if)?;
            default_routes(&ns, &lb_if)?;
            lb_ifaces.push(lb_if);
            backends.push(Host {
                name: format!("b{i}"),
                ns,
                iface: b_if,
            });
        }
        let mut topo = Topology {
            xdp_links: Vec::new(),
            shape: Shape::TwoArm,
            client: Host {
                name: "client".into(),
                ns: client_ns,
                iface: cl_if,
            },
            lb,
            lb_ifaces,
            backends,
            switch: None,
            peer_mode,
        };
        topo.pin_lb_neighbours()?;
        topo.prepare_peers(peer_mode)?;
        Ok(topo)
    }

    /// One-arm topology: client, LB and `n_backends` (1..=9) backends on bridge `br0`
    /// (in namespace `switch`); the LB's peer gets an `XDP_PASS` program because a one-arm LB
    /// answers with `XDP_TX` (see [`PeerMode::Gro`] for why GRO is not enough there).
    pub fn one_arm(n_backends: usize) -> Result<Topology> {
        Self::one_arm_with(n_backends, PeerMode::XdpPass)
    }

    /// One-arm topology with an explicit [`PeerMode`].
    pub fn one_arm_with(n_backends: usize, peer_mode: PeerMode) -> Result<Topology> {
        ensure!(
            (1..=9).contains(&n_backends),
            "1..=9 backends, not {n_backends}"
        );
        const SUBNET: u8 = 50;
        let sw = new_ns("sw")?;
        sw.ip([
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        sw.ip(["link", "set", "br0", "up"])?;

        let client_ns = new_ns("cl")?;
        let cl_if = Iface::new("cl0", SUBNET, 2, 24);
        bridge_port(&sw, "p-cl", &client_ns, &cl_if)?;

        let lb = new_ns("lb")?;
        lb.sysctl("net.ipv4.ip_forward", "0")?;
        lb.sysctl("net.ipv6.conf.all.forwarding", "0")?;
        let lb_if = Iface::new("lb-0", SUBNET, 1, 24);
        bridge_port(&sw, "p-lb", &lb, &lb_if)?;

        // The VIP is not on-link: route it to the LB.
        client_ns.ip([
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &lb_if.ip4.to_string(),
        ])?;
        client_ns.ip([
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &lb_if.ip6.to_string(),
        ])?;

        let mut backends = Vec::with_capacity(n_backends);
        for i in 1..=n_backends {
            let ns = new_ns(&format!("b{i}"))?;
            let b_if = Iface::new("eth0", SUBNET, 10 + i as u8, 24);
            bridge_port(&sw, &format!("p-b{i}"), &ns, &b_if)?;
            backends.push(Host {
                name: format!("b{i}"),
                ns,
                iface: b_if,
            });
        }
        let mut topo = Topology {
            xdp_links: Vec::new(),
            shape: Shape::OneArm,
            client: Host {
                name: "client".into(),
                ns: client_ns,
                iface: cl_if,
            },
            lb,
            lb_ifaces: vec![lb_if],
            backends,
            switch: Some(sw),
            peer_mode,
        };
        topo.pin_lb_neighbours()?;
        topo.prepare_peers(peer_mode)?;
        Ok(topo)
    }

    /// Names of the LB's interfaces, in order (what the agent's config lists).
    pub fn lb_interfaces(&self) -> Vec<String> {
        self.lb_ifaces.iter().map(|i| i.name.clone()).collect()
    }

    /// The LB interface facing backend `i` (1-based); in one-arm, the only one.
    pub fn lb_iface_for_backend(&self, i: usize) -> &Iface {
        match self.shape {
            Shape::TwoArm => &self.lb_ifaces[i],
            Shape::OneArm => &self.lb_ifaces[0],
        }
    }

    /// Backend by name (`b1`..).
    pub fn backend(&self, name: &str) -> Option<&Host> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Every namespace of the topology (client, lb, backends, switch).
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.client.ns, &self.lb];
        all.extend(self.backends.iter().map(|b| &b.ns));
        all.extend(self.switch.iter());
        all
    }

    /// Interfaces that are the peer of an LB interface (namespace, name): they receive the LB's
    /// `XDP_TX`/`XDP_REDIRECT` frames.
    pub fn lb_peers(&self) -> Vec<(&Netns, String)> {
        match (&self.shape, &self.switch) {
            (Shape::OneArm, Some(sw)) => vec![(sw, "p-lb".to_owned())],
            _ => std::iter::once(&self.client)
                .chain(&self.backends)
                .map(|h| (&h.ns, h.iface.name.clone()))
                .collect(),
        }
    }

    /// Enables GRO on every LB peer: one way to make veth deliver XDP_TX/REDIRECT frames.
    pub fn enable_peer_gro(&self) -> Result<()> {
        for (ns, dev) in self.lb_peers() {
            ns.run("ethtool", ["-K", &dev, "gro", "on"])?;
        }
        Ok(())
    }

    /// Attaches a native `XDP_PASS` program to every LB peer (kept until the topology drops):
    /// the other way to make veth deliver XDP_TX/REDIRECT frames.
    pub fn attach_peer_xdp_pass(&mut self) -> Result<()> {
        let links = self
            .lb_peers()
            .into_iter()
            .map(|(ns, dev)| attach_xdp_pass(ns, &dev))
            .collect::<Result<Vec<_>>>()?;
        self.xdp_links.extend(links);
        Ok(())
    }

    /// Detaches the programs [`Topology::attach_peer_xdp_pass`] attached.
    pub fn detach_peer_xdp_pass(&mut self) {
        self.xdp_links.clear();
    }

    fn prepare_peers(&mut self, mode: PeerMode) -> Result<()> {
        match mode {
            PeerMode::Gro => self.enable_peer_gro(),
            PeerMode::XdpPass => self.attach_peer_xdp_pass(),
        }
    }

    /// Adds permanent neighbour entries in the LB namespace for the client and every backend.
    ///
    /// Why: the XDP program resolves next hops with `bpf_fib_lookup`, which fails with
    /// NO_NEIGH until the kernel has learnt the neighbour, and with forwarding off the kernel
    /// never resolves it for a passed packet. Tests that want the NO_NEIGH path flush them
    /// ([`Topology::flush_lb_neighbours`]).
    pub fn pin_lb_neighbours(&self) -> Result<()> {
        for (i, host) in std::iter::once(&self.client)
            .chain(&self.backends)
            .enumerate()
        {
            let dev = match self.shape {
                Shape::TwoArm => &self.lb_ifaces[i].name,
                Shape::OneArm => &self.lb_ifaces[0].name,
            };
            let mac = host.iface.mac_string();
            for ip in [host.iface.ip(false), host.iface.ip(true)] {
                self.lb.ip([
                    "neigh",
                    "replace",
                    &ip.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok(())
    }

    /// Removes every neighbour entry in the LB namespace (IPv4 and IPv6).
    pub fn flush_lb_neighbours(&self) -> Result<()> {
        for iface in &self.lb_ifaces {
            self.lb
                .ip(["neigh", "flush", "dev", &iface.name, "nud", "all"])?;
        }
        Ok(())
    }
}

/// A namespace prepared for tests: no DAD (addresses usable at once, link-local too).
fn new_ns(role: &str) -> Result<Netns> {
    let ns = Netns::new(role)?;
    // Before any interface exists, so links created here inherit it from `default`.
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    Ok(ns)
}

/// Creates veth `a.name` in `a_ns` with peer `b.name` in `b_ns`, addresses both, brings them up,
/// and turns checksum offloads off on both ends.
///
/// Why offloads off: with TX checksum offload a namespace sends frames with only a partial
/// TCP/UDP checksum, which XDP then rewrites incrementally into garbage; and with RX offload on,
/// frames coming out of XDP may be marked "checksum verified", hiding a wrong checksum. Off on
/// both ends, every frame carries a full checksum and every receiver checks it.
fn veth(a_ns: &Netns, a: &Iface, b_ns: &Netns, b: &Iface) -> Result<()> {
    a_ns.ip([
        "link",
        "add",
        &a.name,
        "type",
        "veth",
        "peer",
        "name",
        &b.name,
        "netns",
        b_ns.name(),
    ])?;
    configure(a_ns, a)?;
    configure(b_ns, b)?;
    Ok(())
}

/// Addresses, MAC, offloads and `up` for one interface.
fn configure(ns: &Netns, i: &Iface) -> Result<()> {
    ns.ip(["link", "set", "dev", &i.name, "address", &i.mac_string()])?;
    ns.ip([
        "addr",
        "add",
        &format!("{}/{}", i.ip4, i.prefix4),
        "dev",
        &i.name,
    ])?;
    ns.ip([
        "-6",
        "addr",
        "add",
        &format!("{}/{}", i.ip6, i.prefix6),
        "dev",
        &i.name,
        "nodad",
    ])?;
    let mut args = vec!["-K", &i.name];
    args.extend(NO_OFFLOAD);
    ns.run("ethtool", &args)?;
    ns.ip(["link", "set", "dev", &i.name, "up"])?;
    Ok(())
}

/// A bridge port `port` on `br0` in `sw` whose peer is `host_if` in `host_ns`.
fn bridge_port(sw: &Netns, port: &str, host_ns: &Netns, host_if: &Iface) -> Result<()> {
    sw.ip([
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        &host_if.name,
        "netns",
        host_ns.name(),
    ])?;
    let mut args = vec!["-K", port];
    args.extend(NO_OFFLOAD);
    sw.run("ethtool", &args)?;
    sw.ip(["link", "set", "dev", port, "master", "br0", "up"])?;
    configure(host_ns, host_if)
}

/// Default routes (v4 and v6) in `ns` via `gw`'s addresses.
fn default_routes(ns: &Netns, gw: &Iface) -> Result<()> {
    ns.ip(["route", "add", "default", "via", &gw.ip4.to_string()])?;
    ns.ip(["-6", "route", "add", "default", "via", &gw.ip6.to_string()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        let i = Iface::new("eth0", 12, 2, 24);
        assert_eq!(i.ip4, Ipv4Addr::new(10, 200, 12, 2));
        assert_eq!(i.ip6, "fd00:200:12::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(i.mac_string(), "02:00:0a:c8:0c:02");
        assert_eq!(VIP6, "fd00:200:100::1".parse::<Ipv6Addr>().unwrap());
    }
}
