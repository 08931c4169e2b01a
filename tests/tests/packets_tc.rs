//! Packet fixtures for the tc program (`tc_lb`), run by the kernel through
//! `BPF_PROG_TEST_RUN` on the same data plane and namespace as `packets.rs`: the same path
//! over an skb, with the verdicts mapped (pass -> TC_ACT_OK, drop -> TC_ACT_SHOT, sent on ->
//! TC_ACT_REDIRECT) and the TCP/UDP checksums patched by the kernel's helpers.
//!
//! Test runs build skbs without checksum offload state, so the expected bytes are those of
//! the XDP fixtures (built independently by etherparse, with full checksums). The
//! `CHECKSUM_PARTIAL` case (frames sent from a namespace with TX offload) is end to end, in
//! `tc_path.rs`.

use lb_common::{CT_ESTABLISHED, Reason};
use lb_tests::fixture::*;

struct Row {
    name: &'static str,
    ingress: u32,
    input: Vec<u8>,
    verdict: u32,
    /// Expected bytes; `None` means "unchanged".
    output: Option<Vec<u8>>,
    reason: Reason,
}

fn check(row: &Row, fx: &mut Fx) -> Vec<u8> {
    let before = fx.reasons();
    let (verdict, out) = fx.run_tc(row.ingress, &row.input);
    assert_eq!(verdict, row.verdict, "{}: verdict", row.name);
    match &row.output {
        Some(expected) => assert_eq!(hex(&out), hex(expected), "{}: bytes", row.name),
        None => assert_eq!(out, row.input, "{}: packet must be untouched", row.name),
    }
    fx.assert_only_reason(&before, row.reason, row.name);
    out
}

/// A NAT'd IPv4 TCP connection: new flow, established packet, the backend's reply.
#[test]
fn tcp_flow_and_reply() {
    let mut fx = Fx::start();
    let syn = Pkt::from_client("10.200.1.2", 35000, "10.200.100.1", 80, SYN);
    let (verdict, _) = fx.run_tc(fx.lb_c, &syn.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT, "SYN must be redirected");
    let ct = fx.ct(&syn);
    assert_eq!(ct.egress_ifindex, fx.lb_b);
    let snat_port = u16::from_be(ct.snat_port);
    let to_backend = |p: &Pkt| {
        p.translated(
            LB_B_MAC,
            BACKEND_MAC,
            ip("10.200.11.1"),
            snat_port,
            ip("10.200.11.2"),
            8080,
        )
        .bytes()
    };
    check(
        &Row {
            name: "retransmitted SYN",
            ingress: fx.lb_c,
            input: syn.bytes(),
            verdict: TC_ACT_REDIRECT,
            output: Some(to_backend(&syn)),
            reason: Reason::Forwarded,
        },
        &mut fx,
    );
    let ack = Pkt {
        l4: ACK,
        payload: b"a request with some payload".to_vec(),
        ..syn.clone()
    };
    check(
        &Row {
            name: "established ACK",
            ingress: fx.lb_c,
            input: ack.bytes(),
            verdict: TC_ACT_REDIRECT,
            output: Some(to_backend(&ack)),
            reason: Reason::Forwarded,
        },
        &mut fx,
    );
    assert_eq!(fx.ct(&syn).state, CT_ESTABLISHED);
    let reply = Pkt::from_backend(
        "10.200.11.2",
        8080,
        "10.200.11.1",
        snat_port,
        ACK,
        b"the answer",
    );
    check(
        &Row {
            name: "reply (reverse NAT)",
            ingress: fx.lb_b,
            input: reply.bytes(),
            verdict: TC_ACT_REDIRECT,
            output: Some(
                reply
                    .translated(
                        LB_C_MAC,
                        CLIENT_MAC,
                        ip("10.200.100.1"),
                        80,
                        ip("10.200.1.2"),
                        35000,
                    )
                    .bytes(),
            ),
            reason: Reason::ReplyForwarded,
        },
        &mut fx,
    );
    // The tc and XDP programs share the maps: the XDP program continues the same flow.
    let (verdict, out) = fx.run(fx.lb_c, &ack.bytes());
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(hex(&out), hex(&to_backend(&ack)));
}

