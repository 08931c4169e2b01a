//! Tests of the test harness itself: topologies come up, carry traffic without any XDP, and
//! leave nothing behind (also after a panic). Needs root; no load balancer involved.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lb_tests::servers::{tcp_echo, udp_ask_name_timeout};
use lb_tests::topology::Shape;
use lb_tests::{
    Netns, PeerMode, TcpNameServer, Topology, UdpNameServer, tcp_connect_name, tcp_name_spread,
    udp_ask_name, udp_name_spread,
};

const T: Duration = Duration::from_secs(2);

fn netns_list() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn names(t: &Topology) -> Vec<String> {
    t.namespaces().iter().map(|n| n.name().to_owned()).collect()
}

fn assert_gone(names: &[String]) {
    let live = netns_list();
    for n in names {
        assert!(!live.contains(n), "namespace {n} still exists: {live:?}");
    }
}

#[test]
fn two_arm_builds_and_tears_down() {
    let t = Topology::two_arm(3).unwrap();
    let ns = names(&t);
    assert_eq!(ns.len(), 5);
    let live = netns_list();
    for n in &ns {
        assert!(live.contains(n), "{n} missing from {live:?}");
    }
    assert_eq!(t.lb_interfaces(), ["lb-c", "lb-b1", "lb-b2", "lb-b3"]);
    let links = t.lb.ip(["-br", "addr"]).unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains("10.200.12.1/24"), "{links}");
    assert!(links.contains("fd00:200:13::1/64"), "{links}");
    let fwd = t.lb.run("sysctl", ["-n", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "0");
    // TX checksum offload off on the client end.
    let k = t.client.ns.run("ethtool", ["-k", "cl0"]).unwrap();
    assert!(String::from_utf8_lossy(&k.stdout).contains("tx-checksumming: off"));
    drop(t);
    assert_gone(&ns);
}

#[test]
fn one_arm_builds_and_tears_down() {
    let t = Topology::one_arm(3).unwrap();
    assert_eq!(t.shape, Shape::OneArm);
    let ns = names(&t);
    assert_eq!(ns.len(), 6);
    assert_eq!(t.lb_interfaces(), ["lb-0"]);
    // Same L2 segment: the LB reaches backend 3 and the client directly.
    let _s = TcpNameServer::start(
        &t.backends[2].ns,
        SocketAddr::new(t.backends[2].ip4().into(), 8080),
        "b3",
    )
    .unwrap();
    let name = tcp_connect_name(&t.lb, t.backends[2].ip4().into(), 8080, T).unwrap();
    assert_eq!(name, "b3");
    let name = tcp_connect_name(&t.client.ns, t.backends[2].ip6().into(), 8080, T);
    assert!(name.is_err(), "server bound to IPv4 only");
    drop(_s);
    drop(t);
    assert_gone(&ns);
}

#[test]
fn backend_servers_answer_the_lb_namespace_directly() {
    let t = Topology::two_arm(2).unwrap();
    let mut servers = Vec::new();
    for b in &t.backends {
        for ip in [IpAddr::from(b.ip4()), IpAddr::from(b.ip6())] {
            servers.push(TcpNameServer::start(&b.ns, SocketAddr::new(ip, 8080), &b.name).unwrap());
        }
        servers.push(TcpNameServer::start(&b.ns, "0.0.0.0:0".parse().unwrap(), "x").unwrap());
    }
    let udp: Vec<_> = t
        .backends
        .iter()
        .map(|b| UdpNameServer::start(&b.ns, "[::]:5353".parse().unwrap(), &b.name).unwrap())
        .collect();

    for b in &t.backends {
        assert_eq!(
            tcp_connect_name(&t.lb, b.ip4().into(), 8080, T).unwrap(),
            b.name
        );
        assert_eq!(
            tcp_connect_name(&t.lb, b.ip6().into(), 8080, T).unwrap(),
            b.name
        );
        let (name, echo) = tcp_echo(&t.lb, b.ip4().into(), 8080, b"hello\n", T).unwrap();
        assert_eq!(
            (name.as_str(), echo.as_slice()),
            (b.name.as_str(), &b"hello\n"[..])
        );
        assert_eq!(
            udp_ask_name(&t.lb, b.ip6().into(), 5353, 40000).unwrap(),
            b.name
        );
    }
    // IPv4 server got 2 connections (name + echo), the IPv6 one 1; peers are the LB's address.
    assert_eq!(servers[0].connections(), 2);
    assert_eq!(servers[1].connections(), 1);
    assert!(
        servers[0]
            .peers()
            .iter()
            .all(|p| p.ip() == t.lb_ifaces[1].ip4)
    );

    let spread = tcp_name_spread(&t.lb, t.backends[1].ip4().into(), 8080, 50, T).unwrap();
    assert_eq!(spread.count("b2"), 50, "{spread}");
    assert_eq!(spread.source_ports, 50);
    let spread = udp_name_spread(&t.lb, t.backends[0].ip4().into(), 5353, 20, 41000, T).unwrap();
    assert_eq!(spread.count("b1"), 20, "{spread}");
    assert_eq!(udp[0].queries(), 21);
    let shown = spread.to_string();
    assert!(shown.contains("b1") && shown.contains("100.0%"), "{shown}");
}

