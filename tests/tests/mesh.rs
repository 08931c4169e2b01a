//! The mesh end to end: two nodes (the topology's LB namespace is node A, its backend's
//! namespace node B), each with its own agent (socket LB + mesh), one CA written here. A
//! workload in a test cgroup on node A (mapped to `spiffe://test.local/ns/app/sa/client`)
//! connects to an `mtls = true` service whose backend runs on node B: the socket LB steers the
//! connect to A's outbound listener, A's agent carries it over HTTP/2 CONNECT in mTLS to B's
//! agent (port 15008), which authorizes it and connects to the backend.
//!
//! Checks: the payload is echoed; on the wire between the nodes only TLS is seen, never the
//! plaintext; B's agent saw the client's SPIFFE ID; a deny policy on B refuses and counts;
//! A's agent killed (-9) and restarted: new connections work again; a clean stop leaves no
//! hook attached. Without a `[[mesh.workload]]`, a workload whose address is a pod's (from a
//! fake API server's pod list) runs as that pod's identity; one with no identity is refused. (Foreign-CA, expired and untrusted peers are refused in the unit tests of
//! `mesh::identity` and `mesh::tunnel`, which speak TLS to the inbound listener directly.)

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use lb_tests::{
    Topology,
    admin::get_tcp,
    fake_k8s::{FakeKubernetes, pod},
    lab::{Lab, config_text_with, wait_for_log},
    lb_binary,
    mounts::{Bpffs, TestCgroup},
    netns::NsChild,
    rawsock::PacketSocket,
};

const MESH_VIP: &str = "10.96.0.20";
const SECRET: &[u8] = b"mesh-plaintext-canary-7f3a9c\n";
const CLIENT_ID: &str = "spiffe://test.local/ns/app/sa/client";
/// The recorded pod's identity (namespace `shop`, service account `web`).
const POD_ID: &str = "spiffe://test.local/ns/shop/sa/web";
const ADMIN: &str = "127.0.0.1:9180";

/// A CA (certificate and key files) in a temp dir, removed on drop.
struct CaDir(PathBuf);

impl CaDir {
    fn new() -> CaDir {
        // One directory per CA: the tests run in parallel in one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lbt-mesh-ca-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        lb_tests::mesh_ca::write_test_ca(&dir, "test.local").expect("write the test CA");
        CaDir(dir)
    }
}

impl Drop for CaDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The mtls service, its backends running as `identity` (`<ns>/<sa>`) if given.
fn service(backend: &str, identity: Option<&str>) -> String {
    let identity = identity.map_or(String::new(), |i| format!("identity = \"{i}\"\n"));
    format!(
        "\n[[service]]\nname = \"secure\"\nvip = \"{MESH_VIP}\"\nport = 80\nprotocol = \"tcp\"\nscope = \"cluster\"\nmtls = true\n{identity}[[service.backend]]\naddress = \"{backend}\"\nport = 8080\n"
    )
}

fn socket_lb(cg: &Path) -> String {
    format!(
        "\n[socket_lb]\nenabled = true\ncgroup = \"{}\"\nnamespaces = \"host\"\n",
        cg.display()
    )
}

/// `[mesh]` with the CA and `keys` (more `[mesh]` keys), a workload in `workload` (if any)
/// and `extra` (policies).
fn mesh(ca: &CaDir, workload: Option<&Path>, extra: &str, keys: &str) -> String {
    let mut s = format!(
        "\n[mesh]\nenabled = true\ntrust_domain = \"test.local\"\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\n{keys}",
        ca.0.join("ca.pem").display(),
        ca.0.join("ca-key.pem").display()
    );
    if let Some(w) = workload {
        s += &format!(
            "\n[[mesh.workload]]\ncgroup = \"{}\"\nnamespace = \"app\"\nservice_account = \"client\"\n",
            w.display()
        );
    }
    s + extra
}

