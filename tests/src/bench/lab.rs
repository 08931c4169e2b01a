//! The bench network: the two-arm topology (client, LB, three backends) with nginx serving a
//! small static body on every backend, and the sysctls a connection-per-request load needs.
//!
//! Dropping it stops the servers, removes the namespaces and the scratch directory.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, NsChild, unique_name};
use crate::topology::{PeerMode, Topology, VIP4};

/// HTTP port of the backends and of the VIP.
pub const HTTP_PORT: u16 = 80;
/// UDP port of the flood service (VIP and backends).
pub const FLOOD_PORT: u16 = 9;
/// Source ports the agent may use for SNAT; the LB namespace's own ephemeral range (for the
/// proxies' connections to backends) is kept below it, so the two never collide.
pub const SNAT_PORTS: (u16, u16) = (30000, 65535);
/// Ephemeral range of the LB namespace (below [`SNAT_PORTS`]).
const LB_EPHEMERAL: &str = "1024 29999";
/// Ephemeral range of the client: Linux's default, as the clients of a real service have. It
/// lies inside [`SNAT_PORTS`], so the XDP path's SNAT keeps each client port (a wider range
/// made the ports below 30000 take hashed SNAT ports, which collide on backend 4-tuples still
/// in TIME_WAIT: SYN retransmits).
const CLIENT_EPHEMERAL: &str = "32768 60999";
/// nginx workers per backend (one per core of this machine).
const BACKEND_WORKERS: u32 = 2;
/// Size of the static body the backends serve.
pub const BODY_BYTES: usize = 64;

