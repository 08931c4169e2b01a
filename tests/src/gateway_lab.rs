//! A running L7 gateway to test against: a two-arm topology with three backends running
//! `lb-echo` (HTTP/1.1 + h2c, names `b0`, `b1`, `b2` on port 8080), a config with a
//! `mode = "http"` service on [`VIP4`]:80 (and :443 with TLS when certificates are given), the
//! real `lb` agent in the LB namespace, and `curl` in the client namespace.
//!
//! Path of a request: client ns -> LB ns (XDP passes VIP:port to the kernel, the agent's
//! `local` route and sk_lookup program hand the connection to its gateway) -> backend ns.
//!
//! Every config this lab writes has the same backend sets (services without VIP):
//! `b0`, `b1`, `b2` (one backend each), `all` (the three) and `none` (no backend). A test
//! supplies the gateway's routes, TLS certificates and extra top-level tables ([`GwConfig`]).
//!
//! Everything is a guard: dropping a [`GatewayLab`] stops the agent, the echo servers and any
//! helper process, removes the config and the temp dir (certificates, keys, JWKS), then the
//! namespaces, on panic too.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    NsChild, Topology, VIP4,
    lab::{ConfigFile, DEFAULT_ADMIN, interfaces_line},
    lb_binary,
    netns::run_checked,
};

/// The gateway's plain HTTP port on the VIP.
pub const HTTP_PORT: u16 = 80;
/// The gateway's TLS port on the VIP (only with certificates).
pub const TLS_PORT: u16 = 443;
/// Where every `lb-echo` listens on its backend.
pub const ECHO_PORT: u16 = 8080;
/// The echo servers' names, by backend index.
pub const ECHO_NAMES: [&str; 3] = ["b0", "b1", "b2"];
/// `--max-time` of every curl transfer, seconds.
pub const CURL_MAX_TIME: u32 = 10;

/// The `lb-echo` binary: `$LB_ECHO_BIN`, else next to the running test's target dir
/// (`target/<profile>/deps/x` -> `target/<profile>/lb-echo`; cargo builds it for this crate's
/// integration tests).
pub fn echo_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LB_ECHO_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("lb-echo"))
        .expect("target dir");
    assert!(
        p.exists(),
        "{} not found: `cargo test -p lb-tests` builds it, or set LB_ECHO_BIN",
        p.display()
    );
    p
}

/// A directory in the temp dir, removed with its contents on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(Self(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `dir/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS certificate for the gateway: the names it serves and its files.
#[derive(Debug, Clone)]
pub struct TlsCert {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a test puts into the gateway part of the config.
#[derive(Debug, Clone, Default)]
pub struct GwConfig {
    /// `[[service.route]]` tables (TOML), for the service on :80 and, with `tls`, on :443.
    pub routes: String,
    /// Certificates of the :443 service, first = default. Empty: no :443 service.
    pub tls: Vec<TlsCert>,
    /// More top-level TOML after the services: `[[auth]]` providers, `[gateway]`.
    pub extra: String,
}

/// One HTTP answer as curl saw it.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Status code; 0 when curl got no answer.
    pub status: u16,
    /// Response headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
    /// New connections curl opened for this transfer (0: reused a kept-alive one).
    pub new_conns: u32,
    /// The status line's protocol: `HTTP/1.1`, `HTTP/2`; "" without an answer.
    pub proto: String,
}