/// Two nodes. Drop order: agents first, then the lab (servers, namespaces), mounts last.
struct MeshLab {
    b_agent: NsChild,
    /// The fake API server node A follows its pods through, if any.
    _k8s: Option<FakeKubernetes>,
    lab: Lab,
    _b_config: lb_tests::lab::ConfigFile,
    cg_a: TestCgroup,
    _cg_b: TestCgroup,
    _fs: Bpffs,
    _ca: CaDir,
}

impl MeshLab {
    fn start(b_policy: &str) -> MeshLab {
        MeshLab::start_with(b_policy, "")
    }

    /// Both nodes get `mesh_keys` in their `[mesh]` table.
    fn start_with(b_policy: &str, mesh_keys: &str) -> MeshLab {
        MeshLab::build(b_policy, mesh_keys, None, [None, None])
    }

    /// The service's `identity` as node A's config states it (what A's agent expects of
    /// the backend) and as node B's does (what B's agent presents for it).
    fn start_with_identities(a: Option<&str>, b: Option<&str>) -> MeshLab {
        MeshLab::build("", "", None, [a, b])
    }

    /// Node A maps no cgroup: a fake API server in its namespace serves the pods `pods`
    /// makes from node A's client-side address, followed through a kubernetes source.
    fn start_with_pods(pods: &dyn Fn(Ipv4Addr) -> Vec<serde_json::Value>) -> MeshLab {
        MeshLab::build("", "", Some(pods), [None, None])
    }

    fn build(
        b_policy: &str,
        mesh_keys: &str,
        pods: Option<&dyn Fn(Ipv4Addr) -> Vec<serde_json::Value>>,
        [a_identity, b_identity]: [Option<&str>; 2],
    ) -> MeshLab {
        let ca = CaDir::new();
        let fs = Bpffs::mount();
        let (cg_a, cg_b) = (TestCgroup::new(), TestCgroup::new());
        let topo = Topology::two_arm(1).expect("topology");
        let b_ip = topo.backends[0].ip4().to_string();

        // Node B: no XDP, the service (to know its local mtls backends) and the mesh.
        let b_config = lb_tests::lab::ConfigFile::new();
        b_config.write(&format!(
            "[global]\ninterfaces = [\"eth0\"]\n{}{}{}",
            service(&b_ip, b_identity),
            socket_lb(cg_b.path()),
            mesh(&ca, None, b_policy, mesh_keys)
        ));
        let b_agent = topo.backends[0]
            .ns
            .spawn(
                lb_binary(),
                ["run", "--config", b_config.0.to_str().unwrap()],
            )
            .expect("start node B's agent");
        wait_for_log(&b_agent, "mesh tunnel running");

        let k8s = pods.map(|pods| {
            let k8s = FakeKubernetes::start_in(&topo.lb.path(), "unused", 8080)
                .expect("the fake API server");
            k8s.set_pods(pods(topo.lb_ifaces[0].ip4));
            k8s
        });
        // Discovering the (no) Services of `default`: a source that adds nothing but the
        // connection the pods are followed through.
        let source = k8s.as_ref().map_or(String::new(), |k| {
            format!(
                "\n[[source]]\nkind = \"kubernetes\"\nname = \"k8s\"\napi_server = \"{}\"\nnamespace = \"default\"\ndiscover_services = true\nnode_name = \"node-a\"\n",
                k.url()
            )
        });
        let workload = k8s.is_none().then_some(cg_a.path());
        let pins = format!("pin_path = \"{}\"\n", fs.pin_path().display());
        let text = |t: &Topology| {
            config_text_with(t, &[0], None, &pins)
                + &service(&b_ip, a_identity)
                + &socket_lb(cg_a.path())
                + &mesh(&ca, workload, "", mesh_keys)
                + &source
        };
        let lab = Lab::start_config(topo, text, &[]);
        wait_for_log(&lab.agent, "mesh tunnel running");
        wait_for_log(&lab.agent, "socket LB attached");
        MeshLab {
            b_agent,
            _k8s: k8s,
            lab,
            _b_config: b_config,
            cg_a,
            _cg_b: cg_b,
            _fs: fs,
            _ca: ca,
        }
    }

