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

/// One open-loop run of `lb-paced` (new connections at a fixed rate, latency from when each
/// was due to its last response byte: connect included).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PacedReport {
    /// Requests due.
    pub sent: u64,
    /// Requests answered with a 200.
    pub ok: u64,
    /// Latency percentiles over every request due, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Client SYN retransmissions during the run.
    pub syn_retrans: u64,
}

impl PacedReport {
    /// Parses `lb-paced`'s line (`sent=N ok=N failed=N p50_us=X ...`).
    pub fn parse(line: &str) -> Option<PacedReport> {
        let field = |name: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        Some(PacedReport {
            sent: field("sent")? as u64,
            ok: field("ok")? as u64,
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
            p999_us: field("p999_us")?,
            syn_retrans: 0,
        })
    }
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
    /// New connections per second of the open-loop runs (0: none ran).
    pub paced_rate: u32,
    /// Each configuration's open-loop run per round.
    pub paced: Vec<(usize, Peer, PacedReport)>,
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

    /// Medians per configuration of the open-loop runs: (p50, p99, p99.9) microseconds, and
    /// the requests that failed and the SYN retransmissions, summed.
    pub fn paced_summaries(&self) -> BTreeMap<Peer, (f64, f64, f64, u64, u64)> {
        let mut groups: BTreeMap<Peer, Vec<PacedReport>> = BTreeMap::new();
        for (_, p, r) in &self.paced {
            groups.entry(*p).or_default().push(*r);
        }
        groups
            .into_iter()
            .map(|(p, v)| {
                let col = |f: &dyn Fn(&PacedReport) -> f64| {
                    median(&mut v.iter().map(f).collect::<Vec<_>>())
                };
                let failed = v.iter().map(|r| r.sent - r.ok.min(r.sent)).sum();
                let syn = v.iter().map(|r| r.syn_retrans).sum();
                (
                    p,
                    (
                        col(&|r| r.p50_us),
                        col(&|r| r.p99_us),
                        col(&|r| r.p999_us),
                        failed,
                        syn,
                    ),
                )
            })
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
    /// New connections per second of the open-loop run after each configuration's `wrk`
    /// runs (`lb-paced`, as long as one `wrk` run); 0: none.
    pub paced_rate: u32,
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
        paced_rate: opts.paced_rate,
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
            if opts.paced_rate > 0 {
                let r = paced_run(lab, &active, opts.paced_rate, opts.load.duration, gate)
                    .with_context(|| format!("{} paced", peer.key()))?;
                eprintln!(
                    "lb-bench: round {} {:<13} paced     {}/s: p50 {:>7.0} us  p99 {:>7.0} us  p99.9 {:>7.0} us  failed {}  SYN retransmits {}",
                    round + 1,
                    peer.key(),
                    opts.paced_rate,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    r.sent - r.ok.min(r.sent),
                    r.syn_retrans
                );
                res.paced.push((round, peer, r));
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

/// One open-loop `lb-paced` run at `rate` new connections/s from the client (in the socket
/// LB's cgroup for that configuration).
fn paced_run(
    lab: &BenchLab,
    active: &peers::Active,
    rate: u32,
    duration: std::time::Duration,
    gate: &IdleGate,
) -> Result<PacedReport> {
    gate.wait()?;
    let peer = active.peer;
    let exe = std::env::current_exe()?.with_file_name("lb-paced");
    let target = format!("{}:{HTTP_PORT}", peer.target(lab));
    let syn_before = syn_retransmits(&lab.topo.client.ns)?;
    let mut cmd = active.client_command(exe.to_str().context("lb-paced path")?);
    cmd.args([
        target.as_str(),
        &rate.to_string(),
        &duration.as_secs_f64().to_string(),
    ]);
    let out = crate::netns::run_checked(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r =
        PacedReport::parse(text.trim()).with_context(|| format!("lb-paced said {text:?}"))?;
    r.syn_retrans = syn_retransmits(&lab.topo.client.ns)?.saturating_sub(syn_before);
    Ok(r)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lb_paced_lines_parse_and_summarise_per_configuration() {
        let line =
            "sent=10000 ok=9990 failed=10 p50_us=250 p99_us=1015333 p999_us=2051230 max_us=3000000";
        let r = PacedReport::parse(line).expect("parses");
        assert_eq!((r.sent, r.ok), (10000, 9990));
        assert_eq!(
            (r.p50_us, r.p99_us, r.p999_us),
            (250.0, 1015333.0, 2051230.0)
        );
        assert_eq!(
            PacedReport::parse("sent=1 ok=1"),
            None,
            "percentiles missing"
        );

        let mut res = E2eResults::default();
        for (round, p99, syn) in [(0, 900.0, 3), (1, 700.0, 4), (2, 800.0, 0)] {
            let r = PacedReport {
                p99_us: p99,
                syn_retrans: syn,
                ..r
            };
            res.paced.push((round, Peer::Lb, r));
        }
        let s = res.paced_summaries();
        let (_, p99, _, failed, syn) = s[&Peer::Lb];
        assert_eq!(p99, 800.0, "median of the rounds");
        assert_eq!((failed, syn), (30, 7), "summed over the rounds");
    }
}
