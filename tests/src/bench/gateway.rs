//! The L7 gateway bench: this gateway (no auth, JWT RS256, API key) against nginx
//! `proxy_pass` (no auth, API-key `map`) and Envoy (router, `jwt_authn`), on the same lab,
//! runs interleaved (A B C ... A B C ...), medians per configuration.
//!
//! Each round starts every configuration in turn ([`super::gw_peers::start`] also checks
//! that its auth refuses a request without credentials), measures the memory per idle
//! keep-alive connection on the fresh process ([`super::gw_conns::idle_memory`]), then runs
//! `wrk` keep-alive and `Connection: close` against `/api/users/42` with the configuration's
//! credential. CPU per request is whole-machine busy time over the run / requests, as in
//! [`super::e2e`].

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::cpu::{CpuTimes, IdleCheck, IdleGate, tick_us};
use super::e2e::{Mode, Summary};
use super::gw_auth::AuthMaterial;
use super::gw_conns::{IdleMem, idle_memory};
use super::gw_peers::{self, BENCH_PATH, GwPeer};
use super::lab::BenchLab;
use super::median;
use super::peers::Tools;
use super::wrk::{self, Load, WrkReport};

/// One `wrk` run.
#[derive(Debug, Clone)]
pub struct GwSample {
    /// Round (0-based).
    pub round: usize,
    /// Configuration.
    pub peer: GwPeer,
    /// Keep-alive or close.
    pub mode: Mode,
    /// What wrk reported.
    pub wrk: WrkReport,
    /// Whole-machine busy CPU microseconds per completed request.
    pub cpu_us_per_req: f64,
    /// Whole-machine busy share during the run.
    pub busy_share: f64,
    /// What the idle gate saw before the run.
    pub idle: IdleCheck,
}

/// Options of the gateway bench.
#[derive(Debug, Clone)]
pub struct GwOptions {
    /// Configurations, in run order within a round.
    pub peers: Vec<GwPeer>,
    /// Rounds.
    pub rounds: usize,
    /// wrk's shape.
    pub load: Load,
    /// Idle keep-alive connections opened for the memory measurement (0: not measured).
    pub idle_conns: usize,
}

/// All samples of the gateway bench.
#[derive(Debug, Clone, Default)]
pub struct GwResults {
    /// Every wrk run, in the order it ran.
    pub samples: Vec<GwSample>,
    /// Idle-connection memory, per round and configuration.
    pub mem: Vec<(usize, GwPeer, IdleMem)>,
    /// What went wrong, per round and configuration (a start that failed, a memory
    /// measurement that failed, a process that died during its runs).
    pub failures: Vec<(usize, GwPeer, String)>,
    /// The load shape.
    pub load: Option<Load>,
    /// Rounds run.
    pub rounds: usize,
    /// Idle connections asked for.
    pub idle_conns: usize,
}

