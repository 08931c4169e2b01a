//! Pinning end to end: the real `lb` agent pins its maps and XDP links on a bpffs this test
//! mounts (so the pins outlive one agent process inside `ip netns exec`), gets `kill -9`ed,
//! and a new agent adopts what it left.
//!
//! - forwarding goes on with no agent: established TCP connections and new, balanced ones;
//! - the next agent adopts (one log line), keeps ids and tables (same checksum, no table
//!   rebuilt), loses no conntrack entry, and takes over the links in place without dropping a
//!   packet;
//! - a clean shutdown removes the pins and detaches; `--keep-dataplane` leaves them;
//! - a pinned map of another layout (faked with bpftool) is replaced, with a warning that
//!   names it and the consequence, and that consequence is real.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, Map, MapData, MapInfo},
    programs::links::{FdLink, PinnedLink},
};
use lb_common::{CtEntry, FlowKey};
use lb_tests::{
    NsChild, Topology, VIP4,
    lab::{Lab, UDP_PORT, assert_balanced, config_text_with, echo, wait_for_log},
    mounts::Bpffs,
};

/// Topology, servers and an agent (`lb run ... agent_args`) pinning on `fs`; returns once
/// the VIP answers.
fn start(fs: &Bpffs, extra_global: &str, agent_args: &[&str]) -> Lab {
    let global = format!("pin_path = \"{}\"\n{extra_global}", fs.pin_path().display());
    Lab::start_config(
        Topology::two_arm(3).unwrap(),
        |t| {
            let all: Vec<usize> = (0..t.backends.len()).collect();
            config_text_with(t, &all, None, &global)
        },
        agent_args,
    )
}

/// The client tuples in the pinned conntrack map.
fn conntrack_keys(fs: &Bpffs) -> BTreeSet<[u8; 40]> {
    let data = MapData::from_pin(fs.map("CONNTRACK")).expect("open pinned CONNTRACK");
    let map: HashMap<MapData, FlowKey, CtEntry> = Map::from_map_data(data)
        .and_then(HashMap::try_from)
        .expect("CONNTRACK as a hash map");
    map.keys()
        .filter_map(Result::ok)
        // SAFETY: FlowKey is a 40-byte repr(C) POD (size asserted in lb-common).
        .map(|k| unsafe { std::mem::transmute::<FlowKey, [u8; 40]>(k) })
        .collect()
}

/// (link id, program id) of the pinned XDP link of `iface`.
fn link_ids(fs: &Bpffs, iface: &str) -> (u32, u32) {
    let link = FdLink::from(PinnedLink::from_pin(fs.link(iface)).expect("open pinned link"));
    let info = link.info().expect("link info");
    (info.id(), info.program_id())
}

fn xdp_attached(lab: &Lab, iface: &str) -> bool {
    let out = lab.topo.lb.ip(["link", "show", "dev", iface]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// The first log line containing `needle`.
fn log_line(agent: &NsChild, needle: &str) -> String {
    wait_for_log(agent, needle);
    agent
        .output()
        .lines()
        .find(|l| l.contains(needle))
        .expect("logged")
        .to_string()
}

/// Waits (10 s at most) until the agent took over `n` pinned links.
fn wait_for_takeover(agent: &NsChild, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = agent.output();
        if out.matches("XDP link taken over").count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} links never taken over:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `name=` in a log line, without quotes.
fn field(line: &str, name: &str) -> String {
    let pat = format!(" {name}=");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {name}= in `{line}`"))
        + pat.len();
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        q[..q.find('"').unwrap()].to_string()
    } else {
        rest.split_whitespace().next().unwrap_or("").to_string()
    }
}

/// UDP queries to the VIP every 5 ms on one flow, from another thread, until stopped; counts
/// the ones never answered (300 ms each).
struct UdpProbe {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u32, u32)>>,
}

impl UdpProbe {
    fn start(lab: &Lab) -> UdpProbe {
        let sock = lab.topo.client.ns.enter(|| {
            let s = UdpSocket::bind((lab.topo.client.ip4(), 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s.connect(SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT))
                .unwrap();
            s
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut sent, mut lost) = (0u32, 0u32);
            let mut buf = [0u8; 256];
            // Bounded: 60 s at most whatever the test does.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                sent += 1;
                let _ = sock.send(format!("probe{sent}").as_bytes());
                if sock.recv(&mut buf).is_err() {
                    lost += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (sent, lost)
        });
        UdpProbe {
            stop,
            thread: Some(thread),
        }
    }

    /// (sent, lost).
    fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("probe thread")
    }
}

