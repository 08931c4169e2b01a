//! Control plane end to end: how long a registry change takes to reach forwarding, and what
//! happens to established and new flows when one of N backends leaves.
//!
//! The real agent runs in a two-arm topology with three backends (name servers that echo):
//! backend 0 from the config, backend 1 through the built-in registry's API, backend 2
//! through etcd (Debian's `etcd`, running in the LB namespace), so both kinds of source are
//! timed on the same agent.
//!
//! - Add: from the API call (or etcd put) to the first new connection answered by the new
//!   backend, new connections opened back to back.
//! - Remove: from the API call (or etcd delete) to the start of the first run of
//!   [`MISS_STREAK`] new connections in a row that miss the removed backend (with it in the
//!   table half of them would reach it, so such a run means it is out: odds 2^-20 otherwise).
//! - Leave: `held` connections spread over the three backends, backend 1 deregistered, then
//!   every held connection must still echo (conntrack pins them, including the ones on the
//!   leaving backend, which keeps running: a graceful leave) and new flows must avoid it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::cpu::{IdleCheck, IdleGate};
use crate::{
    DEFAULT_TIMEOUT, Topology, VIP4,
    admin::AdminClient,
    control_lab::{ip, start_on, time_until_reached, wait_until},
    etcd::EtcdServer,
    lab::{Lab, TCP_PORT, echo},
    tcp_connect_name,
};

/// New connections in a row that must miss a removed backend before it counts as out.
pub const MISS_STREAK: usize = 20;

/// Timings of one source.
#[derive(Debug, Clone)]
pub struct ChangeTimes {
    /// `registry` (the built-in API) or `etcd`.
    pub source: &'static str,
    /// Change -> first new flow on the added backend, one per round.
    pub add: Vec<Duration>,
    /// Change -> new flows no longer reach the removed backend, one per round.
    pub remove: Vec<Duration>,
}

/// One backend of N leaving while connections are held.
#[derive(Debug, Clone)]
pub struct LeaveResult {
    /// Backends before the leave.
    pub backends: usize,
    /// Connections held across the leave.
    pub held: usize,
    /// Of those, on the leaving backend.
    pub on_leaving: usize,
    /// Held connections on the remaining backends that broke.
    pub broken_remaining: usize,
    /// Held connections on the leaving backend that broke.
    pub broken_leaving: usize,
    /// New connections opened after the leave...
    pub new_flows: usize,
    /// ...of which reached the leaving backend (or failed).
    pub new_to_leaving: usize,
    pub new_errors: usize,
}

/// Everything the control-plane part measured.
#[derive(Debug, Clone)]
pub struct ControlResults {
    pub changes: Vec<ChangeTimes>,
    pub leave: LeaveResult,
    /// What the idle gate saw before the timed rounds.
    pub idle: IdleCheck,
}

/// Runs the control-plane part: `rounds` add/remove cycles per source, then one leave with
/// `held` connections. Needs root; the lab is removed on return (and on panic).
pub fn run(rounds: usize, held: usize, gate: &IdleGate) -> Result<ControlResults> {
    let topo = Topology::two_arm(3)?;
    let etcd = EtcdServer::start_in(&topo.lb).context("etcd in the LB namespace")?;
    let url = etcd.url();
    let (lab, admin, _dir) = start_on(topo, "bench", &[0], None, |_| {
        format!("\n[[source]]\nkind = \"etcd\"\nendpoints = [\"{url}\"]\nprefix = \"/lb/\"\n")
    });
    let names = lab.names();
    let etcd_key = format!("/lb/web/{}:8080", ip(&lab, 2));

    // One untimed cycle each: the first add of a backend also resolves its next hop.
    admin.register("web", &ip(&lab, 1), 8080, "")?;
    time_until_reached(&lab, &names[1]);
    admin.deregister("web", &ip(&lab, 1), 8080)?;
    etcd.put(&etcd_key, "")?;
    time_until_reached(&lab, &names[2]);
    etcd.delete(&etcd_key)?;
    wait_until("warm-up removals applied", Duration::from_secs(10), || {
        backends_in_status(&admin) == 1
    });

    let idle = gate.wait()?;
    let mut registry = ChangeTimes {
        source: "registry",
        add: Vec::new(),
        remove: Vec::new(),
    };
    let mut etcd_times = ChangeTimes {
        source: "etcd",
        add: Vec::new(),
        remove: Vec::new(),
    };
    for _ in 0..rounds {
        let t0 = Instant::now();
        admin.register("web", &ip(&lab, 1), 8080, "")?;
        registry
            .add
            .push(t0.elapsed() + time_until_reached(&lab, &names[1]));
        let t0 = Instant::now();
        admin.deregister("web", &ip(&lab, 1), 8080)?;
        registry
            .remove
            .push(time_until_avoided(&lab, &names[1], t0));

        let t0 = Instant::now();
        etcd.put(&etcd_key, "")?;
        etcd_times
            .add
            .push(t0.elapsed() + time_until_reached(&lab, &names[2]));
        let t0 = Instant::now();
        etcd.delete(&etcd_key)?;
        etcd_times
            .remove
            .push(time_until_avoided(&lab, &names[2], t0));
    }

    let leave = one_of_three_leaves(&lab, &admin, &etcd_key, &etcd, held)?;
    drop(lab);
    drop(etcd);
    Ok(ControlResults {
        changes: vec![registry, etcd_times],
        leave,
        idle,
    })
}

