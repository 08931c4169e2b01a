//! End to end: the real `lb` agent with native XDP on veth, in namespaces this test makes
//! (client, LB, three backends running real TCP/UDP servers), real sockets on both ends.
//!
//! The agent binary is `target/<profile>/lb` (built by `cargo xtask test`), or `$LB_BIN`.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    DEFAULT_TIMEOUT, Topology, VIP4,
    lab::{Lab, UDP_PORT, assert_balanced, config_text, echo},
    udp_name_spread,
};

/// 300 TCP connections spread over three backends, each getting 20% to 47%; then 300 UDP
/// queries the same; the agent exits cleanly and leaves no XDP program attached.
#[test]
fn tcp_and_udp_spread_over_backends() {
    let mut lab = Lab::start(Topology::two_arm(3).unwrap(), None);
    let names = lab.names();
    let tcp = lab.tcp_spread(300);
    println!("TCP:\n{tcp}");
    assert_balanced("TCP", &tcp, &names);
    let udp = udp_name_spread(
        &lab.topo.client.ns,
        IpAddr::V4(VIP4),
        UDP_PORT,
        300,
        20000,
        DEFAULT_TIMEOUT,
    )
    .unwrap();
    println!("UDP:\n{udp}");
    assert_balanced("UDP", &udp, &names);

    // Clean shutdown detaches every program it attached.
    let status = lab
        .agent
        .stop(Duration::from_secs(10))
        .expect("agent stops");
    assert!(
        status.success(),
        "agent exit: {status:?}\n{}",
        lab.agent.output()
    );
    for iface in lab.topo.lb_interfaces() {
        let out = lab.topo.lb.ip(["link", "show", "dev", &iface]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("xdp"),
            "XDP still attached to {iface}: {text}"
        );
    }
}

/// The same over a one-arm topology: one LB interface, replies and forwards both XDP_TX.
#[test]
fn one_arm_spread() {
    let lab = Lab::start(Topology::one_arm(3).unwrap(), None);
    let tcp = lab.tcp_spread(300);
    println!("one-arm TCP:\n{tcp}");
    assert_balanced("one-arm TCP", &tcp, &lab.names());
}

/// Established connections stay on their backend across a reload that removes another
/// backend; new connections no longer reach the removed one. A bad config is refused and the
/// running generation keeps serving.
#[test]
fn reload_removing_a_backend_keeps_established_flows() {
    let mut lab = Lab::start(Topology::two_arm(3).unwrap(), None);
    let names = lab.names();
    // Long-lived connections until every backend holds some.
    let mut conns: Vec<(TcpStream, String)> = Vec::new();
    for _ in 0..60 {
        conns.push(lab.client_connect());
    }
    for n in &names {
        assert!(
            conns.iter().any(|(_, b)| b == n),
            "no connection landed on {n}"
        );
    }
    for (s, _) in conns.iter_mut() {
        echo(s, b"before").expect("echo before reload");
    }

    // Remove the third backend.
    let removed = names[2].clone();
    let text = config_text(&lab.topo, &[0, 1], None);
    lab.reload(&text, 2);

    let mut kept = 0;
    for (s, backend) in conns.iter_mut() {
        if *backend != removed {
            echo(s, b"after reload")
                .unwrap_or_else(|e| panic!("connection on {backend} broke by the reload: {e}"));
            kept += 1;
        }
    }
    assert!(kept > 0);
    let spread = lab.tcp_spread(60);
    assert_eq!(spread.errors, 0, "{spread}");
    assert_eq!(
        spread.count(&removed),
        0,
        "removed backend still gets new flows\n{spread}"
    );

    // A broken config is refused; the running one keeps serving.
    lab.config.write("[global]\ninterfaces = []\n");
    lab.wait_for_log("reload rejected");
    for (s, backend) in conns.iter_mut() {
        if *backend != removed {
            echo(s, b"after bad reload").expect("still serving after a refused reload");
        }
    }
}

