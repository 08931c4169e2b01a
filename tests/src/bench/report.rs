//! Results as Markdown, JSON and SVG: the end-to-end table, the packet-rate table, the
//! targets with the ratios measured in the same run, and bar charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::control::ControlResults;
use super::e2e::{E2eResults, Mode, Summary};
use super::peers::Peer;
use super::pktrate::RateResults;

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (null for NaN or infinity).
pub fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

/// One target of issue 4 and where this run stands.
#[derive(Debug, Clone)]
pub struct Target {
    /// What is compared.
    pub what: String,
    /// The goal, as written in the issue.
    pub goal: String,
    /// What this run measured.
    pub measured: String,
    /// Met, not met, or not measured (a configuration failed).
    pub met: Option<bool>,
}

impl Target {
    /// `met` as the word the tables use.
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        }
    }
}

fn summary(s: &BTreeMap<(Peer, Mode), Summary>, p: Peer, m: Mode) -> Option<Summary> {
    s.get(&(p, m)).copied().filter(|x| x.runs > 0)
}

/// A ratio target: `ours / theirs >= goal`.
fn ratio_target(
    s: &BTreeMap<(Peer, Mode), Summary>,
    ours: Peer,
    mode: Mode,
    other: Peer,
    goal: f64,
    what: &str,
) -> Target {
    let ours_rps = summary(s, ours, mode).map(|x| x.rps);
    let theirs = summary(s, other, mode).map(|x| x.rps);
    let (measured, met) = match (ours_rps, theirs) {
        (Some(a), Some(b)) if b > 0.0 => (
            format!("{:.2}x ({a:.0} vs {b:.0} req/s)", a / b),
            Some(a / b >= goal),
        ),
        _ => ("-".into(), None),
    };
    Target {
        what: format!("{what}{}", mode_suffix(ours)),
        goal: format!(">= {goal}x {}", other.label()),
        measured,
        met,
    }
}

/// How a target row names the attachment it was measured in (native XDP, the headline,
/// unnamed).
fn mode_suffix(ours: Peer) -> &'static str {
    match ours {
        Peer::LbGeneric => ", generic XDP",
        Peer::LbTc => ", tc",
        _ => "",
    }
}

/// A latency target: `ours`' new-connection p99 no worse than `other`'s.
fn p99_target(s: &BTreeMap<(Peer, Mode), Summary>, ours: Peer, other: Peer) -> Target {
    let a = summary(s, ours, Mode::Close).map(|x| x.p99_us);
    let b = summary(s, other, Mode::Close).map(|x| x.p99_us);
    let (measured, met) = match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => (
            format!("{:.2}x ({:.2} vs {:.2} ms)", a / b, a / 1e3, b / 1e3),
            Some(a <= b),
        ),
        _ => ("-".into(), None),
    };
    Target {
        what: format!("new-connection p99 latency{}", mode_suffix(ours)),
        goal: format!("<= {}", other.label()),
        measured,
        met,
    }
}

/// Our open-loop p99 (connect included, fixed rate) against `other`'s, when both ran.
fn paced_p99_target(e2e: &E2eResults, ours: Peer, other: Peer) -> Option<Target> {
    let s = e2e.paced_summaries();
    let (a, b) = (s.get(&ours)?.1, s.get(&other)?.1);
    let (measured, met) = if b > 0.0 {
        (
            format!("{:.2}x ({:.2} vs {:.2} ms)", a / b, a / 1e3, b / 1e3),
            Some(a <= b),
        )
    } else {
        ("-".into(), None)
    };
    Some(Target {
        what: format!(
            "new-connection p99 at {}/s, open loop, connect included{}",
            e2e.paced_rate,
            mode_suffix(ours)
        ),
        goal: format!("<= {}", other.label()),
        measured,
        met,
    })
}