/// Backends of `web` in the agent's status (0 if the status cannot be read).
fn backends_in_status(admin: &AdminClient) -> usize {
    admin
        .status()
        .ok()
        .and_then(|st| {
            st["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "web")?["backends"]
                .as_array()
                .map(Vec::len)
        })
        .unwrap_or(0)
}

/// From `t0`, the time until new flows stop reaching `name`: the start of the first run of
/// [`MISS_STREAK`] new connections in a row that all reach another backend. Panics after 10 s.
fn time_until_avoided(lab: &Lab, name: &str, t0: Instant) -> Duration {
    let mut streak_start = Instant::now();
    let mut streak = 0;
    while streak < MISS_STREAK {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "new flows still reach {name} 10 s after its removal"
        );
        let started = Instant::now();
        let answered = tcp_connect_name(
            &lab.topo.client.ns,
            IpAddr::V4(VIP4),
            TCP_PORT,
            DEFAULT_TIMEOUT,
        );
        match answered {
            Ok(n) if n != name => {
                if streak == 0 {
                    streak_start = started;
                }
                streak += 1;
            }
            _ => streak = 0,
        }
    }
    streak_start.duration_since(t0)
}

/// Registers backend 1 and puts backend 2 back, holds `held` connections, deregisters
/// backend 1 and counts what broke and where new flows go.
fn one_of_three_leaves(
    lab: &Lab,
    admin: &AdminClient,
    etcd_key: &str,
    etcd: &EtcdServer,
    held: usize,
) -> Result<LeaveResult> {
    let names = lab.names();
    admin.register("web", &ip(lab, 1), 8080, "")?;
    etcd.put(etcd_key, "")?;
    time_until_reached(lab, &names[1]);
    time_until_reached(lab, &names[2]);

    let mut conns: Vec<_> = (0..held).map(|_| lab.client_connect()).collect();
    let on_leaving = conns.iter().filter(|(_, b)| *b == names[1]).count();
    for (s, b) in conns.iter_mut() {
        echo(s, b"before").with_context(|| format!("held connection on {b} before the leave"))?;
    }

    let t0 = Instant::now();
    admin.deregister("web", &ip(lab, 1), 8080)?;
    time_until_avoided(lab, &names[1], t0);

    let (mut broken_remaining, mut broken_leaving) = (0, 0);
    for (s, b) in conns.iter_mut() {
        if echo(s, b"after").is_err() {
            if *b == names[1] {
                broken_leaving += 1;
            } else {
                broken_remaining += 1;
            }
        }
    }
    let spread = lab.tcp_spread(held);
    Ok(LeaveResult {
        backends: names.len(),
        held,
        on_leaving,
        broken_remaining,
        broken_leaving,
        new_flows: held,
        new_to_leaving: spread.count(&names[1]),
        new_errors: spread.errors,
    })
}