/// With `--no-watch`, an edited file is not applied until SIGHUP.
#[test]
fn sighup_reloads() {
    let lab = Lab::start_with(Topology::two_arm(3).unwrap(), None, &["--no-watch"]);
    let removed = lab.names()[2].clone();
    lab.config.write(&config_text(&lab.topo, &[0, 1], None));
    // The file watch would have noticed within a second.
    std::thread::sleep(Duration::from_millis(2500));
    let st = lab.status().expect("status");
    assert_eq!(
        st["generation"],
        1,
        "applied without SIGHUP:\n{}",
        lab.agent.output()
    );
    lab.agent.signal(libc::SIGHUP);
    lab.wait_for_generation(2);
    let spread = lab.tcp_spread(30);
    assert_eq!(spread.errors, 0, "{spread}");
    assert_eq!(spread.count(&removed), 0, "{spread}");
}

/// A UDP flood from one source is cut to its rate; a second source is still served.
#[test]
fn rate_limit_cuts_a_flood_but_serves_others() {
    let (rate, burst) = (50u64, 50u64);
    let lab = Lab::start(Topology::two_arm(3).unwrap(), Some((rate, burst)));
    let client = &lab.topo.client;
    client
        .ns
        .ip(["addr", "add", "10.200.1.3/24", "dev", &client.iface.name])
        .unwrap();
    let vip = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    let flood = 2000;
    let (answered, elapsed) = client.ns.enter(|| {
        let s = UdpSocket::bind((client.ip4(), 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let start = Instant::now();
        for i in 0..flood {
            let _ = s.send_to(format!("q{i}").as_bytes(), vip);
        }
        let mut answered = 0;
        let mut buf = [0u8; 256];
        while s.recv_from(&mut buf).is_ok() {
            answered += 1;
        }
        (answered, start.elapsed())
    });
    let allowed = burst as f64 + rate as f64 * elapsed.as_secs_f64();
    println!("flood: {answered}/{flood} answered in {elapsed:?} (bucket allows {allowed:.0})");
    assert!(answered > 0, "the flood source got nothing at all");
    assert!(
        (answered as f64) <= allowed + 5.0,
        "rate limit let {answered} through, bucket allows {allowed:.0}"
    );

    // The second source has its own bucket.
    let other_answered = client.ns.enter(|| {
        let s = UdpSocket::bind(("10.200.1.3", 0)).unwrap();
        s.set_read_timeout(Some(DEFAULT_TIMEOUT)).unwrap();
        let mut ok = 0;
        let mut buf = [0u8; 256];
        for i in 0..20 {
            s.send_to(format!("other{i}").as_bytes(), vip).unwrap();
            if s.recv_from(&mut buf).is_ok() {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(other_answered, 20, "second source must be served in full");
}

/// After the agent stops and the topology is dropped, nothing is left: no namespace, no XDP
/// link, no pinned object, no neighbour entry on the host.
#[test]
fn nothing_left_behind() {
    let pins_before = list_bpffs();
    let names: Vec<String>;
    {
        let mut lab = Lab::start(Topology::two_arm(3).unwrap(), None);
        names = lab
            .topo
            .namespaces()
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        lab.agent
            .stop(Duration::from_secs(10))
            .expect("agent stops");
    }
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    for n in &names {
        assert!(!left.contains(n.as_str()), "namespace {n} left behind");
    }
    assert_eq!(list_bpffs(), pins_before, "pinned objects left behind");
}

fn list_bpffs() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            let mut v: Vec<String> = d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default()
}

/// The data plane drops frames not addressed to the receiving interface's MAC; when an
/// operator changes that MAC while the agent runs, the agent picks the new one up (it
/// re-reads them every second) and clients that resolve the new MAC are served again.
#[test]
fn interface_mac_change_is_picked_up() {
    let lab = Lab::start(Topology::two_arm(1).unwrap(), None);
    let _ = lab.client_connect();
    let lb_c = &lab.topo.lb_ifaces[0].name;
    lab.topo
        .lb
        .ip(["link", "set", "dev", lb_c, "address", "02:00:00:00:77:01"])
        .unwrap();
    // The client forgets the old MAC and resolves the new one (ARP passes the LB untouched).
    let client = &lab.topo.client;
    client
        .ns
        .ip(["neigh", "flush", "dev", &client.iface.name])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let ok = client.ns.enter(|| {
            TcpStream::connect_timeout(
                &SocketAddr::new(IpAddr::V4(VIP4), lb_tests::lab::TCP_PORT),
                Duration::from_millis(500),
            )
            .is_ok()
        });
        if ok || Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        served,
        "no connection through the new MAC within 10 s\n{}",
        lab.agent.output()
    );
    assert!(
        lab.agent.output().contains("interface MAC changed"),
        "the agent did not report the change\n{}",
        lab.agent.output()
    );
}

/// A backend that changes its MAC (and announces it, as hosts do: gratuitous ARP) keeps its
/// established connections through the LB: the agent hears the neighbour change over
/// netlink and points their conntrack entries at the new MAC, without a reload.
#[test]
fn backend_mac_change_is_followed_without_reload() {
    let lab = Lab::start(Topology::two_arm(1).unwrap(), None);
    let mut conns: Vec<(TcpStream, String)> = (0..5).map(|_| lab.client_connect()).collect();
    for (s, _) in conns.iter_mut() {
        echo(s, b"before").expect("echo before the MAC change");
    }
    let b = &lab.topo.backends[0];
    b.ns.sysctl("net.ipv4.conf.eth0.arp_notify", "1").unwrap();
    let changed_at = Instant::now();
    b.ns.ip(["link", "set", "dev", "eth0", "address", "02:00:00:00:99:01"])
        .unwrap();
    for (s, _) in conns.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        echo(s, b"after").unwrap_or_else(|e| {
            panic!(
                "established connection lost after the backend's MAC changed: {e}\n{}",
                lab.agent.output()
            )
        });
    }
    println!(
        "established connections answered {:?} after the MAC change",
        changed_at.elapsed()
    );
    lab.wait_for_log("established flows now follow their backends' new next hops");
    let spread = lab.tcp_spread(20);
    assert_eq!(spread.errors, 0, "{spread}");
    let st = lab.status().expect("status");
    assert_eq!(st["generation"], 1, "no reload happened");
}

/// True once `ip neigh show ADDR dev DEV` in the LB namespace says `managed` (or, with
/// `want` false, no longer does), within 5 s.
fn wait_managed(lab: &Lab, addr: &str, dev: &str, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lab.topo.lb.ip(["neigh", "show", addr, "dev", dev]).unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("managed") == want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new route to a backend (through another next hop on its link) gets that next hop a
/// managed neighbour entry without a reload, and traffic keeps flowing; when the route goes,
/// the backend's own entry comes back.
#[test]
fn route_change_to_a_backend_is_followed_without_reload() {
    let lab = Lab::start(Topology::two_arm(1).unwrap(), None);
    let b = &lab.topo.backends[0];
    let dev = lab.topo.lb_ifaces[1].name.clone();
    let backend = b.ip4().to_string();
    // A second address of the backend stands in for a router on the link.
    b.ns.ip(["addr", "add", "10.200.11.3/24", "dev", "eth0"])
        .unwrap();
    let prefix = format!("{backend}/32");
    let route = [prefix.as_str(), "via", "10.200.11.3", "dev", dev.as_str()];
    lab.topo
        .lb
        .ip(["route", "add"].into_iter().chain(route))
        .unwrap();
    assert!(
        wait_managed(&lab, "10.200.11.3", &dev, true),
        "no managed entry for the new next hop\n{}",
        lab.agent.output()
    );
    lab.wait_for_log("route to a backend changed");
    let spread = lab.tcp_spread(20);
    assert_eq!(spread.errors, 0, "{spread}");

    lab.topo
        .lb
        .ip(["route", "del"].into_iter().chain(route))
        .unwrap();
    assert!(
        wait_managed(&lab, "10.200.11.3", &dev, false),
        "the unused next hop's entry stayed\n{}",
        lab.agent.output()
    );
    assert!(
        wait_managed(&lab, &backend, &dev, true),
        "the backend's own entry did not come back\n{}",
        lab.agent.output()
    );
    let spread = lab.tcp_spread(20);
    assert_eq!(spread.errors, 0, "{spread}");
    assert_eq!(lab.status().expect("status")["generation"], 1);
}