/// The end-to-end targets of issues 4 and 10, from this run's medians: for native XDP (the
/// headline) and, when they ran, for tc and generic XDP.
pub fn e2e_targets(e2e: &E2eResults) -> Vec<Target> {
    let s = e2e.summaries();
    let mut t = Vec::new();
    for ours in [Peer::Lb, Peer::LbTc, Peer::LbGeneric] {
        if ours != Peer::Lb && !s.keys().any(|(p, _)| *p == ours) {
            continue;
        }
        for (other, goal) in [
            (Peer::Nftables, 1.2),
            (Peer::Iptables, 1.2),
            (Peer::Haproxy, 1.9),
        ] {
            t.push(ratio_target(
                &s,
                ours,
                Mode::Close,
                other,
                goal,
                "new-connection req/s",
            ));
        }
        t.push(ratio_target(
            &s,
            ours,
            Mode::KeepAlive,
            Peer::Iptables,
            1.05,
            "keep-alive req/s",
        ));
        t.push(p99_target(&s, ours, Peer::Iptables));
        t.extend(paced_p99_target(e2e, ours, Peer::Iptables));
        let ours_cpu = summary(&s, ours, Mode::Close).map(|x| x.cpu_us);
        let direct = summary(&s, Peer::Direct, Mode::Close).map(|x| x.cpu_us);
        let (measured, met) = match (ours_cpu, direct) {
            (Some(a), Some(d)) => (
                format!("{:+.1} us ({a:.1} vs {d:.1} us/req)", a - d),
                Some(a - d <= 8.0),
            ),
            _ => ("-".into(), None),
        };
        t.push(Target {
            what: format!("whole-machine CPU per new connection{}", mode_suffix(ours)),
            goal: "<= direct + 8 us".into(),
            measured,
            met,
        });
    }
    t
}

/// The targets as a Markdown table.
pub fn targets_markdown(targets: &[Target]) -> String {
    let mut md = String::from("| target | goal | this run | |\n|---|---|---|---|\n");
    for t in targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.what,
            t.goal,
            t.measured,
            t.verdict()
        );
    }
    md
}