    /// `SECRET` sent from a workload in node A's test cgroup to the mtls service; what came
    /// back (the backend's name line, then the echo).
    fn call(&self) -> String {
        self.call_from(None)
    }

    /// [`MeshLab::call`] from a socket bound to `source` (else the kernel picks: loopback,
    /// as the outbound listener is there).
    fn call_from(&self, source: Option<Ipv4Addr>) -> String {
        let mut target = format!("TCP:{MESH_VIP}:80");
        if let Some(ip) = source {
            target += &format!(",bind={ip}");
        }
        let mut child = self
            .cg_a
            .command(
                &self.lab.topo.lb,
                "socat",
                ["-t", "5", "-T", "10", "-", &target],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("socat");
        child.stdin.take().unwrap().write_all(SECRET).unwrap();
        let out = child.wait_with_output().expect("socat output");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn b_status(&self) -> serde_json::Value {
        let body = get_tcp(
            &self.lab.topo.backends[0].ns,
            ADMIN.parse::<SocketAddr>().unwrap(),
            "/v1/status",
        )
        .expect("node B status");
        serde_json::from_str(&body).unwrap()
    }

    /// `got` (what [`MeshLab::call`] returned) holds the echoed `SECRET`; else panics with
    /// both agents' output.
    fn assert_echoed(&self, got: &str) {
        assert!(
            got.contains(std::str::from_utf8(SECRET).unwrap()),
            "echo: {got:?}\nA:\n{}\nB:\n{}",
            self.lab.agent.output(),
            self.b_agent.output()
        );
    }

    /// The hooks attached to node A's workload cgroup (bpftool's names).
    fn attached(&self) -> Vec<String> {
        let out = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(self.cg_a.path())
            .output()
            .expect("bpftool");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("sock_")))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for MeshLab {
    fn drop(&mut self) {
        let _ = self.b_agent.stop(Duration::from_secs(10));
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Polls (5 s at most) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_workload_reaches_an_mtls_service_through_the_tunnel_only() {
    let mut m = MeshLab::start("");
    let b = &m.lab.topo.backends[0];
    let cap =
        b.ns.enter(|| PacketSocket::capture("eth0"))
            .expect("capture");

    let got = m.call();
    m.assert_echoed(&got);
    assert!(
        got.starts_with(&b.name),
        "the backend's name first: {got:?}"
    );

    let frames = cap.drain(Duration::from_millis(300), Duration::from_secs(5), 10_000);
    assert!(!frames.is_empty());
    assert!(
        frames
            .iter()
            .all(|f| !contains(f, &SECRET[..SECRET.len() - 1])),
        "plaintext seen on the wire between the nodes"
    );
    // TLS application data records (type 23, version 3.3) went by, on port 15008.
    let port = 15008u16.to_be_bytes();
    assert!(
        frames
            .iter()
            .any(|f| contains(f, &[0x17, 0x03, 0x03]) && contains(f, &port)),
        "no TLS record to 15008 among {} frames",
        frames.len()
    );

    // Node B saw the client's identity, and allowed it (no policy).
    let st = m.b_status();
    let peers = &st["mesh"]["peers"];
    assert!(
        peers.as_array().unwrap().iter().any(|p| p[0] == CLIENT_ID),
        "peers: {peers}"
    );
    let a = m.lab.wait_for_status();
    assert_eq!(a["mesh"]["connections"][0]["side"], "outbound");
    assert!(
        a["mesh"]["connections"][0]["opened"].as_u64() >= Some(1),
        "{}",
        a["mesh"]
    );
    assert!(
        a["mesh"]["cert_expiry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[0] == CLIENT_ID),
        "{}",
        a["mesh"]
    );

    // A killed agent: a new one takes over, and new connections work again.
    m.lab.agent.kill9();
    m.lab.agent = m.lab.spawn_agent(&[]);
    wait_for_log(&m.lab.agent, "mesh tunnel running");
    let mut ok = false;
    eventually("a connection after the restart is echoed", || {
        ok = m.call().contains(std::str::from_utf8(SECRET).unwrap());
        ok
    });

    // The mesh's sock_ops program runs beside the socket LB's nine hooks, once.
    let hooks = m.attached();
    assert!(hooks.iter().any(|h| h == "sock_mesh_ops"), "{hooks:?}");
    assert_eq!(hooks.len(), 10, "{hooks:?}");

    // The next agent runs without the mesh: it takes the socket LB over and lets the
    // mesh's pinned sock_ops link go.
    m.lab.agent.kill9();
    let pins = format!("pin_path = \"{}\"\n", m._fs.pin_path().display());
    m.lab
        .config
        .write(&(config_text_with(&m.lab.topo, &[0], None, &pins) + &socket_lb(m.cg_a.path())));
    m.lab.agent = m.lab.spawn_agent(&[]);
    wait_for_log(&m.lab.agent, "socket LB links taken over");
    let hooks = m.attached();
    assert!(!hooks.iter().any(|h| h == "sock_mesh_ops"), "{hooks:?}");
    assert_eq!(hooks.len(), 9, "{hooks:?}");

    // A clean stop detaches every hook.
    m.lab.agent.stop(Duration::from_secs(10)).unwrap();
    assert!(m.attached().is_empty(), "{:?}", m.attached());
}

#[test]
fn a_pod_without_a_configured_cgroup_runs_as_its_pods_identity() {
    let m = MeshLab::start_with_pods(&|ip| {
        vec![
            pod("web-1", "shop", "web", "node-a", &ip.to_string()),
            // Another node's pod: not this node's business.
            pod("web-2", "shop", "other", "node-b", "10.244.9.9"),
        ]
    });
    wait_for_log(&m.lab.agent, "mesh: pod identities updated");
    let pod_ip = m.lab.topo.lb_ifaces[0].ip4;

    // From the pod's address: carried as the pod's identity, seen so by node B.
    let got = m.call_from(Some(pod_ip));
    m.assert_echoed(&got);
    let peers = m.b_status()["mesh"]["peers"].clone();
    assert!(
        peers.as_array().unwrap().iter().any(|p| p[0] == POD_ID),
        "peers: {peers}"
    );
    assert!(
        !peers.as_array().unwrap().iter().any(|p| p[0] == CLIENT_ID),
        "no cgroup is mapped: {peers}"
    );

    // From an address no pod has (loopback): no identity, refused and counted.
    let got = m.call_from(None);
    assert!(
        !got.contains(std::str::from_utf8(SECRET).unwrap()),
        "no identity but echoed: {got:?}"
    );
    let mut refused = serde_json::Value::Null;
    eventually("the refusal is counted on node A", || {
        refused = m.lab.wait_for_status()["mesh"]["refused"].clone();
        refused
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x[0] == "no_identity" && x[1] == 1))
    });
}

#[test]
fn a_deny_policy_on_the_server_node_refuses_and_counts() {
    let m = MeshLab::start(
        "\n[[mesh.policy]]\nname = \"no-app\"\nservice = \"secure\"\naction = \"deny\"\nfrom = [{ namespaces = [\"app\"] }]\n",
    );
    let got = m.call();
    assert!(
        !got.contains(std::str::from_utf8(SECRET).unwrap()),
        "denied but echoed: {got:?}"
    );
    let mut last = serde_json::Value::Null;
    eventually("the denial is counted on node B", || {
        last = m.b_status()["mesh"]["authz"].clone();
        last.as_array().is_some_and(|a| {
            a.iter()
                .any(|d| d[0] == "no-app" && d[2] == false && d[3] == 1)
        })
    });
    wait_for_log(&m.b_agent, "mesh: connection denied by policy");
    assert!(
        m.b_agent.output().contains(CLIENT_ID),
        "the log names the peer"
    );
}

/// The inbound port's handshake failures on node B, by reason.
fn inbound_failures(m: &MeshLab) -> BTreeMap<String, u64> {
    failures(&m.b_status(), "inbound")
}

/// The handshake failures of `side` in a status, by reason.
fn failures(st: &serde_json::Value, side: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for row in st["mesh"]["handshake_failures"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if row[0] == side {
            *out.entry(row[1].as_str().unwrap_or("").to_string())
                .or_default() += row[2].as_u64().unwrap_or(0);
        }
    }
    out
}

/// What the backend's agent presents for it in the identity tests (`shop/backend`).
const BACKEND_ID: &str = "spiffe://test.local/ns/shop/sa/backend";

#[test]
fn the_server_presents_the_backends_identity_and_the_client_requires_it() {
    let m = MeshLab::start_with_identities(Some("shop/backend"), Some("shop/backend"));
    let got = m.call();
    m.assert_echoed(&got);
    // Node A's agent verified the backend's identity, not node B's own.
    let a = m.lab.wait_for_status();
    let servers = a["mesh"]["servers"].as_array().cloned().unwrap_or_default();
    assert!(
        servers.iter().any(|s| s[0] == BACKEND_ID),
        "servers: {servers:?}"
    );
    assert!(
        !servers
            .iter()
            .any(|s| s[0] == "spiffe://test.local/ns/lb-system/sa/lb"),
        "the node identity was presented: {servers:?}"
    );
    // Node B holds a certificate for it (issued on demand, rotated like the others).
    let expiry = m.b_status()["mesh"]["cert_expiry"].clone();
    assert!(
        expiry
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[0] == BACKEND_ID),
        "{expiry}"
    );
}

#[test]
fn a_destination_presenting_another_identity_is_refused_by_the_client() {
    // Node A expects the backend to run as shop/backend; node B's config says shop/impostor.
    let m = MeshLab::start_with_identities(Some("shop/backend"), Some("shop/impostor"));
    let got = m.call();
    assert!(
        !got.contains(std::str::from_utf8(SECRET).unwrap()),
        "another identity but echoed: {got:?}"
    );
    let mut last = BTreeMap::new();
    eventually("node A counts the wrong server identity", || {
        last = failures(&m.lab.wait_for_status(), "outbound");
        last.get("wrong_server_identity").is_some_and(|n| *n >= 1)
    });
    wait_for_log(&m.lab.agent, "presented another identity than expected");
    let log = m.lab.agent.output();
    assert!(
        log.contains(BACKEND_ID) && log.contains("spiffe://test.local/ns/shop/sa/impostor"),
        "the log names both identities:\n{log}"
    );
    // Nothing reached the backend: node B opened no stream and authorized no peer.
    let b = m.b_status();
    assert_eq!(b["mesh"]["connections"][1]["side"], "inbound");
    assert_eq!(b["mesh"]["connections"][1]["streams"], 0, "{}", b["mesh"]);
    assert!(
        b["mesh"]["peers"].as_array().is_none_or(|p| p.is_empty()),
        "{}",
        b["mesh"]
    );
}

#[test]
fn peers_without_a_trusted_identity_are_refused_at_the_inbound_port() {
    let m = MeshLab::start("");
    let b_ip = m.lab.topo.backends[0].ip4().to_string();
    let dir = CaDir::new(); // a scratch directory (its own CA is the foreign one)
    let (foreign_ca, foreign_key) = (dir.0.join("ca.pem"), dir.0.join("ca-key.pem"));
    let (ca, ca_key) = (m._ca.0.join("ca.pem"), m._ca.0.join("ca-key.pem"));
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let write = |name: &str, ca: &Path, key: &Path, id: &str, from, to| {
        lb_tests::mesh_ca::write_cert_dir_identity(ca, key, &dir.0.join(name), id, from, to)
            .expect("write a peer certificate")
    };
    let peers = [
        (
            "foreign-ca",
            write(
                "foreign",
                &foreign_ca,
                &foreign_key,
                CLIENT_ID,
                now - hour,
                now + hour,
            ),
        ),
        (
            "expired",
            write(
                "expired",
                &ca,
                &ca_key,
                CLIENT_ID,
                now - 2 * hour,
                now - hour,
            ),
        ),
        (
            "untrusted-domain",
            write(
                "other",
                &ca,
                &ca_key,
                "spiffe://other.org/ns/app/sa/client",
                now - hour,
                now + hour,
            ),
        ),
    ];
    let good = write("good", &ca, &ca_key, CLIENT_ID, now - hour, now + hour);

    // `openssl s_client` from node A, TLS 1.3 and ALPN h2 as a tunnel client would.
    let handshake = |cert_dir: &Path| {
        let out = m
            .lab
            .topo
            .lb
            .command("timeout")
            .args([
                "5", "openssl", "s_client", "-tls1_3", "-alpn", "h2", "-quiet", "-connect",
            ])
            .arg(format!("{b_ip}:15008"))
            .arg("-cert")
            .arg(cert_dir.join("cert.pem"))
            .arg("-key")
            .arg(cert_dir.join("key.pem"))
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let total = |m: &MeshLab| inbound_failures(m).values().sum::<u64>();
    let before = inbound_failures(&m);
    for (what, cert_dir) in &peers {
        let prior = total(&m);
        handshake(cert_dir);
        eventually(&format!("node B refuses the {what} peer"), || {
            total(&m) > prior
        });
    }
    let after = inbound_failures(&m);
    let failed: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    assert_eq!(
        failed, 3,
        "every untrusted peer refused: {before:?} -> {after:?}"
    );
    assert!(
        after.get("cert_expired").copied().unwrap_or(0) >= 1,
        "{after:?}"
    );

    // The same client with a good certificate completes the handshake (no new failure),
    // so the refusals above are about the certificates.
    handshake(&good);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        inbound_failures(&m),
        after,
        "a trusted peer's handshake failed"
    );
    // And nothing reached the backend through B's tunnel without an identity.
    let streams: u64 = m.b_status()["mesh"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p[1].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(streams, 0, "a stream was accepted from an untrusted peer");
}

/// The certificate expiry node A's status shows for the client workload.
fn client_expiry(m: &MeshLab) -> Option<u64> {
    let st = m.lab.wait_for_status();
    st["mesh"]["cert_expiry"]
        .as_array()?
        .iter()
        .find(|e| e[0] == CLIENT_ID)
        .and_then(|e| e[1].as_u64())
}

#[test]
fn certificate_rotation_under_load_drops_no_connection() {
    // Two-second certificates, replaced every second, on both nodes.
    let m = MeshLab::start_with("", "cert_ttl_s = 2\nrotate_at_percent = 50\n");
    // The workload's certificate exists once it has connected.
    assert!(m.call().contains(std::str::from_utf8(SECRET).unwrap()));

    // 20 connections held open through the tunnel while certificates rotate.
    let probe = lb_binary().with_file_name("lb-sockprobe");
    let mut holder = m
        .cg_a
        .command(
            &m.lab.topo.lb,
            &probe,
            ["hold", &format!("{MESH_VIP}:80"), "20"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("lb-sockprobe hold");
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(
        line.trim()
            .strip_prefix("ready")
            .map(|n| n.split_whitespace().count()),
        Some(20),
        "held connections: {line}"
    );

    // New connections for 5 s (about five rotations), each must echo.
    let mut expiries = std::collections::BTreeSet::new();
    let (mut calls, mut failed) = (0, Vec::new());
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let got = m.call();
        calls += 1;
        if !got.contains(std::str::from_utf8(SECRET).unwrap()) {
            failed.push(got);
        }
        expiries.extend(client_expiry(&m));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        failed.is_empty(),
        "{} of {calls} new connections failed: {failed:?}",
        failed.len()
    );
    assert!(calls >= 10, "only {calls} connections in 5 s");
    assert!(
        expiries.len() >= 3,
        "the client certificate did not rotate (expiries seen: {expiries:?})"
    );

    // The held connections all still echo.
    writeln!(holder.stdin.as_mut().unwrap(), "go").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = holder.wait();
    assert_eq!(
        line.trim(),
        "echoed=20",
        "held connections across rotations"
    );
}
