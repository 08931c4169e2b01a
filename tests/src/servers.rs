//! Name servers for backends and the clients that ask them, all inside namespaces.
//!
//! A backend's servers answer with the backend's name, so a client sees which backend the load
//! balancer picked without any cooperation from the LB. Sockets are created on `Netns::enter`
//! threads (so they live in the namespace) and then served from ordinary threads.
//! Every blocking call has a bound: nothing here can hang a test run.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// Default bound for a connect or a read (2 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(50);
/// A server connection idle this long is closed (a stuck client cannot pin a thread forever).
const IDLE_LIMIT: Duration = Duration::from_secs(10);
/// Remembered peer addresses per server (enough for any test, bounded memory).
const MAX_PEERS: usize = 100_000;

/// State shared between a server's owner and its threads.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    count: AtomicU64,
    peers: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    fn record(&self, peer: SocketAddr) {
        self.count.fetch_add(1, Ordering::SeqCst);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() < MAX_PEERS {
            peers.push(peer);
        }
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Waits until `fd` is readable or `timeout` passes; true if readable.
fn poll_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0
}

/// TCP server: for each connection, writes `NAME\n`, then echoes what it reads until EOF.
#[derive(Debug)]
pub struct TcpNameServer {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TcpNameServer {
    /// Listens on `addr` inside `ns` (port 0 picks one; see [`TcpNameServer::local_addr`]).
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str) -> Result<TcpNameServer> {
        let listener = ns
            .enter(|| TcpListener::bind(addr))
            .with_context(|| format!("bind tcp {addr} in {}", ns.name()))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (s, n) = (shared.clone(), name.to_owned());
        let thread = std::thread::Builder::new()
            .name(format!("tcp-{name}"))
            .spawn(move || accept_loop(listener, &n, &s))?;
        Ok(TcpNameServer {
            name: name.to_owned(),
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Source addresses of the connections accepted so far (what NAT made of the client).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops accepting, closes open connections and joins every thread (same as drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpNameServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, name: &str, shared: &Arc<Shared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopped() {
        if !poll_readable(&listener, POLL) {
            continue;
        }
        let Ok((stream, peer)) = listener.accept() else {
            continue;
        };
        shared.record(peer);
        let (s, n) = (shared.clone(), name.to_owned());
        match std::thread::Builder::new().spawn(move || serve_conn(stream, &n, &s)) {
            Ok(h) => conns.push(h),
            Err(e) => eprintln!("tcp name server {name}: no thread for {peer}: {e}"),
        }
        conns.retain(|h| !h.is_finished());
    }
    for h in conns {
        let _ = h.join();
    }
}

fn serve_conn(mut stream: TcpStream, name: &str, shared: &Shared) {
    let _ = stream.set_write_timeout(Some(DEFAULT_TIMEOUT));
    let _ = stream.set_read_timeout(Some(POLL));
    if stream.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut last = Instant::now();
    while !shared.stopped() && last.elapsed() < IDLE_LIMIT {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
                last = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// UDP server: answers every datagram with its name.
#[derive(Debug)]
pub struct UdpNameServer {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl UdpNameServer {
    /// Binds `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str) -> Result<UdpNameServer> {
        let socket = ns
            .enter(|| UdpSocket::bind(addr))
            .with_context(|| format!("bind udp {addr} in {}", ns.name()))?;
        socket.set_read_timeout(Some(POLL))?;
        let addr = socket.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (s, n) = (shared.clone(), name.to_owned());
        let thread = std::thread::Builder::new()
            .name(format!("udp-{name}"))
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !s.stopped() {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        s.record(peer);
                        let _ = socket.send_to(n.as_bytes(), peer);
                    }
                }
            })?;
        Ok(UdpNameServer {
            name: name.to_owned(),
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams answered so far.
    pub fn queries(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Source addresses of the datagrams received so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops and joins the server thread (same as drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpNameServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads one `\n`-terminated line (without the newline) within the stream's read timeout.
fn read_line(stream: &TcpStream) -> io::Result<String> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed before a full name line (got {line:?})"),
        ));
    }
    line.pop();
    Ok(line)
}

/// Connects (from the current namespace) and reads the name line; returns (name, local port).
fn connect_and_read_name(addr: SocketAddr, timeout: Duration) -> Result<(TcpStream, String)> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("tcp connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let name = read_line(&stream).with_context(|| format!("read name from {addr}"))?;
    Ok((stream, name))
}

/// One TCP connection from `ns` to `addr:port`: returns the name the server sent.
pub fn tcp_connect_name(ns: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> Result<String> {
    let target = SocketAddr::new(addr, port);
    ns.enter(|| connect_and_read_name(target, timeout).map(|(_, name)| name))
}

/// One TCP connection: reads the name, sends `payload`, reads the echo back (both directions
/// carry data through the LB), and closes. Returns (name, echoed bytes).
pub fn tcp_echo(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    payload: &[u8],
    timeout: Duration,
) -> Result<(String, Vec<u8>)> {
    let target = SocketAddr::new(addr, port);
    ns.enter(|| {
        let (mut stream, name) = connect_and_read_name(target, timeout)?;
        stream.write_all(payload).context("send payload")?;
        let mut echoed = vec![0u8; payload.len()];
        stream
            .read_exact(&mut echoed)
            .with_context(|| format!("read {} echoed bytes from {target}", payload.len()))?;
        Ok((name, echoed))
    })
}

/// Retries [`tcp_connect_name`] until it works or `total` passes (e.g. waiting for an agent).
pub fn wait_for_tcp(ns: &Netns, addr: IpAddr, port: u16, total: Duration) -> Result<String> {
    wait_for_tcp_while(ns, addr, port, total, || Ok(()))
}

/// [`wait_for_tcp`] that also gives up as soon as `still_worth_it` fails (the agent
/// exited, Ctrl-C), with its error.
pub fn wait_for_tcp_while(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    total: Duration,
    mut still_worth_it: impl FnMut() -> Result<()>,
) -> Result<String> {
    let deadline = Instant::now() + total;
    loop {
        still_worth_it()?;
        let per_try = DEFAULT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        match tcp_connect_name(ns, addr, port, per_try.max(Duration::from_millis(100))) {
            Ok(name) => return Ok(name),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{addr}:{port} not answering after {total:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// How a batch of requests spread over backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spread {
    /// Answers per backend name.
    pub counts: BTreeMap<String, usize>,
    /// Requests that got no answer (connect/read timeout, reset, wrong source...).
    pub errors: usize,
    /// The last error's message, for diagnostics.
    pub last_error: Option<String>,
    /// Distinct client source ports used.
    pub source_ports: usize,
}

impl Spread {
    /// Requests made (answers + errors).
    pub fn total(&self) -> usize {
        self.answered() + self.errors
    }

    /// Requests answered.
    pub fn answered(&self) -> usize {
        self.counts.values().sum()
    }

    /// Answers from `name`.
    pub fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// Share of all requests answered by `name` (0.0..=1.0).
    pub fn fraction(&self, name: &str) -> f64 {
        match self.total() {
            0 => 0.0,
            t => self.count(name) as f64 / t as f64,
        }
    }

    fn add(&mut self, result: Result<String>) {
        match result {
            Ok(name) => *self.counts.entry(name).or_default() += 1,
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(format!("{e:#}"));
            }
        }
    }
}

/// A table: backend, count, percentage; then errors if any.
impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total().max(1) as f64;
        writeln!(f, "  {:<10} {:>7} {:>7}", "backend", "count", "share")?;
        for (name, n) in &self.counts {
            let pct = 100.0 * *n as f64 / total;
            writeln!(f, "  {name:<10} {n:>7} {pct:>6.1}%")?;
        }
        if self.errors > 0 {
            let pct = 100.0 * self.errors as f64 / total;
            writeln!(f, "  {:<10} {:>7} {pct:>6.1}%", "(errors)", self.errors)?;
            if let Some(e) = &self.last_error {
                writeln!(f, "  last error: {e}")?;
            }
        }
        write!(f, "  {:<10} {:>7}", "total", self.total())
    }
}

/// `n` sequential TCP connections from `ns` to `addr:port`, each from a new kernel-chosen source
/// port, and the names they got. Failures are counted, not returned, so a test can assert on
/// the error rate; an error is returned only if `ns` cannot be entered or a source port repeats.
pub fn tcp_name_spread(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    n: usize,
    timeout: Duration,
) -> Result<Spread> {
    tcp_name_spread_until(ns, addr, port, n, timeout, &|_| false)
}

/// [`tcp_name_spread`] that stops early when `stop(results so far)` returns true (on Ctrl-C,
/// at the end of a time window, after too many errors...).
pub fn tcp_name_spread_until(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    n: usize,
    timeout: Duration,
    stop: &(dyn Fn(&Spread) -> bool + Sync),
) -> Result<Spread> {
    let target = SocketAddr::new(addr, port);
    ns.enter(|| {
        let mut spread = Spread::default();
        let mut ports = HashSet::new();
        for _ in 0..n {
            if stop(&spread) {
                break;
            }
            let result = connect_and_read_name(target, timeout).and_then(|(stream, name)| {
                let local = stream.local_addr()?.port();
                // Sequential connections rest in TIME_WAIT on our side, so the kernel should
                // never reuse a port within a batch; if it does, the flows are not distinct.
                if !ports.insert(local) {
                    bail!("source port {local} used twice in one batch");
                }
                Ok(name)
            });
            spread.add(result);
        }
        spread.source_ports = ports.len();
        Ok(spread)
    })
}

/// Sends one datagram from `ns` (source port `src_port`, 0 = any) to `vip:port` and returns the
/// name in the answer, waiting at most [`DEFAULT_TIMEOUT`].
pub fn udp_ask_name(ns: &Netns, vip: IpAddr, port: u16, src_port: u16) -> Result<String> {
    udp_ask_name_timeout(ns, vip, port, src_port, DEFAULT_TIMEOUT)
}

/// [`udp_ask_name`] with an explicit timeout (short ones suit tests that expect a drop).
pub fn udp_ask_name_timeout(
    ns: &Netns,
    vip: IpAddr,
    port: u16,
    src_port: u16,
    timeout: Duration,
) -> Result<String> {
    let target = SocketAddr::new(vip, port);
    ns.enter(|| udp_ask(target, src_port, timeout))
}

fn udp_ask(target: SocketAddr, src_port: u16, timeout: Duration) -> Result<String> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, src_port))
        .with_context(|| format!("bind udp source port {src_port}"))?;
    socket.set_read_timeout(Some(timeout))?;
    socket
        .send_to(b"who?", target)
        .with_context(|| format!("send to {target}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    let mut stray = None;
    loop {
        let received = socket.recv_from(&mut buf);
        match received {
            // The answer must come from the address we asked: the LB has to undo its NAT.
            Ok((n, from)) if from == target => {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            Ok((_, from)) => stray = Some(from),
            Err(e) => match stray {
                Some(from) => bail!("udp answer came from {from}, not {target}"),
                None => bail!("no udp answer from {target} within {timeout:?}: {e}"),
            },
        }
        if Instant::now() >= deadline {
            bail!("udp answer came from {stray:?}, not {target}");
        }
    }
}

/// `n` UDP queries from `ns` to `addr:port`, from source ports `first_src_port..+n` (distinct
/// flows), and the names they got. Failures are counted in the result.
pub fn udp_name_spread(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    n: usize,
    first_src_port: u16,
    timeout: Duration,
) -> Result<Spread> {
    udp_name_spread_until(ns, addr, port, n, first_src_port, timeout, &|_| false)
}

/// [`udp_name_spread`] that stops early when `stop(results so far)` returns true.
pub fn udp_name_spread_until(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    n: usize,
    first_src_port: u16,
    timeout: Duration,
    stop: &(dyn Fn(&Spread) -> bool + Sync),
) -> Result<Spread> {
    ensure_port_range(first_src_port, n)?;
    let target = SocketAddr::new(addr, port);
    ns.enter(|| {
        let mut spread = Spread::default();
        for i in 0..n {
            if stop(&spread) {
                break;
            }
            spread.add(udp_ask(target, first_src_port + i as u16, timeout));
            spread.source_ports += 1;
        }
        Ok(spread)
    })
}

fn ensure_port_range(first: u16, n: usize) -> Result<()> {
    if first == 0 || usize::from(first) + n > 65_536 {
        bail!("source ports {first}..{first}+{n} out of range");
    }
    Ok(())
}
