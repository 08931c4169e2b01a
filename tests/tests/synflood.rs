//! End to end: a spoofed SYN flood (65536 source addresses, the live-frames generator at
//! full rate) into the bench network's client side for a few seconds, with the agent's SYN
//! guard on, while legitimate clients connect: at least 99 % of them must succeed, the
//! guard must have challenged the flood, and the flood must not reach the backends.

use std::time::Duration;

use lb_tests::bench::{
    lab::BenchLab,
    peers::Tools,
    synflood::{self, FloodRun},
};

#[test]
fn legitimate_clients_get_through_a_spoofed_syn_flood() {
    let lab = BenchLab::start(true).expect("bench lab");
    let tools = Tools {
        lb: lb_tests::lb_binary(),
        envoy: None,
    };
    let client = &lab.topo.client;
    let _peer = lb_tests::xdp::attach_xdp_pass(&client.ns, &client.iface.name)
        .expect("XDP on the client's side of the veth (challenges leave by XDP_TX)");
    let run: FloodRun =
        synflood::run_once(&lab, &tools, true, Duration::from_secs(4)).expect("flood run");
    assert!(
        run.legit_attempts >= 20,
        "too few legitimate attempts to judge: {run:?}"
    );
    assert!(
        run.success_rate() >= 0.99,
        "legitimate success {:.1} % under the flood: {run:?}",
        run.success_rate() * 100.0
    );
    assert!(
        run.offered_pps > 10.0 * f64::from(synflood::GUARD_RATE),
        "the generator did not flood: {run:?}"
    );
    assert!(
        run.challenges > 1000,
        "the guard challenged nothing: {run:?}"
    );
    assert!(
        run.verified_sources >= 1,
        "the client was never verified: {run:?}"
    );
    // What reaches the backends is the legitimate traffic (a few packets per connection),
    // not the flood.
    assert!(
        run.backend_pps < run.offered_pps / 20.0,
        "the flood reached the backends: {run:?}"
    );
    assert!(
        run.conntrack_peak < 10_000,
        "spoofed SYNs filled conntrack: {run:?}"
    );
}