/// A directory removed (with everything in it) on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `$TMPDIR/lb-bench-PID-N`.
    pub fn new() -> Result<ScratchDir> {
        let p = std::env::temp_dir().join(unique_name("lb-bench"));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(ScratchDir(p))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Topology + backend nginx servers. Fields drop in order: servers, scratch dir, namespaces.
#[derive(Debug)]
pub struct BenchLab {
    servers: Vec<NsChild>,
    /// Config files and logs of everything the bench starts.
    pub dir: ScratchDir,
    /// The network.
    pub topo: Topology,
    /// Whether the backends keep TIME_WAIT sockets.
    pub backend_time_wait: bool,
}

impl BenchLab {
    /// Builds the network, starts nginx on each backend and waits until each answers.
    ///
    /// `backend_time_wait`: whether the backends keep TIME_WAIT sockets (the default). Off,
    /// a connection the backend closed is gone at once, so a later SYN on the same 4-tuple
    /// is never refused by PAWS (see "TIME_WAIT" in tests/src/bin/lb-bench.rs).
    pub fn start(backend_time_wait: bool) -> Result<BenchLab> {
        let tweaks = std::env::var("LB_BENCH_VETH").unwrap_or_default();
        let peer_mode = if tweaks.split(',').any(|t| t == "xdp-pass-peers") {
            PeerMode::XdpPass
        } else {
            PeerMode::Gro
        };
        let topo = Topology::two_arm_with(3, peer_mode).context("build the topology")?;
        let dir = ScratchDir::new()?;
        tune(&topo)?;
        veth_tweaks(&topo, &tweaks)?;
        if !backend_time_wait {
            for b in &topo.backends {
                b.ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
            }
        }
        let mut lab = BenchLab {
            servers: Vec::new(),
            dir,
            topo,
            backend_time_wait,
        };
        for i in 0..lab.topo.backends.len() {
            let server = start_backend(&lab, i)?;
            lab.servers.push(server);
        }
        for b in &lab.topo.backends {
            wait_http_ok(
                &lab.topo.lb,
                IpAddr::V4(b.ip4()),
                HTTP_PORT,
                Duration::from_secs(10),
                None,
            )
            .with_context(|| format!("nginx on {} never answered", b.name))?;
        }
        Ok(lab)
    }

    /// A new file path in the scratch directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Sysctls for many short connections, and the VIP on the LB's loopback (so the user-space
/// proxies can listen on it; the XDP LB and DNAT rules act before local delivery anyway).
fn tune(topo: &Topology) -> Result<()> {
    let client = &topo.client.ns;
    client.sysctl("net.ipv4.ip_local_port_range", CLIENT_EPHEMERAL)?;
    client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    topo.lb
        .sysctl("net.ipv4.ip_local_port_range", LB_EPHEMERAL)?;
    topo.lb.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    topo.lb
        .ip(["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
    for b in &topo.backends {
        b.ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    }
    Ok(())
}

/// Experiments on how veth delivers (`LB_BENCH_VETH`, comma-separated; see "Native XDP on
/// veth" in the README's bench section): `xdp-pass-peers` (an `XDP_PASS` program on every
/// peer of the LB's veths instead of GRO, handled in `BenchLab::start`), `no-gro` (GRO off on
/// the LB's own veths).
fn veth_tweaks(topo: &Topology, tweaks: &str) -> Result<()> {
    for t in tweaks.split(',').filter(|t| !t.is_empty()) {
        match t {
            "xdp-pass-peers" => {}
            "no-gro" => {
                for d in topo.lb_interfaces() {
                    topo.lb.run("ethtool", ["-K", &d, "gro", "off"])?;
                }
            }
            other => bail!("LB_BENCH_VETH: unknown tweak {other:?}"),
        }
        eprintln!("lb-bench: veth tweak {t}");
    }
    Ok(())
}

/// Starts nginx on backend `i` serving `BODY_BYTES` of text that names the backend.
fn start_backend(lab: &BenchLab, i: usize) -> Result<NsChild> {
    let b = &lab.topo.backends[i];
    let root = lab.file(&format!("{}-nginx", b.name));
    std::fs::create_dir_all(root.join("www"))?;
    let mut body = format!("{} ", b.name);
    while body.len() < BODY_BYTES - 1 {
        body.push('x');
    }
    body.push('\n');
    std::fs::write(root.join("www/index.html"), body)?;
    let conf = backend_nginx_conf(
        &root,
        &format!("{}:{HTTP_PORT}", b.ip4()),
        // The gateway bench's routed paths (/api/users/42 ...): the same body.
        "location /api/ { try_files /index.html =404; }",
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf)?;
    spawn_nginx(&b.ns, &path, &root)
}

/// The backends' nginx config: `BACKEND_WORKERS` workers, every temp path and the pid file
/// under `root`, static files from `root/www`, a server on `listen` (`ip:port`) with `extra`
/// directives in it. Shared by the bench's labs so every backend serves alike.
pub fn backend_nginx_conf(root: &Path, listen: &str, extra: &str) -> String {
    let r = root.display();
    format!(
        "worker_processes {BACKEND_WORKERS};
user root;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {r}/tmp-body;
    proxy_temp_path {r}/tmp-proxy;
    fastcgi_temp_path {r}/tmp-fastcgi;
    uwsgi_temp_path {r}/tmp-uwsgi;
    scgi_temp_path {r}/tmp-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    default_type text/plain;
    server {{
        listen {listen} backlog=4096;
        root {r}/www;
        index index.html;
        {extra}
    }}
}}
"
    )
}

/// `nginx -c CONF -g 'daemon off;'` in `ns`, logging early errors into `root`.
pub fn spawn_nginx(ns: &Netns, conf: &Path, root: &Path) -> Result<NsChild> {
    let mut cmd = ns.command("nginx");
    cmd.arg("-e")
        .arg(root.join("error.log"))
        .arg("-p")
        .arg(root)
        .arg("-c")
        .arg(conf)
        .args(["-g", "daemon off;"]);
    NsChild::spawn(cmd, "nginx")
}

/// One `GET /` over a fresh connection from `ns`; returns the status code and the body.
pub fn http_get(ns: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> Result<(u16, String)> {
    let text = ns.try_enter(|| -> Result<String> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(addr, port), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Retries `GET /` until it answers 200, `total` passes, or `server` (if given) exits.
pub fn wait_http_ok(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    total: Duration,
    mut server: Option<&mut NsChild>,
) -> Result<String> {
    let deadline = Instant::now() + total;
    loop {
        let err = match http_get(ns, addr, port, Duration::from_millis(500)) {
            Ok((200, body)) => return Ok(body),
            Ok((code, _)) => anyhow::anyhow!("status {code}"),
            Err(e) => e,
        };
        if let Some(s) = server.as_deref_mut()
            && let Some(st) = s.try_wait()?
        {
            bail!(
                "{addr}:{port}: server exited ({st}) before answering:\n{}",
                s.output()
            );
        }
        if Instant::now() >= deadline {
            return Err(err.context(format!("{addr}:{port} did not answer 200 within {total:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
