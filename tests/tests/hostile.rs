//! Issue 10 end to end: hostile frames never get through the load balancer.
//!
//! The real agent (native XDP) on a two-arm topology, IPv4 and IPv6 VIPs, TCP and UDP
//! services. The corpus of `lb_tests::corpus` is injected as raw frames with `AF_PACKET`
//! sockets, and `AF_PACKET` captures record what arrives on the other side. Tags (TCP sequence
//! number, payload) identify corpus frames after NAT.
//!
//! - `hostile_corpus_never_reaches_a_backend`: client -> VIP, from the client's `cl0` (each
//!   frame arrives at the LB's `lb-c` as sent), captured on both backends' `eth0`.
//! - `hostile_replies_never_reach_the_client`: backend -> SNAT port on the 5-tuples of real
//!   open flows (TCP and UDP, both families), captured on the client's `cl0`.
//! - `ttl_expiry_is_answered_with_time_exceeded`: TTL/hop limit 0-1 to a VIP gets ICMP time
//!   exceeded from the LB's kernel once it has a route to the VIP.
//!
//! Asserted: no must-not-forward frame arrives; every valid control arrives, with its IP
//! length equal to the frame's (trailing bytes trimmed), a correct IPv4 header checksum and
//! TCP/UDP checksum, and TTL/hop limit decremented by one; real TCP connections and UDP
//! queries through both VIPs succeed before and after the corpus; the agent keeps running.
//!
//! Checksums are checked here in software, and the receivers' interfaces have RX checksum
//! offload off (`ethtool -K DEV rx off`), so their stacks verify too. The topology already
//! turns TX and RX offloads off on every interface, the client's included.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use lb_tests::{
    DEFAULT_TIMEOUT, Netns, TcpNameServer, Topology, UdpNameServer, VIP4, VIP6,
    corpus::{self, Endpoints, Entry},
    lab::{Lab, TCP_PORT, UDP_PORT, interfaces_line, read_line},
    rawsock::PacketSocket,
    tcp_name_spread, udp_name_spread, wait_for_tcp,
};

/// First source port of the corpus's flows (far from the real clients' ports).
const FIRST_SPORT: u16 = 21000;
/// Gap between two injected frames, and between an opener and its frame.
const GAP: Duration = Duration::from_millis(1);
const OPENER_GAP: Duration = Duration::from_millis(4);

/// TCP and UDP services on both VIPs, every backend in each (by its address of that family).
fn config(topo: &Topology) -> String {
    let mut s = format!(
        "[global]\n{}\nmaglev_table_size = 4099\nxdp_mode = \"native\"\n",
        interfaces_line(topo)
    );
    for (name, vip, port, proto, bport, v6) in [
        ("web", IpAddr::V4(VIP4), TCP_PORT, "tcp", 8080, false),
        ("dns", IpAddr::V4(VIP4), UDP_PORT, "udp", 5353, false),
        ("web6", IpAddr::V6(VIP6), TCP_PORT, "tcp", 8080, true),
        ("dns6", IpAddr::V6(VIP6), UDP_PORT, "udp", 5353, true),
    ] {
        s += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\n"
        );
        for b in &topo.backends {
            s += &format!(
                "[[service.backend]]\naddress = \"{}\"\nport = {bport}\n",
                b.iface.ip(v6)
            );
        }
    }
    s
}

/// 20 TCP connections and 20 UDP queries to each VIP; all must be answered.
fn real_traffic(lab: &Lab, when: &str, first_udp_port: u16) {
    let ns = &lab.topo.client.ns;
    for (i, vip) in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)].into_iter().enumerate() {
        let tcp = tcp_name_spread(ns, vip, TCP_PORT, 20, DEFAULT_TIMEOUT).unwrap();
        assert_eq!(tcp.errors, 0, "TCP to {vip} {when} the corpus:\n{tcp}");
        let udp = udp_name_spread(
            ns,
            vip,
            UDP_PORT,
            20,
            first_udp_port + 20 * i as u16,
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(udp.errors, 0, "UDP to {vip} {when} the corpus:\n{udp}");
    }
}