#[test]
fn lb_namespace_does_not_forward_without_xdp() {
    let t = Topology::two_arm(1).unwrap();
    let b = &t.backends[0];
    let _s = TcpNameServer::start(&b.ns, "0.0.0.0:8080".parse().unwrap(), "b1").unwrap();
    // The client's route to b1 goes through the LB namespace, whose kernel must not forward.
    let r = tcp_connect_name(
        &t.client.ns,
        b.ip4().into(),
        8080,
        Duration::from_millis(500),
    );
    assert!(r.is_err(), "kernel forwarded: {r:?}");
    let r = udp_ask_name_timeout(
        &t.client.ns,
        b.ip4().into(),
        5353,
        0,
        Duration::from_millis(300),
    );
    assert!(r.is_err());
    // But the LB's own address on the client side answers (local delivery, not forwarding).
    let _l = TcpNameServer::start(&t.lb, "0.0.0.0:9000".parse().unwrap(), "lb").unwrap();
    assert_eq!(
        tcp_connect_name(&t.client.ns, t.lb_ifaces[0].ip4.into(), 9000, T).unwrap(),
        "lb"
    );
}

#[test]
fn xdp_pass_peer_mode_attaches_and_traffic_flows() {
    let mut t = Topology::two_arm_with(1, PeerMode::XdpPass).unwrap();
    let link = t.client.ns.ip(["link", "show", "cl0"]).unwrap();
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(link.contains("xdp"), "no XDP program on cl0: {link}");
    let b = &t.backends[0];
    let _s = TcpNameServer::start(&b.ns, "[::]:8080".parse().unwrap(), "b1").unwrap();
    assert_eq!(
        tcp_connect_name(&t.lb, b.ip4().into(), 8080, T).unwrap(),
        "b1"
    );
    drop(_s);
    t.detach_peer_xdp_pass();
    let link = t.client.ns.ip(["link", "show", "cl0"]).unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"));
}

#[test]
fn teardown_happens_on_panic() {
    let captured = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let t = Topology::two_arm(2).unwrap();
        let _s =
            TcpNameServer::start(&t.backends[0].ns, "0.0.0.0:8080".parse().unwrap(), "b1").unwrap();
        let _p = t.lb.spawn("sleep", ["30"]).unwrap();
        *captured.lock().unwrap() = names(&t);
        panic!("deliberate panic with a live topology");
    });
    assert!(result.is_err());
    let ns = captured.into_inner().unwrap();
    assert_eq!(ns.len(), 4);
    assert_gone(&ns);
}

#[test]
fn spawned_process_is_stopped_on_drop_and_output_kept() {
    let ns = Netns::new("t").unwrap();
    let mut child = ns
        .spawn(
            "sh",
            ["-c", "echo started; ip -br link show lo; exec sleep 30"],
        )
        .unwrap();
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.is_running());
    let out = child.output();
    assert!(out.contains("started") && out.contains("lo"), "{out:?}");
    drop(child);
    // SAFETY: signal 0 only checks existence.
    assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "pid {pid} still alive");
}