impl Reply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (an `lb-echo` answer); panics with the reply otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an lb-echo JSON answer ({e}): {self:?}"))
    }

    /// The `lb-echo` that answered (`b0`..), or "" when the body is not an echo answer.
    pub fn backend(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["backend"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The path (and query) the backend received.
    pub fn echoed_path(&self) -> String {
        self.json()["path"].as_str().unwrap_or_default().to_owned()
    }

    /// Request header `name` (lowercase) as the backend received it.
    pub fn echoed_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

/// One curl run (possibly several URLs): every transfer's reply, stderr, exit code.
#[derive(Debug, Clone)]
pub struct CurlRun {
    pub replies: Vec<Reply>,
    /// curl's stderr (with `-v`: the TLS handshake, headers and trailers).
    pub stderr: String,
    /// curl's exit code.
    pub exit: i32,
}

/// Separates transfers in curl's stdout (`-w`), with the status and the connection count.
const MARK: &str = "\n@@LBT-END ";

/// Topology + echo servers + the running agent. Fields drop in order: agent first, then
/// helpers and echo servers, then config and files, then the namespaces.
pub struct GatewayLab {
    pub agent: Option<NsChild>,
    /// Helper processes a test started (e.g. a JWKS web server); stopped before the echoes.
    pub helpers: Vec<NsChild>,
    /// `lb-echo` on backend i (name `ECHO_NAMES[i]`).
    pub echo: Vec<NsChild>,
    pub config: ConfigFile,
    /// Certificates, keys, key files, JWKS documents.
    pub dir: TempDir,
    pub topo: Topology,
    /// The config generation the agent should be at after the last write.
    generation: AtomicU64,
}

impl GatewayLab {
    /// Builds the topology and starts `lb-echo` on every backend (waits until each listens);
    /// the agent starts with [`GatewayLab::start`].
    pub fn new() -> GatewayLab {
        check_tools();
        let topo = Topology::two_arm(3).expect("topology");
        // The agent resolves next hops itself (as `Lab` does): no pinned neighbours.
        topo.flush_lb_neighbours().expect("flush neighbours");
        let mut echo = Vec::new();
        for (i, b) in topo.backends.iter().enumerate() {
            let listen = SocketAddr::new(IpAddr::V4(b.ip4()), ECHO_PORT).to_string();
            echo.push(
                b.ns.spawn(
                    echo_binary(),
                    ["--listen", &listen, "--name", ECHO_NAMES[i]],
                )
                .expect("start lb-echo"),
            );
        }
        for (i, b) in topo.backends.iter().enumerate() {
            let addr = SocketAddr::new(IpAddr::V4(b.ip4()), ECHO_PORT);
            wait_listening(&b.ns, addr, Duration::from_secs(10), &mut echo[i])
                .unwrap_or_else(|e| panic!("lb-echo {}: {e:#}", ECHO_NAMES[i]));
        }
        GatewayLab {
            agent: None,
            helpers: Vec::new(),
            echo,
            config: ConfigFile::new(),
            dir: TempDir::new("lbt-gw").expect("temp dir"),
            topo,
            generation: AtomicU64::new(0),
        }
    }

    /// Writes `cfg`, starts the agent and waits (15 s at most) until the gateway answers
    /// HTTP on the VIP (and HTTPS too when `cfg` has certificates).
    pub fn start(&mut self, cfg: &GwConfig) {
        assert!(self.agent.is_none(), "agent already started");
        self.config.write(&self.config_text(cfg));
        self.generation.store(1, Ordering::SeqCst);
        let agent = self
            .topo
            .lb
            .spawn(
                lb_binary(),
                ["run", "--config", self.config.path().to_str().unwrap()],
            )
            .expect("start agent");
        self.agent = Some(agent);
        self.wait_for_gateway(HTTP_PORT, false);
        if !cfg.tls.is_empty() {
            self.wait_for_gateway(TLS_PORT, true);
        }
    }

    /// The agent (started).
    pub fn agent(&self) -> &NsChild {
        self.agent.as_ref().expect("agent not started")
    }

    /// The agent's output so far, for assertion messages.
    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(NsChild::output).unwrap_or_default()
    }

    /// The whole config for `cfg`.
    pub fn config_text(&self, cfg: &GwConfig) -> String {
        let mut s = format!(
            "[global]\n{}\nmaglev_table_size = 4099\n",
            interfaces_line(&self.topo)
        );
        let sets: [(&str, &[usize]); 5] = [
            ("b0", &[0]),
            ("b1", &[1]),
            ("b2", &[2]),
            ("all", &[0, 1, 2]),
            ("none", &[]),
        ];
        for (name, idx) in sets {
            let list: Vec<String> = idx
                .iter()
                .map(|i| {
                    format!(
                        "{{ address = \"{}\", port = {ECHO_PORT} }}",
                        self.topo.backends[*i].ip4()
                    )
                })
                .collect();
            s += &format!(
                "\n[[service]]\nname = \"{name}\"\nbackend = [{}]\n",
                list.join(", ")
            );
        }
        s += &format!(
            "\n[[service]]\nname = \"gw\"\nvip = \"{VIP4}\"\nport = {HTTP_PORT}\nprotocol = \"tcp\"\nmode = \"http\"\n"
        );
        s += &cfg.routes;
        if !cfg.tls.is_empty() {
            s += &format!(
                "\n[[service]]\nname = \"gws\"\nvip = \"{VIP4}\"\nport = {TLS_PORT}\nprotocol = \"tcp\"\nmode = \"http\"\n"
            );
            for c in &cfg.tls {
                let names: Vec<String> = c.names.iter().map(|n| format!("\"{n}\"")).collect();
                s += &format!(
                    "[[service.tls]]\nnames = [{}]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                    names.join(", "),
                    c.cert.display(),
                    c.key.display()
                );
            }
            s += &cfg.routes;
        }
        s += "\n";
        s += &cfg.extra;
        s
    }

    /// Rewrites the config with `cfg` and waits (10 s at most) until the agent reports the
    /// next generation applied.
    pub fn reload(&self, cfg: &GwConfig) {
        self.config.write(&self.config_text(cfg));
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.wait_for_generation(g);
    }

    /// `GET /v1/status` from the admin API (127.0.0.1:9180 in the LB namespace).
    pub fn status(&self) -> Result<serde_json::Value> {
        let body = crate::admin::get_tcp(&self.topo.lb, DEFAULT_ADMIN, "/v1/status")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// `GET /metrics` from the admin API.
    pub fn metrics(&self) -> Result<String> {
        crate::admin::get_tcp(&self.topo.lb, DEFAULT_ADMIN, "/metrics")
    }

    /// Waits (10 s at most) until the status shows `generation` (or later) applied.
    pub fn wait_for_generation(&self, generation: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let last = match self.status() {
                Ok(st) if st["generation"].as_u64() >= Some(generation) => return,
                Ok(st) => st.to_string(),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                Instant::now() < deadline,
                "status never showed generation {generation}; last: {last}\nagent output:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (15 s at most) until the gateway answers any HTTP status on `port`.
    fn wait_for_gateway(&mut self, port: u16, tls: bool) {
        let url = if tls {
            format!("https://{VIP4}:{port}/__lbt_ready")
        } else {
            format!("http://{VIP4}:{port}/__lbt_ready")
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let agent = self.agent.as_mut().expect("agent");
            assert!(agent.is_running(), "the agent exited:\n{}", agent.output());
            let r = self.curl(&["-k", "--max-time", "2", &url]);
            if r.status != 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway never answered {url}\nagent output:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `curl ARGS` (one URL among them) in the client namespace: its one reply.
    pub fn curl(&self, args: &[&str]) -> Reply {
        let run = self.curl_run(args);
        run.replies.into_iter().next().unwrap_or_default()
    }

    /// `curl ARGS URLS...` in one run (kept-alive connections), every transfer's reply.
    pub fn curl_many(&self, args: &[&str], urls: &[String]) -> CurlRun {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(urls.iter().map(String::as_str));
        let run = self.curl_run(&all);
        assert_eq!(
            run.replies.len(),
            urls.len(),
            "curl gave {} replies for {} URLs; stderr:\n{}",
            run.replies.len(),
            urls.len(),
            run.stderr
        );
        run
    }

    /// `curl -sS -i --max-time N -w MARK ARGS` in the client namespace, parsed.
    pub fn curl_run(&self, args: &[&str]) -> CurlRun {
        curl_in(&self.topo.client.ns, args)
    }

    /// Requests `lb-echo` `i` has received in full so far.
    pub fn echo_requests(&self, i: usize) -> usize {
        self.echo[i]
            .output()
            .lines()
            .filter(|l| l.starts_with("REQ "))
            .count()
    }

    /// Requests all echo servers have received in full so far.
    pub fn echo_requests_total(&self) -> usize {
        (0..self.echo.len()).map(|i| self.echo_requests(i)).sum()
    }

    /// A self-signed certificate (P-256) for `names` (first = CN), made with `openssl`.
    pub fn cert(&self, names: &[&str]) -> TlsCert {
        let base = names[0].replace('*', "_");
        let cert = self.dir.join(&format!("{base}.crt"));
        let key = self.dir.join(&format!("{base}.key"));
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        run_checked(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={}", names[0]),
            "-addext",
            &format!("subjectAltName={}", san.join(",")),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]))
        .expect("openssl req");
        TlsCert {
            names: names.iter().map(|s| s.to_string()).collect(),
            cert,
            key,
        }
    }

    /// Serves `dir` over HTTP on 127.0.0.1:`port` in the LB namespace (`python3 -m
    /// http.server`), kept until the lab drops; returns once it listens.
    pub fn serve_dir_in_lb(&mut self, dir: &Path, port: u16) {
        let mut child = self
            .topo
            .lb
            .spawn(
                "python3",
                [
                    "-m",
                    "http.server",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    dir.to_str().unwrap(),
                ],
            )
            .expect("start python3 http.server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(&self.topo.lb, addr, Duration::from_secs(10), &mut child)
            .unwrap_or_else(|e| panic!("http.server: {e:#}"));
        self.helpers.push(child);
    }

    /// Sends raw `bytes` to VIP:80 from the client namespace and returns what came back
    /// within `timeout` (until the gateway closes, or the timeout).
    pub fn raw_http(&self, bytes: &[u8], timeout: Duration) -> Vec<u8> {
        use std::io::{Read, Write};
        self.topo.client.ns.enter(|| {
            let addr = SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT);
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .expect("connect to the gateway");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            // The peer may answer and close before everything is written: not an error here.
            let _ = s.write_all(bytes);
            let deadline = Instant::now() + timeout;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while Instant::now() < deadline {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            got
        })
    }
}

/// `curl -sS -i --max-time N -w MARK ARGS` in `ns`, parsed into replies.
pub fn curl_in(ns: &crate::Netns, args: &[&str]) -> CurlRun {
    let out = ns
        .command("curl")
        .args(["-sS", "-i", "--max-time", &CURL_MAX_TIME.to_string()])
        .args([
            "--connect-timeout",
            "5",
            "-w",
            &format!("{MARK}%{{http_code}} %{{num_connects}}@@\n"),
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    CurlRun {
        replies: parse_curl(&stdout),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code().unwrap_or(-1),
    }
}

/// Splits curl's `-i` output with [`MARK`] after each transfer into replies.
fn parse_curl(stdout: &str) -> Vec<Reply> {
    let mut replies = Vec::new();
    let mut rest = stdout;
    while let Some(at) = rest.find(MARK) {
        let chunk = &rest[..at];
        let after = &rest[at + MARK.len()..];
        let end = after.find("@@\n").unwrap_or(after.len());
        let mut nums = after[..end].split(' ');
        let status = nums.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let new_conns = nums.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        rest = after.get(end + 3..).unwrap_or("");
        let mut reply = parse_response(chunk);
        reply.status = status;
        reply.new_conns = new_conns;
        replies.push(reply);
    }
    replies
}

/// One `-i` response: head (possibly several, e.g. a 100 first: the last wins) and body.
fn parse_response(chunk: &str) -> Reply {
    let mut reply = Reply::default();
    let mut rest = chunk;
    // Heads start with "HTTP/"; a body never does here (JSON or a short error text).
    while rest.starts_with("HTTP/") {
        let (head, body) = match rest.find("\r\n\r\n") {
            Some(i) => (&rest[..i], &rest[i + 4..]),
            None => (rest, ""),
        };
        reply.proto = head.split(' ').next().unwrap_or_default().to_owned();
        reply.headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        rest = body;
    }
    reply.body = rest.to_owned();
    reply
}

/// Fails (never skips) when a tool the gateway tests need is missing or lacks a feature.
fn check_tools() {
    for (tool, arg) in [
        ("curl", "--version"),
        ("openssl", "version"),
        ("python3", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "`{tool}` is needed by the gateway tests (cargo xtask setup installs it)"
        );
    }
    let v = Command::new("curl").arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.contains("HTTP2"),
        "this curl has no HTTP/2 support (features line lacks HTTP2):\n{v}"
    );
}

/// Waits until something accepts TCP connections on `addr` in `ns`, failing early if
/// `child` exits.
fn wait_listening(
    ns: &crate::Netns,
    addr: SocketAddr,
    total: Duration,
    child: &mut NsChild,
) -> Result<()> {
    let deadline = Instant::now() + total;
    loop {
        let ok = ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok());
        if ok {
            return Ok(());
        }
        if !child.is_running() {
            bail!("exited before listening on {addr}:\n{}", child.output());
        }
        if Instant::now() >= deadline {
            bail!(
                "nothing listens on {addr} after {total:?}:\n{}",
                child.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Default for GatewayLab {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_output_is_split_per_transfer() {
        let out = format!(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: application/json\r\n\r\n{{\"backend\":\"b0\"}}{MARK}200 1@@\n\
             {MARK}000 0@@\n\
             HTTP/1.1 100 Continue\r\n\r\nHTTP/2 404\r\nx-b: two\r\n\r\nno route\n{MARK}404 0@@\n"
        );
        let r = parse_curl(&out);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].status, 200);
        assert_eq!(r[0].new_conns, 1);
        assert_eq!(r[0].header("x-a"), Some("1"));
        assert_eq!(r[0].backend(), "b0");
        assert_eq!(r[1].status, 0);
        assert!(r[1].headers.is_empty());
        assert_eq!(r[0].proto, "HTTP/1.1");
        assert_eq!(r[2].proto, "HTTP/2");
        assert_eq!(r[2].status, 404);
        assert_eq!(r[2].header("X-B"), Some("two"));
        assert_eq!(r[2].body, "no route\n");
    }
}
