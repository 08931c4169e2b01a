//! Human-readable counters: services, backends, drop/pass reasons.

use std::fmt::Write as _;

use crate::{dataplane::Dataplane, reconcile::Reconciler};

/// A plain-text table of the current counters.
pub fn counters_table(dp: &Dataplane, rec: &Reconciler, generation: u64) -> String {
    let c = dp.counters();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "generation {generation}  table checksum {:016x}  conntrack entries {}",
        rec.checksum(),
        dp.conntrack_entries()
    );
    let _ = writeln!(
        out,
        "{:<16} {:<28} {:>10} {:>12} {:>9} {:>8}",
        "SERVICE", "BACKEND", "PACKETS", "BYTES", "NEW", "DROPS"
    );
    for s in rec.applied() {
        let st = c.service(s.id);
        let addr = format!("{}:{}", fmt_ip(s.desired.vip), s.desired.port);
        let _ = writeln!(
            out,
            "{:<16} {:<28} {:>10} {:>12} {:>9} {:>8}",
            s.desired.name, addr, st.packets, st.bytes, st.new_flows, st.drops
        );
        for b in &s.desired.backends {
            let Some(id) = rec.backend_id(&b.key) else {
                continue;
            };
            let bs = c.backend(id);
            let addr = format!("{}:{} w={}", fmt_ip(b.key.addr), b.key.port, b.weight);
            let _ = writeln!(
                out,
                "{:<16} {:<28} {:>10} {:>12} {:>9}",
                "", addr, bs.packets, bs.bytes, bs.new_flows
            );
        }
    }
    let reasons: Vec<String> = c
        .reasons()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{}={n}", r.name()))
        .collect();
    let _ = writeln!(out, "reasons: {}", reasons.join(" "));
    out
}

fn fmt_ip(a: std::net::IpAddr) -> String {
    match a {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}