/// The targets as a JSON array.
pub fn targets_json(targets: &[Target]) -> String {
    let items: Vec<String> = targets
        .iter()
        .map(|t| {
            format!(
                "{{\"what\":{},\"goal\":{},\"measured\":{},\"met\":{}}}",
                json_str(&t.what),
                json_str(&t.goal),
                json_str(&t.measured),
                t.met.map_or("null".into(), |m| m.to_string())
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn ratio_text(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 && value.is_finite() => format!("{:.2}x", value / b),
        _ => "-".into(),
    }
}

/// The end-to-end section: one row per configuration, medians of the rounds.
pub fn e2e_markdown(e2e: &E2eResults) -> String {
    let s = e2e.summaries();
    let mut md = String::new();
    let load = e2e.load.expect("load is set by e2e::run");
    let (idle, all) = e2e.idle_runs();
    let busy: Vec<f64> = e2e.samples.iter().map(|x| x.idle.busy_share).collect();
    let max_busy = busy.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "## End to end (HTTP/1.1, nginx backends, {} s runs, wrk -t{} -c{}, median of {} interleaved rounds)\n",
        load.duration.as_secs(),
        load.threads,
        load.connections,
        e2e.rounds
    );
    let _ = writeln!(
        md,
        "Runs started on an idle machine (busy <= 10 % over 1 s): {idle}/{all}; highest busy share before a run: {:.0} %. \
         Backends {}. Senders without TX checksum offload (as on a wire). CPU is whole-machine busy time over the run / requests.\n",
        max_busy * 100.0,
        if e2e.backend_time_wait {
            "keep Linux's default TIME_WAIT handling"
        } else {
            "kept no TIME_WAIT sockets (`--backend-no-time-wait`: `tcp_max_tw_buckets = 0`)"
        }
    );
    let base = |p: Peer, m: Mode| summary(&s, p, m).map(|x| x.rps);
    let _ = writeln!(
        md,
        "| configuration | keep-alive req/s | vs iptables | p50 / p99 ms | CPU us/req | new-conn req/s | vs nftables | vs iptables | vs HAProxy | p50 / p99 ms | p99 vs iptables | CPU us/req | errors |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let ipt_p99 = summary(&s, Peer::Iptables, Mode::Close).map(|x| x.p99_us);
    let peers: Vec<Peer> = Peer::ALL
        .into_iter()
        .filter(|p| s.keys().any(|(q, _)| q == p))
        .collect();
    for p in peers {
        let ka = summary(&s, p, Mode::KeepAlive).unwrap_or_default();
        let cl = summary(&s, p, Mode::Close).unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {:.2} / {:.2} | {:.1} | {:.0} | {} | {} | {} | {:.2} / {:.2} | {} | {:.1} | {} |",
            p.label(),
            ka.rps,
            ratio_text(ka.rps, base(Peer::Iptables, Mode::KeepAlive)),
            ka.p50_us / 1e3,
            ka.p99_us / 1e3,
            ka.cpu_us,
            cl.rps,
            ratio_text(cl.rps, base(Peer::Nftables, Mode::Close)),
            ratio_text(cl.rps, base(Peer::Iptables, Mode::Close)),
            ratio_text(cl.rps, base(Peer::Haproxy, Mode::Close)),
            cl.p50_us / 1e3,
            cl.p99_us / 1e3,
            ratio_text(cl.p99_us, ipt_p99),
            cl.cpu_us,
            ka.errors + cl.errors
        );
    }
    let _ = writeln!(
        md,
        "\nRetransmitted segments (client + backends) and interface drops (all namespaces) per run, median, keep-alive / new connections:\n"
    );
    let losses = e2e.losses();
    for ((p, m), (retrans, drops)) in &losses {
        if *m == Mode::Close {
            let ka = losses
                .get(&(*p, Mode::KeepAlive))
                .copied()
                .unwrap_or((f64::NAN, f64::NAN));
            let _ = writeln!(
                md,
                "- {}: retransmits {:.0} / {retrans:.0}, drops {:.0} / {drops:.0}",
                p.label(),
                ka.0,
                ka.1
            );
        }
    }
    for (p, why) in &e2e.failures {
        let _ = writeln!(md, "\n{} failed to start in a round: {why}", p.label());
    }
    md += &paced_markdown(e2e);
    if !e2e.agent_reasons.is_empty() {
        let _ = writeln!(md, "\nThe agent's packet counters by reason, per round:\n");
        for (round, peer, r) in &e2e.agent_reasons {
            let _ = writeln!(md, "- round {}, {}: `{r}`", round + 1, peer.label());
        }
    }
    if !e2e.agent_extra_keys {
        let _ = writeln!(
            md,
            "\n(The agent did not accept `pin_path`/`[admin]` yet; it ran without them.)"
        );
    }
    md
}

/// The open-loop table: what a client sees at one fixed, sustainable rate of new
/// connections, connect time included (wrk's latency starts after the connect).
fn paced_markdown(e2e: &E2eResults) -> String {
    let s = e2e.paced_summaries();
    if s.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\nOpen loop: {} new connections/s (`lb-paced`, as long as one wrk run), latency from when each request was due to its last response byte (connect included), medians of the rounds:\n\n| configuration | p50 ms | p99 ms | p99.9 ms | p99 vs iptables | failed | SYN retransmits |\n|---|---:|---:|---:|---:|---:|---:|\n",
        e2e.paced_rate
    );
    let ipt = s.get(&Peer::Iptables).map(|x| x.1);
    for (p, (p50, p99, p999, failed, syn)) in &s {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.2} | {} | {failed} | {syn} |",
            p.label(),
            p50 / 1e3,
            p99 / 1e3,
            p999 / 1e3,
            ratio_text(*p99, ipt)
        );
    }
    md
}

/// The JSON fields (no braces) every measured wrk run has, in the end-to-end and the
/// gateway parts alike.
pub fn run_fields(
    round: usize,
    config: &str,
    mode: &str,
    wrk: &super::wrk::WrkReport,
    cpu_us_per_req: f64,
    busy_share: f64,
    idle: &super::cpu::IdleCheck,
) -> String {
    format!(
        "\"round\":{round},\"config\":{},\"mode\":{},\"requests\":{},\"seconds\":{},\"rps\":{},\"p50_us\":{},\"p99_us\":{},\"socket_errors\":{},\"bad_status\":{},\"cpu_us_per_req\":{},\"busy_share_during\":{},\"busy_share_before\":{},\"idle_before\":{}",
        json_str(config),
        json_str(mode),
        wrk.requests,
        json_num(wrk.seconds),
        json_num(wrk.rps),
        json_num(wrk.p50_us),
        json_num(wrk.p99_us),
        wrk.socket_errors,
        wrk.bad_status,
        json_num(cpu_us_per_req),
        json_num(busy_share),
        json_num(idle.busy_share),
        idle.idle
    )
}

