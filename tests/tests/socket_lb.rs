//! The socket LB end to end: the real agent attaches its cgroup hooks to a test cgroup, and
//! `lb-sockprobe` processes inside it (and outside it) talk to `scope = "cluster"` services.
//!
//! The agent runs in the topology's LB namespace, which (with `namespaces = "host"`) is the
//! one it translates; its backends are the topology's, reached over the LB's own veths. Checks:
//! connects and datagrams reach backends, balanced; no packet on any backend's wire carries the
//! service address; `getpeername()` and `recvfrom()` show the service address; a process
//! outside the cgroup, or in another network namespace, is not translated (and the wire never
//! serves a cluster service: `cluster_only`); IPv6 too; a removed backend gets no new connects
//! while 60 established ones keep working; `kill -9` leaves the hooks translating and the next
//! agent takes them over in place; a clean shutdown leaves nothing attached.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::Duration,
};

use lb_tests::{
    TcpNameServer, Topology, UdpNameServer,
    lab::{Lab, config_text_with, wait_for_log},
    lb_binary,
    mounts::{Bpffs, TestCgroup},
    rawsock::PacketSocket,
};

const CLUSTER4: &str = "10.96.0.10";
const CLUSTER6: &str = "fd00:96::10";

fn probe_binary() -> std::path::PathBuf {
    lb_binary().with_file_name("lb-sockprobe")
}

/// The lab's config (an external TCP and UDP service on the usual VIP, so the lab knows the
/// agent is up) plus four cluster services over `backends`, the socket LB on `cg`, pins on
/// `fs`.
fn config(topo: &Topology, backends: &[usize], cg: &TestCgroup, fs: &Bpffs) -> String {
    let all: Vec<usize> = (0..topo.backends.len()).collect();
    let mut s = config_text_with(
        topo,
        &all,
        None,
        &format!("pin_path = \"{}\"\n", fs.pin_path().display()),
    );
    for (name, vip, port, proto, bport, v6) in [
        ("c-tcp", CLUSTER4, 80, "tcp", 8080, false),
        ("c-udp", CLUSTER4, 53, "udp", 5353, false),
        ("c-tcp6", CLUSTER6, 80, "tcp", 8080, true),
        ("c-udp6", CLUSTER6, 53, "udp", 5353, true),
    ] {
        s += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\nscope = \"cluster\"\n"
        );
        for i in backends {
            let b = &topo.backends[*i];
            let addr = if v6 {
                IpAddr::V6(b.ip6())
            } else {
                IpAddr::V4(b.ip4())
            };
            s += &format!("[[service.backend]]\naddress = \"{addr}\"\nport = {bport}\n");
        }
    }
    s += &format!(
        "\n[socket_lb]\nenabled = true\ncgroup = \"{}\"\nnamespaces = \"host\"\n",
        cg.path().display()
    );
    s
}

/// The lab with the socket LB on, plus IPv6 name servers on every backend.
struct SockLab {
    // Drop order: the agent (in `lab`) first, then servers, mounts last.
    lab: Lab,
    _v6: (Vec<TcpNameServer>, Vec<UdpNameServer>),
    cg: TestCgroup,
    fs: Bpffs,
}

impl SockLab {
    fn start(n_backends: usize) -> SockLab {
        let fs = Bpffs::mount();
        let cg = TestCgroup::new();
        let topo = Topology::two_arm(n_backends).expect("topology");
        let mut v6 = (Vec::new(), Vec::new());
        for b in &topo.backends {
            let a = IpAddr::V6(b.ip6());
            v6.0.push(TcpNameServer::start(&b.ns, SocketAddr::new(a, 8080), &b.name).unwrap());
            v6.1.push(UdpNameServer::start(&b.ns, SocketAddr::new(a, 5353), &b.name).unwrap());
        }
        let all: Vec<usize> = (0..n_backends).collect();
        let lab = Lab::start_config(topo, |t| config(t, &all, &cg, &fs), &[]);
        wait_for_log(&lab.agent, "socket LB attached");
        SockLab {
            lab,
            _v6: v6,
            cg,
            fs,
        }
    }

