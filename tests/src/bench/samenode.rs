//! The same-node part of the end-to-end runs (issue 13): a client on the LB's node (its own
//! namespace behind a veth, as a pod) to a service through the socket LB, native XDP, tc and
//! iptables DNAT, and straight to a backend. Measured in the same interleaved rounds as the
//! rest of [`super::e2e`]; this module only picks those rows and checks the goals.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::e2e::{E2eResults, Mode, Summary};
use super::peers::Peer;
use super::report::Target;

/// The configurations of the same-node comparison, in table order.
pub const PEERS: [Peer; 7] = [
    Peer::SockLbOne,
    Peer::SockLb,
    Peer::Direct,
    Peer::DirectCgroup,
    Peer::Lb,
    Peer::LbTc,
    Peer::Iptables,
];

fn get(s: &BTreeMap<(Peer, Mode), Summary>, p: Peer, m: Mode) -> Option<Summary> {
    s.get(&(p, m)).copied().filter(|x| x.runs > 0)
}

/// Whether a socket-LB configuration ran.
fn socket_lb_ran(s: &BTreeMap<(Peer, Mode), Summary>) -> bool {
    s.keys()
        .any(|(p, _)| matches!(p, Peer::SockLb | Peer::SockLbOne))
}

/// Issue 13's goals: socket LB new connections >= 0.97x direct; tc cheaper per new
/// connection than native XDP on veth (keep-alive is in the table, with no goal). Empty if
/// the socket LB did not run. The socket LB is compared on the same backend as `direct`
/// (`socket-lb-one`) when that ran: spreading over three backends changes the backend
/// side's cost, which is not the socket LB's.
pub fn targets(e2e: &E2eResults) -> Vec<Target> {
    let s = e2e.summaries();
    if !socket_lb_ran(&s) {
        return Vec::new();
    }
    let mut t = Vec::new();
    let (which, ours) = match get(&s, Peer::SockLbOne, Mode::Close) {
        Some(one) => ("backend 1 only, as direct", Some(one)),
        None => ("three backends", get(&s, Peer::SockLb, Mode::Close)),
    };
    let direct = get(&s, Peer::Direct, Mode::Close);
    let (measured, met) = match (ours, direct) {
        (Some(a), Some(d)) if d.rps > 0.0 => (
            format!("{:.2}x ({:.0} vs {:.0} req/s)", a.rps / d.rps, a.rps, d.rps),
            Some(a.rps / d.rps >= 0.97),
        ),
        _ => ("-".into(), None),
    };
    t.push(Target {
        what: format!("same node, socket LB new-connection req/s ({which})"),
        goal: ">= 0.97x direct (no LB)".into(),
        measured,
        met,
    });
    // Like for like: the socket LB's client runs in a child cgroup (its hooks' scope), and
    // so does every pod's; `direct-cg` is direct from such a cgroup, no programs attached.
    if let (Some(a), Some(d)) = (ours, get(&s, Peer::DirectCgroup, Mode::Close))
        && d.rps > 0.0
    {
        t.push(Target {
            what: format!(
                "same node, socket LB new-connection req/s ({which}), both from a child cgroup"
            ),
            goal: ">= 0.97x direct from a child cgroup".into(),
            measured: format!("{:.2}x ({:.0} vs {:.0} req/s)", a.rps / d.rps, a.rps, d.rps),
            met: Some(a.rps / d.rps >= 0.97),
        });
    }
    let tc = get(&s, Peer::LbTc, Mode::Close).map(|x| x.cpu_us);
    let xdp = get(&s, Peer::Lb, Mode::Close).map(|x| x.cpu_us);
    let (measured, met) = match (tc, xdp) {
        (Some(a), Some(b)) => (
            format!("{a:.1} vs {b:.1} us/req ({:+.1})", a - b),
            Some(a < b),
        ),
        _ => ("-".into(), None),
    };
    t.push(Target {
        what: "same node, whole-machine CPU per new connection, tc".into(),
        goal: "< native XDP on veth".into(),
        measured,
        met,
    });
    t
}

