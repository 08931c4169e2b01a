//! The tc path end to end: veths with their default offloads (TX checksum offload on, so
//! frames leave the client and the backends with only a partial checksum), no `attach` in
//! the config (a veth gets tc by default), receivers verifying checksums in software
//! (`rx off` on the client and the backends). TCP (1 MiB echoed both ways, so TSO-sized
//! segments cross the LB) and UDP, IPv4 and IPv6.
//!
//! Two runs:
//! - every interface with TX offload on, the LB's too: partial checksums cross the LB as
//!   partial; plus `--keep-dataplane` (the pinned tcx links forward with no agent), a restart
//!   that takes the links over in place, and a clean stop that leaves nothing behind;
//! - the LB's interfaces with TX offload off: the kernel completes each partial checksum on
//!   the LB's way out, from the pseudo-header sum the program rewrote, and the receivers
//!   check the result, so a wrong pseudo-header update would lose every packet.

use std::{
    ffi::CString,
    net::{IpAddr, SocketAddr},
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use lb_tests::{
    DEFAULT_TIMEOUT, Netns, TcpNameServer, Topology, UdpNameServer, VIP4, VIP6,
    lab::{Lab, interfaces_only_line, wait_for_log},
    tcp_echo, udp_ask_name,
};

const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;

/// A private bpffs for the agent's pins, unmounted on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount() -> Bpffs {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lbt-tc-bpffs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create bpffs mount point");
        if let Err(e) = lb_userspace::dataplane::mount_bpffs(&dir) {
            let _ = std::fs::remove_dir(&dir);
            panic!("mount bpffs on {}: {e}", dir.display());
        }
        Bpffs(dir)
    }

    fn pin_path(&self) -> PathBuf {
        self.0.join("lb")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path. Lazy: whatever still holds it lets go later.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A TCP and a UDP service on each VIP (v4, v6), every backend in each.
fn config(topo: &Topology, fs: &Bpffs) -> String {
    let mut s = format!(
        "[global]\n{}\nmaglev_table_size = 4099\npin_path = \"{}\"\n",
        interfaces_only_line(topo),
        fs.pin_path().display()
    );
    for (name, vip, v6) in [
        ("v4", IpAddr::V4(VIP4), false),
        ("v6", IpAddr::V6(VIP6), true),
    ] {
        for (proto, port, bport) in [("tcp", TCP_PORT, 8080), ("udp", UDP_PORT, 5353)] {
            s += &format!(
                "\n[[service]]\nname = \"{proto}{name}\"\nvip = \"{vip}\"\nport = {port}\n\
                 protocol = \"{proto}\"\n"
            );
            for b in &topo.backends {
                s += &format!(
                    "[[service.backend]]\naddress = \"{}\"\nport = {bport}\n",
                    b.iface.ip(v6)
                );
            }
        }
    }
    s
}

/// `ethtool -K DEV FEATURE on|off ...` in `ns`.
fn ethtool(ns: &Netns, dev: &str, settings: &[&str]) {
    let mut args = vec!["-K", dev];
    args.extend(settings);
    ns.run("ethtool", &args)
        .unwrap_or_else(|e| panic!("ethtool {args:?}: {e}"));
}

/// A two-arm topology with TX checksum offload back on everywhere (the harness turns it
/// off) but `lb_tx` on the LB's interfaces, and RX offload off on the client and the
/// backends, whose stacks then verify every checksum.
fn topology(lb_tx: &str) -> Topology {
    let topo = Topology::two_arm(2).expect("topology");
    ethtool(
        &topo.client.ns,
        &topo.client.iface.name,
        &["tx", "on", "rx", "off"],
    );
    for b in &topo.backends {
        ethtool(&b.ns, &b.iface.name, &["tx", "on", "rx", "off"]);
    }
    for i in topo.lb_interfaces() {
        ethtool(&topo.lb, &i, &["tx", lb_tx, "rx", "on"]);
    }
    topo
}

/// Name servers on the backends' IPv6 addresses (the lab starts the IPv4 ones).
fn v6_servers(topo: &Topology) -> (Vec<TcpNameServer>, Vec<UdpNameServer>) {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for b in &topo.backends {
        let a = IpAddr::V6(b.iface.ip6);
        tcp.push(TcpNameServer::start(&b.ns, SocketAddr::new(a, 8080), &b.name).unwrap());
        udp.push(UdpNameServer::start(&b.ns, SocketAddr::new(a, 5353), &b.name).unwrap());
    }
    (tcp, udp)
}

fn payload(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// TCP (1 MiB echoed on each of 4 connections) and UDP (8 queries from distinct ports) to
/// both VIPs: every byte back intact, from a backend, both backends used.
fn traffic_is_intact(lab: &Lab, what: &str) {
    let data = payload(1 << 20);
    let names = lab.names();
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let mut seen = Vec::new();
        for i in 0..4 {
            let (name, echoed) =
                tcp_echo(&lab.topo.client.ns, vip, TCP_PORT, &data, DEFAULT_TIMEOUT)
                    .unwrap_or_else(|e| {
                        panic!("{what}: TCP {i} to {vip}: {e:#}\n{}", lab.agent.output())
                    });
            assert!(
                names.contains(&name),
                "{what}: TCP to {vip} answered by `{name}`"
            );
            assert!(echoed == data, "{what}: TCP to {vip}: the echo differs");
            seen.push(name);
        }
        for i in 0..8 {
            let name =
                udp_ask_name(&lab.topo.client.ns, vip, UDP_PORT, 41000 + i).unwrap_or_else(|e| {
                    panic!("{what}: UDP {i} to {vip}: {e:#}\n{}", lab.agent.output())
                });
            assert!(
                names.contains(&name),
                "{what}: UDP to {vip} answered by `{name}`"
            );
            seen.push(name);
        }
        for n in &names {
            assert!(
                seen.contains(n),
                "{what}: {vip}: backend {n} got nothing: {seen:?}"
            );
        }
    }
}

/// The programs on tcx ingress of `iface` in the LB namespace, by name.
fn tcx_programs(topo: &Topology, iface: &str) -> Vec<String> {
    topo.lb.enter(|| {
        let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
            .unwrap_or_else(|e| panic!("query tcx on {iface}: {e}"));
        progs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect()
    })
}

/// tc on every LB interface, no XDP.
fn assert_tc_attached(lab: &Lab, what: &str) {
    for i in lab.topo.lb_interfaces() {
        assert_eq!(tcx_programs(&lab.topo, &i), ["tc_lb"], "{what}: tcx on {i}");
        let link = lab.topo.lb.ip(["link", "show", "dev", &i]).unwrap();
        assert!(
            !String::from_utf8_lossy(&link.stdout).contains("xdp"),
            "{what}: XDP on {i}"
        );
    }
}

/// Stops the agent cleanly and checks it took everything with it.
fn stop_and_assert_clean(lab: &mut Lab, fs: &Bpffs) {
    let st = lab.agent.stop(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "exit {st:?}\n{}", lab.agent.output());
    assert!(
        lab.agent.output().contains("tc detached"),
        "{}",
        lab.agent.output()
    );
    assert!(!fs.pin_path().exists(), "pins left behind");
    for i in lab.topo.lb_interfaces() {
        assert!(tcx_programs(&lab.topo, &i).is_empty(), "tcx left on {i}");
    }
}

#[test]
fn default_offloads_through_tc_keep_adopt_and_clean_stop() {
    let fs = Bpffs::mount();
    let mut lab = Lab::start_config(topology("on"), |t| config(t, &fs), &["--keep-dataplane"]);
    let _v6 = v6_servers(&lab.topo);
    wait_for_log(&lab.agent, "tc attached");
    assert_tc_attached(&lab, "first agent");
    traffic_is_intact(&lab, "first agent");

    // Killed with the data plane kept: the pinned tcx links go on forwarding.
    let st = lab.agent.stop(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "exit {st:?}\n{}", lab.agent.output());
    assert_tc_attached(&lab, "no agent");
    traffic_is_intact(&lab, "no agent");

    // The next agent replaces the program inside each link.
    lab.agent = lab.spawn_agent(&[]);
    lab.wait_for_status();
    let n = lab.topo.lb_interfaces().len();
    for _ in 0..50 {
        if lab.agent.output().matches("tc link taken over").count() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lab.agent.output().matches("tc link taken over").count(),
        n,
        "{}",
        lab.agent.output()
    );
    assert_tc_attached(&lab, "second agent");
    traffic_is_intact(&lab, "second agent");
    stop_and_assert_clean(&mut lab, &fs);
}

#[test]
fn partial_checksums_completed_on_the_way_out_are_right() {
    let fs = Bpffs::mount();
    let mut lab = Lab::start_config(topology("off"), |t| config(t, &fs), &[]);
    let _v6 = v6_servers(&lab.topo);
    wait_for_log(&lab.agent, "tc attached");
    assert_tc_attached(&lab, "agent");
    traffic_is_intact(&lab, "LB completing checksums");
    stop_and_assert_clean(&mut lab, &fs);
}