#[test]
fn namespace_drop_kills_processes_left_inside() {
    let ns = Netns::new("t").unwrap();
    let name = ns.name().to_owned();
    // Started without a guard: only the namespace's Drop can end it.
    let mut child = ns.command("sleep").arg("30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(ns);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_gone(&[name]);
}

#[test]
fn enter_runs_in_the_namespace() {
    let t = Topology::two_arm(1).unwrap();
    let has = |ns: &Netns, dev: &str| {
        let dev = std::ffi::CString::new(dev).unwrap();
        // SAFETY: valid C string.
        ns.enter(|| unsafe { libc::if_nametoindex(dev.as_ptr()) } != 0)
    };
    assert!(has(&t.client.ns, "cl0"));
    assert!(!has(&t.client.ns, "eth0"));
    assert!(has(&t.lb, "lb-b1"));
    assert!(has(&t.backends[0].ns, "eth0"));
    // A panic inside `enter` reaches the caller.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.lb.enter(|| panic!("x"))));
    assert!(r.is_err());
}

#[test]
fn parallel_topologies_do_not_collide() {
    let a = Topology::two_arm(1).unwrap();
    let b = Topology::two_arm(1).unwrap();
    let (na, nb) = (names(&a), names(&b));
    assert!(na.iter().all(|n| !nb.contains(n)));
    let _sa =
        TcpNameServer::start(&a.backends[0].ns, "0.0.0.0:8080".parse().unwrap(), "a").unwrap();
    let _sb =
        TcpNameServer::start(&b.backends[0].ns, "0.0.0.0:8080".parse().unwrap(), "b").unwrap();
    let ip = a.backends[0].ip4().into();
    assert_eq!(tcp_connect_name(&a.lb, ip, 8080, T).unwrap(), "a");
    assert_eq!(tcp_connect_name(&b.lb, ip, 8080, T).unwrap(), "b");
}

/// Sends 10 datagrams from the client to `dst` (routed via `lb-c`) and returns how many of them
/// `tap_dev` in `tap_ns` received within 300 ms of quiet.
///
/// Counted with a packet socket: frames bounced or redirected unchanged by the test programs
/// still carry `lb-c`'s MAC as destination, so IP stacks drop them (and veth's counters miss
/// frames taken on the GRO path), but packet sockets see every frame the interface receives.
fn delivered(t: &Topology, tap_ns: &Netns, tap_dev: &str, dst: std::net::Ipv4Addr) -> usize {
    let lbc = &t.lb_ifaces[0];
    // No ARP needed (a reflector would bounce the request back).
    t.client
        .ns
        .ip([
            "neigh",
            "replace",
            &lbc.ip4.to_string(),
            "lladdr",
            &lbc.mac_string(),
            "dev",
            "cl0",
        ])
        .unwrap();
    let tap = tap_ns.enter(|| PacketTap::open(tap_dev));
    t.client.ns.enter(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..10 {
            s.send_to(b"bounce-me", (dst, 9)).unwrap();
        }
    });
    tap.count_incoming(b"bounce-me", Duration::from_millis(300))
}

/// An `AF_PACKET` socket on one interface (test-only helper).
struct PacketTap(std::os::fd::OwnedFd);

impl PacketTap {
    fn open(dev: &str) -> PacketTap {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket/bind calls with valid arguments; the fd is owned right away.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(dev).unwrap();
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let rc = libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            PacketTap(fd)
        }
    }

    /// Frames received (not sent) containing `needle`, until `quiet` passes with none.
    fn count_incoming(&self, needle: &[u8], quiet: Duration) -> usize {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: quiet.as_micros() as libc::suseconds_t,
        };
        let mut n = 0;
        // SAFETY: setsockopt/recvfrom with buffers that outlive the calls.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let mut buf = [0u8; 2048];
            loop {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let got = libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut sll).cast(),
                    &mut len,
                );
                if got < 0 {
                    return n;
                }
                let frame = &buf[..got as usize];
                if sll.sll_pkttype != libc::PACKET_OUTGOING
                    && frame.windows(needle.len()).any(|w| w == needle)
                {
                    n += 1;
                }
            }
        }
    }
}

#[test]
fn peers_receive_redirected_frames_in_both_peer_modes() {
    for mode in [PeerMode::Gro, PeerMode::XdpPass] {
        let t = Topology::two_arm_with(1, mode).unwrap();
        let _r = lb_tests::xdp::attach_xdp_redirect(&t.lb, "lb-c", "lb-b1").unwrap();
        let b1 = &t.backends[0];
        assert_eq!(delivered(&t, &b1.ns, "eth0", b1.ip4()), 10, "{mode:?}");
    }
}

#[test]
fn peers_receive_xdp_tx_frames_with_an_xdp_program() {
    let t = Topology::two_arm_with(1, PeerMode::XdpPass).unwrap();
    let _tx = lb_tests::xdp::attach_xdp_action(&t.lb, "lb-c", lb_tests::xdp::XDP_TX).unwrap();
    let lbc = t.lb_ifaces[0].ip4;
    assert_eq!(delivered(&t, &t.client.ns, "cl0", lbc), 10);
}

#[test]
fn stale_namespaces_of_dead_processes_are_reaped() {
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let name = format!("lbt-stale-{pid}-0");
    std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    let reaped = lb_tests::cleanup::reap_stale();
    assert!(reaped.contains(&name), "{reaped:?}");
    assert_gone(&[name]);
}

#[test]
fn redirect_into_an_unready_peer_is_dropped() {
    // Why `PeerMode` exists: with neither GRO nor an XDP program on the peer, veth drops
    // redirected frames (counted as xdp_redirect_errors on the sender).
    let t = Topology::two_arm(1).unwrap();
    let b1 = &t.backends[0];
    b1.ns.run("ethtool", ["-K", "eth0", "gro", "off"]).unwrap();
    let _r = lb_tests::xdp::attach_xdp_redirect(&t.lb, "lb-c", "lb-b1").unwrap();
    assert_eq!(delivered(&t, &b1.ns, "eth0", b1.ip4()), 0);
}
