//! End to end: HTTP through each configuration, runs interleaved (A B C ... A B C ...), each
//! started only once the machine is idle, medians per configuration.
//!
//! Each round starts every configuration in turn and runs `wrk` twice against it: keep-alive,
//! then `Connection: close` (one TCP connection per request). CPU per request is the
//! whole-machine busy time over the `wrk` run divided by the requests it completed.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::cpu::{CpuTimes, IdleCheck, IdleGate, tick_us};
use super::lab::{BenchLab, HTTP_PORT};
use super::median;
use super::peers::{self, Peer, Tools};
use super::wrk::{self, Load, WrkReport};

/// Keep-alive or one connection per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// HTTP/1.1 keep-alive: connections stay open for the whole run.
    KeepAlive,
    /// `Connection: close`: every request is a new TCP connection.
    Close,
}

impl Mode {
    /// Both, in run order.
    pub const BOTH: [Mode; 2] = [Mode::KeepAlive, Mode::Close];

    /// Short name for JSON.
    pub fn key(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keepalive",
            Mode::Close => "close",
        }
    }
}

/// One `wrk` run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Round (0-based).
    pub round: usize,
    /// Configuration.
    pub peer: Peer,
    /// Keep-alive or close.
    pub mode: Mode,
    /// What wrk reported.
    pub wrk: WrkReport,
    /// Whole-machine busy CPU microseconds per completed request.
    pub cpu_us_per_req: f64,
    /// Whole-machine busy share during the run (0..=2 cores -> 0..=1).
    pub busy_share: f64,
    /// What the idle gate saw before the run.
    pub idle: IdleCheck,
    /// SYNs the client had to send again (a connection setup that waited for a timeout).
    pub syn_retrans: u64,
    /// Segments the client and the backends sent again (`TcpRetransSegs`, SYNs included):
    /// requests that waited for a retransmission timer.
    pub retrans_segs: u64,
    /// Packets every interface of the lab counted as dropped (rx + tx, all namespaces).
    pub drops: u64,
}

/// Medians over the rounds of one configuration in one mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Runs that produced a report.
    pub runs: usize,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Whole-machine CPU microseconds per request.
    pub cpu_us: f64,
    /// Socket errors and non-2xx responses, summed over the runs.
    pub errors: u64,
}

/// All samples of a bench, with their medians.
#[derive(Debug, Clone, Default)]
pub struct E2eResults {
    /// Every run, in the order it ran.
    pub samples: Vec<Sample>,
    /// Configurations that could not be started, with why (their runs are missing).
    pub failures: Vec<(Peer, String)>,
    /// The load shape.
    pub load: Option<Load>,
    /// Rounds run.
    pub rounds: usize,
    /// Whether the agent ran with `pin_path = ""` and a private admin socket.
    pub agent_extra_keys: bool,
    /// Whether the backends kept TIME_WAIT sockets (see `BenchLab::start`).
    pub backend_time_wait: bool,
    /// The agent's per-reason packet counters at the end of each round's run (its
    /// `verdicts:` line), e.g. `snat_exhausted=95 forwarded=403941 ...`, per XDP mode.
    pub agent_reasons: Vec<(usize, Peer, String)>,
}

impl E2eResults {
    /// Medians per (configuration, mode), in [`Peer::ALL`] order.
    pub fn summaries(&self) -> BTreeMap<(Peer, Mode), Summary> {
        let mut groups: BTreeMap<(Peer, Mode), Vec<&Sample>> = BTreeMap::new();
        for s in &self.samples {
            groups.entry((s.peer, s.mode)).or_default().push(s);
        }
        groups
            .into_iter()
            .map(|(k, v)| {
                let col = |f: &dyn Fn(&Sample) -> f64| {
                    median(&mut v.iter().map(|s| f(s)).collect::<Vec<_>>())
                };
                let summary = Summary {
                    runs: v.len(),
                    rps: col(&|s| s.wrk.rps),
                    p50_us: col(&|s| s.wrk.p50_us),
                    p99_us: col(&|s| s.wrk.p99_us),
                    cpu_us: col(&|s| s.cpu_us_per_req),
                    errors: v
                        .iter()
                        .map(|s| s.wrk.socket_errors + s.wrk.bad_status)
                        .sum(),
                };
                (k, summary)
            })
            .collect()
    }

    /// Medians per (configuration, mode) of retransmitted segments and interface drops per run.
    pub fn losses(&self) -> BTreeMap<(Peer, Mode), (f64, f64)> {
        let mut groups: BTreeMap<(Peer, Mode), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for s in &self.samples {
            let g = groups.entry((s.peer, s.mode)).or_default();
            g.0.push(s.retrans_segs as f64);
            g.1.push(s.drops as f64);
        }
        groups
            .into_iter()
            .map(|(k, (mut r, mut d))| (k, (median(&mut r), median(&mut d))))
            .collect()
    }

    /// Runs that started on an idle machine, out of all.
    pub fn idle_runs(&self) -> (usize, usize) {
        (
            self.samples.iter().filter(|s| s.idle.idle).count(),
            self.samples.len(),
        )
    }
}

/// Options of the end-to-end bench.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// Configurations, in run order within a round.
    pub peers: Vec<Peer>,
    /// Rounds (each configuration runs once per round and mode).
    pub rounds: usize,
    /// wrk's shape.
    pub load: Load,
}

