//! Valid configs: values and defaults come out as written, and the example files parse.

use std::net::IpAddr;
use std::time::Duration;

use super::super::{
    Admin, AttachPoint, Backend, BuiltinRegistry, Config, Conntrack, DEFAULT_PIN_PATH, Global,
    Mode, Protocol, RateLimit, Service, SynGuard, XdpMode, load, parse,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn full_config_with_defaults() {
    let text = r#"
[global]
interfaces = ["eth0", "eth1"]
xdp_mode = "generic"
attach = { eth1 = "tc" }
maglev_table_size = 251
snat_ports = [20000, 29999]

[global.rate_limit]
rate = 1000

[global.conntrack]
max_entries = 4096
tcp_established_timeout = 600

[[service]]
name = "web"
vip = "10.0.0.1"
port = 80
protocol = "tcp"
mode = "nat"

[[service.backend]]
address = "10.0.1.1"
port = 8080

[[service.backend]]
address = "10.0.1.2"
port = 8080
weight = 0

[[service]]
name = "dns.v6"
vip = "2001:db8::53"
port = 53
protocol = "udp"
maglev_table_size = 65537
rate_limit = { rate = 50, burst = 200 }
backend = [
  { address = "2001:db8:1::1", port = 5353, weight = 3 },
]
"#;
    let config = parse(text, "full.toml").unwrap();
    let ct = Conntrack::default();
    let expected = Config {
        global: Global {
            interfaces: vec!["eth0".into(), "eth1".into()],
            xdp_mode: XdpMode::Generic,
            attach: [("eth1".to_string(), AttachPoint::Tc)].into(),
            maglev_table_size: 251,
            snat_port_min: 20000,
            snat_port_max: 29999,
            rate_limit: RateLimit {
                rate: 1000,
                burst: 1000,
            },
            conntrack: Conntrack {
                max_entries: 4096,
                tcp_established_timeout: Duration::from_secs(600),
                ..ct
            },
            syn_guard: SynGuard::default(),
            pin_path: Some(DEFAULT_PIN_PATH.into()),
        },
        admin: Admin::default(),
        registry: BuiltinRegistry::default(),
        sources: Vec::new(),
        auth: Vec::new(),
        gateway: Default::default(),
        socket_lb: Default::default(),
        mesh: Default::default(),
        services: vec![
            Service {
                name: "web".into(),
                frontend: Some(std::net::SocketAddr::new(ip("10.0.0.1"), 80)),
                protocol: Protocol::Tcp,
                mode: Mode::Nat,
                scope: Default::default(),
                client_affinity: false,
                mtls: false,
                identity: None,
                http: None,
                maglev_table_size: 251,
                rate_limit: RateLimit {
                    rate: 1000,
                    burst: 1000,
                },
                backends: vec![
                    Backend {
                        address: ip("10.0.1.1"),
                        port: 8080,
                        weight: 1,
                    },
                    Backend {
                        address: ip("10.0.1.2"),
                        port: 8080,
                        weight: 0,
                    },
                ],
                health: None,
            },
            Service {
                name: "dns.v6".into(),
                frontend: Some(std::net::SocketAddr::new(ip("2001:db8::53"), 53)),
                protocol: Protocol::Udp,
                mode: Mode::Nat,
                scope: Default::default(),
                client_affinity: false,
                mtls: false,
                identity: None,
                http: None,
                maglev_table_size: 65537,
                rate_limit: RateLimit {
                    rate: 50,
                    burst: 200,
                },
                backends: vec![Backend {
                    address: ip("2001:db8:1::1"),
                    port: 5353,
                    weight: 3,
                }],
                health: None,
            },
        ],
    };
    assert_eq!(config, expected);
}

#[test]
fn minimal_config_gets_every_default() {
    let config = parse("[global]\ninterfaces = [\"eth0\"]\n", "min.toml").unwrap();
    let g = &config.global;
    assert!(config.services.is_empty());
    assert_eq!(g.xdp_mode, XdpMode::Native);
    assert_eq!(g.maglev_table_size, lb_common::DEFAULT_MAGLEV_SIZE);
    assert_eq!((g.snat_port_min, g.snat_port_max), (40000, 59999));
    assert_eq!(g.rate_limit, RateLimit::UNLIMITED);
    assert_eq!(
        g.conntrack,
        Conntrack {
            max_entries: 262_144,
            tcp_syn_timeout: Duration::from_secs(60),
            tcp_syn_reclaim: Duration::from_secs(1),
            tcp_established_timeout: Duration::from_secs(3600),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
        }
    );
    assert_eq!(g.settings(), lb_common::Settings::default());
}

#[test]
fn rate_limit_zero_means_unlimited_and_burst_is_optional() {
    let text = "[global]\ninterfaces = [\"eth0\"]\nrate_limit = { rate = 0 }\n";
    let config = parse(text, "t.toml").unwrap();
    assert!(config.global.rate_limit.is_unlimited());
}

#[test]
fn example_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = load(&path) {
                panic!("{} does not parse:\n{e}", path.display());
            }
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    for name in ["demo.toml", "lb.toml"] {
        assert!(
            seen.iter().any(|s| s == name),
            "{name} missing from {dir:?}"
        );
    }
}

#[test]
fn demo_config_matches_the_demo_topology() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo.toml");
    let config = load(&path).unwrap();
    assert_eq!(
        config.global.interfaces,
        ["lb-c", "lb-b1", "lb-b2", "lb-b3"]
    );
    let backends = |port| {
        ["10.200.11.2", "10.200.12.2", "10.200.13.2"]
            .map(|a| Backend {
                address: ip(a),
                port,
                weight: 1,
            })
            .to_vec()
    };
    let summary: Vec<_> = config
        .services
        .iter()
        .map(|s| {
            let f = s.frontend.expect("a frontend");
            (f.ip(), f.port(), s.protocol, s.backends.clone())
        })
        .collect();
    assert_eq!(
        summary,
        [
            (ip("10.200.100.1"), 80, Protocol::Tcp, backends(8080)),
            (ip("10.200.100.1"), 53, Protocol::Udp, backends(5353)),
        ]
    );
}
