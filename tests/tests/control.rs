//! The control plane end to end: the built-in registry API, health checks, drains and weight
//! changes reaching the XDP data plane, long-lived connections held across every kind of
//! table change, metrics clean for promtool, and `lb status`.
//!
//! Each test runs the real agent in a two-arm topology with real TCP servers; the admin API
//! is a unix socket in a per-test directory.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    TcpNameServer, Topology,
    admin::AdminClient,
    control_lab::{Dir, ip, start_on, time_until_reached, wait_until},
    lab::{Lab, echo},
    lb_binary,
};

/// Health checks in these tests: every 200 ms, down after 3 failures, up after 2 successes.
const INTERVAL_MS: u64 = 200;
const FALL: u64 = 3;

/// [`start_on`] a fresh three-backend two-arm topology, nothing extra in the config.
fn start(tag: &str, static_backends: &[usize], health: Option<&str>) -> (Lab, AdminClient, Dir) {
    start_on(
        Topology::two_arm(3).unwrap(),
        tag,
        static_backends,
        health,
        |_| String::new(),
    )
}

/// Registry writes: auth, add, TTL expiry, deregister, persistence across an agent restart;
/// each change measured from the API call to forwarding.
#[test]
fn registry_changes_reach_the_data_plane_and_survive_a_restart() {
    let (mut lab, admin, _dir) = start("reg", &[0], None);
    let names = lab.names();

    // Writes need the token.
    let anon = admin
        .request(
            "PUT",
            &format!("/v1/registry/web/{}/8080", ip(&lab, 1)),
            "",
            false,
        )
        .unwrap();
    assert_eq!(anon.code, 401, "{anon:?}");
    let bad = AdminClient::new(&admin.socket, "wrong")
        .request(
            "PUT",
            &format!("/v1/registry/web/{}/8080", ip(&lab, 1)),
            "",
            true,
        )
        .unwrap();
    assert_eq!(bad.code, 401, "{bad:?}");
    let garbage = admin
        .request(
            "PUT",
            &format!("/v1/registry/web/{}/8080", ip(&lab, 1)),
            "{\"wieght\": 1}",
            true,
        )
        .unwrap();
    assert_eq!(garbage.code, 400, "{garbage:?}");
    assert_eq!(
        lab.tcp_spread(30).count(&names[1]),
        0,
        "nothing registered yet"
    );

    // Add: from the API call to the first new flow on the new backend.
    let t0 = Instant::now();
    admin
        .register("web", &ip(&lab, 1), 8080, r#"{"weight": 1, "ttl": 30}"#)
        .unwrap();
    let api = t0.elapsed();
    let add = time_until_reached(&lab, &names[1]);
    println!(
        "registry add -> forwarding: {:?} (API call {api:?})",
        api + add
    );

    // TTL: an instance that stops heartbeating is removed; one that heartbeats stays.
    admin
        .register("web", &ip(&lab, 2), 8080, r#"{"ttl": 2}"#)
        .unwrap();
    time_until_reached(&lab, &names[2]);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        admin.heartbeat("web", &ip(&lab, 2), 8080).unwrap();
    }
    assert!(
        admin
            .backend("web", &format!("{}:8080", ip(&lab, 2)))
            .is_ok(),
        "heartbeats keep it"
    );
    let expired = wait_until(
        "TTL expiry removes the instance",
        Duration::from_secs(5),
        || {
            admin
                .backend("web", &format!("{}:8080", ip(&lab, 2)))
                .is_err()
        },
    );
    println!("TTL 2 s expiry noticed {expired:?} after the last heartbeat check");
    assert_eq!(
        lab.tcp_spread(60).count(&names[2]),
        0,
        "expired instance still gets flows"
    );
    assert!(
        admin.heartbeat("web", &ip(&lab, 2), 8080).is_err(),
        "heartbeat of an expired instance is refused"
    );

    // Deregister.
    admin.register("web", &ip(&lab, 2), 8080, "").unwrap();
    time_until_reached(&lab, &names[2]);
    let t0 = Instant::now();
    admin.deregister("web", &ip(&lab, 2), 8080).unwrap();
    wait_until(
        "deregistered instance leaves the status",
        Duration::from_secs(5),
        || {
            admin
                .backend("web", &format!("{}:8080", ip(&lab, 2)))
                .is_err()
        },
    );
    println!("registry delete -> out of the table: {:?}", t0.elapsed());
    let s = lab.tcp_spread(60);
    assert_eq!(s.errors, 0, "{s}");
    assert_eq!(
        s.count(&names[2]),
        0,
        "deregistered instance still gets flows\n{s}"
    );
    assert!(
        s.count(&names[1]) > 0,
        "registered instance gets no flows\n{s}"
    );

    // Restart: the registration of backend 1 is persisted and comes back.
    lab.agent.stop(Duration::from_secs(10)).unwrap();
    lab.agent = lab.spawn_agent(&[]);
    lab.wait_for_vip();
    wait_until("admin API after restart", Duration::from_secs(10), || {
        admin.get("/healthz").is_ok()
    });
    let b1 = admin
        .backend("web", &format!("{}:8080", ip(&lab, 1)))
        .expect("registration survived the restart");
    assert_eq!(b1["origin"], "registry");
    time_until_reached(&lab, &names[1]);
}

/// Long-lived connections survive every kind of table change on the backends that remain:
/// a registry add, a weight change, a drain (weight 0: keeps its flows, takes no new ones),
/// a health flip of another backend and a deregistration of another backend.
#[test]
fn table_changes_never_break_established_connections() {
    // Health checks against a separate port, so a backend can fail its check while its
    // data connections stay open.
    let health = format!(
        "kind = \"tcp\"\nport = 9091\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 100\nfall = {FALL}\nrise = 2\n"
    );
    let (lab, admin, _dir) = start("flows", &[0], Some(&health));
    let names = lab.names();
    let mut checks: Vec<Option<TcpNameServer>> = lab
        .topo
        .backends
        .iter()
        .map(|b| {
            Some(
                TcpNameServer::start(&b.ns, SocketAddr::new(IpAddr::V4(b.ip4()), 9091), "hc")
                    .unwrap(),
            )
        })
        .collect();
    admin.register("web", &ip(&lab, 1), 8080, "").unwrap();
    admin.register("web", &ip(&lab, 2), 8080, "").unwrap();
    // The check servers started after the agent: backend 0 may have failed its first checks.
    for i in 0..3 {
        wait_until(
            "every backend passes its check",
            Duration::from_secs(5),
            || {
                admin
                    .backend("web", &format!("{}:8080", ip(&lab, i)))
                    .unwrap()["up"]
                    == true
            },
        );
    }
    time_until_reached(&lab, &names[1]);
    time_until_reached(&lab, &names[2]);

    let mut conns: Vec<(TcpStream, String)> = (0..60).map(|_| lab.client_connect()).collect();
    for n in &names {
        assert!(conns.iter().any(|(_, b)| b == n), "no connection on {n}");
    }
    let mut check_all = |stage: &str| {
        for (s, backend) in conns.iter_mut() {
            echo(s, stage.as_bytes())
                .unwrap_or_else(|e| panic!("{stage}: connection on {backend} broke: {e}"));
        }
    };
    check_all("start");

    // Weight change.
    admin
        .register("web", &ip(&lab, 1), 8080, r#"{"weight": 5}"#)
        .unwrap();
    wait_until("weight 5 applied", Duration::from_secs(5), || {
        admin
            .backend("web", &format!("{}:8080", ip(&lab, 1)))
            .unwrap()["effective_weight"]
            == 5
    });
    check_all("weight");

    // Drain backend 1: its connections stay, no new flows reach it.
    admin
        .register("web", &ip(&lab, 1), 8080, r#"{"weight": 0}"#)
        .unwrap();
    wait_until("drain applied", Duration::from_secs(5), || {
        admin
            .backend("web", &format!("{}:8080", ip(&lab, 1)))
            .unwrap()["effective_weight"]
            == 0
    });
    check_all("drain");
    let s = lab.tcp_spread(60);
    assert_eq!(s.count(&names[1]), 0, "drained backend got new flows\n{s}");
    assert_eq!(s.errors, 0, "{s}");

    // Health flip of backend 2 (its check port closes; data connections stay).
    if let Some(c) = checks[2].take() {
        c.stop();
    }
    wait_until("backend 2 seen down", Duration::from_secs(5), || {
        admin
            .backend("web", &format!("{}:8080", ip(&lab, 2)))
            .unwrap()["up"]
            == false
    });
    check_all("health down");
    let s = lab.tcp_spread(60);
    assert_eq!(s.count(&names[2]), 0, "down backend got new flows\n{s}");
    let b = &lab.topo.backends[2];
    checks[2] = Some(
        TcpNameServer::start(&b.ns, SocketAddr::new(IpAddr::V4(b.ip4()), 9091), "hc").unwrap(),
    );
    wait_until("backend 2 back up", Duration::from_secs(5), || {
        admin
            .backend("web", &format!("{}:8080", ip(&lab, 2)))
            .unwrap()["up"]
            == true
    });
    check_all("health up");
    time_until_reached(&lab, &names[2]);

    // Add back weight 1 to backend 1, then remove backend 2 from the registry: connections
    // to backends 0 and 1 stay (backend 2's are allowed to go on too: conntrack keeps them).
    admin.register("web", &ip(&lab, 1), 8080, "").unwrap();
    admin.deregister("web", &ip(&lab, 2), 8080).unwrap();
    wait_until("backend 2 gone", Duration::from_secs(5), || {
        admin
            .backend("web", &format!("{}:8080", ip(&lab, 2)))
            .is_err()
    });
    check_all("deregister");
    drop(checks);
}

/// A backend whose server dies is taken down within interval x fall and gets no new flows;
/// it comes back after `rise` successes; with every backend down the service fails open.
#[test]
fn dead_backend_is_detected_and_all_down_fails_open() {
    let health = format!(
        "kind = \"tcp\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 100\nfall = {FALL}\nrise = 2\n"
    );
    let (mut lab, admin, _dir) = start("health", &[0, 1, 2], Some(&health));
    let names = lab.names();
    let addr1 = format!("{}:8080", ip(&lab, 1));
    assert_eq!(admin.backend("web", &addr1).unwrap()["up"], true);

    let server = lab.tcp.remove(1);
    let t0 = Instant::now();
    server.stop();
    wait_until("dead backend seen down", Duration::from_secs(5), || {
        admin.backend("web", &addr1).unwrap()["up"] == false
    });
    let detected = t0.elapsed();
    println!("backend killed -> down: {detected:?} (interval {INTERVAL_MS} ms x fall {FALL})");
    // interval x fall, plus one interval of phase and scheduling slack.
    let bound = Duration::from_millis(INTERVAL_MS * (FALL + 1) + 400);
    assert!(
        detected <= bound,
        "detection took {detected:?}, bound {bound:?}"
    );
    let s = lab.tcp_spread(90);
    assert_eq!(
        s.errors, 0,
        "flows failed after the table dropped the dead backend\n{s}"
    );
    assert_eq!(s.count(&names[1]), 0, "dead backend got new flows\n{s}");

    // Back after `rise` successes.
    let b = &lab.topo.backends[1];
    lab.tcp.insert(
        1,
        TcpNameServer::start(&b.ns, SocketAddr::new(IpAddr::V4(b.ip4()), 8080), &b.name).unwrap(),
    );
    wait_until("backend back up", Duration::from_secs(5), || {
        admin.backend("web", &addr1).unwrap()["up"] == true
    });
    time_until_reached(&lab, &names[1]);

    // All down: fail open, with a metric and a log line.
    for s in lab.tcp.drain(..) {
        s.stop();
    }
    wait_until("service fails open", Duration::from_secs(5), || {
        admin.status().unwrap()["services"][0]["fail_open"] == true
    });
    let metrics = admin.get("/metrics").unwrap();
    assert!(
        metrics.contains("lb_service_fail_open{service=\"web\"} 1"),
        "{metrics}"
    );
    lab.wait_for_log("failing open");
    let st = admin.status().unwrap();
    for b in st["services"][0]["backends"].as_array().unwrap() {
        assert_eq!(
            b["effective_weight"], 1,
            "fail open keeps every backend: {b}"
        );
    }
}

/// The metrics page passes `promtool check metrics`, counts what went through, and
/// `lb status` prints the table from the admin API.
#[test]
fn metrics_are_promtool_clean_and_status_prints_the_table() {
    let (lab, admin, _dir) = start("metrics", &[0, 1], None);
    admin
        .register(
            "web",
            &ip(&lab, 2),
            8080,
            r#"{"weight": 2, "metadata": {"zone": "b"}}"#,
        )
        .unwrap();
    time_until_reached(&lab, &lab.names()[2]);
    let s = lab.tcp_spread(30);
    assert_eq!(s.errors, 0, "{s}");

    let metrics = admin.get("/metrics").unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{metrics}"
    );
    let conns: u64 = metrics
        .lines()
        .find(|l| l.starts_with("lb_service_connections_total{service=\"web\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no connections counter\n{metrics}"));
    assert!(
        conns >= 30,
        "connections counter {conns} < 30 connections made"
    );
    for needle in [
        "lb_source_endpoints{source=\"registry\"} 1",
        "lb_config_generation 1",
        "lb_table_checksum_info{checksum=",
        "lb_datapath_packets_total{reason=\"forwarded\"}",
        "lb_service_conntrack_entries{service=\"web\"}",
    ] {
        assert!(metrics.contains(needle), "missing {needle}\n{metrics}");
    }

    let out = Command::new(lb_binary())
        .args([
            "status",
            "--admin",
            &format!("unix:{}", admin.socket.display()),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lb status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{table}");
    assert!(table.contains("web"), "{table}");
    for i in 0..3 {
        assert!(table.contains(&format!("{}:8080", ip(&lab, i))), "{table}");
    }
    assert!(table.contains("registry"), "origin column: {table}");

    // A status request to a socket nobody serves names what it tried.
    let out = Command::new(lb_binary())
        .args(["status", "--admin", "unix:/nonexistent/lb.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lb.sock"));
}

/// etcd as the source: puts and deletes reach the data plane (measured), and an etcd outage
/// keeps the last known backends forwarding, counts errors, and resumes after a restart.
#[test]
fn etcd_changes_reach_the_data_plane_and_an_outage_loses_nothing() {
    let topo = Topology::two_arm(3).unwrap();
    let mut etcd =
        lb_tests::etcd::EtcdServer::start_in(&topo.lb).expect("etcd in the LB namespace");
    let url = etcd.url();
    let (lab, admin, _dir) = start_on(topo, "etcd", &[0], None, |_| {
        format!("\n[[source]]\nkind = \"etcd\"\nendpoints = [\"{url}\"]\nprefix = \"/lb/\"\n")
    });
    let names = lab.names();
    let key = |i: usize| format!("/lb/web/{}:8080", ip(&lab, i));

    let t0 = Instant::now();
    etcd.put(&key(1), r#"{"weight": 1}"#).unwrap();
    wait_until("etcd backend in the table", Duration::from_secs(10), || {
        admin
            .backend("web", &format!("{}:8080", ip(&lab, 1)))
            .is_ok()
    });
    let in_table = t0.elapsed();
    let added = t0.elapsed() + time_until_reached(&lab, &names[1]);
    println!("etcd put -> in the table {in_table:?}, -> forwarding: {added:?}");
    let b1 = admin
        .backend("web", &format!("{}:8080", ip(&lab, 1)))
        .unwrap();
    assert_eq!(b1["origin"], "etcd");

    // Outage: errors are counted, the last known backends keep forwarding.
    etcd.stop().unwrap();
    wait_until("source errors counted", Duration::from_secs(10), || {
        admin.status().unwrap()["sources"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "etcd"))
            .is_some_and(|s| s["errors"].as_u64() > Some(0))
    });
    let s = lab.tcp_spread(60);
    assert_eq!(s.errors, 0, "{s}");
    assert!(
        s.count(&names[1]) > 0,
        "etcd's backend lost during the outage\n{s}"
    );
    let metrics = admin.get("/metrics").unwrap();
    assert!(
        !metrics.contains("lb_source_errors_total{source=\"etcd\"} 0"),
        "{metrics}"
    );

    // Back: changes flow again.
    etcd.restart().unwrap();
    let t0 = Instant::now();
    etcd.put(&key(2), "").unwrap();
    let resumed = t0.elapsed() + time_until_reached(&lab, &names[2]);
    println!(
        "etcd restarted, put -> forwarding: {resumed:?} (includes the source's reconnect backoff)"
    );
    let t0 = Instant::now();
    etcd.delete(&key(1)).unwrap();
    wait_until(
        "deleted key leaves the table",
        Duration::from_secs(10),
        || {
            admin
                .backend("web", &format!("{}:8080", ip(&lab, 1)))
                .is_err()
        },
    );
    println!("etcd delete -> out of the table: {:?}", t0.elapsed());
    let s = lab.tcp_spread(60);
    assert_eq!(s.errors, 0, "{s}");
    assert_eq!(
        s.count(&names[1]),
        0,
        "deleted backend still gets flows\n{s}"
    );
    drop(lab);
}

/// Consul as the source (a stand-in serving Consul's documented responses: no Consul agent
/// can run here): a change to the passing set reaches the data plane; a removal leaves it.
#[test]
fn consul_changes_reach_the_data_plane() {
    let topo = Topology::two_arm(3).unwrap();
    let consul = lb_tests::fake_consul::FakeConsul::start_in(&topo.lb.path()).unwrap();
    let url = consul.url();
    let (lab, admin, _dir) = start_on(topo, "consul", &[0], None, |_| {
        format!("\n[[source]]\nkind = \"consul\"\naddress = \"{url}\"\nservices = [\"web\"]\n")
    });
    let names = lab.names();
    let (b1, b2) = (ip(&lab, 1), ip(&lab, 2));

    let t0 = Instant::now();
    consul.set(&[("web", &b1, 8080, 1), ("web", &b2, 8080, 1)]);
    let added = t0.elapsed() + time_until_reached(&lab, &names[1]);
    println!("consul change -> forwarding: {added:?}");
    time_until_reached(&lab, &names[2]);
    assert_eq!(
        admin.backend("web", &format!("{b1}:8080")).unwrap()["origin"],
        "consul"
    );

    consul.set(&[("web", &b2, 8080, 1)]);
    wait_until(
        "removed instance leaves the table",
        Duration::from_secs(10),
        || admin.backend("web", &format!("{b1}:8080")).is_err(),
    );
    let s = lab.tcp_spread(60);
    assert_eq!(s.errors, 0, "{s}");
    assert_eq!(
        s.count(&names[1]),
        0,
        "removed instance still gets flows\n{s}"
    );
    drop(lab);
}

/// Kubernetes as the source (a stand-in serving the documented EndpointSlice list and watch:
/// no API server can run here): ready endpoints take flows, a terminating-but-serving one is
/// drained (no new flows), a removed one leaves the table.
#[test]
fn kubernetes_changes_reach_the_data_plane() {
    let topo = Topology::two_arm(3).unwrap();
    let k8s = lb_tests::fake_k8s::FakeKubernetes::start_in(&topo.lb.path(), "web", 8080).unwrap();
    let url = k8s.url();
    let (lab, admin, _dir) = start_on(topo, "k8s", &[0], None, |dir| {
        let token = dir.join("sa-token");
        std::fs::write(&token, "test-token").unwrap();
        format!(
            "\n[[source]]\nkind = \"kubernetes\"\napi_server = \"{url}\"\nservices = [\"web\"]\ntoken_file = \"{}\"\n",
            token.display()
        )
    });
    let names = lab.names();
    let (b1, b2) = (ip(&lab, 1), ip(&lab, 2));

    let t0 = Instant::now();
    k8s.set(&[(&b1, true, true, false), (&b2, true, true, false)]);
    let added = t0.elapsed() + time_until_reached(&lab, &names[1]);
    println!("kubernetes change -> forwarding: {added:?}");
    time_until_reached(&lab, &names[2]);
    assert_eq!(
        admin.backend("web", &format!("{b1}:8080")).unwrap()["origin"],
        "kubernetes"
    );

    // b1 terminating but serving: drained.
    k8s.set(&[(&b1, false, true, true), (&b2, true, true, false)]);
    wait_until(
        "terminating endpoint drained",
        Duration::from_secs(10),
        || admin.backend("web", &format!("{b1}:8080")).unwrap()["effective_weight"] == 0,
    );
    let s = lab.tcp_spread(60);
    assert_eq!(s.errors, 0, "{s}");
    assert_eq!(
        s.count(&names[1]),
        0,
        "terminating endpoint got new flows\n{s}"
    );

    // b2 gone.
    k8s.set(&[(&b1, false, true, true)]);
    wait_until(
        "removed endpoint leaves the table",
        Duration::from_secs(10),
        || admin.backend("web", &format!("{b2}:8080")).is_err(),
    );
    assert_eq!(lab.tcp_spread(30).count(&names[2]), 0);
    drop(lab);
}

/// Kubernetes Services as services (`discover_services = true`, against the stand-in): a
/// Service with the lab's VIP as an external IP on another port is served, with client-IP
/// affinity, by its EndpointSlice's endpoints on the slice's (resolved target) port; deleting
/// the Service in the API takes it out of the data plane. The config's own `web` stays.
#[test]
fn kubernetes_services_come_and_go_with_the_api() {
    let topo = Topology::two_arm(3).unwrap();
    let vip = lb_tests::VIP4;
    let k8s = lb_tests::fake_k8s::FakeKubernetes::start_in(&topo.lb.path(), "shop", 8080).unwrap();
    let url = k8s.url();
    let (lab, admin, _dir) = start_on(topo, "k8s-svc", &[0], None, |dir| {
        let token = dir.join("sa-token");
        std::fs::write(&token, "test-token").unwrap();
        format!(
            "\n[[source]]\nkind = \"kubernetes\"\nname = \"k8s-services\"\napi_server = \"{url}\"\n\
             discover_services = true\nnode_name = \"node-1\"\nnode_addresses = [\"192.0.2.250\"]\n\
             token_file = \"{}\"\n",
            token.display()
        )
    });
    let names = lab.names();
    let (b1, b2) = (ip(&lab, 1), ip(&lab, 2));
    let name = format!("default/shop:http@{vip}:81");
    k8s.set(&[(&b1, true, true, false), (&b2, true, true, false)]);
    k8s.set_service(Some(serde_json::json!({
        "metadata": {"name": "shop", "uid": "uid-shop"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.42",
            "clusterIPs": ["10.96.0.42"],
            "externalIPs": [vip.to_string()],
            "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "protocol": "TCP", "port": 81, "targetPort": "web"}]
        }
    })));
    wait_until("the Service is served", Duration::from_secs(10), || {
        admin.backend(&name, &format!("{b2}:8080")).is_ok()
    });
    assert_eq!(
        admin.backend(&name, &format!("{b1}:8080")).unwrap()["origin"],
        "k8s-services"
    );
    // Client-IP affinity: the client's new flows all reach one backend of the two.
    let reached: std::collections::BTreeSet<String> = (0..12)
        .map(|_| {
            lb_tests::tcp_connect_name(
                &lab.topo.client.ns,
                IpAddr::V4(vip),
                81,
                lb_tests::DEFAULT_TIMEOUT,
            )
            .expect("a flow to the Service")
        })
        .collect();
    assert_eq!(reached.len(), 1, "one backend for one client: {reached:?}");
    assert!(
        [&names[1], &names[2]].contains(&reached.first().unwrap()),
        "{reached:?}"
    );
    // The config's own service is untouched.
    time_until_reached(&lab, &names[0]);

    // Deleted in the API: gone from the data plane; port 81 is no service any more.
    k8s.set_service(None);
    wait_until("the Service leaves", Duration::from_secs(10), || {
        admin.status().is_ok_and(|s| !s.to_string().contains(&name))
    });
    assert!(
        lb_tests::tcp_connect_name(
            &lab.topo.client.ns,
            IpAddr::V4(vip),
            81,
            Duration::from_millis(500)
        )
        .is_err()
    );
    time_until_reached(&lab, &names[0]);
    drop(lab);
}