/// Runs the interleaved rounds on `lab`. A configuration that fails to start in a round is
/// recorded in `failures` and skipped for that round; the others go on.
/// `gate` decides when each run may start.
pub fn run(
    lab: &BenchLab,
    tools: &Tools,
    opts: &E2eOptions,
    gate: &IdleGate,
) -> Result<E2eResults> {
    let mut res = E2eResults {
        load: Some(opts.load),
        rounds: opts.rounds,
        agent_extra_keys: peers::agent_takes_extra_keys(lab, tools),
        backend_time_wait: lab.backend_time_wait,
        ..Default::default()
    };
    for round in 0..opts.rounds {
        for &peer in &opts.peers {
            if crate::cleanup::interrupted() {
                anyhow::bail!("interrupted");
            }
            forget_time_wait(lab)?;
            let mut active = match peers::start(peer, lab, tools) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!(
                        "lb-bench: round {}: {} not started: {e:#}",
                        round + 1,
                        peer.key()
                    );
                    res.failures.push((peer, format!("{e:#}")));
                    continue;
                }
            };
            for mode in Mode::BOTH {
                let sample = one_run(lab, &active, mode, round, &opts.load, gate)
                    .with_context(|| format!("{} {}", peer.key(), mode.key()))?;
                eprintln!(
                    "lb-bench: round {} {:<13} {:<9} {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  cpu {:>6.1} us/req  SYN retransmits {}, all {}, drops {} (idle before: {:.0}% busy{})",
                    round + 1,
                    peer.key(),
                    mode.key(),
                    sample.wrk.rps,
                    sample.wrk.p50_us,
                    sample.wrk.p99_us,
                    sample.cpu_us_per_req,
                    sample.syn_retrans,
                    sample.retrans_segs,
                    sample.drops,
                    sample.idle.busy_share * 100.0,
                    if sample.idle.idle { "" } else { ", NOT idle" }
                );
                res.samples.push(sample);
            }
            if peer.is_ours()
                && let Some(out) = active.stop()
            {
                res.agent_reasons.push((round, peer, reasons_line(&out)));
            }
            drop(active);
        }
    }
    Ok(res)
}

fn one_run(
    lab: &BenchLab,
    active: &peers::Active,
    mode: Mode,
    round: usize,
    load: &Load,
    gate: &IdleGate,
) -> Result<Sample> {
    let peer = active.peer;
    let idle = gate.wait()?;
    let url = format!("http://{}:{HTTP_PORT}/", peer.target(lab));
    let syn_before = syn_retransmits(&lab.topo.client.ns)?;
    let (retrans_before, drops_before) = (retransmits(lab)?, drops(lab)?);
    let before = CpuTimes::now()?;
    let wrk_cmd = active.client_command("wrk");
    let report = wrk::run_command(wrk_cmd, &url, mode == Mode::Close, &[], load)?;
    let (busy, total) = CpuTimes::now()?.since(&before);
    let syn_retrans = syn_retransmits(&lab.topo.client.ns)?.saturating_sub(syn_before);
    let retrans_segs = retransmits(lab)?.saturating_sub(retrans_before);
    let drops = drops(lab)?.saturating_sub(drops_before);
    Ok(Sample {
        retrans_segs,
        drops,
        syn_retrans,
        round,
        peer,
        mode,
        cpu_us_per_req: busy as f64 * tick_us() / report.requests.max(1) as f64,
        busy_share: busy as f64 / total.max(1) as f64,
        wrk: report,
        idle,
    })
}

/// Closes the backends' TIME_WAIT sockets (`ss -K`), so each configuration starts as if it
/// were the only load balancer these backends ever had. A real backend sits behind one load
/// balancer; here every configuration reaches the same backends from the same client ports,
/// and the TIME_WAIT a configuration leaves behind refuses (PAWS) part of the next one's SYNs
/// on the same 4-tuples: the second of two configurations paid for the first (measured:
/// the XDP path alone for three rounds, 0 SYN retransmits; after an iptables run, 1,307 to
/// 3,014 per run, and iptables after the XDP path 1,691 to 2,240). Within a configuration's
/// runs the backends keep every TIME_WAIT its own connections make (the headline's default).
fn forget_time_wait(lab: &BenchLab) -> Result<()> {
    for b in &lab.topo.backends {
        b.ns.run("ss", ["-K", "-t", "state", "time-wait"])
            .with_context(|| format!("closing TIME_WAIT sockets in {}", b.name))?;
    }
    Ok(())
}

/// The client namespace's count of retransmitted SYNs (`TcpExtTCPSynRetrans`).
fn syn_retransmits(ns: &crate::netns::Netns) -> Result<u64> {
    nstat(ns, "TcpExtTCPSynRetrans")
}

/// One absolute `nstat` counter of `ns`.
fn nstat(ns: &crate::netns::Netns, name: &str) -> Result<u64> {
    // -a: absolute values, -s: leave nstat's history file alone, -z: print zeros too.
    let out = ns.run("nstat", ["-asz", name])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Retransmitted segments of the client and the backends (`TcpRetransSegs`).
fn retransmits(lab: &BenchLab) -> Result<u64> {
    let mut n = nstat(&lab.topo.client.ns, "TcpRetransSegs")?;
    for b in &lab.topo.backends {
        n += nstat(&b.ns, "TcpRetransSegs")?;
    }
    Ok(n)
}

/// rx + tx drops of every interface in every namespace of the lab (`ip -s -j link`).
fn drops(lab: &BenchLab) -> Result<u64> {
    let mut n = 0;
    for ns in lab.topo.namespaces() {
        let out = ns.ip(["-s", "-j", "link", "show"])?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        for l in links.as_array().into_iter().flatten() {
            for dir in ["rx", "tx"] {
                n += l["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok(n)
}

/// The counters of the agent's `verdicts:` line (its status table, printed at exit), or a
/// note that it printed none.
pub fn reasons_line(agent_output: &str) -> String {
    agent_output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("verdicts:"))
        .map_or_else(
            || "(no counter table printed)".into(),
            |r| r.trim().to_owned(),
        )
}
