//! SYN flood: spoofed SYNs from 65536 source addresses (10.99.0.0/16, random ports) at the
//! highest rate the live-frames generator reaches (see [`super::pktgen`]), into the client
//! side of the bench network, while legitimate clients from the client's real address open
//! connections and fetch `GET /`. Run with the agent's SYN-flood guard off and on.
//!
//! Reported per run: legitimate success rate and connect latency (p50/p99), conntrack
//! occupancy (peak, of capacity), flood packets offered and reaching the backends per
//! second, the guard's challenges and verified sources, agent RSS and the kernel memory of
//! its BPF maps.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::lab::{BenchLab, HTTP_PORT};
use super::peers::{self, Tools};
use super::pktgen::{Generator, syn_frame};
use crate::admin::AdminClient;
use crate::netns::Netns;
use crate::topology::VIP4;

/// The guard's rate in the "on" runs: SYNs per second per CPU. Legitimate clients here open
/// a few hundred connections per second, the flood hundreds of thousands.
pub const GUARD_RATE: u32 = 2000;
/// Concurrent legitimate clients.
const CLIENTS: usize = 4;
/// A legitimate connection that has not connected and answered within this counts as failed.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(3);

/// One flood run.
#[derive(Debug, Clone, Default)]
pub struct FloodRun {
    /// Guard on (`[global.syn_guard] rate = GUARD_RATE`) or off.
    pub guard: bool,
    pub seconds: f64,
    /// Flood frames sent per second.
    pub offered_pps: f64,
    /// Packets that reached the backends' interfaces per second (flood and legitimate).
    pub backend_pps: f64,
    pub legit_attempts: u64,
    pub legit_ok: u64,
    /// Connect latency of the successful legitimate connections, milliseconds.
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    /// Highest conntrack occupancy seen while flooding (each NAT flow holds a SNAT port too).
    pub conntrack_peak: u64,
    pub conntrack_capacity: u64,
    pub challenges: u64,
    pub verified_sources: u64,
    /// Agent resident memory after the flood, KiB.
    pub agent_rss_kib: u64,
    /// Kernel memory charged to the agent's BPF maps (fdinfo `memlock`), KiB.
    pub bpf_map_kib: u64,
}

impl FloodRun {
    pub fn success_rate(&self) -> f64 {
        if self.legit_attempts == 0 {
            return 0.0;
        }
        self.legit_ok as f64 / self.legit_attempts as f64
    }
}

/// The agent config addition that turns the guard on.
pub fn guard_config() -> String {
    format!("\n[global.syn_guard]\nrate = {GUARD_RATE}\nverified_secs = 60\n")
}

/// One legitimate connection: connect, `GET /`, a 200. Its connect time if it worked.
fn legit_once(vip: SocketAddr) -> Option<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&vip, LEGIT_TIMEOUT).ok()?;
    let connected = t.elapsed();
    let left = LEGIT_TIMEOUT.checked_sub(connected)?;
    s.set_read_timeout(Some(left)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    buf.starts_with(b"HTTP/1.1 200").then_some(connected)
}

/// Legitimate clients in `ns` until `stop`: (attempts, connect times of the successes).
fn legit_clients(ns: &Netns, stop: &AtomicBool) -> (u64, Vec<Duration>) {
    let vip = SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    ns.enter(|| {
                        let mut n = 0u64;
                        let mut ok = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            if let Some(d) = legit_once(vip) {
                                ok.push(d);
                            }
                            // A client's pace, not a load test.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        (n, ok)
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).fold(
            (0, Vec::new()),
            |(n, mut v), (m, w)| {
                v.extend(w);
                (n + m, v)
            },
        )
    })
}