/// The end-to-end results as JSON: every run, and the medians.
pub fn e2e_json(e2e: &E2eResults) -> String {
    let load = e2e.load.expect("load is set by e2e::run");
    let runs: Vec<String> = e2e
        .samples
        .iter()
        .map(|x| {
            format!(
                "{{{},\"idle_tries\":{},\"syn_retransmits\":{},\"retransmitted_segments\":{},\"interface_drops\":{}}}",
                run_fields(
                    x.round,
                    x.peer.key(),
                    x.mode.key(),
                    &x.wrk,
                    x.cpu_us_per_req,
                    x.busy_share,
                    &x.idle
                ),
                x.idle.tries,
                x.syn_retrans,
                x.retrans_segs,
                x.drops
            )
        })
        .collect();
    let medians: Vec<String> = e2e
        .summaries()
        .iter()
        .map(|((p, m), s)| {
            format!(
                "{{\"config\":{},\"mode\":{},\"runs\":{},\"rps\":{},\"p50_us\":{},\"p99_us\":{},\"cpu_us_per_req\":{},\"errors\":{}}}",
                json_str(p.key()),
                json_str(m.key()),
                s.runs,
                json_num(s.rps),
                json_num(s.p50_us),
                json_num(s.p99_us),
                json_num(s.cpu_us),
                s.errors
            )
        })
        .collect();
    let paced: Vec<String> = e2e
        .paced
        .iter()
        .map(|(round, p, r)| {
            format!(
                "{{\"round\":{round},\"config\":{},\"rate\":{},\"sent\":{},\"ok\":{},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"syn_retransmits\":{}}}",
                json_str(p.key()),
                e2e.paced_rate,
                r.sent,
                r.ok,
                json_num(r.p50_us),
                json_num(r.p99_us),
                json_num(r.p999_us),
                r.syn_retrans
            )
        })
        .collect();
    let failures: Vec<String> = e2e
        .failures
        .iter()
        .map(|(p, w)| {
            format!(
                "{{\"config\":{},\"error\":{}}}",
                json_str(p.key()),
                json_str(w)
            )
        })
        .collect();
    format!(
        "{{\"threads\":{},\"connections\":{},\"duration_s\":{},\"rounds\":{},\"agent_pin_path_and_admin\":{},\"backend_time_wait\":{},\"medians\":[{}],\"runs\":[{}],\"paced\":[{}],\"failures\":[{}],\"agent_reasons\":[{}],\"targets\":{}}}",
        load.threads,
        load.connections,
        load.duration.as_secs(),
        e2e.rounds,
        e2e.agent_extra_keys,
        e2e.backend_time_wait,
        medians.join(","),
        runs.join(","),
        paced.join(","),
        failures.join(","),
        e2e.agent_reasons
            .iter()
            .map(|(r, p, t)| {
                format!(
                    "{{\"round\":{r},\"config\":{},\"reasons\":{}}}",
                    json_str(p.key()),
                    json_str(t)
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        targets_json(&e2e_targets(e2e))
    )
}

/// The packet-rate section.
pub fn rate_markdown(rate: &RateResults, seconds: u64) -> String {
    let m = rate.medians();
    let rounds = rate
        .samples
        .iter()
        .map(|s| s.round)
        .max()
        .map_or(0, |r| r + 1);
    let mut md = format!(
        "## Packet rate (one UDP flow of {}-byte frames at the VIP from an XDP live-frames generator, {seconds} s floods, median of {rounds} interleaved rounds)\n\n",
        rate.frame_len
    );
    md += "| configuration | forwarded to backends, pps | generator sent, pps | vs nftables |\n|---|---:|---:|---:|\n";
    let nft = m.get(&Peer::Nftables).map(|x| x.0);
    for (p, (fwd, sent)) in &m {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {} |",
            p.label(),
            fwd,
            sent,
            ratio_text(*fwd, nft)
        );
    }
    for (p, why) in &rate.failures {
        let _ = writeln!(md, "\n{} failed to start in a round: {why}", p.label());
    }
    md += &synflood_markdown(&rate.synflood, rate.synflood_error.as_deref());
    md
}

/// The SYN-flood section: guard off and on side by side, and on/off ratios.
pub fn synflood_markdown(runs: &[super::synflood::FloodRun], error: Option<&str>) -> String {
    let mut md = String::from(
        "\n## SYN flood (spoofed SYNs from 65536 addresses at the generator's full rate, legitimate clients connecting meanwhile)\n\n",
    );
    if let Some(e) = error {
        let _ = writeln!(md, "Not measured: {e}");
        return md;
    }
    md += "| SYN guard | flood offered, pps | reached backends, pps | legitimate success | connect p50, ms | connect p99, ms | conntrack peak / capacity | challenges | verified sources | agent RSS, KiB | BPF maps, KiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {}/{} ({:.1} %) | {:.2} | {:.2} | {} / {} | {} | {} | {} | {} |",
            if r.guard { "on" } else { "off" },
            r.offered_pps,
            r.backend_pps,
            r.legit_ok,
            r.legit_attempts,
            r.success_rate() * 100.0,
            r.connect_p50_ms,
            r.connect_p99_ms,
            r.conntrack_peak,
            r.conntrack_capacity,
            r.challenges,
            r.verified_sources,
            r.agent_rss_kib,
            r.bpf_map_kib
        );
    }
    if let (Some(off), Some(on)) = (
        runs.iter().find(|r| !r.guard),
        runs.iter().find(|r| r.guard),
    ) {
        let _ = writeln!(
            md,
            "\nGuard on vs off: legitimate success {}, reached backends {}, conntrack peak {}, connect p99 {}.",
            ratio_text(on.success_rate(), Some(off.success_rate())),
            ratio_text(on.backend_pps, Some(off.backend_pps)),
            ratio_text(on.conntrack_peak as f64, Some(off.conntrack_peak as f64)),
            ratio_text(on.connect_p99_ms, Some(off.connect_p99_ms)),
        );
    }
    md
}

