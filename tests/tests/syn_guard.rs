//! The SYN-flood guard through the real XDP program (`BPF_PROG_TEST_RUN`): below its rate
//! SYNs open flows as before; above it an unverified source's SYN is answered with the
//! challenge SYN-ACK (every field and both checksums checked), the RST carrying the cookie
//! verifies the source, a wrong one does not, and a verified source's SYN is forwarded.
//! Established flows are never challenged. IPv4 and IPv6.

use std::net::IpAddr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use lb_common::{Reason, Settings};
use lb_tests::fixture::*;
use lb_userspace::config;

/// The fixture's settings with the guard at `pps` (1: every SYN is over the rate).
fn guard(fx: &mut Fx, pps: u32) {
    let cfg = config::parse(CONFIG, "fixtures.toml").expect("fixture config");
    let s = Settings {
        syn_guard_pps: pps,
        syn_verified_secs: 300,
        ..cfg.global.settings()
    };
    fx.dp.set_settings(&s).expect("settings");
}

/// A client's RST (no ACK) with sequence number `seq`, as a stack in SYN_SENT answers an
/// unacceptable SYN-ACK.
fn rst(src: &str, sport: u16, dst: &str, seq: u32) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_C_MAC);
    let mut out = Vec::new();
    match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .tcp(sport, 80, seq, 0)
            .rst()
            .write(&mut out, &[])
            .unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .tcp(sport, 80, seq, 0)
            .rst()
            .write(&mut out, &[])
            .unwrap(),
        _ => unreachable!(),
    }
    out
}

/// Checks every field of a challenge answering `syn` and returns its ACK number (the cookie).
fn check_challenge(syn: &Pkt, out: &[u8]) -> u32 {
    assert_eq!(&out[0..6], &CLIENT_MAC, "destination MAC: the client's");
    assert_eq!(&out[6..12], &LB_C_MAC, "source MAC: ours");
    let p = SlicedPacket::from_ethernet(out).expect("challenge parses");
    let (tcp_len, payload_sum_ok) = match p.net.as_ref().expect("IP") {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            assert_eq!(
                out.len(),
                14 + 20 + 20,
                "no options, no payload, no trailer"
            );
            assert_eq!(IpAddr::V4(h.source_addr()), syn.dst, "from the VIP");
            assert_eq!(IpAddr::V4(h.destination_addr()), syn.src, "to the client");
            assert_eq!(h.ihl(), 5);
            assert_eq!(h.total_len(), 40);
            assert_eq!(h.ttl(), 64);
            assert!(h.dont_fragment());
            assert!(!h.more_fragments());
            assert_eq!(h.fragments_offset().value(), 0);
            assert_eq!(h.protocol().0, 6);
            assert_eq!(h.dcp().value(), 0);
            assert_eq!(
                lb_common::csum::checksum(&out[14..34], 0),
                0,
                "IPv4 header checksum"
            );
            let tcp = match p.transport.as_ref().expect("TCP") {
                TransportSlice::Tcp(t) => t.to_header(),
                _ => panic!("not TCP"),
            };
            let want = tcp
                .calc_checksum_ipv4_raw(h.source(), h.destination(), &[])
                .unwrap();
            (20, tcp.checksum == want)
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            assert_eq!(
                out.len(),
                14 + 40 + 20,
                "no options, no payload, no trailer"
            );
            assert_eq!(IpAddr::V6(h.source_addr()), syn.dst, "from the VIP");
            assert_eq!(IpAddr::V6(h.destination_addr()), syn.src, "to the client");
            assert_eq!(h.payload_length(), 20);
            assert_eq!(h.hop_limit(), 64);
            assert_eq!(h.next_header().0, 6);
            assert_eq!(h.traffic_class(), 0);
            assert_eq!(h.flow_label().value(), 0);
            let tcp = match p.transport.as_ref().expect("TCP") {
                TransportSlice::Tcp(t) => t.to_header(),
                _ => panic!("not TCP"),
            };
            let want = tcp
                .calc_checksum_ipv6_raw(h.source(), h.destination(), &[])
                .unwrap();
            (20, tcp.checksum == want)
        }
    };
    let tcp = match p.transport.expect("TCP") {
        TransportSlice::Tcp(t) => t,
        _ => panic!("not TCP"),
    };
    assert_eq!(tcp.header_len(), tcp_len);
    assert!(payload_sum_ok, "TCP checksum");
    assert_eq!(tcp.source_port(), syn.dport, "from the service port");
    assert_eq!(tcp.destination_port(), syn.sport, "to the client's port");
    assert!(tcp.syn() && tcp.ack(), "SYN+ACK");
    assert!(!tcp.rst() && !tcp.fin() && !tcp.psh() && !tcp.urg());
    assert_eq!(tcp.window_size(), 8192);
    assert_eq!(tcp.urgent_pointer(), 0);
    // The client's SYN carried sequence 1000 (fixture): an ACK of 1001 would be acceptable
    // and open a half-connection to nobody; the cookie must not be it.
    assert_ne!(tcp.acknowledgment_number(), 1001);
    tcp.acknowledgment_number()
}

