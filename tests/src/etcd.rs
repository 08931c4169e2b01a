//! A real single-member etcd (Debian's `etcd-server`, v3.4) for tests of the etcd source.
//!
//! [`EtcdServer::start`] runs `etcd` on two free loopback ports with its data in a fresh
//! temporary directory and waits until it reports healthy; dropping the guard kills the
//! process (also on panic and, through [`crate::cleanup`], on Ctrl-C) and removes the
//! directory. [`EtcdServer::stop`] / [`EtcdServer::restart`] keep the ports and the data, so
//! a test can take the server away and bring it back with its keys.
//!
//! Writes go through etcd's v3 JSON gateway over a plain blocking HTTP/1.0 request (no
//! client process to spawn, so a write costs about a millisecond and latency measured from
//! it is the source's, not the harness's).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};

use crate::netns::{NsChild, unique_name};

/// How long a (re)started etcd may take to report healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for one gateway request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A running etcd member; see the module doc.
#[derive(Debug)]
pub struct EtcdServer {
    dir: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<NsChild>,
    /// `/run/netns/NAME` when the member runs inside a test namespace (its loopback), so an
    /// agent in that namespace can reach it; the harness's own requests enter it too.
    netns: Option<(String, PathBuf)>,
}

impl EtcdServer {
    /// Starts a fresh member and waits for it to be healthy.
    pub fn start() -> Result<EtcdServer> {
        Self::start_where(None)
    }

    /// [`EtcdServer::start`] inside `ns`, listening on that namespace's loopback.
    pub fn start_in(ns: &crate::Netns) -> Result<EtcdServer> {
        Self::start_where(Some((ns.name().to_string(), ns.path())))
    }

    fn start_where(netns: Option<(String, PathBuf)>) -> Result<EtcdServer> {
        let binary = which("etcd").context(
            "`etcd` is not in PATH: install Debian's etcd-server (`cargo xtask test` does)",
        )?;
        let name = unique_name("lb-etcd");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut server = EtcdServer {
            dir,
            name,
            client_port: 0,
            peer_port: 0,
            child: None,
            netns,
        };
        // Free ports are found by binding port 0 and letting go, so another process may take
        // one before etcd binds it: try a few pairs.
        let mut last_error = None;
        for _ in 0..3 {
            (server.client_port, server.peer_port) = (free_port()?, free_port()?);
            // A failed attempt may have left a half-made member behind.
            let _ = std::fs::remove_dir_all(server.data_dir());
            match server.spawn(&binary) {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("tried at least once"))
    }

    /// `http://127.0.0.1:PORT`, the client URL to give the source.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Whether the process is running (not stopped and not crashed).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(NsChild::is_running)
    }

    /// Stops the member gracefully (SIGTERM; SIGKILL after a grace period), keeping its data.
    pub fn stop(&mut self) -> Result<()> {
        self.thaw(); // a frozen process would not act on SIGTERM
        if let Some(mut child) = self.child.take() {
            child.stop(NsChild::STOP_GRACE)?;
        }
        Ok(())
    }