/// The packet-rate results as JSON.
pub fn rate_json(rate: &RateResults) -> String {
    let runs: Vec<String> = rate
        .samples
        .iter()
        .map(|s| {
            format!(
                "{{\"round\":{},\"config\":{},\"sent\":{},\"forwarded\":{},\"seconds\":{},\"pps\":{},\"busy_share_before\":{},\"idle_before\":{}}}",
                s.round,
                json_str(s.peer.key()),
                s.sent,
                s.forwarded,
                json_num(s.seconds),
                json_num(s.pps()),
                json_num(s.idle.busy_share),
                s.idle.idle
            )
        })
        .collect();
    let medians: Vec<String> = rate
        .medians()
        .iter()
        .map(|(p, (f, s))| {
            format!(
                "{{\"config\":{},\"forwarded_pps\":{},\"sent_pps\":{}}}",
                json_str(p.key()),
                json_num(*f),
                json_num(*s)
            )
        })
        .collect();
    format!(
        "{{\"frame_len\":{},\"medians\":[{}],\"runs\":[{}]}}",
        rate.frame_len,
        medians.join(","),
        runs.join(",")
    )
}

/// Median, min and max of `v` in milliseconds.
fn ms_stats(v: &[std::time::Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let med = super::median(&mut ms);
    let min = ms.first().copied().unwrap_or(f64::NAN);
    let max = ms.last().copied().unwrap_or(f64::NAN);
    (med, min, max)
}

/// The control-plane section: change -> forwarding per source, and one backend leaving.
pub fn control_markdown(c: &ControlResults) -> String {
    let rounds = c.changes.first().map_or(0, |t| t.add.len());
    let mut md = format!(
        "## Control plane end to end (real agent, {rounds} rounds per source, busy share before: {:.0} %)\n\n",
        c.idle.busy_share * 100.0
    );
    md += "| change | median ms | min ms | max ms |\n|---|---:|---:|---:|\n";
    for t in &c.changes {
        for (what, v) in [
            ("add -> first new flow on it", &t.add),
            ("remove -> new flows avoid it", &t.remove),
        ] {
            let (med, min, max) = ms_stats(v);
            let _ = writeln!(
                md,
                "| {} {what} | {med:.1} | {min:.1} | {max:.1} |",
                t.source
            );
        }
    }
    let l = &c.leave;
    let _ = writeln!(
        md,
        "\nOne of {} backends leaves (deregistered, still running) with {} connections held, {} of them on it: \
         **{} of {} held connections on the remaining backends broke, {} of {} on the leaving one** \
         (conntrack keeps every established flow where it was); of {} new connections after the leave, \
         {} reached the leaving backend, {} failed. New flows remapped: see the Maglev table below \
         (slots of the remaining backends that move).\n",
        l.backends,
        l.held,
        l.on_leaving,
        l.broken_remaining,
        l.held - l.on_leaving,
        l.broken_leaving,
        l.on_leaving,
        l.new_flows,
        l.new_to_leaving,
        l.new_errors
    );
    md
}

/// The control-plane results as JSON.
pub fn control_json(c: &ControlResults) -> String {
    let ms = |v: &[std::time::Duration]| {
        v.iter()
            .map(|d| json_num(d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(",")
    };
    let changes: Vec<String> = c
        .changes
        .iter()
        .map(|t| {
            format!(
                "{{\"source\":{},\"add_ms\":[{}],\"remove_ms\":[{}]}}",
                json_str(t.source),
                ms(&t.add),
                ms(&t.remove)
            )
        })
        .collect();
    let l = &c.leave;
    format!(
        "{{\"changes\":[{}],\"leave\":{{\"backends\":{},\"held\":{},\"on_leaving\":{},\"broken_remaining\":{},\"broken_leaving\":{},\"new_flows\":{},\"new_to_leaving\":{},\"new_errors\":{}}},\"busy_share_before\":{}}}",
        changes.join(","),
        l.backends,
        l.held,
        l.on_leaving,
        l.broken_remaining,
        l.broken_leaving,
        l.new_flows,
        l.new_to_leaving,
        l.new_errors,
        json_num(c.idle.busy_share)
    )
}

/// Chart panel of the control plane: median change -> forwarding per source.
pub fn control_panel(c: &ControlResults, y: f64) -> (String, f64) {
    let bars: Vec<Bar> = c
        .changes
        .iter()
        .flat_map(|t| {
            [("add", &t.add), ("remove", &t.remove)].map(|(what, v)| {
                let (med, _, max) = ms_stats(v);
                Bar {
                    label: format!("{} {what}", t.source),
                    value: med,
                    text: format!("{med:.1} ms (max {max:.1})"),
                    ours: true,
                }
            })
        })
        .collect();
    bar_panel(
        "Registry change -> forwarding, median ms (real agent, end to end)",
        &bars,
        y,
    )
}

/// One bar of a chart.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label left of the bar.
    pub label: String,
    /// Length.
    pub value: f64,
    /// Text right of the bar.
    pub text: String,
    /// Highlighted (this load balancer).
    pub ours: bool,
}

/// Width of every chart panel.
pub const SVG_WIDTH: f64 = 860.0;

/// A horizontal bar chart panel starting at `y`; returns its SVG and height.
pub fn bar_panel(title: &str, bars: &[Bar], y: f64) -> (String, f64) {
    let max = bars
        .iter()
        .map(|b| b.value)
        .fold(f64::MIN_POSITIVE, f64::max);
    let bar_h = 22.0;
    let mut s = format!(
        "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}</text>\n",
        y + 16.0,
        xml(title)
    );
    for (i, b) in bars.iter().enumerate() {
        let top = y + 26.0 + i as f64 * bar_h;
        let len = (b.value.max(0.0) / max) * 330.0;
        let color = if b.ours { "#d9822b" } else { "#4a7ebb" };
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{t}\">{l}</text><rect x=\"170\" y=\"{top}\" width=\"{len:.1}\" height=\"16\" fill=\"{color}\"/><text x=\"{x}\" y=\"{t}\">{v}</text>",
            t = top + 12.5,
            l = xml(&b.label),
            x = 176.0 + len,
            v = xml(&b.text)
        );
    }
    (s, 36.0 + bar_h * bars.len() as f64)
}

/// Stacks panels into one SVG document.
pub fn svg_document(panels: &[(String, f64)]) -> String {
    let h: f64 = panels.iter().map(|p| p.1).sum::<f64>() + 10.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_WIDTH}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (body, _) in panels {
        s += body;
    }
    s + "</svg>\n"
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Bars of req/s per configuration in `mode`, each with its ratio to the given baselines.
fn e2e_bars(e2e: &E2eResults, mode: Mode, baselines: &[Peer]) -> Vec<Bar> {
    let s = e2e.summaries();
    Peer::ALL
        .into_iter()
        .filter_map(|p| summary(&s, p, mode).map(|x| (p, x)))
        .map(|(p, x)| {
            let ratios: Vec<String> = baselines
                .iter()
                .filter(|b| **b != p)
                .filter_map(|b| summary(&s, *b, mode).map(|y| (b, y.rps)))
                .filter(|_| p.is_ours())
                .map(|(b, y)| format!("{:.2}x {}", x.rps / y, b.key()))
                .collect();
            let text = if ratios.is_empty() {
                thousands(x.rps)
            } else {
                format!("{}  ({})", thousands(x.rps), ratios.join(", "))
            };
            Bar {
                label: p.label().into(),
                value: x.rps,
                text,
                ours: p.is_ours(),
            }
        })
        .collect()
}

/// Chart panels of the end-to-end results (new connections first: the headline).
pub fn e2e_panels(e2e: &E2eResults, y: f64) -> Vec<(String, f64)> {
    let close = e2e_bars(
        e2e,
        Mode::Close,
        &[Peer::Nftables, Peer::Iptables, Peer::Haproxy],
    );
    let (a, ha) = bar_panel(
        "New connections: requests/s (Connection: close), median",
        &close,
        y,
    );
    let ka = e2e_bars(e2e, Mode::KeepAlive, &[Peer::Iptables]);
    let (b, hb) = bar_panel("Keep-alive: requests/s, median", &ka, y + ha);
    vec![(a, ha), (b, hb)]
}

/// Chart panel of the packet rate.
pub fn rate_panel(rate: &RateResults, y: f64) -> (String, f64) {
    let m = rate.medians();
    let nft = m.get(&Peer::Nftables).map(|x| x.0);
    let bars: Vec<Bar> = m
        .iter()
        .map(|(p, (fwd, _))| Bar {
            label: p.label().into(),
            value: *fwd,
            text: match (p, nft) {
                (p, Some(n)) if p.is_ours() && n > 0.0 => {
                    format!("{} pps  ({:.2}x nftables)", thousands(*fwd), fwd / n)
                }
                _ => format!("{} pps", thousands(*fwd)),
            },
            ours: p.is_ours(),
        })
        .collect();
    bar_panel(
        "UDP flood: packets/s forwarded to the backends, median",
        &bars,
        y,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(json_num(f64::NAN), "null");
    }

    #[test]
    fn synflood_section_has_both_runs_and_ratios() {
        use crate::bench::synflood::FloodRun;
        let off = FloodRun {
            guard: false,
            legit_attempts: 100,
            legit_ok: 40,
            backend_pps: 1000.0,
            conntrack_peak: 50_000,
            connect_p99_ms: 3000.0,
            ..Default::default()
        };
        let on = FloodRun {
            guard: true,
            legit_attempts: 100,
            legit_ok: 100,
            backend_pps: 10.0,
            conntrack_peak: 500,
            connect_p99_ms: 30.0,
            ..Default::default()
        };
        let md = synflood_markdown(&[off, on], None);
        assert!(md.contains("| off |") && md.contains("| on |"), "{md}");
        assert!(md.contains("40/100 (40.0 %)"), "{md}");
        assert!(md.contains("legitimate success 2.50x"), "{md}");
        assert!(md.contains("reached backends 0.01x"), "{md}");
        assert!(synflood_markdown(&[], Some("boom")).contains("Not measured: boom"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }
}