impl Drop for UdpProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kill9(agent: &mut NsChild) {
    let st = agent.kill9();
    assert!(!st.success(), "killed agent exit: {st:?}");
}

/// (a) Connections opened before `kill -9` keep working, and new ones are balanced, with no
/// agent; (b) a new agent adopts: one line, same ids and tables (checksum, no rebuild), no
/// conntrack entry lost, links taken over in place (same link, new program) without losing a
/// probe; (c) a clean shutdown removes the pins and detaches.
#[test]
fn kill_9_keeps_forwarding_and_the_next_agent_adopts() {
    let fs = Bpffs::mount();
    let mut lab = start(&fs, "", &[]);
    let names = lab.names();
    let ifaces = lab.topo.lb_interfaces();
    let applied = log_line(&lab.agent, "config applied");
    let checksum = field(&applied, "checksum");
    assert!(
        lab.agent.output().contains("nothing pinned: fresh start"),
        "{}",
        lab.agent.output()
    );
    for i in &ifaces {
        assert!(fs.link(i).exists(), "no pinned link for {i}");
    }
    let links_before: Vec<(u32, u32)> = ifaces.iter().map(|i| link_ids(&fs, i)).collect();

    let mut conns: Vec<(TcpStream, String)> = (0..30).map(|_| lab.client_connect()).collect();
    for (s, b) in conns.iter_mut() {
        echo(s, b"before kill").unwrap_or_else(|e| panic!("echo via {b}: {e}"));
    }
    let ct_before = conntrack_keys(&fs);
    assert!(
        ct_before.len() >= 30,
        "{} conntrack entries",
        ct_before.len()
    );

    // (a) No agent at all.
    kill9(&mut lab.agent);
    for i in &ifaces {
        assert!(xdp_attached(&lab, i), "XDP gone from {i} with the agent");
    }
    for (s, b) in conns.iter_mut() {
        echo(s, b"no agent").unwrap_or_else(|e| panic!("connection via {b} broke: {e}"));
    }
    let spread = lab.tcp_spread(150);
    println!("no agent:\n{spread}");
    assert_balanced("new connections with no agent", &spread, &names);

    // (b) A new agent adopts while a probe runs through the VIP.
    let probe = UdpProbe::start(&lab);
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    lab.agent = lab.spawn_agent(&[]);
    let adopted = log_line(&lab.agent, "adopted the pinned data plane");
    println!("{adopted}");
    wait_for_takeover(&lab.agent, ifaces.len());
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let (sent, lost) = probe.finish();
    println!("restart took {took:?}; UDP probe: {sent} sent, {lost} lost");
    assert_eq!(lost, 0, "probes lost during the takeover ({sent} sent)");

    assert_eq!(field(&adopted, "services"), "2", "{adopted}");
    // Three hosts, each a backend of both services (address:port differ): six.
    assert_eq!(field(&adopted, "backends"), "6", "{adopted}");
    assert_eq!(field(&adopted, "replaced"), "[]", "{adopted}");
    let ct_logged: usize = field(&adopted, "conntrack_entries").parse().unwrap();
    assert!(ct_logged >= ct_before.len(), "{adopted}");
    assert_eq!(
        field(&adopted, "checksum"),
        checksum,
        "adopted tables differ"
    );
    let applied = log_line(&lab.agent, "config applied");
    assert_eq!(field(&applied, "checksum"), checksum, "{applied}");
    assert_eq!(field(&applied, "tables_rebuilt"), "0", "{applied}");
    assert_eq!(field(&applied, "added"), "0", "{applied}");

    let ct_after = conntrack_keys(&fs);
    let lost_ct: Vec<_> = ct_before.difference(&ct_after).collect();
    assert!(
        lost_ct.is_empty(),
        "{} conntrack entries lost",
        lost_ct.len()
    );
    for (i, before) in ifaces.iter().zip(&links_before) {
        let after = link_ids(&fs, i);
        assert_eq!(after.0, before.0, "{i}: not the same link");
        assert_ne!(after.1, before.1, "{i}: program not replaced");
    }
    for (s, b) in conns.iter_mut() {
        echo(s, b"adopted").unwrap_or_else(|e| panic!("connection via {b} broke: {e}"));
    }
    let spread = lab.tcp_spread(150);
    assert_balanced("new connections after adoption", &spread, &names);

    // (c) Clean shutdown: nothing pinned, nothing attached.
    let st = lab.agent.stop(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "exit {st:?}\n{}", lab.agent.output());
    assert!(lab.agent.output().contains("pins removed"));
    assert!(
        !fs.pin_path().exists(),
        "pins left: {:?}",
        std::fs::read_dir(fs.pin_path()).map(|d| d.count())
    );
    for i in &ifaces {
        assert!(!xdp_attached(&lab, i), "XDP still attached to {i}");
    }
}