    /// Kills the member at once (SIGKILL, as a crash would), keeping its data.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGKILL);
            child.wait_timeout(NsChild::STOP_GRACE)?;
        }
        Ok(())
    }

    /// Freezes the member (SIGSTOP): its connections stay open but nothing answers, as
    /// with a server that vanished without closing them. [`EtcdServer::thaw`] resumes it.
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            child.signal(libc::SIGSTOP);
        }
    }

    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            child.signal(libc::SIGCONT);
        }
    }

    /// Starts it again on the same ports and data directory and waits for it to be healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let binary = which("etcd").context("`etcd` is not in PATH")?;
        self.spawn(&binary)
    }

    /// Puts `key` = `value`; returns the revision of the write.
    pub fn put(&self, key: &str, value: &str) -> Result<i64> {
        let resp = self.call(
            "/v3/kv/put",
            &json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) }),
        )?;
        header_revision(&resp)
    }

    /// Grants a lease of `ttl` seconds and puts `key` = `value` under it; returns the lease id.
    /// The lease is never kept alive, so the key disappears about `ttl` seconds later.
    pub fn put_with_lease(&self, key: &str, value: &str, ttl: u64) -> Result<i64> {
        let grant = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        let lease = int64(&grant["ID"]).with_context(|| format!("lease grant answered {grant}"))?;
        self.call(
            "/v3/kv/put",
            &json!({
                "key": BASE64.encode(key),
                "value": BASE64.encode(value),
                "lease": lease.to_string(),
            }),
        )?;
        Ok(lease)
    }

    /// Puts and deletes in one transaction (one revision, so a watcher sees one batch);
    /// returns its revision.
    pub fn apply(&self, puts: &[(&str, &str)], deletes: &[&str]) -> Result<i64> {
        let mut ops: Vec<Value> = puts
            .iter()
            .map(|(k, v)| {
                json!({ "request_put": { "key": BASE64.encode(k), "value": BASE64.encode(v) } })
            })
            .collect();
        ops.extend(
            deletes
                .iter()
                .map(|k| json!({ "request_delete_range": { "key": BASE64.encode(k) } })),
        );
        let resp = self.call("/v3/kv/txn", &json!({ "success": ops }))?;
        header_revision(&resp)
    }

    /// Deletes `key`; returns the number of keys deleted (0 or 1).
    pub fn delete(&self, key: &str) -> Result<i64> {
        let resp = self.call("/v3/kv/deleterange", &json!({ "key": BASE64.encode(key) }))?;
        Ok(int64(&resp["deleted"]).unwrap_or(0))
    }

    /// Compacts the history up to `revision` (physically: done when this returns).
    pub fn compact(&self, revision: i64) -> Result<()> {
        self.call(
            "/v3/kv/compaction",
            &json!({ "revision": revision.to_string(), "physical": true }),
        )?;
        Ok(())
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64> {
        let resp = self.call("/v3/maintenance/status", &json!({}))?;
        header_revision(&resp)
    }

    /// Every key under `prefix` (for diagnostics and sanity checks).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut end = prefix.as_bytes().to_vec();
        let last = end.pop().context("empty prefix")?;
        end.push(last + 1);
        let resp = self.call(
            "/v3/kv/range",
            &json!({ "key": BASE64.encode(prefix), "range_end": BASE64.encode(end), "keys_only": true }),
        )?;
        let kvs = resp["kvs"].as_array().cloned().unwrap_or_default();
        kvs.iter()
            .map(|kv| {
                let raw = BASE64.decode(kv["key"].as_str().unwrap_or_default())?;
                Ok(String::from_utf8_lossy(&raw).into_owned())
            })
            .collect()
    }

    /// What etcd printed since it was last (re)started.
    pub fn output(&self) -> String {
        self.child.as_ref().map(NsChild::output).unwrap_or_default()
    }

    fn spawn(&mut self, binary: &Path) -> Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = match &self.netns {
            Some((name, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .args(["--initial-cluster-token", &self.name])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "warn"])
            // Settings from the environment (ETCD_*) must not change the test's server.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let mut child = NsChild::spawn(cmd, "etcd")?;
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let output = child.output();
                bail!("etcd exited with {status} before becoming healthy:\n{output}");
            }
            if self.healthy() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let output = child.output();
                bail!("etcd not healthy within {HEALTH_TIMEOUT:?}:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ns(&self) -> Option<&Path> {
        self.netns.as_ref().map(|(_, p)| p.as_path())
    }

    fn healthy(&self) -> bool {
        http(self.ns(), self.client_port, "GET", "/health", None)
            .ok()
            .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
            .is_some_and(|v| v["health"] == "true")
    }

    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let raw = http(self.ns(), self.client_port, "POST", path, Some(body))
            .with_context(|| format!("etcd {path}"))?;
        serde_json::from_slice(&raw)
            .with_context(|| format!("etcd {path}: {}", String::from_utf8_lossy(&raw)))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Dropping the child stops it (and shows its output if the test is failing).
        self.thaw();
        drop(self.child.take());
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("lb-tests: removing {}: {e}", self.dir.display());
        }
    }
}

/// One HTTP/1.0 request to 127.0.0.1:`port` (the server closes the connection after the
/// response, so the body is everything after the headers). Errors on a non-2xx status.
fn http(
    netns: Option<&Path>,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Vec<u8>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = match netns {
        None => TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?,
        // A socket keeps the namespace it was made in: connect from a thread inside it.
        Some(ns) => connect_in(ns, addr)?,
    };
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response without a header end")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response[split + 4..].to_vec();
    let status_ok = head
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    ensure!(
        status_ok,
        "{method} {path}: {} {}",
        head.lines().next().unwrap_or_default(),
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// A TCP connection to `addr` made from inside the namespace at `ns`.
fn connect_in(ns: &Path, addr: SocketAddr) -> Result<TcpStream> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(ns).with_context(|| format!("open {}", ns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<TcpStream> {
            // SAFETY: setns on a valid fd; affects only this short-lived thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn header_revision(resp: &Value) -> Result<i64> {
    int64(&resp["header"]["revision"]).with_context(|| format!("no header.revision in {resp}"))
}

/// proto3 JSON int64: a string of digits (or a number).
fn int64(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}