/// The same-node table: requests/s in both modes with ratios to direct and iptables, p99 and
/// CPU per new connection. Empty if the socket LB did not run.
pub fn markdown(e2e: &E2eResults) -> String {
    let s = e2e.summaries();
    if !socket_lb_ran(&s) {
        return String::new();
    }
    let mut md = String::from(
        "## Same node: a pod-like client to a service (socket LB vs XDP / tc NAT vs iptables vs direct)\n\n\
         From the end-to-end rounds above. The client sits in its own namespace on the LB's node \
         (a pod behind a veth); with the socket LB its `connect()` to the `scope = \"cluster\"` \
         service is rewritten to a backend in its cgroup (`namespaces = \"all\"`) and then routed \
         as direct traffic is.\n\n",
    );
    md += "| configuration | keep-alive req/s | vs direct | vs iptables | new-conn req/s | vs direct | vs iptables | p99 ms (new conn) | CPU us/req (new conn) |\n\
           |---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let ratio = |a: f64, b: Option<Summary>| match b {
        Some(b) if b.rps > 0.0 => format!("{:.2}x", a / b.rps),
        _ => "-".into(),
    };
    for p in PEERS {
        let (Some(ka), Some(cl)) = (get(&s, p, Mode::KeepAlive), get(&s, p, Mode::Close)) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2} | {:.1} |",
            p.label(),
            ka.rps,
            ratio(ka.rps, get(&s, Peer::Direct, Mode::KeepAlive)),
            ratio(ka.rps, get(&s, Peer::Iptables, Mode::KeepAlive)),
            cl.rps,
            ratio(cl.rps, get(&s, Peer::Direct, Mode::Close)),
            ratio(cl.rps, get(&s, Peer::Iptables, Mode::Close)),
            cl.p99_us / 1e3,
            cl.cpu_us
        );
    }
    md.push('\n');
    for t in targets(e2e) {
        let _ = writeln!(
            md,
            "- {}: {} (goal {}): {}",
            t.what,
            t.measured,
            t.goal,
            t.verdict()
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cpu::IdleCheck;
    use crate::bench::e2e::Sample;
    use crate::bench::wrk::WrkReport;

    fn sample(peer: Peer, mode: Mode, rps: f64, cpu: f64) -> Sample {
        Sample {
            round: 0,
            peer,
            mode,
            wrk: WrkReport {
                requests: 1000,
                seconds: 1.0,
                rps,
                p50_us: 500.0,
                p99_us: 2000.0,
                ..Default::default()
            },
            cpu_us_per_req: cpu,
            busy_share: 0.9,
            idle: IdleCheck {
                busy_share: 0.0,
                tries: 1,
                idle: true,
                waited: std::time::Duration::ZERO,
            },
            syn_retrans: 0,
            retrans_segs: 0,
            drops: 0,
        }
    }

    #[test]
    fn goals_follow_the_ratios() {
        let mut r = E2eResults::default();
        for (p, close, cpu) in [
            (Peer::SockLb, 9800.0, 30.0),
            (Peer::Direct, 10000.0, 29.0),
            (Peer::Lb, 9000.0, 40.0),
            (Peer::LbTc, 9500.0, 35.0),
            (Peer::Iptables, 7000.0, 38.0),
        ] {
            r.samples.push(sample(p, Mode::Close, close, cpu));
            r.samples
                .push(sample(p, Mode::KeepAlive, close * 3.0, cpu / 3.0));
        }
        let t = targets(&r);
        assert_eq!(t.len(), 2, "no direct-cg run, no like-for-like row: {t:?}");
        assert_eq!(t[0].met, Some(true), "{:?}", t[0]);
        assert!(t[0].measured.starts_with("0.98x"), "{:?}", t[0]);
        assert!(t[0].what.contains("three backends"), "{:?}", t[0]);
        assert_eq!(t[1].met, Some(true), "tc 35 < XDP 40: {:?}", t[1]);
        let md = markdown(&r);
        assert!(md.contains("| this LB (socket LB) | 29400 | 0.98x | 1.40x | 9800 | 0.98x"));

        // tc dearer than XDP, socket LB well below direct: both not met.
        r.samples
            .retain(|s| s.peer != Peer::LbTc && s.peer != Peer::SockLb);
        r.samples
            .push(sample(Peer::LbTc, Mode::Close, 9500.0, 45.0));
        r.samples
            .push(sample(Peer::SockLb, Mode::Close, 9000.0, 30.0));
        let t = targets(&r);
        assert_eq!(t[0].met, Some(false), "0.90x direct");
        assert_eq!(t[1].met, Some(false), "tc 45 > XDP 40");

        // The single-backend run, when there is one, is the one compared with direct.
        r.samples
            .push(sample(Peer::SockLbOne, Mode::Close, 9900.0, 29.5));
        let t = targets(&r);
        assert_eq!(t[0].met, Some(true), "{:?}", t[0]);
        assert!(t[0].what.contains("backend 1 only"), "{:?}", t[0]);
        assert!(t[0].measured.starts_with("0.99x"), "{:?}", t[0]);
    }

    #[test]
    fn nothing_without_the_socket_lb() {
        let mut r = E2eResults::default();
        r.samples.push(sample(Peer::Lb, Mode::Close, 1.0, 1.0));
        assert!(targets(&r).is_empty());
        assert!(markdown(&r).is_empty());
    }

    #[test]
    fn direct_from_a_child_cgroup_adds_a_like_for_like_row() {
        let mut r = E2eResults::default();
        for (p, close) in [
            (Peer::SockLbOne, 9600.0),
            (Peer::Direct, 10600.0),
            (Peer::DirectCgroup, 9800.0),
        ] {
            r.samples.push(sample(p, Mode::Close, close, 30.0));
            r.samples
                .push(sample(p, Mode::KeepAlive, close * 3.0, 10.0));
        }
        let t = targets(&r);
        assert_eq!(t[0].met, Some(false), "0.91x direct: {:?}", t[0]);
        let cg = t
            .iter()
            .find(|x| x.what.contains("child cgroup"))
            .expect("a like-for-like row");
        assert_eq!(cg.met, Some(true), "0.98x direct-cg: {cg:?}");
        assert!(cg.measured.starts_with("0.98x"), "{cg:?}");
        assert!(markdown(&r).contains("| direct (no LB) from a child cgroup | 29400 |"));
    }
}