/// `p` quantile (0..=1) of `v` in milliseconds (NaN if empty); sorts `v`.
fn quantile_ms(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Kernel memory of the BPF maps `pid` holds open (sum of their fdinfo `memlock`), KiB.
fn bpf_map_kib(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    let mut bytes = 0u64;
    for e in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        bytes += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    bytes / 1024
}

fn status_u64(v: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// One run: the agent (guard on or off), a warm-up, `duration` of flood with legitimate
/// clients, then the figures.
pub fn run_once(
    lab: &BenchLab,
    tools: &Tools,
    guard: bool,
    duration: Duration,
) -> Result<FloodRun> {
    let extra = if guard { guard_config() } else { String::new() };
    let mut active = peers::start_lb_with(lab, tools, &extra)?;
    let pid = active.child().map(|c| c.id()).context("agent process")?;
    let admin = AdminClient::new(&lab.file("lb-admin.sock"), "");
    let client = &lab.topo.client;
    let lb_c = &lab.topo.lb_ifaces[0];
    let frame = syn_frame(
        client.iface.mac,
        lb_c.mac,
        Ipv4Addr::new(10, 99, 0, 1),
        VIP4,
        40000,
        HTTP_PORT,
    );
    let generator = Generator::load_spoofing(&frame)?;
    let before = super::pktrate::backends_rx(lab)?;
    let stop = AtomicBool::new(false);
    let mut peak = 0u64;
    let mut capacity = 0u64;
    let (flood, (attempts, mut ok)) = std::thread::scope(|s| {
        let legit = s.spawn(|| legit_clients(&client.ns, &stop));
        let flood = s.spawn(|| generator.flood(&client.ns, &client.iface.name, &frame, duration));
        while !flood.is_finished() {
            if let Ok(st) = admin.status() {
                peak = peak.max(status_u64(&st, &["conntrack_entries"]));
                capacity = status_u64(&st, &["conntrack_capacity"]);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        stop.store(true, Ordering::Relaxed);
        let flood = flood.join().expect("flood thread");
        (flood, legit.join().expect("client threads"))
    });
    let flood = flood?;
    std::thread::sleep(Duration::from_millis(100));
    let reached = super::pktrate::backends_rx(lab)? - before;
    let st = admin.status().unwrap_or_default();
    let secs = flood.elapsed.as_secs_f64();
    let run = FloodRun {
        guard,
        seconds: secs,
        offered_pps: flood.frames as f64 / secs,
        backend_pps: reached as f64 / secs,
        legit_attempts: attempts,
        legit_ok: ok.len() as u64,
        connect_p50_ms: quantile_ms(&mut ok, 0.5),
        connect_p99_ms: quantile_ms(&mut ok, 0.99),
        conntrack_peak: peak.max(status_u64(&st, &["conntrack_entries"])),
        conntrack_capacity: capacity,
        challenges: status_u64(&st, &["syn_guard", "challenges"]),
        verified_sources: status_u64(&st, &["syn_guard", "verified_sources"]),
        agent_rss_kib: rss_kib(pid),
        bpf_map_kib: bpf_map_kib(pid),
    };
    drop(active);
    eprintln!(
        "lb-bench: SYN flood guard {:<3} offered {:>9.0} pps, reached backends {:>9.0} pps, legitimate {}/{} ({:.1} %), connect p50 {:.2} ms p99 {:.2} ms, conntrack peak {} of {}, challenges {}, verified {}",
        if guard { "on" } else { "off" },
        run.offered_pps,
        run.backend_pps,
        run.legit_ok,
        run.legit_attempts,
        run.success_rate() * 100.0,
        run.connect_p50_ms,
        run.connect_p99_ms,
        run.conntrack_peak,
        run.conntrack_capacity,
        run.challenges,
        run.verified_sources
    );
    Ok(run)
}

/// Without and with the guard, `duration` each.
pub fn run(lab: &BenchLab, tools: &Tools, duration: Duration) -> Result<Vec<FloodRun>> {
    // The challenges leave lb-c by XDP_TX: veth delivers those only to a peer that runs XDP.
    let client = &lab.topo.client;
    let _peer = crate::xdp::attach_xdp_pass(&client.ns, &client.iface.name)?;
    [false, true]
        .into_iter()
        .map(|g| run_once(lab, tools, g, duration))
        .collect()
}