    /// `lb-sockprobe ARGS` in the test cgroup and the LB's namespace; its output lines.
    fn probe(&self, args: &[&str]) -> Vec<String> {
        self.probe_in(&self.lab.topo.lb, true, args)
    }

    /// `lb-sockprobe ARGS` in namespace `ns`, in the test cgroup or not.
    fn probe_in(&self, ns: &lb_tests::Netns, in_cgroup: bool, args: &[&str]) -> Vec<String> {
        let mut cmd = if in_cgroup {
            self.cg.command(ns, probe_binary(), args)
        } else {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.path().display()))
                .arg(probe_binary())
                .args(args);
            c
        };
        let out = cmd.output().expect("run lb-sockprobe");
        assert!(
            out.status.success(),
            "lb-sockprobe {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn socket_lb_events(&self) -> BTreeMap<String, u64> {
        let st = self.lab.wait_for_status();
        serde_json::from_value(st["socket_lb"]["events"].clone()).expect("socket_lb events")
    }

    fn reason(&self, name: &str) -> u64 {
        let st = self.lab.wait_for_status();
        st["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == name)
            .and_then(|r| r["packets"].as_u64())
            .unwrap_or(0)
    }

    /// The socket LB programs attached to the test cgroup (bpftool's names, 15 characters).
    fn attached_programs(&self) -> Vec<String> {
        let out = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(self.cg.path())
            .output()
            .expect("bpftool");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("sock_")))
            .map(str::to_string)
            .collect()
    }
}

/// (peer, name) of each `peer=... name=...` line; panics on an `error=` line.
fn exchanges(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            let peer = l
                .strip_prefix("peer=")
                .unwrap_or_else(|| panic!("probe failed: {l}"));
            let (peer, name) = peer.split_once(" name=").expect("peer=.. name=..");
            (peer.to_string(), name.to_string())
        })
        .collect()
}

