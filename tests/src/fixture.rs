//! The data plane loaded with a fixed config, in a namespace whose FIB has routes and
//! permanent neighbours with fixed MACs, run through `BPF_PROG_TEST_RUN`: shared by the packet
//! fixtures (`tests/packets.rs`) and the per-packet benchmark (`lb-bench`).

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use lb_common::{FlowKey, Stats};
use lb_userspace::{
    config,
    dataplane::{Dataplane, LoadOptions},
    reconcile::{DesiredState, Reconciler},
};

use crate::Netns;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
pub const LB_C_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const LB_B_MAC: [u8; 6] = [2, 0, 0, 0, 0xb, 1];
pub const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 0xb, 2];
pub const ONE_ARM_BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x32];

pub const CONFIG: &str = r#"
[global]
interfaces = ["lb-c", "lb-b"]
maglev_table_size = 1021
snat_ports = [40000, 59999]

[[service]]
name = "web"
vip = "10.200.100.1"
port = 80
protocol = "tcp"
[[service.backend]]
address = "10.200.11.2"
port = 8080

[[service]]
name = "dns"
vip = "10.200.100.1"
port = 53
protocol = "udp"
[[service.backend]]
address = "10.200.11.2"
port = 5353

[[service]]
name = "web6"
vip = "fd00:200:100::1"
port = 80
protocol = "tcp"
[[service.backend]]
address = "fd00:200:11::2"
port = 8080

[[service]]
name = "limited"
vip = "10.200.100.2"
port = 80
protocol = "tcp"
[service.rate_limit]
rate = 1
burst = 2
[[service.backend]]
address = "10.200.11.2"
port = 8080

[[service]]
name = "onearm"
vip = "10.200.100.3"
port = 80
protocol = "tcp"
[[service.backend]]
address = "10.200.1.50"
port = 8080

# An L7 gateway service: checked and limited here, then passed to the kernel.
[[service]]
name = "gw-upstream"

[[service]]
name = "gateway"
vip = "10.200.100.9"
port = 80
protocol = "tcp"
mode = "http"
[service.rate_limit]
rate = 1
burst = 2
[[service.route]]
service = "gw-upstream"

[[service]]
name = "noneigh"
vip = "10.200.100.4"
port = 80
protocol = "tcp"
[[service.backend]]
address = "10.200.11.3"
port = 8080
"#;

/// The data plane loaded with [`CONFIG`], in a namespace with two interfaces:
/// `lb-c` (clients, 10.200.1.1/24) and `lb-b` (backends, 10.200.11.1/24).
pub struct Fx {
    pub ns: Netns,
    pub dp: Dataplane,
    pub rec: Reconciler,
    pub lb_c: u32,
    pub lb_b: u32,
}