impl GwResults {
    /// Medians per (configuration, mode).
    pub fn summaries(&self) -> BTreeMap<(GwPeer, Mode), Summary> {
        let mut groups: BTreeMap<(GwPeer, Mode), Vec<&GwSample>> = BTreeMap::new();
        for s in &self.samples {
            groups.entry((s.peer, s.mode)).or_default().push(s);
        }
        groups
            .into_iter()
            .map(|(k, v)| {
                let col = |f: &dyn Fn(&GwSample) -> f64| {
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

    /// Median bytes per idle connection, per configuration.
    pub fn mem_medians(&self) -> BTreeMap<GwPeer, f64> {
        let mut groups: BTreeMap<GwPeer, Vec<f64>> = BTreeMap::new();
        for (_, p, m) in &self.mem {
            groups.entry(*p).or_default().push(m.bytes_per_conn());
        }
        groups
            .into_iter()
            .map(|(p, mut v)| (p, median(&mut v)))
            .collect()
    }

    /// One configuration's medians in `mode`, if it ran.
    pub fn summary(&self, peer: GwPeer, mode: Mode) -> Option<Summary> {
        self.summaries().get(&(peer, mode)).copied()
    }

    /// Runs that started on an idle machine, out of all.
    pub fn idle_runs(&self) -> (usize, usize) {
        (
            self.samples.iter().filter(|s| s.idle.idle).count(),
            self.samples.len(),
        )
    }
}

/// Runs the interleaved rounds on `lab`. A configuration that fails to start in a round is
/// recorded and skipped for that round; the others go on.
pub fn run(lab: &BenchLab, tools: &Tools, opts: &GwOptions, gate: &IdleGate) -> Result<GwResults> {
    let auth = AuthMaterial::create(lab.dir.path()).context("make the JWT key and API key")?;
    let mut res = GwResults {
        load: Some(opts.load),
        rounds: opts.rounds,
        idle_conns: opts.idle_conns,
        ..Default::default()
    };
    for round in 0..opts.rounds {
        for &peer in &opts.peers {
            if crate::cleanup::interrupted() {
                anyhow::bail!("interrupted");
            }
            let mut active = match gw_peers::start(peer, lab, tools, &auth) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!(
                        "lb-bench: gateway round {}: {} not started: {e:#}",
                        round + 1,
                        peer.key()
                    );
                    res.failures.push((round, peer, format!("{e:#}")));
                    continue;
                }
            };
            let headers = peer.headers(&auth);
            let target = peer.target(lab);
            if opts.idle_conns > 0 {
                match idle_memory(
                    &lab.topo.client.ns,
                    target,
                    BENCH_PATH,
                    &headers,
                    opts.idle_conns,
                    active.child.id(),
                ) {
                    Ok(m) => {
                        eprintln!(
                            "lb-bench: gateway round {} {:<14} idle memory: {} connections, RSS {} -> {} KiB, {:.0} bytes/connection{}",
                            round + 1,
                            peer.key(),
                            m.conns,
                            m.rss_before_kib,
                            m.rss_after_kib,
                            m.bytes_per_conn(),
                            if m.oldest_still_open {
                                ""
                            } else {
                                " (the oldest connection had been closed)"
                            }
                        );
                        res.mem.push((round, peer, m));
                    }
                    Err(e) => {
                        eprintln!(
                            "lb-bench: gateway round {} {}: idle memory: {e:#}",
                            round + 1,
                            peer.key()
                        );
                        res.failures
                            .push((round, peer, format!("idle memory: {e:#}")));
                    }
                }
            }
            let url = format!("http://{target}{BENCH_PATH}");
            for mode in Mode::BOTH {
                let sample = one_run(lab, peer, mode, round, &url, &headers, &opts.load, gate)
                    .with_context(|| format!("gateway bench: {} {}", peer.key(), mode.key()))?;
                eprintln!(
                    "lb-bench: gateway round {} {:<14} {:<9} {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  cpu {:>6.1} us/req  errors {} (idle before: {:.0}% busy{})",
                    round + 1,
                    peer.key(),
                    mode.key(),
                    sample.wrk.rps,
                    sample.wrk.p50_us,
                    sample.wrk.p99_us,
                    sample.cpu_us_per_req,
                    sample.wrk.socket_errors + sample.wrk.bad_status,
                    sample.idle.busy_share * 100.0,
                    if sample.idle.idle { "" } else { ", NOT idle" }
                );
                res.samples.push(sample);
            }
            // A process that died under load would otherwise only show as errors.
            if let Some(st) = active.child.try_wait()? {
                let out = active.child.output();
                let tail: Vec<&str> = out.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                res.failures.push((
                    round,
                    peer,
                    format!(
                        "exited during its runs ({st}); last output:\n{}",
                        tail.join("\n")
                    ),
                ));
            }
            let _ = active.child.stop(crate::netns::NsChild::STOP_GRACE);
            if std::env::var_os("LB_BENCH_DEBUG").is_some() {
                eprintln!("--- {} output ---\n{}", peer.key(), active.child.output());
            }
        }
    }
    Ok(res)
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    lab: &BenchLab,
    peer: GwPeer,
    mode: Mode,
    round: usize,
    url: &str,
    headers: &[String],
    load: &Load,
    gate: &IdleGate,
) -> Result<GwSample> {
    let idle = gate.wait()?;
    let before = CpuTimes::now()?;
    let report =
        wrk::run_with_headers(&lab.topo.client.ns, url, mode == Mode::Close, headers, load)?;
    let (busy, total) = CpuTimes::now()?.since(&before);
    Ok(GwSample {
        round,
        peer,
        mode,
        cpu_us_per_req: busy as f64 * tick_us() / report.requests.max(1) as f64,
        busy_share: busy as f64 / total.max(1) as f64,
        wrk: report,
        idle,
    })
}
