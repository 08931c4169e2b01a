//! Packet rate: a UDP flood at the VIP from the client namespace (see [`super::pktgen`]), and
//! the packets per second that reach the backends, for this LB and for nftables DNAT, runs
//! interleaved, median per configuration.
//!
//! The backends drop the flood at their interface with an XDP program (see
//! [`FloodSink`]), so the count (their interface's received packets) measures what the LB
//! forwarded and costs the backends next to nothing; the flood is one UDP flow, the same for
//! both configurations.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::cpu::{IdleCheck, IdleGate};
use super::lab::{BenchLab, FLOOD_PORT};
use super::median;
use super::peers::{self, Peer, Tools};
use super::pktgen::{FloodSink, Generator, udp_frame};
use crate::netns::Netns;
use crate::topology::VIP4;

/// One flood.
#[derive(Debug, Clone)]
pub struct RateSample {
    /// Round (0-based).
    pub round: usize,
    /// Configuration.
    pub peer: Peer,
    /// Frames the generator sent.
    pub sent: u64,
    /// Frames that reached the backends.
    pub forwarded: u64,
    /// Flood length, seconds.
    pub seconds: f64,
    /// What the idle gate saw first.
    pub idle: IdleCheck,
}

impl RateSample {
    /// Forwarded packets per second.
    pub fn pps(&self) -> f64 {
        self.forwarded as f64 / self.seconds
    }
    /// Sent packets per second.
    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.seconds
    }
}

/// All floods, with medians.
#[derive(Debug, Clone, Default)]
pub struct RateResults {
    /// Every flood, in run order.
    pub samples: Vec<RateSample>,
    /// Configurations that failed to start, with why.
    pub failures: Vec<(Peer, String)>,
    /// Frame length on the wire (no FCS).
    pub frame_len: usize,
    /// The spoofed SYN flood, guard off then on (see [`super::synflood`]); empty if it did
    /// not run.
    pub synflood: Vec<super::synflood::FloodRun>,
    /// Why the SYN flood did not run, if it failed.
    pub synflood_error: Option<String>,
}

impl RateResults {
    /// Median forwarded and sent pps per configuration.
    pub fn medians(&self) -> BTreeMap<Peer, (f64, f64)> {
        let mut by: BTreeMap<Peer, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for s in &self.samples {
            let e = by.entry(s.peer).or_default();
            e.0.push(s.pps());
            e.1.push(s.sent_pps());
        }
        by.into_iter()
            .map(|(p, (mut f, mut s))| (p, (median(&mut f), median(&mut s))))
            .collect()
    }
}

/// Received packets of `dev` in `ns` (`ip -s -j link`).
fn rx_packets(ns: &Netns, dev: &str) -> Result<u64> {
    let out = ns.ip(["-s", "-j", "link", "show", "dev", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rx = text
        .split_once("\"rx\":{")
        .map(|(_, r)| r)
        .context("no rx stats")?;
    let n = rx
        .split_once("\"packets\":")
        .map(|(_, r)| r)
        .context("no rx packets")?;
    let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().context("rx packets")
}

pub(super) fn backends_rx(lab: &BenchLab) -> Result<u64> {
    lab.topo
        .backends
        .iter()
        .map(|b| rx_packets(&b.ns, &b.iface.name))
        .sum()
}

/// Floods through each of `peers` (normally this LB and nftables), `rounds` times
/// interleaved, for `duration` each.
pub fn run(
    lab: &BenchLab,
    tools: &Tools,
    peers: &[Peer],
    rounds: usize,
    duration: Duration,
    gate: &IdleGate,
) -> Result<RateResults> {
    let client = &lab.topo.client;
    let lb_c = &lab.topo.lb_ifaces[0];
    let frame = udp_frame(
        client.iface.mac,
        lb_c.mac,
        client.ip4(),
        VIP4,
        40000,
        FLOOD_PORT,
    );
    let generator = Generator::load(&frame)?;
    // veth delivers XDP_TX frames to a peer only if it has an XDP program or GRO: the LB's
    // own program covers the first, GRO on lb-c the kernel-forwarding configurations.
    let gro = |on: &str| lab.topo.lb.run("ethtool", ["-K", &lb_c.name, "gro", on]);
    gro("on")?;
    let mut res = RateResults {
        frame_len: frame.len(),
        ..Default::default()
    };
    let result = (|| -> Result<()> {
        for round in 0..rounds {
            for &peer in peers {
                if crate::cleanup::interrupted() {
                    bail!("interrupted");
                }
                let active = match peers::start(peer, lab, tools) {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!(
                            "lb-bench: flood round {}: {} not started: {e:#}",
                            round + 1,
                            peer.key()
                        );
                        res.failures.push((peer, format!("{e:#}")));
                        continue;
                    }
                };
                let drops = lab
                    .topo
                    .backends
                    .iter()
                    .map(|b| FloodSink::attach(&b.ns, &b.iface.name, FLOOD_PORT))
                    .collect::<Result<Vec<_>>>()?;
                let idle = gate.wait()?;
                let before = backends_rx(lab)?;
                let flood = generator.flood(&client.ns, &client.iface.name, &frame, duration)?;
                // Frames still in flight land within a moment.
                std::thread::sleep(Duration::from_millis(100));
                let forwarded = backends_rx(lab)? - before;
                if std::env::var_os("LB_BENCH_DEBUG").is_some() {
                    debug_counters(lab);
                }
                drop(drops);
                drop(active);
                let s = RateSample {
                    round,
                    peer,
                    sent: flood.frames,
                    forwarded,
                    seconds: flood.elapsed.as_secs_f64(),
                    idle,
                };
                eprintln!(
                    "lb-bench: flood round {} {:<9} sent {:>10.0} pps, forwarded {:>10.0} pps (idle before: {:.0}% busy{})",
                    round + 1,
                    peer.key(),
                    s.sent_pps(),
                    s.pps(),
                    idle.busy_share * 100.0,
                    if idle.idle { "" } else { ", NOT idle" }
                );
                res.samples.push(s);
            }
        }
        Ok(())
    })();
    let _ = gro("off");
    result.map(|()| res)
}

/// Prints the interfaces' counters along the path (LB_BENCH_DEBUG=1).
fn debug_counters(lab: &BenchLab) {
    let show = |ns: &Netns, dev: &str| {
        let e = ns
            .run("ethtool", ["-S", dev])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let l = ns
            .ip(["-s", "link", "show", "dev", dev])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        eprintln!(
            "== {} {dev}\n{}\n{}",
            ns.name(),
            l.unwrap_or_default(),
            e.unwrap_or_default()
        );
    };
    if let Ok(o) = lab.topo.lb.run("nstat", ["-az"]) {
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        let nz: Vec<&str> = t
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|v| v != "0"))
            .collect();
        eprintln!("== nstat lb\n{}", nz.join("\n"));
    }
    if let Ok(o) = lab.topo.lb.run("nft", ["list", "ruleset"]) {
        eprintln!("== nft\n{}", String::from_utf8_lossy(&o.stdout));
    }
    show(&lab.topo.client.ns, "cl0");
    for i in &lab.topo.lb_ifaces {
        show(&lab.topo.lb, &i.name);
    }
    for b in &lab.topo.backends {
        show(&b.ns, "eth0");
    }
}