/// (d) A pinned map of another layout is replaced with a warning naming it and the
/// consequence, and the consequence is real (flows it tracked are reset); compatible maps
/// are adopted, and a conntrack map of another size than the config's is kept with a warning.
#[test]
fn a_pinned_map_of_another_layout_is_replaced() {
    let fs = Bpffs::mount();
    let mut lab = start(&fs, "", &[]);
    let names = lab.names();
    let mut conns: Vec<(TcpStream, String)> = (0..5).map(|_| lab.client_connect()).collect();
    for (s, _) in conns.iter_mut() {
        echo(s, b"before").unwrap();
    }
    kill9(&mut lab.agent);

    // An "old version" CONNTRACK: 88-byte values. The running program keeps its real map.
    let ct = fs.map("CONNTRACK");
    std::fs::remove_file(&ct).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&ct)
        .args([
            "type",
            "lru_hash",
            "key",
            "40",
            "value",
            "88",
            "entries",
            "1024",
            "name",
            "CONNTRACK",
        ])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (s, _) in conns.iter_mut() {
        echo(s, b"old program, real map").unwrap();
    }

    // The new agent also wants a smaller conntrack than what is pinned.
    let all: Vec<usize> = (0..3).collect();
    lab.config.write(&config_text_with(
        &lab.topo,
        &all,
        None,
        &format!(
            "pin_path = \"{}\"\n[global.conntrack]\nmax_entries = 131072\n",
            fs.pin_path().display()
        ),
    ));
    lab.agent = lab.spawn_agent(&[]);
    let warned = log_line(&lab.agent, "CONNTRACK layout changed");
    println!("{warned}");
    assert!(
        warned.contains("WARN")
            && warned.contains(
                "CONNTRACK layout changed (value 88 -> 80 bytes): established flows through \
                 this node will be reset"
            ),
        "{warned}"
    );
    let resized = log_line(
        &lab.agent,
        "NAT_REVERSE holds 262144 entries, the config says 131072",
    );
    assert!(resized.contains("WARN"), "{resized}");
    let adopted = log_line(&lab.agent, "adopted the pinned data plane");
    assert_eq!(field(&adopted, "replaced"), "[\"CONNTRACK\"]", "{adopted}");
    assert_eq!(field(&adopted, "services"), "2", "{adopted}");
    wait_for_takeover(&lab.agent, lab.topo.lb_interfaces().len());

    let info = MapInfo::from_pin(&ct).expect("pinned CONNTRACK");
    assert_eq!(info.value_size(), 80, "CONNTRACK not replaced");
    assert_eq!(
        info.max_entries(),
        131072,
        "fresh CONNTRACK sized by the config"
    );
    let nat = MapInfo::from_pin(fs.map("NAT_REVERSE")).unwrap();
    assert_eq!(nat.max_entries(), 262_144, "NAT_REVERSE kept as pinned");

    // New flows are served and balanced; the ones the old conntrack held are reset (their
    // packets find no entry and are dropped).
    let spread = lab.tcp_spread(150);
    assert_balanced("new connections after replacement", &spread, &names);
    let (s, b) = &mut conns[0];
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(
        echo(s, b"after").is_err(),
        "a flow through {b} survived the conntrack replacement"
    );
}

/// A pin directory off bpffs is refused before anything is attached, with how to fix it.
#[test]
fn pin_path_off_bpffs_is_refused_with_a_hint() {
    let dir = std::env::temp_dir().join(format!("lbt-not-bpffs-{}", std::process::id()));
    let topo = Topology::two_arm(1).unwrap();
    let config = lb_tests::lab::ConfigFile::new();
    config.write(&config_text_with(
        &topo,
        &[0],
        None,
        &format!("pin_path = \"{}\"\n", dir.join("lb").display()),
    ));
    let mut agent = topo
        .lb
        .spawn(
            lb_tests::lb_binary(),
            ["run", "--config", config.path().to_str().unwrap()],
        )
        .unwrap();
    let st = agent
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("agent exits");
    let out = agent.output();
    assert!(!st.success(), "{out}");
    assert!(
        out.contains("not on a bpf filesystem") && out.contains("mount -t bpf bpf"),
        "{out}"
    );
    assert!(!dir.exists(), "created {}", dir.display());
    for i in topo.lb_interfaces() {
        let l = topo.lb.ip(["link", "show", "dev", &i]).unwrap();
        assert!(!String::from_utf8_lossy(&l.stdout).contains("xdp"));
    }
}