#[test]
fn udp_flow_reply_and_zero_checksum() {
    let mut fx = Fx::start();
    let q = Pkt::from_client("10.200.1.2", 5100, "10.200.100.1", 53, L4::Udp);
    let (verdict, _) = fx.run_tc(fx.lb_c, &q.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let snat_port = u16::from_be(fx.ct(&q).snat_port);
    let to_backend = q
        .translated(
            LB_B_MAC,
            BACKEND_MAC,
            ip("10.200.11.1"),
            snat_port,
            ip("10.200.11.2"),
            5353,
        )
        .bytes();
    check(
        &Row {
            name: "UDP established",
            ingress: fx.lb_c,
            input: q.bytes(),
            verdict: TC_ACT_REDIRECT,
            output: Some(to_backend.clone()),
            reason: Reason::Forwarded,
        },
        &mut fx,
    );
    let reply = Pkt::from_backend(
        "10.200.11.2",
        5353,
        "10.200.11.1",
        snat_port,
        L4::Udp,
        b"answer",
    );
    check(
        &Row {
            name: "UDP reply",
            ingress: fx.lb_b,
            input: reply.bytes(),
            verdict: TC_ACT_REDIRECT,
            output: Some(
                reply
                    .translated(
                        LB_C_MAC,
                        CLIENT_MAC,
                        ip("10.200.100.1"),
                        53,
                        ip("10.200.1.2"),
                        5100,
                    )
                    .bytes(),
            ),
            reason: Reason::ReplyForwarded,
        },
        &mut fx,
    );
    // IPv4 UDP without a checksum keeps none (BPF_F_MARK_MANGLED_0).
    let udp_check = 14 + 20 + 6;
    let mut input = q.bytes();
    input[udp_check..udp_check + 2].copy_from_slice(&[0, 0]);
    let (verdict, out) = fx.run_tc(fx.lb_c, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[udp_check..udp_check + 2], &[0, 0]);
    // Ethernet padding after the datagram is cut (bpf_skb_change_tail) before it goes on.
    let mut padded = q.bytes();
    padded.extend_from_slice(&[0xee; 9]);
    check(
        &Row {
            name: "UDP with trailing bytes",
            ingress: fx.lb_c,
            input: padded,
            verdict: TC_ACT_REDIRECT,
            output: Some(to_backend),
            reason: Reason::Forwarded,
        },
        &mut fx,
    );
}

/// IPv6: no header checksum; the addresses reach the TCP checksum through the pseudo-header
/// (`BPF_F_PSEUDO_HDR | BPF_F_IPV6`).
#[test]
fn ipv6_tcp_flow_and_reply() {
    let mut fx = Fx::start();
    let syn = Pkt::from_client("fd00:200:1::2", 36000, "fd00:200:100::1", 80, SYN);
    let (verdict, _) = fx.run_tc(fx.lb_c, &syn.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let snat_port = u16::from_be(fx.ct(&syn).snat_port);
    let ack = Pkt { l4: ACK, ..syn };
    check(
        &Row {
            name: "IPv6 established",
            ingress: fx.lb_c,
            input: ack.bytes(),
            verdict: TC_ACT_REDIRECT,
            output: Some(
                ack.translated(
                    LB_B_MAC,
                    BACKEND_MAC,
                    ip("fd00:200:11::1"),
                    snat_port,
                    ip("fd00:200:11::2"),
                    8080,
                )
                .bytes(),
            ),
            reason: Reason::Forwarded,
        },
        &mut fx,
    );
    let reply = Pkt::from_backend(
        "fd00:200:11::2",
        8080,
        "fd00:200:11::1",
        snat_port,
        SYN_ACK,
        b"v6",
    );
    check(
        &Row {
            name: "IPv6 reply",
            ingress: fx.lb_b,
            input: reply.bytes(),
            verdict: TC_ACT_REDIRECT,
            output: Some(
                reply
                    .translated(
                        LB_C_MAC,
                        CLIENT_MAC,
                        ip("fd00:200:100::1"),
                        80,
                        ip("fd00:200:1::2"),
                        36000,
                    )
                    .bytes(),
            ),
            reason: Reason::ReplyForwarded,
        },
        &mut fx,
    );
}

/// Verdicts other than forwarding: not ours -> TC_ACT_OK untouched; ours but refused ->
/// TC_ACT_SHOT; one-arm (out the way it came) -> TC_ACT_REDIRECT with the rewrite.
#[test]
fn pass_drop_and_one_arm() {
    let mut fx = Fx::start();
    let other = Pkt::from_client("10.200.1.2", 35100, "10.200.1.1", 22, SYN);
    check(
        &Row {
            name: "not a service",
            ingress: fx.lb_c,
            input: other.bytes(),
            verdict: TC_ACT_OK,
            output: None,
            reason: Reason::NoService,
        },
        &mut fx,
    );
    let stray = Pkt::from_client("10.200.1.2", 35101, "10.200.100.1", 80, ACK);
    check(
        &Row {
            name: "ACK without flow",
            ingress: fx.lb_c,
            input: stray.bytes(),
            verdict: TC_ACT_SHOT,
            output: None,
            reason: Reason::NoFlow,
        },
        &mut fx,
    );
    let syn = Pkt::from_client("10.200.1.2", 35102, "10.200.100.3", 80, SYN);
    let (verdict, out) = fx.run_tc(fx.lb_c, &syn.bytes());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let ct = fx.ct(&syn);
    assert_eq!(
        ct.egress_ifindex, fx.lb_c,
        "one-arm goes out the way it came"
    );
    let expected = syn
        .translated(
            LB_C_MAC,
            ONE_ARM_BACKEND_MAC,
            ip("10.200.1.1"),
            u16::from_be(ct.snat_port),
            ip("10.200.1.50"),
            8080,
        )
        .bytes();
    assert_eq!(hex(&out), hex(&expected));
}
