//! Plain HTTP/1.1 requests for the gateway bench: readiness and auth checks, and the memory
//! a proxy holds per idle keep-alive connection (RSS of its process tree before and after
//! opening N connections that each made one request).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// Largest response head read (the backends' are ~250 bytes).
const MAX_HEAD: usize = 16 * 1024;

/// Sends `GET path` on `s` (keep-alive unless `close`) and reads one whole response;
/// returns its status.
pub fn request(s: &mut TcpStream, path: &str, headers: &[String], close: bool) -> Result<u16> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n");
    for h in headers {
        req += h;
        req += "\r\n";
    }
    if close {
        req += "Connection: close\r\n";
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    read_response(s)
}

/// Reads one response (Content-Length or chunked body) and returns its status.
fn read_response(s: &mut TcpStream) -> Result<u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (status, head_len, body_len, chunked) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before a whole response head");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(&buf).context("response head")? {
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
            };
            let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let body_len = header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            break (resp.code.unwrap_or(0), len, body_len, chunked);
        }
        if buf.len() > MAX_HEAD {
            bail!("response head longer than {MAX_HEAD} bytes");
        }
    };
    // Body: a length, or chunks up to the last (empty) one with no trailers.
    loop {
        let body = &buf[head_len..];
        let done = if chunked {
            body.ends_with(b"0\r\n\r\n")
        } else {
            body.len() >= body_len
        };
        if done {
            return Ok(status);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed in the middle of a response body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a fresh connection from `ns`; returns the status.
pub fn get(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    headers: &[String],
    timeout: Duration,
) -> Result<u16> {
    ns.try_enter(|| -> Result<u16> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        request(&mut s, path, headers, true)
    })?
}

/// Retries `get` until it answers `want`, or `total` passes (then the last error).
pub fn wait_status(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    headers: &[String],
    want: u16,
    total: Duration,
) -> Result<()> {
    let deadline = Instant::now() + total;
    loop {
        let err = match get(ns, addr, path, headers, Duration::from_millis(500)) {
            Ok(code) if code == want => return Ok(()),
            Ok(code) => anyhow::anyhow!("status {code}, expected {want}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err.context(format!(
                "{addr}{path} did not answer {want} within {total:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The idle-connection memory of one proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleMem {
    /// Connections opened (each made one request, answered 200, then stayed idle).
    pub conns: usize,
    /// RSS of the proxy's process tree before, KiB.
    pub rss_before_kib: u64,
    /// RSS with the connections open, KiB.
    pub rss_after_kib: u64,
    /// Whether the oldest connection still answered a request after the measurement (a
    /// proxy that had closed idle connections would look cheaper than it is).
    pub oldest_still_open: bool,
}

impl IdleMem {
    /// RSS growth per connection, bytes.
    pub fn bytes_per_conn(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) * 1024.0 / self.conns.max(1) as f64
    }
}

/// Opens `n` keep-alive connections from `ns` to `addr`, each making one `GET path` (with
/// `headers`), and measures the RSS of `pid`'s process tree before and after (each after a
/// settle pause). The connections are closed on return.
pub fn idle_memory(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    headers: &[String],
    n: usize,
    pid: u32,
) -> Result<IdleMem> {
    let timeout = Duration::from_secs(2);
    // A few requests first, so pools and lazily built state exist before the baseline.
    for _ in 0..8 {
        get(ns, addr, path, headers, timeout)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_before_kib = tree_rss_kib(pid)?;
    let mut conns = ns.try_enter(|| -> Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = TcpStream::connect_timeout(&addr, timeout)
                .with_context(|| format!("connection {i} of {n}"))?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            let code = request(&mut s, path, headers, false)
                .with_context(|| format!("request on connection {i} of {n}"))?;
            anyhow::ensure!(code == 200, "connection {i} of {n}: status {code}");
            v.push(s);
        }
        Ok(v)
    })??;
    std::thread::sleep(Duration::from_secs(1));
    let rss_after_kib = tree_rss_kib(pid)?;
    let oldest_still_open = conns
        .first_mut()
        .is_some_and(|s| request(s, path, headers, true).is_ok_and(|c| c == 200));
    Ok(IdleMem {
        conns: conns.len(),
        rss_before_kib,
        rss_after_kib,
        oldest_still_open,
    })
}

/// VmRSS of `pid` and all its descendants, KiB.
pub fn tree_rss_kib(pid: u32) -> Result<u64> {
    let mut total = 0;
    for p in process_tree(pid)? {
        // A worker that exited between the listing and the read counts as nothing.
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            total += vm_rss_kib(&status).unwrap_or(0);
        }
    }
    Ok(total)
}

/// `VmRSS:` of a `/proc/PID/status` text, KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `pid` and its descendants (from each process's parent in /proc/PID/stat).
fn process_tree(pid: u32) -> Result<Vec<u32>> {
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            && let Some(pp) = parent_of(&stat)
        {
            parents.push((p, pp));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let cur = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    Ok(tree)
}

/// The parent pid of a `/proc/PID/stat` line (the field after the `)` of the name).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rss_and_parent() {
        assert_eq!(vm_rss_kib("Name:\tx\nVmRSS:\t   1234 kB\n"), Some(1234));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
        assert_eq!(parent_of("42 (a) b) S 7 42 42 0"), Some(7));
    }

    #[test]
    fn this_process_is_in_its_own_tree_with_some_rss() {
        let me = std::process::id();
        assert!(process_tree(me).unwrap().contains(&me));
        assert!(tree_rss_kib(me).unwrap() > 0);
        let mem = IdleMem {
            conns: 2,
            rss_before_kib: 10,
            rss_after_kib: 12,
            oldest_still_open: true,
        };
        assert_eq!(mem.bytes_per_conn(), 1024.0);
    }

    #[test]
    fn reads_a_content_length_and_a_chunked_response() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(b"lo").unwrap();
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n")
                .unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(request(&mut c, "/a", &[], false).unwrap(), 200);
        assert_eq!(request(&mut c, "/b", &["x: y".into()], false).unwrap(), 401);
        server.join().unwrap();
    }
}