impl Fx {
    pub fn start() -> Fx {
        let ns = Netns::new("fx").expect("namespace");
        let ip = |args: &[&str]| {
            ns.ip(args)
                .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
        };
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "lb-c", "type", "veth", "peer", "name", "cl0"]);
        ip(&["link", "add", "lb-b", "type", "veth", "peer", "name", "b0"]);
        for (dev, mac) in [
            ("lb-c", LB_C_MAC),
            ("cl0", CLIENT_MAC),
            ("lb-b", LB_B_MAC),
            ("b0", BACKEND_MAC),
        ] {
            ip(&["link", "set", dev, "address", &mac_str(mac)]);
            ip(&["link", "set", dev, "up"]);
        }
        ip(&["addr", "add", "10.200.1.1/24", "dev", "lb-c"]);
        ip(&["addr", "add", "fd00:200:1::1/64", "dev", "lb-c", "nodad"]);
        ip(&["addr", "add", "10.200.11.1/24", "dev", "lb-b"]);
        ip(&["addr", "add", "fd00:200:11::1/64", "dev", "lb-b", "nodad"]);
        for (addr, mac, dev) in [
            ("10.200.11.2", BACKEND_MAC, "lb-b"),
            ("fd00:200:11::2", BACKEND_MAC, "lb-b"),
            ("10.200.1.50", ONE_ARM_BACKEND_MAC, "lb-c"),
        ] {
            ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac_str(mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        // bpf_fib_lookup refuses to route for an interface with forwarding off (the agent
        // turns it on for the interfaces it attaches to).
        for dev in ["lb-c", "lb-b"] {
            ns.sysctl(&format!("net.ipv4.conf.{dev}.forwarding"), "1")
                .expect("sysctl");
            ns.sysctl(&format!("net.ipv6.conf.{dev}.forwarding"), "1")
                .expect("sysctl");
        }
        let (lb_c, lb_b) = ns.enter(|| (ifindex("lb-c"), ifindex("lb-b")));

        let cfg = config::parse(CONFIG, "fixtures.toml").expect("fixture config is valid");
        let mut dp = Dataplane::load(LoadOptions::default()).expect("load data plane");
        dp.set_settings(&cfg.global.settings()).expect("settings");
        let mut rec = Reconciler::new();
        rec.apply(&mut dp, &DesiredState::from_config(&cfg))
            .expect("apply config");
        // Devmap entries name devices by ifindex in the *caller's* namespace.
        ns.enter(|| {
            dp.register_interface(lb_c).expect("devmap");
            dp.register_interface(lb_b).expect("devmap");
        });
        Fx {
            ns,
            dp,
            rec,
            lb_c,
            lb_b,
        }
    }

    /// Runs the program once on `input` as if received on `ingress`.
    pub fn run(&mut self, ingress: u32, input: &[u8]) -> (u32, Vec<u8>) {
        let ctx: Vec<u8> = [0u32, input.len() as u32, 0, ingress, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; input.len() + 256];
        let prog = self.dp.lb_program();
        let result = self.ns.enter(|| {
            prog.test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
        });
        let r = result.expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs the tc program (`tc_lb`) once on `input` as if received on `ingress`: the skb
    /// the kernel builds for the run has no checksum offload state (`CHECKSUM_NONE`).
    pub fn run_tc(&mut self, ingress: u32, input: &[u8]) -> (u32, Vec<u8>) {
        // `struct __sk_buff` up to `ifindex` (offset 40); the kernel zero-fills the rest.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
        let mut out = vec![0u8; input.len() + 256];
        let prog = self.dp.tc_program();
        let result = self.ns.enter(|| {
            prog.test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
        });
        let r = result.expect("BPF_PROG_TEST_RUN (tc)");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    pub fn reasons(&self) -> Vec<u64> {
        self.dp
            .counters()
            .reasons()
            .iter()
            .map(|(_, n)| *n)
            .collect()
    }

    /// Asserts that, since `before` (a [`Fx::reasons`] reading), exactly one packet was
    /// counted, under `reason`: every packet moves exactly one reason counter.
    pub fn assert_only_reason(&self, before: &[u64], reason: lb_common::Reason, what: &str) {
        let after = self.reasons();
        for (i, r) in lb_common::Reason::ALL.iter().enumerate() {
            let want = u64::from(*r == reason);
            assert_eq!(
                after[i] - before[i],
                want,
                "{what}: counter `{}` moved by {} (expected {want})",
                r.name(),
                after[i] - before[i]
            );
        }
    }

    pub fn service(&self, name: &str) -> Stats {
        let id = self
            .rec
            .applied()
            .find(|s| s.desired.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
            .id;
        self.dp.counters().service(id)
    }

    /// The conntrack entry of a client tuple.
    pub fn ct(&self, p: &Pkt) -> lb_common::CtEntry {
        self.dp
            .conntrack_get(&p.flow_key())
            .unwrap_or_else(|| panic!("no conntrack entry for {p:?}"))
    }
}

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { syn: bool, ack: bool, fin: bool },
    Udp,
}

pub const SYN: L4 = L4::Tcp {
    syn: true,
    ack: false,
    fin: false,
};
pub const ACK: L4 = L4::Tcp {
    syn: false,
    ack: true,
    fin: false,
};
pub const SYN_ACK: L4 = L4::Tcp {
    syn: true,
    ack: true,
    fin: false,
};
pub const FIN_ACK: L4 = L4::Tcp {
    syn: false,
    ack: true,
    fin: true,
};

/// A packet's header fields; [`Pkt::bytes`] builds it with correct checksums.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// TTL / hop limit.
    pub ttl: u8,
}

impl Pkt {
    pub fn from_client(src: &str, sport: u16, dst: &str, dport: u16, l4: L4) -> Pkt {
        Pkt {
            smac: CLIENT_MAC,
            dmac: LB_C_MAC,
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            l4,
            payload: b"hello".to_vec(),
            ttl: 64,
        }
    }

    /// A backend's packet to our SNAT address and port, as it arrives on `lb-b`.
    pub fn from_backend(
        src: &str,
        sport: u16,
        dst: &str,
        dport: u16,
        l4: L4,
        payload: &[u8],
    ) -> Pkt {
        Pkt {
            smac: BACKEND_MAC,
            dmac: LB_B_MAC,
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            l4,
            payload: payload.to_vec(),
            ttl: 64,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.smac, self.dmac);
        let mut out = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {{
                match self.l4 {
                    L4::Tcp { syn, ack, fin } => {
                        let mut b = $ip.tcp(self.sport, self.dport, 1000, 64240);
                        if syn {
                            b = b.syn();
                        }
                        if ack {
                            b = b.ack(7);
                        }
                        if fin {
                            b = b.fin();
                        }
                        b.write(&mut out, &self.payload).unwrap();
                    }
                    L4::Udp => $ip
                        .udp(self.sport, self.dport)
                        .write(&mut out, &self.payload)
                        .unwrap(),
                }
            }};
        }
        match (self.vlan, self.src, self.dst) {
            (None, IpAddr::V4(s), IpAddr::V4(d)) => {
                finish!(eth.ipv4(s.octets(), d.octets(), self.ttl))
            }
            (None, IpAddr::V6(s), IpAddr::V6(d)) => {
                finish!(eth.ipv6(s.octets(), d.octets(), self.ttl))
            }
            (Some(v), IpAddr::V4(s), IpAddr::V4(d)) => finish!(
                eth.single_vlan(v.try_into().unwrap())
                    .ipv4(s.octets(), d.octets(), self.ttl)
            ),
            _ => unreachable!("fixtures use no other combination"),
        }
        out
    }

    /// This packet after translation to `src:sport -> dst:dport` with new MACs, one hop on
    /// (TTL / hop limit one less).
    pub fn translated(
        &self,
        smac: [u8; 6],
        dmac: [u8; 6],
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
    ) -> Pkt {
        Pkt {
            smac,
            dmac,
            src,
            sport,
            dst,
            dport,
            ttl: self.ttl - 1,
            ..self.clone()
        }
    }

    pub fn flow_key(&self) -> FlowKey {
        FlowKey::new(
            self.src.into(),
            self.dst.into(),
            self.sport.to_be(),
            self.dport.to_be(),
            match self.l4 {
                L4::Tcp { .. } => 6,
                L4::Udp => 17,
            },
            lb_common::addr::family_of(&self.src),
        )
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    let i = unsafe { libc_if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

unsafe extern "C" {
    #[link_name = "if_nametoindex"]
    fn libc_if_nametoindex(name: *const std::ffi::c_char) -> u32;
}
