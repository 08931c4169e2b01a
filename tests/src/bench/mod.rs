//! Benchmarks that need namespaces and real peers (run by `lb-bench`, never by the tests).
//!
//! - [`control`]: registry change -> forwarding, and flows when one of N backends leaves.
//! - [`cpu`]: whole-machine CPU from `/proc/stat`, and the "is the machine idle?" gate.
//! - [`wrk`]: runs `wrk` in a namespace and parses its report.
//! - [`lab`]: the bench network (client, LB, three nginx backends) and its sysctls.
//! - [`peers`]: each configuration compared (direct, this LB in native XDP, tc, generic XDP
//!   and socket LB, iptables, nftables, nginx
//!   stream, HAProxy, Envoy): how to start it on the lab and take it down again.
//! - [`e2e`]: interleaved HTTP runs over those configurations, medians per configuration.
//! - [`pktgen`]: an XDP live-frames UDP generator (`BPF_F_TEST_XDP_LIVE_FRAMES`).
//! - [`pktrate`]: packets per second forwarded to the backends, this LB vs nftables.
//! - [`report`]: Markdown, JSON and SVG for the results.
//! - [`mesh`]: the mesh between two nodes: plaintext vs the HBONE tunnel vs an Envoy mTLS
//!   pair, and issue 14's goals.
//! - [`samenode`]: the same-node rows of the end-to-end runs (socket LB vs NAT paths vs
//!   direct) and their goals.
//! - [`synflood`]: a spoofed SYN flood with legitimate clients, the SYN guard off and on.
//! - [`gateway`]: the L7 gateway against nginx and Envoy (routing, JWT, API keys), with
//!   [`gw_peers`] (the configurations), [`gw_auth`] (key, JWKS, token, API key),
//!   [`gw_conns`] (checks and idle-connection memory) and [`gw_report`].

pub mod control;
pub mod cpu;
pub mod e2e;
pub mod gateway;
pub mod gw_auth;
pub mod gw_conns;
pub mod gw_peers;
pub mod gw_report;
pub mod lab;
pub mod mesh;
pub mod peers;
pub mod pktgen;
pub mod pktrate;
pub mod report;
pub mod samenode;
pub mod synflood;
pub mod wrk;

/// Median of `v` (NaN if empty); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