fn by_name(ex: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, n) in ex {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// `AF_PACKET` captures on every backend's interface, opened before the traffic.
struct Captures(Vec<(String, PacketSocket)>);

impl Captures {
    fn start(topo: &Topology) -> Captures {
        Captures(
            topo.backends
                .iter()
                .map(|b| {
                    let s =
                        b.ns.enter(|| PacketSocket::capture("eth0"))
                            .expect("capture");
                    (b.name.clone(), s)
                })
                .collect(),
        )
    }

    /// Each backend's received IP packets as (source, destination) addresses.
    fn finish(self) -> Vec<(String, Vec<(IpAddr, IpAddr)>)> {
        self.0
            .into_iter()
            .map(|(name, s)| {
                let frames = s.drain(Duration::from_millis(300), Duration::from_secs(10), 100_000);
                (name, frames.iter().filter_map(|f| ip_addrs(f)).collect())
            })
            .collect()
    }
}

fn ip_addrs(f: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let ethertype = u16::from_be_bytes(f.get(12..14)?.try_into().ok()?);
    match ethertype {
        0x0800 => {
            let src: [u8; 4] = f.get(26..30)?.try_into().ok()?;
            let dst: [u8; 4] = f.get(30..34)?.try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        0x86dd => {
            let src: [u8; 16] = f.get(22..38)?.try_into().ok()?;
            let dst: [u8; 16] = f.get(38..54)?.try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        _ => None,
    }
}

#[test]
fn cluster_services_are_reached_through_the_socket_lb_only() {
    let lab = SockLab::start(3);
    let caps = Captures::start(&lab.lab.topo);

    // TCP, IPv4: balanced, and the application sees the service address.
    let tcp = exchanges(&lab.probe(&["tcp", "10.96.0.10:80", "60"]));
    assert!(tcp.iter().all(|(p, _)| p == "10.96.0.10:80"), "{tcp:?}");
    let spread = by_name(&tcp);
    assert_eq!(
        spread.len(),
        3,
        "TCP connects not spread over every backend: {spread:?}"
    );
    assert!(spread.values().all(|n| *n >= 5), "{spread:?}");

    // UDP, one unconnected socket: one backend, answers from the service address.
    let udp = exchanges(&lab.probe(&["udp", "10.96.0.10:53", "10"]));
    assert!(udp.iter().all(|(p, _)| p == "10.96.0.10:53"), "{udp:?}");
    assert_eq!(by_name(&udp).len(), 1, "one socket, one backend: {udp:?}");
    // New sockets spread.
    let fresh = exchanges(&lab.probe(&["udp-fresh", "10.96.0.10:53", "40"]));
    assert!(fresh.iter().all(|(p, _)| p == "10.96.0.10:53"), "{fresh:?}");
    assert!(by_name(&fresh).len() >= 2, "{fresh:?}");

    // IPv6.
    let tcp6 = exchanges(&lab.probe(&["tcp", "[fd00:96::10]:80", "30"]));
    assert!(
        tcp6.iter().all(|(p, _)| p == "[fd00:96::10]:80"),
        "{tcp6:?}"
    );
    assert!(by_name(&tcp6).len() >= 2, "{tcp6:?}");
    let udp6 = exchanges(&lab.probe(&["udp", "[fd00:96::10]:53", "5"]));
    assert!(
        udp6.iter().all(|(p, _)| p == "[fd00:96::10]:53"),
        "{udp6:?}"
    );

    // IPv4-mapped IPv6 (a dual-stack IPv6 socket to `::ffff:10.96.0.10`): the IPv4 service,
    // and the application sees the mapped service address back.
    let mapped = exchanges(&lab.probe(&["tcp", "[::ffff:10.96.0.10]:80", "30"]));
    assert!(
        mapped.iter().all(|(p, _)| p == "[::ffff:10.96.0.10]:80"),
        "{mapped:?}"
    );
    assert!(by_name(&mapped).len() >= 2, "{mapped:?}");
    let mapped_udp = exchanges(&lab.probe(&["udp", "[::ffff:10.96.0.10]:53", "5"]));
    assert!(
        mapped_udp
            .iter()
            .all(|(p, _)| p == "[::ffff:10.96.0.10]:53"),
        "{mapped_udp:?}"
    );
    assert_eq!(by_name(&mapped_udp).len(), 1, "{mapped_udp:?}");

    // Outside the cgroup: not translated (the LB namespace has no route to the address).
    let outside = lab.probe_in(&lab.lab.topo.lb, false, &["tcp", "10.96.0.10:80", "1"]);
    assert!(
        outside[0].starts_with("error="),
        "untranslated connect worked: {outside:?}"
    );
    // In the cgroup but another network namespace (`namespaces = "host"`): not translated;
    // its SYNs reach the LB's XDP, which never serves a cluster service from the wire.
    let cluster_only_before = lab.reason("cluster_only");
    let other_ns = lab.probe_in(
        &lab.lab.topo.client.ns,
        true,
        &["tcp", "10.96.0.10:80", "1"],
    );
    assert!(other_ns[0].starts_with("error="), "{other_ns:?}");
    assert!(
        lab.reason("cluster_only") > cluster_only_before,
        "SYNs to a cluster service from the wire not dropped as cluster_only"
    );

    // Nothing on any backend's wire carries a service address.
    let vips: [IpAddr; 2] = [CLUSTER4.parse().unwrap(), CLUSTER6.parse().unwrap()];
    for (name, packets) in caps.finish() {
        assert!(
            packets.len() >= 20,
            "{name}: capture saw {} packets",
            packets.len()
        );
        let bad: Vec<_> = packets
            .iter()
            .filter(|(s, d)| vips.contains(s) || vips.contains(d))
            .collect();
        assert!(
            bad.is_empty(),
            "{name}: packets carried a service address: {bad:?}"
        );
    }

    let ev = lab.socket_lb_events();
    assert!(ev["connect"] >= 90, "{ev:?}");
    assert!(ev["sendmsg"] >= 55, "{ev:?}");
    assert!(ev["reverse"] >= 90 + 55, "{ev:?}");
    assert!(ev["other_netns"] >= 1, "{ev:?}");
}

/// `lb-sockprobe hold`: connections held open until told to echo.
struct Holder {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Holder {
    fn start(lab: &SockLab, n: usize) -> (Holder, Vec<String>) {
        let mut child = lab
            .cg
            .command(
                &lab.lab.topo.lb,
                probe_binary(),
                ["hold", "10.96.0.10:80", &n.to_string()],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("lb-sockprobe hold");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let names = line
            .trim()
            .strip_prefix("ready")
            .unwrap_or_else(|| panic!("hold: {line}"))
            .split_whitespace()
            .map(str::to_string)
            .collect();
        (Holder { child, out }, names)
    }

    /// Echoes on every held connection; how many came back.
    fn echo_all(mut self) -> usize {
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        line.trim()
            .strip_prefix("echoed=")
            .unwrap_or_else(|| panic!("hold: {line}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_removed_backend_gets_no_new_connects_and_established_ones_stay() {
    let mut lab = SockLab::start(3);
    let (holder, names) = Holder::start(&lab, 60);
    assert_eq!(names.len(), 60);
    assert!(
        names.iter().any(|n| n == "b1"),
        "no held connection on b1: {names:?}"
    );

    // b1 leaves every service.
    let text = config(&lab.lab.topo, &[1, 2], &lab.cg, &lab.fs);
    lab.lab.reload(&text, 2);
    let after = exchanges(&lab.probe(&["tcp", "10.96.0.10:80", "40"]));
    let spread = by_name(&after);
    assert!(
        !spread.contains_key("b1"),
        "new connects still reach b1: {spread:?}"
    );
    assert_eq!(spread.len(), 2, "{spread:?}");

    assert_eq!(holder.echo_all(), 60, "established connections broke");
}

#[test]
fn a_killed_agent_leaves_the_socket_lb_working_and_the_next_takes_it_over() {
    let mut lab = SockLab::start(3);
    // Eight address hooks and sock_release; no mesh, so no sock_ops program (it would run
    // on every TCP state change of every socket in the cgroup).
    assert_eq!(
        lab.attached_programs().len(),
        9,
        "{:?}",
        lab.attached_programs()
    );
    assert!(
        !lab.attached_programs().iter().any(|p| p == "sock_mesh_ops"),
        "{:?}",
        lab.attached_programs()
    );

    lab.lab.agent.kill9();
    let tcp = exchanges(&lab.probe(&["tcp", "10.96.0.10:80", "30"]));
    assert!(tcp.iter().all(|(p, _)| p == "10.96.0.10:80"), "{tcp:?}");
    assert_eq!(by_name(&tcp).len(), 3, "{tcp:?}");

    lab.lab.agent = lab.lab.spawn_agent(&[]);
    wait_for_log(&lab.lab.agent, "socket LB links taken over");
    let programs = lab.attached_programs();
    assert_eq!(
        programs.len(),
        9,
        "hooks attached twice after the takeover: {programs:?}"
    );
    let tcp = exchanges(&lab.probe(&["tcp", "10.96.0.10:80", "30"]));
    assert!(tcp.iter().all(|(p, _)| p == "10.96.0.10:80"), "{tcp:?}");

    // A clean shutdown detaches every hook.
    lab.lab.agent.stop(Duration::from_secs(10)).unwrap();
    assert!(
        lab.attached_programs().is_empty(),
        "{:?}",
        lab.attached_programs()
    );
}