/// One family's whole story: below the rate, above it, the challenge, wrong and right RSTs,
/// the verified source forwarded, an established flow untouched, tc not challenging.
fn story(fam: &str, client: &str, other: &str, vip: &str) {
    let mut fx = Fx::start();
    let run = |fx: &mut Fx, b: &[u8], what: &str, reason: Reason| {
        let before = fx.reasons();
        let (v, out) = fx.run(fx.lb_c, b);
        fx.assert_only_reason(&before, reason, &format!("{fam}: {what}"));
        (v, out)
    };

    // Below the rate: SYNs open flows as without the guard.
    guard(&mut fx, 1_000_000);
    let early = Pkt::from_client(client, 2000, vip, 80, SYN);
    let (v, _) = run(
        &mut fx,
        &early.bytes(),
        "SYN below the rate",
        Reason::Forwarded,
    );
    assert_eq!(v, XDP_REDIRECT, "{fam}: below the rate a SYN is forwarded");
    assert_eq!(fx.dp.syn_guard_state().flood_cpus, 0, "{fam}: no flood yet");

    // Above the rate: an unverified source's SYN gets the challenge, and no flow.
    guard(&mut fx, 1);
    let syn = Pkt::from_client(client, 2001, vip, 80, SYN);
    let (v, out) = run(
        &mut fx,
        &syn.bytes(),
        "unverified SYN",
        Reason::SynChallenged,
    );
    assert_eq!(v, XDP_TX, "{fam}: the challenge goes back out");
    let cookie = check_challenge(&syn, &out);
    assert!(
        fx.dp.conntrack_get(&syn.flow_key()).is_none(),
        "{fam}: a challenged SYN opens no flow"
    );
    let st = fx.dp.syn_guard_state();
    assert_eq!(st.flood_cpus, 1, "{fam}: flood mode on this CPU");
    assert_eq!(st.challenges, 1);
    assert_eq!(st.verified_sources, 0);
    // The same SYN again gets the same cookie (stateless); another port another one.
    let (_, again) = run(
        &mut fx,
        &syn.bytes(),
        "retransmitted SYN",
        Reason::SynChallenged,
    );
    assert_eq!(
        check_challenge(&syn, &again),
        cookie,
        "{fam}: cookie is per flow"
    );
    let syn2 = Pkt::from_client(client, 2002, vip, 80, SYN);
    let (_, out2) = run(
        &mut fx,
        &syn2.bytes(),
        "SYN, other port",
        Reason::SynChallenged,
    );
    assert_ne!(
        check_challenge(&syn2, &out2),
        cookie,
        "{fam}: cookie differs per flow"
    );

    // A wrong RST (off by one; another source with this cookie) verifies nothing: it is a
    // segment without a flow, dropped as before.
    let (v, _) = run(
        &mut fx,
        &rst(client, 2001, vip, cookie.wrapping_add(1)),
        "wrong RST",
        Reason::NoFlow,
    );
    assert_eq!(v, XDP_DROP);
    let (v, _) = run(
        &mut fx,
        &rst(other, 2001, vip, cookie),
        "RST from another source",
        Reason::NoFlow,
    );
    assert_eq!(v, XDP_DROP);
    let (v, _) = run(
        &mut fx,
        &syn.bytes(),
        "still unverified",
        Reason::SynChallenged,
    );
    assert_eq!(v, XDP_TX, "{fam}: a wrong RST does not verify");
    assert_eq!(fx.dp.syn_guard_state().verified_sources, 0);

    // The right RST verifies the source and is consumed.
    let (v, _) = run(
        &mut fx,
        &rst(client, 2001, vip, cookie),
        "right RST",
        Reason::SynVerified,
    );
    assert_eq!(v, XDP_DROP, "{fam}: the proving RST goes no further");
    assert_eq!(fx.dp.syn_guard_state().verified_sources, 1);

    // The client's retransmitted SYN, and any other of its SYNs, now open flows.
    let (v, _) = run(&mut fx, &syn.bytes(), "verified SYN", Reason::Forwarded);
    assert_eq!(
        v, XDP_REDIRECT,
        "{fam}: a verified source's SYN is forwarded"
    );
    fx.ct(&syn);
    let (v, _) = run(
        &mut fx,
        &syn2.bytes(),
        "verified, other port",
        Reason::Forwarded,
    );
    assert_eq!(v, XDP_REDIRECT);
    // Another source is still challenged.
    let stranger = Pkt::from_client(other, 2001, vip, 80, SYN);
    let (v, _) = run(
        &mut fx,
        &stranger.bytes(),
        "other source",
        Reason::SynChallenged,
    );
    assert_eq!(v, XDP_TX);

    // The flow opened below the rate is untouched: its ACK and even a SYN retransmit of it
    // find their conntrack entry and never meet the guard.
    let ack = Pkt::from_client(client, 2000, vip, 80, ACK);
    let (v, _) = run(&mut fx, &ack.bytes(), "established ACK", Reason::Forwarded);
    assert_eq!(
        v, XDP_REDIRECT,
        "{fam}: established flow forwarded during a flood"
    );

    // tc cannot reflect frames: its SYNs go on to open flows.
    let tc_syn = Pkt::from_client(other, 2003, vip, 80, SYN);
    let (v, _) = fx.run_tc(fx.lb_c, &tc_syn.bytes());
    assert_eq!(v, TC_ACT_REDIRECT, "{fam}: tc path is not guarded");

    // Guard off again: the stranger's SYNs pass.
    guard(&mut fx, 0);
    let (v, _) = run(
        &mut fx,
        &Pkt::from_client(other, 2004, vip, 80, SYN).bytes(),
        "guard off",
        Reason::Forwarded,
    );
    assert_eq!(v, XDP_REDIRECT);
}

#[test]
fn syn_guard_ipv4() {
    story("IPv4", "10.200.1.2", "10.200.1.3", "10.200.100.1");
}

#[test]
fn syn_guard_ipv6() {
    story("IPv6", "fd00:200:1::2", "fd00:200:1::3", "fd00:200:100::1");
}
