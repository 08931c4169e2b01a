use lb_tests::{PeerMode, Topology};
use std::time::Duration;

fn show(t: &Topology, what: &str) {
    let o = t.lb.run("ethtool", ["-S", "lb-c"]).unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    let x: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("xdp") && !l.ends_with(" 0"))
        .collect();
    let o = t.client.ns.run("ethtool", ["-S", "cl0"]).unwrap();
    let s2 = String::from_utf8_lossy(&o.stdout);
    let y: Vec<&str> = s2.lines().filter(|l| !l.ends_with(" 0")).collect();
    let o = t
        .client
        .ns
        .run("cat", ["/sys/class/net/cl0/statistics/rx_packets"])
        .unwrap();
    println!(
        "{what}: cl0 rx={} lb-c={x:?} cl0={y:?}",
        String::from_utf8_lossy(&o.stdout).trim()
    );
}

fn run(mode: PeerMode, extra: &[&str]) {
    let t = Topology::two_arm_with(1, mode).unwrap();
    if !extra.is_empty() {
        t.client.ns.run("ethtool", extra).unwrap();
    }
    let lbc = &t.lb_ifaces[0];
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
    let _tx = lb_tests::xdp::attach_xdp_action(&t.lb, "lb-c", lb_tests::xdp::XDP_TX).unwrap();
    let mut td = t
        .client
        .ns
        .spawn("tcpdump", ["-eni", "cl0", "-c", "30", "udp"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    show(&t, "before");
    t.client.ns.enter(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..10 {
            s.send_to(b"bounce", (lbc.ip4, 9)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    show(&t, &format!("{mode:?} {extra:?}"));
    td.stop(Duration::from_secs(1)).unwrap();
    println!("{}", td.output());
    let o = t.client.ns.run("ethtool", ["-k", "cl0"]).unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    println!(
        "{}",
        s.lines()
            .filter(|l| l.contains("generic-receive")
                || l.contains("rx-checksumming")
                || l.contains("rx-gro"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

#[test]
fn scratch() {
    run(PeerMode::Gro, &[]);
}