/// IPv6 name servers on every backend (the lab starts the IPv4 ones).
type V6Servers = Vec<(TcpNameServer, UdpNameServer)>;

/// The lab with `n` backends and both VIPs answering; receivers check checksums themselves.
/// The end of a corpus test: the agent survived, real traffic still works, and no frame
/// broke the rules.
fn conclude(lab: &mut Lab, v6_servers: V6Servers, failures: &[String]) {
    assert!(
        lab.agent.is_running(),
        "the agent died during the corpus:\n{}",
        lab.agent.output()
    );
    real_traffic(lab, "after", 30100);
    drop(v6_servers);
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn start_lab(n: usize) -> (Lab, V6Servers) {
    let lab = Lab::start_config(Topology::two_arm(n).unwrap(), config, &[]);
    let mut v6 = Vec::new();
    for b in &lab.topo.backends {
        let a = IpAddr::V6(b.ip6());
        v6.push((
            TcpNameServer::start(&b.ns, SocketAddr::new(a, 8080), &b.name).unwrap(),
            UdpNameServer::start(&b.ns, SocketAddr::new(a, 5353), &b.name).unwrap(),
        ));
    }
    wait_for_tcp(
        &lab.topo.client.ns,
        IpAddr::V6(VIP6),
        TCP_PORT,
        Duration::from_secs(15),
    )
    .expect("IPv6 VIP answers");
    // The topology made every interface with RX checksum offload off already; say it again
    // for the receivers, whose stacks then verify checksums in software.
    for h in std::iter::once(&lab.topo.client).chain(&lab.topo.backends) {
        h.ns.run("ethtool", ["-K", &h.iface.name, "rx", "off"])
            .unwrap();
    }
    (lab, v6)
}

/// Client -> VIP: the corpus from the client's interface, captured on every backend.
#[test]
fn hostile_corpus_never_reaches_a_backend() {
    let (mut lab, v6_servers) = start_lab(2);
    real_traffic(&lab, "before", 30000);

    let client = &lab.topo.client;
    let ep = Endpoints {
        client_mac: client.iface.mac,
        lb_mac: lab.topo.lb_ifaces[0].mac,
        client4: client.ip4(),
        client6: client.ip6(),
        vip4: VIP4,
        vip6: VIP6,
        tcp_port: TCP_PORT,
        udp_port: UDP_PORT,
        first_sport: FIRST_SPORT,
        fixed_sport: None,
    };
    let entries = corpus::build(&ep);
    let captures: Vec<(String, PacketSocket)> = lab
        .topo
        .backends
        .iter()
        .map(|b| {
            let s = b.ns.enter(|| PacketSocket::capture(&b.iface.name)).unwrap();
            (b.name.clone(), s)
        })
        .collect();
    let tx = client
        .ns
        .enter(|| PacketSocket::sender(&client.iface.name))
        .unwrap();
    // What the client hears back (ICMP errors quoting corpus frames), reported, not asserted.
    let client_cap = client
        .ns
        .enter(|| PacketSocket::capture(&client.iface.name))
        .unwrap();
    let arrivals = inject_and_capture(&tx, &captures, &entries);
    report_icmp(
        &entries,
        &client_cap.drain(Duration::from_millis(200), Duration::from_secs(5), 100_000),
    );
    let failures = judge(&entries, &arrivals);
    conclude(&mut lab, v6_servers, &failures);
}

/// Sends every entry (its opener first) and returns, by corpus index, the frames carrying
/// that index's tag that arrived on the captures (capture name, frame).
fn inject_and_capture(
    tx: &PacketSocket,
    captures: &[(String, PacketSocket)],
    entries: &[Entry],
) -> BTreeMap<u16, Vec<(String, Vec<u8>)>> {
    for e in entries {
        if let Some(o) = &e.opener {
            tx.send(o).unwrap();
            std::thread::sleep(OPENER_GAP);
        }
        tx.send(&e.frame)
            .unwrap_or_else(|err| panic!("inject {} ({}): {err}", e.class, e.family()));
        std::thread::sleep(GAP);
    }
    // Every corpus frame and the answers to it are well under this; the drain stops after
    // 500 ms without a frame (10 s and 100k frames at most per capture).
    let mut arrivals: BTreeMap<u16, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut captured = 0;
    for (name, cap) in captures {
        for f in cap.drain(Duration::from_millis(500), Duration::from_secs(10), 100_000) {
            captured += 1;
            if let Some(i) = corpus::find_tag(&f) {
                arrivals.entry(i).or_default().push((name.clone(), f));
            }
        }
    }
    println!(
        "injected {} frames ({} hostile), captured {captured}, {} corpus entries arrived",
        entries.len(),
        entries.iter().filter(|e| e.must_not_forward).count(),
        arrivals.len()
    );
    arrivals
}

/// The ICMP/ICMPv6 errors among `frames` that quote a corpus frame: (corpus index, what).
fn icmp_answers(frames: &[Vec<u8>]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for f in frames {
        let Some(p) = corpus::parse(f) else { continue };
        let l4 = p.l4();
        if f.len() < l4 + 8 || !matches!((p.v6, p.proto), (false, 1) | (true, 58)) {
            continue;
        }
        let what = match (p.v6, f[l4], f[l4 + 1]) {
            (false, 11, _) | (true, 3, _) => "time exceeded".to_string(),
            (false, 3, c) | (true, 1, c) => format!("unreachable code {c}"),
            (_, t, c) => format!("type {t} code {c}"),
        };
        // The quoted datagram starts after the 8-byte ICMP header.
        let mut quoted = f[..14].to_vec();
        quoted[12..14].copy_from_slice(if p.v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        quoted.extend_from_slice(&f[l4 + 8..]);
        if let Some(i) = corpus::find_tag(&quoted) {
            out.push((i, what));
        }
    }
    out
}

/// Prints the ICMP/ICMPv6 errors among `frames` that quote a corpus frame. Information only:
/// what the LB's kernel answers depends on its routes (see
/// `ttl_expiry_is_answered_with_time_exceeded`).
fn report_icmp(entries: &[Entry], frames: &[Vec<u8>]) {
    let mut seen = BTreeMap::new();
    for (i, what) in icmp_answers(frames) {
        seen.entry(i).or_insert(what);
    }
    println!(
        "ICMP errors the client got about corpus frames ({}):",
        seen.len()
    );
    for (i, what) in &seen {
        if let Some(e) = entries.iter().find(|e| e.index == *i) {
            println!("  #{i} {} {}: {what}", e.family(), e.class);
        }
    }
}

/// One line per problem: a hostile frame that arrived, a control that did not or arrived
/// damaged. Prints a summary by class.
fn judge(entries: &[Entry], arrivals: &BTreeMap<u16, Vec<(String, Vec<u8>)>>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut leaked_classes = Vec::new();
    for e in entries {
        let got = arrivals.get(&e.index).map(Vec::as_slice).unwrap_or(&[]);
        let label = format!("#{} {} {}", e.index, e.family(), e.class);
        if e.must_not_forward {
            if let Some((backend, f)) = got.first() {
                leaked_classes.push(format!("{} {}", e.family(), e.class));
                failures.push(format!(
                    "REACHED {backend}: {label}\n    sent     {}\n    received {}",
                    corpus::hex(&e.frame),
                    corpus::hex(f)
                ));
            }
            continue;
        }
        if got.is_empty() {
            failures.push(format!(
                "control NOT FORWARDED: {label}\n    sent {}",
                corpus::hex(&e.frame)
            ));
        }
        for (backend, f) in got {
            let problems = corpus::forwarded_problems(&e.frame, f, &[]);
            if !problems.is_empty() {
                failures.push(format!(
                    "control DAMAGED on {backend}: {label}: {}\n    sent     {}\n    received {}",
                    problems.join("; "),
                    corpus::hex(&e.frame),
                    corpus::hex(f)
                ));
            }
        }
    }
    println!(
        "hostile classes that reached the receiving side ({}):",
        leaked_classes.len()
    );
    for c in &leaked_classes {
        println!("  {c}");
    }
    failures
}

/// Backend -> SNAT port (the reply direction): the corpus, with the 5-tuple of a real flow of
/// each family and protocol, from the backend's interface, captured on the client's.
#[test]
fn hostile_replies_never_reach_the_client() {
    let (mut lab, v6_servers) = start_lab(1);
    real_traffic(&lab, "before", 30000);
    let client = &lab.topo.client;
    let backend = &lab.topo.backends[0];
    let lb_b = &lab.topo.lb_ifaces[1];

    // Real flows, kept open while the corpus runs; the servers saw their SNAT ports.
    let tcp_flow = |vip: IpAddr, server: &TcpNameServer| {
        let s = client.ns.enter(|| {
            let s = TcpStream::connect_timeout(&SocketAddr::new(vip, TCP_PORT), DEFAULT_TIMEOUT)
                .expect("connect to VIP");
            s.set_read_timeout(Some(DEFAULT_TIMEOUT)).unwrap();
            s
        });
        read_line(&s);
        let port = server.peers().last().expect("server saw the flow").port();
        (s, port)
    };
    let udp_flow = |vip: IpAddr, server: &UdpNameServer| {
        let s = client.ns.enter(|| {
            let any: IpAddr = if vip.is_ipv6() {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            let s = UdpSocket::bind((any, 0)).unwrap();
            s.set_read_timeout(Some(DEFAULT_TIMEOUT)).unwrap();
            s.send_to(b"who?", (vip, UDP_PORT)).unwrap();
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf).expect("UDP answer");
            s
        });
        let port = server.peers().last().expect("server saw the flow").port();
        (s, port)
    };
    let (_t4, tcp4) = tcp_flow(IpAddr::V4(VIP4), &lab.tcp[0]);
    let (_t6, tcp6) = tcp_flow(IpAddr::V6(VIP6), &v6_servers[0].0);
    let (_u4, udp4) = udp_flow(IpAddr::V4(VIP4), &lab.udp[0]);
    let (_u6, udp6) = udp_flow(IpAddr::V6(VIP6), &v6_servers[0].1);
    println!("SNAT ports: TCP {tcp4} / {tcp6}, UDP {udp4} / {udp6}");

    // The corpus seen from the backend: it "is the client", the LB's address on its link "is
    // the VIP" (also as a martian source), the SNAT port the destination port. Built once per
    // (family, protocol) flow, keeping that flow's entries (their indices stay distinct).
    let mut entries: Vec<Entry> = Vec::new();
    for (v6, tcp, sport, dport) in [
        (false, true, 8080, tcp4),
        (false, false, 5353, udp4),
        (true, true, 8080, tcp6),
        (true, false, 5353, udp6),
    ] {
        let ep = Endpoints {
            client_mac: backend.iface.mac,
            lb_mac: lb_b.mac,
            client4: backend.ip4(),
            client6: backend.ip6(),
            vip4: lb_b.ip4,
            vip6: lb_b.ip6,
            tcp_port: dport,
            udp_port: dport,
            first_sport: 0,
            fixed_sport: Some(sport),
        };
        entries.extend(
            corpus::build(&ep)
                .into_iter()
                .filter(|e| e.v6 == v6 && e.tcp == tcp)
                .map(|e| Entry { opener: None, ..e }),
        );
    }
    entries.sort_by_key(|e| e.index);
    let captures = vec![(
        "client".to_string(),
        client
            .ns
            .enter(|| PacketSocket::capture(&client.iface.name))
            .unwrap(),
    )];
    let tx = backend
        .ns
        .enter(|| PacketSocket::sender(&backend.iface.name))
        .unwrap();
    let arrivals = inject_and_capture(&tx, &captures, &entries);
    let failures = judge(&entries, &arrivals);
    conclude(&mut lab, v6_servers, &failures);
}

/// TTL / hop limit 0 or 1 to a VIP: the data plane hands the frame to the kernel, which
/// answers "time exceeded" when it has a route to the VIP (a real node has one: its default
/// route). The lab's LB namespace has none, so this test gives it one, through an "upstream"
/// namespace, and checks that the client gets ICMP time exceeded for each such frame.
///
/// IPv6 needs more than the route: the kernel forwards (and so answers hop limit exceeded)
/// only with `net.ipv6.conf.all.forwarding` or, since Linux 6.17, the receiving interface's
/// `force_forwarding`; `conf.<if>.forwarding`, which the agent sets, does not do it (without
/// either the kernel drops such frames silently: still never forwarded). A node that routes
/// IPv6 has `all.forwarding` on, so the LB namespace gets it here (README: TTL rule).
#[test]
fn ttl_expiry_is_answered_with_time_exceeded() {
    let (mut lab, v6_servers) = start_lab(1);
    let lb = &lab.topo.lb;
    let up = Netns::new("up").unwrap();
    lb.ip([
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        up.name(),
    ])
    .unwrap();
    for (ns, dev, v4, v6) in [
        (lb, "up0", "10.200.99.1/24", "fd00:200:99::1/64"),
        (&up, "eth0", "10.200.99.2/24", "fd00:200:99::2/64"),
    ] {
        ns.ip(["addr", "add", v4, "dev", dev]).unwrap();
        ns.ip(["-6", "addr", "add", v6, "dev", dev, "nodad"])
            .unwrap();
        ns.ip(["link", "set", dev, "up"]).unwrap();
    }
    lb.ip(["route", "add", &format!("{VIP4}/32"), "via", "10.200.99.2"])
        .unwrap();
    lb.ip([
        "-6",
        "route",
        "add",
        &format!("{VIP6}/128"),
        "via",
        "fd00:200:99::2",
    ])
    .unwrap();
    lb.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();

    let client = &lab.topo.client;
    let ep = Endpoints {
        client_mac: client.iface.mac,
        lb_mac: lab.topo.lb_ifaces[0].mac,
        client4: client.ip4(),
        client6: client.ip6(),
        vip4: VIP4,
        vip6: VIP6,
        tcp_port: TCP_PORT,
        udp_port: UDP_PORT,
        first_sport: FIRST_SPORT,
        fixed_sport: None,
    };
    let entries: Vec<Entry> = corpus::build(&ep)
        .into_iter()
        .filter(|e| e.class.starts_with("ip/ttl-"))
        .collect();
    let cap = client
        .ns
        .enter(|| PacketSocket::capture(&client.iface.name))
        .unwrap();
    let backend_cap = vec![(
        "b1".to_string(),
        lab.topo.backends[0]
            .ns
            .enter(|| PacketSocket::capture("eth0"))
            .unwrap(),
    )];
    let tx = client
        .ns
        .enter(|| PacketSocket::sender(&client.iface.name))
        .unwrap();
    // Spaced out: the kernel rate-limits ICMP errors per destination (a burst of 6 here).
    let mut answers = BTreeMap::new();
    for e in &entries {
        tx.send(&e.frame).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        for (i, what) in
            icmp_answers(&cap.drain(Duration::from_millis(200), Duration::from_secs(2), 1000))
        {
            answers.entry(i).or_insert(what);
        }
    }
    let arrivals = inject_and_capture(&tx, &backend_cap, &[]);
    assert!(arrivals.is_empty(), "a TTL-expired frame reached b1");
    assert!(
        lab.agent.is_running(),
        "agent died:\n{}",
        lab.agent.output()
    );
    drop(v6_servers);
    let mut failures = Vec::new();
    for e in &entries {
        let got = answers.get(&e.index).map(String::as_str);
        println!("#{} {} {}: {got:?}", e.index, e.family(), e.class);
        if got != Some("time exceeded") {
            failures.push(format!(
                "#{} {} {}: client got {got:?}, want ICMP time exceeded",
                e.index,
                e.family(),
                e.class
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