/// `lb run --keep-dataplane`: SIGTERM exits cleanly but leaves the links and maps pinned and
/// forwarding; the next agent adopts them.
#[test]
fn keep_dataplane_exit_leaves_it_forwarding_for_the_next_agent() {
    let fs = Bpffs::mount();
    let mut lab = start(&fs, "", &["--keep-dataplane"]);
    let ifaces = lab.topo.lb_interfaces();
    let mut conns: Vec<(TcpStream, String)> = (0..10).map(|_| lab.client_connect()).collect();
    for (s, _) in conns.iter_mut() {
        echo(s, b"before").unwrap();
    }

    let st = lab.agent.stop(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "exit {st:?}\n{}", lab.agent.output());
    assert!(
        lab.agent
            .output()
            .contains("exiting with the data plane pinned and forwarding"),
        "{}",
        lab.agent.output()
    );
    for i in &ifaces {
        assert!(fs.link(i).exists(), "link pin for {i} removed");
        assert!(xdp_attached(&lab, i), "XDP gone from {i}");
    }
    for (s, b) in conns.iter_mut() {
        echo(s, b"agent gone").unwrap_or_else(|e| panic!("connection via {b} broke: {e}"));
    }
    let spread = lab.tcp_spread(60);
    assert_eq!(spread.errors, 0, "{spread}");

    lab.agent = lab.spawn_agent(&[]);
    let adopted = log_line(&lab.agent, "adopted the pinned data plane");
    assert_eq!(field(&adopted, "services"), "2", "{adopted}");
    assert_eq!(field(&adopted, "replaced"), "[]", "{adopted}");
    wait_for_takeover(&lab.agent, ifaces.len());
    for (s, b) in conns.iter_mut() {
        echo(s, b"adopted").unwrap_or_else(|e| panic!("connection via {b} broke: {e}"));
    }

    // The adopting agent found forwarding on, but the first agent's pinned record says it
    // was off before: a clean shutdown puts that back.
    for i in &ifaces {
        assert_eq!(forwarding(&lab, i), "1", "{i} while forwarding");
    }
    let st = lab.agent.stop(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "exit {st:?}\n{}", lab.agent.output());
    for i in &ifaces {
        assert_eq!(
            forwarding(&lab, i),
            "0",
            "{i}: the value before the first agent was not restored\n{}",
            lab.agent.output()
        );
    }
}

/// `net.ipv4.conf.IFACE.forwarding` in the LB namespace (the topology starts it at 0).
fn forwarding(lab: &Lab, iface: &str) -> String {
    lab.topo.lb.enter(|| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
            .expect("read forwarding")
            .trim()
            .to_string()
    })
}

/// `xdp_mode` changed between two agents: the inherited links cannot change mode in place,
/// so the next agent re-attaches them in the new mode (and says so), and forwards after it.
#[test]
fn an_xdp_mode_change_reattaches_the_inherited_links() {
    let fs = Bpffs::mount();
    let mut lab = start(&fs, "", &["--keep-dataplane"]);
    let ifaces = lab.topo.lb_interfaces();
    for i in &ifaces {
        assert!(
            !xdp_mode_line(&lab, i).contains("xdpgeneric"),
            "{i} native first"
        );
    }
    let st = lab.agent.stop(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "exit {st:?}\n{}", lab.agent.output());

    let global = format!(
        "pin_path = \"{}\"\nxdp_mode = \"generic\"\n",
        fs.pin_path().display()
    );
    let all: Vec<usize> = (0..lab.topo.backends.len()).collect();
    lab.config
        .write(&config_text_with(&lab.topo, &all, None, &global));
    lab.agent = lab.spawn_agent(&[]);
    wait_for_log(
        &lab.agent,
        "xdp_mode changed since the pinned link was made",
    );
    // The admin API answers once every link is re-attached (the VIP may answer earlier,
    // through links not yet replaced).
    lab.wait_for_status();
    lab.wait_for_vip();
    for i in &ifaces {
        assert!(
            xdp_mode_line(&lab, i).contains("xdpgeneric"),
            "{i} not re-attached in generic mode: {}\n{}",
            xdp_mode_line(&lab, i),
            lab.agent.output()
        );
    }
    let spread = lab.tcp_spread(60);
    assert_eq!(spread.errors, 0, "{spread}");
}

/// `ip link show` of `iface` in the LB namespace (says `xdpgeneric` for generic XDP).
fn xdp_mode_line(lab: &Lab, iface: &str) -> String {
    let out = lab.topo.lb.ip(["link", "show", "dev", iface]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
