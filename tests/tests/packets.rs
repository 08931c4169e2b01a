//! Packet fixtures: the real XDP program, run by the kernel through `BPF_PROG_TEST_RUN`.
//!
//! Each fixture is a packet in, and the verdict, the exact bytes out (built independently by
//! etherparse, so matching them proves the IP/TCP/UDP checksums) and the counters it must
//! move. Every packet moves exactly one reason counter; the rows assert that too.
//!
//! The program runs inside a namespace made for the test, where the FIB has routes and
//! permanent neighbour entries with fixed MACs, so next-hop lookups are deterministic.

use lb_common::{
    Addr, CT_CLOSING, CT_ESTABLISHED, CT_SYN_SENT, Reason, ServiceKey, service_slot::slot_of,
};
use lb_tests::fixture::*;
use lb_userspace::{
    config,
    dataplane::{Dataplane, LoadOptions},
    reconcile::DesiredState,
};

struct Row {
    name: &'static str,
    ingress: u32,
    input: Vec<u8>,
    verdict: u32,
    /// Expected bytes; `None` means "unchanged".
    output: Option<Vec<u8>>,
    reason: Reason,
}

/// New TCP flow, established packets, the backend's reply, and close: the whole life of a
/// NAT'd IPv4 connection.
#[test]
fn tcp_flow_new_established_reply_close() {
    let mut fx = Fx::start();
    let syn = Pkt::from_client("10.200.1.2", 33000, "10.200.100.1", 80, SYN);

    // New flow: the SYN is DNAT'd to the backend and SNAT'd to our address on lb-b.
    let (verdict, _) = fx.run(fx.lb_c, &syn.bytes());
    assert_eq!(verdict, XDP_REDIRECT, "SYN must be redirected");
    let ct = fx.ct(&syn);
    let snat_port = u16::from_be(ct.snat_port);
    assert!(
        (40000..=59999).contains(&snat_port),
        "SNAT port {snat_port} outside the configured range"
    );
    assert_eq!(ct.state, CT_SYN_SENT);
    assert_eq!(ct.egress_ifindex, fx.lb_b);
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
    let web_before = fx.service("web");
    assert_eq!(web_before.new_flows, 1);
    assert_eq!(web_before.packets, 1);

    // The same SYN again (a retransmission) follows the same entry, byte for byte.
    fx.check(&Row {
        name: "retransmitted SYN",
        ingress: fx.lb_c,
        input: syn.bytes(),
        verdict: XDP_REDIRECT,
        output: Some(to_backend(&syn)),
        reason: Reason::Forwarded,
    });

    // Established: the ACK completes the handshake.
    let ack = Pkt {
        l4: ACK,
        ..syn.clone()
    };
    fx.check(&Row {
        name: "established ACK",
        ingress: fx.lb_c,
        input: ack.bytes(),
        verdict: XDP_REDIRECT,
        output: Some(to_backend(&ack)),
        reason: Reason::Forwarded,
    });
    assert_eq!(fx.ct(&syn).state, CT_ESTABLISHED);
    let web = fx.service("web");
    assert_eq!(web.new_flows, 1, "established packets open no flow");
    assert_eq!(web.packets, 3);

    // Reply: backend -> our SNAT address/port, translated back to VIP -> client, out of the
    // interface the client came in on, to the client's MAC.
    let reply = Pkt::from_backend(
        "10.200.11.2",
        8080,
        "10.200.11.1",
        snat_port,
        SYN_ACK,
        b"world",
    );
    let to_client = reply.translated(
        LB_C_MAC,
        CLIENT_MAC,
        ip("10.200.100.1"),
        80,
        ip("10.200.1.2"),
        33000,
    );
    fx.check(&Row {
        name: "reply (reverse NAT)",
        ingress: fx.lb_b,
        input: reply.bytes(),
        verdict: XDP_REDIRECT,
        output: Some(to_client.bytes()),
        reason: Reason::ReplyForwarded,
    });

    // FIN moves the flow to closing; it keeps forwarding.
    let fin = Pkt {
        l4: FIN_ACK,
        ..syn.clone()
    };
    fx.check(&Row {
        name: "FIN",
        ingress: fx.lb_c,
        input: fin.bytes(),
        verdict: XDP_REDIRECT,
        output: Some(to_backend(&fin)),
        reason: Reason::Forwarded,
    });
    assert_eq!(fx.ct(&syn).state, CT_CLOSING);

    // The client reuses its port at once (a SYN on the closing flow): a new flow that takes
    // back this connection's own SNAT port instead of claiming another one each time.
    for round in 0..12 {
        let (verdict, _) = fx.run(fx.lb_c, &syn.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "reopening SYN {round}");
        let reopened = fx.ct(&syn);
        assert_eq!(reopened.state, CT_SYN_SENT, "reopening SYN {round}");
        assert_eq!(
            u16::from_be(reopened.snat_port),
            snat_port,
            "reopening {round} moved to another SNAT port"
        );
        let (verdict, _) = fx.run(fx.lb_c, &fin.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "FIN {round}");
    }
    assert_eq!(
        fx.service("web").new_flows,
        13,
        "each reopening is a new flow"
    );
}

/// With every SNAT port toward the backend held by a live flow, a new flow is dropped and
/// counted as `snat_exhausted`; a port whose flow closed is reclaimed once the closing
/// timeout passes, not before, whichever side closed.
#[test]
fn snat_exhaustion_drops_and_closed_ports_are_reclaimed() {
    let mut fx = Fx::start();
    let mut settings = config::parse(CONFIG, "fixtures.toml")
        .unwrap()
        .global
        .settings();
    (settings.snat_port_min, settings.snat_port_max) = (40000, 40003);
    fx.dp.set_settings(&settings).unwrap();

    let syn = |sport| Pkt::from_client("10.200.1.2", sport, "10.200.100.1", 80, SYN);
    let mut ports: Vec<u16> = (0..4)
        .map(|i| {
            let (verdict, _) = fx.run(fx.lb_c, &syn(33100 + i).bytes());
            assert_eq!(verdict, XDP_REDIRECT, "flow {i} of 4 ports");
            u16::from_be(fx.ct(&syn(33100 + i)).snat_port)
        })
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [40000, 40001, 40002, 40003], "every port used once");
    let fifth = Row {
        name: "SYN with every SNAT port held",
        ingress: fx.lb_c,
        input: syn(33104).bytes(),
        verdict: XDP_DROP,
        output: None,
        reason: Reason::SnatExhausted,
    };
    fx.check(&fifth);

    // Close one flow: its port stays held for the closing timeout (late FINs and ACKs must
    // still find it)...
    let closed = syn(33100);
    let closed_port = fx.ct(&closed).snat_port;
    let fin = Pkt {
        l4: FIN_ACK,
        ..closed.clone()
    };
    let (verdict, _) = fx.run(fx.lb_c, &fin.bytes());
    assert_eq!(verdict, XDP_REDIRECT);
    fx.check(&Row {
        name: "SYN while the closed flow's port is still held",
        ..fifth
    });
    // ...and is free after it.
    settings.tcp_closing_timeout_ns = 1_000_000;
    fx.dp.set_settings(&settings).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (verdict, _) = fx.run(fx.lb_c, &syn(33104).bytes());
    assert_eq!(verdict, XDP_REDIRECT, "stale closed port reclaimed");
    assert_eq!(fx.ct(&syn(33104)).snat_port, closed_port);

    // The close is shared the other way too: a FIN from the backend closes the client's
    // entry (the reverse was closed by the client's FIN above: its port was reclaimed).
    let open = syn(33101);
    let port = u16::from_be(fx.ct(&open).snat_port);
    let backend_fin = Pkt::from_backend("10.200.11.2", 8080, "10.200.11.1", port, FIN_ACK, b"");
    let (verdict, _) = fx.run(fx.lb_b, &backend_fin.bytes());
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        fx.ct(&open).state,
        CT_CLOSING,
        "a backend FIN closes the client's entry"
    );
}

/// A mid-flow packet with no conntrack entry cannot be forwarded (the backend would not know
/// the connection and the SNAT port would be new): dropped and counted.
/// The client's source port is kept as the SNAT port when it is in the range and free, so a
/// client reusing a port reaches the backend on the same 4-tuple (whose TIME_WAIT accepts
/// it by timestamp). A second client on that port to the same backend gets another port in
/// the range, and so does a client port outside the range; IPv6 keeps the port too.
#[test]
fn snat_keeps_the_client_port_when_it_can() {
    let mut fx = Fx::start();
    let first = Pkt::from_client("10.200.1.2", 45000, "10.200.100.1", 80, SYN);
    let same_port = Pkt::from_client("10.200.1.3", 45000, "10.200.100.1", 80, SYN);
    let below = Pkt::from_client("10.200.1.2", 33001, "10.200.100.1", 80, SYN);
    let v6 = Pkt::from_client("fd00:200:1::2", 45001, "fd00:200:100::1", 80, SYN);
    for p in [&first, &same_port, &below, &v6] {
        assert_eq!(fx.run(fx.lb_c, &p.bytes()).0, XDP_REDIRECT, "{p:?}");
    }
    let port = |p: &Pkt| u16::from_be(fx.ct(p).snat_port);
    assert_eq!(port(&first), 45000, "a free in-range client port is kept");
    assert_eq!(port(&v6), 45001, "IPv6 keeps the port too");
    for (p, what) in [
        (&same_port, "the port's second client"),
        (&below, "an out-of-range port"),
    ] {
        let got = port(p);
        assert!(
            (40000..=59999).contains(&got) && got != 45000,
            "{what}: SNAT port {got} must be another port in the range"
        );
    }
    // The reverse entries agree: a reply to 45000 goes back to the first client only.
    let reply = Pkt::from_backend("10.200.11.2", 8080, "10.200.11.1", 45000, SYN_ACK, b"");
    let (verdict, out) = fx.run(fx.lb_b, &reply.bytes());
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        &out[30..34],
        &[10, 200, 1, 2],
        "reply must reach 10.200.1.2"
    );
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 45000);
}

#[test]
fn tcp_without_flow_is_dropped() {
    let mut fx = Fx::start();
    let ack = Pkt::from_client("10.200.1.2", 33001, "10.200.100.1", 80, ACK);
    fx.check(&Row {
        name: "ACK without flow",
        ingress: fx.lb_c,
        input: ack.bytes(),
        verdict: XDP_DROP,
        output: None,
        reason: Reason::NoFlow,
    });
    assert_eq!(fx.service("web").drops, 1);
}

#[test]
fn udp_flow_and_reply() {
    let mut fx = Fx::start();
    let q = Pkt::from_client("10.200.1.2", 5000, "10.200.100.1", 53, L4::Udp);
    let (verdict, _) = fx.run(fx.lb_c, &q.bytes());
    assert_eq!(verdict, XDP_REDIRECT);
    let snat_port = u16::from_be(fx.ct(&q).snat_port);
    // A second datagram of the same flow: exact bytes.
    fx.check(&Row {
        name: "UDP established",
        ingress: fx.lb_c,
        input: q.bytes(),
        verdict: XDP_REDIRECT,
        output: Some(
            q.translated(
                LB_B_MAC,
                BACKEND_MAC,
                ip("10.200.11.1"),
                snat_port,
                ip("10.200.11.2"),
                5353,
            )
            .bytes(),
        ),
        reason: Reason::Forwarded,
    });
    let reply = Pkt::from_backend(
        "10.200.11.2",
        5353,
        "10.200.11.1",
        snat_port,
        L4::Udp,
        b"answer",
    );
    fx.check(&Row {
        name: "UDP reply",
        ingress: fx.lb_b,
        input: reply.bytes(),
        verdict: XDP_REDIRECT,
        output: Some(
            reply
                .translated(
                    LB_C_MAC,
                    CLIENT_MAC,
                    ip("10.200.100.1"),
                    53,
                    ip("10.200.1.2"),
                    5000,
                )
                .bytes(),
        ),
        reason: Reason::ReplyForwarded,
    });
    let dns = fx.service("dns");
    assert_eq!((dns.packets, dns.new_flows), (3, 1));
}

/// IPv4 UDP without a checksum (0) must stay without one, not get a wrong one.
#[test]
fn udp_zero_checksum_stays_zero() {
    let mut fx = Fx::start();
    let q = Pkt::from_client("10.200.1.2", 5001, "10.200.100.1", 53, L4::Udp);
    let mut input = q.bytes();
    let udp_check = 14 + 20 + 6;
    input[udp_check..udp_check + 2].copy_from_slice(&[0, 0]);
    let (verdict, out) = fx.run(fx.lb_c, &input);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(&out[udp_check..udp_check + 2], &[0, 0]);
}

#[test]
fn ipv6_tcp_flow() {
    let mut fx = Fx::start();
    let syn = Pkt::from_client("fd00:200:1::2", 34000, "fd00:200:100::1", 80, SYN);
    let (verdict, _) = fx.run(fx.lb_c, &syn.bytes());
    assert_eq!(verdict, XDP_REDIRECT);
    let snat_port = u16::from_be(fx.ct(&syn).snat_port);
    let ack = Pkt { l4: ACK, ..syn };
    fx.check(&Row {
        name: "IPv6 established",
        ingress: fx.lb_c,
        input: ack.bytes(),
        verdict: XDP_REDIRECT,
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
    });
    let reply = Pkt::from_backend(
        "fd00:200:11::2",
        8080,
        "fd00:200:11::1",
        snat_port,
        SYN_ACK,
        &[],
    );
    fx.check(&Row {
        name: "IPv6 reply",
        ingress: fx.lb_b,
        input: reply.bytes(),
        verdict: XDP_REDIRECT,
        output: Some(
            reply
                .translated(
                    LB_C_MAC,
                    CLIENT_MAC,
                    ip("fd00:200:100::1"),
                    80,
                    ip("fd00:200:1::2"),
                    34000,
                )
                .bytes(),
        ),
        reason: Reason::ReplyForwarded,
    });
}

/// One 802.1Q tag is parsed and kept.
#[test]
fn vlan_tagged_flow() {
    let mut fx = Fx::start();
    let mut syn = Pkt::from_client("10.200.1.2", 33100, "10.200.100.1", 80, SYN);
    syn.vlan = Some(42);
    let (verdict, _) = fx.run(fx.lb_c, &syn.bytes());
    assert_eq!(verdict, XDP_REDIRECT);
    let snat_port = u16::from_be(fx.ct(&syn).snat_port);
    fx.check(&Row {
        name: "VLAN established",
        ingress: fx.lb_c,
        input: syn.bytes(),
        verdict: XDP_REDIRECT,
        output: Some(
            syn.translated(
                LB_B_MAC,
                BACKEND_MAC,
                ip("10.200.11.1"),
                snat_port,
                ip("10.200.11.2"),
                8080,
            )
            .bytes(),
        ),
        reason: Reason::Forwarded,
    });
}

/// One-arm: the backend is reached through the interface the client came in on: XDP_TX.
#[test]
fn one_arm_uses_xdp_tx() {
    let mut fx = Fx::start();
    let syn = Pkt::from_client("10.200.1.2", 33200, "10.200.100.3", 80, SYN);
    let (verdict, out) = fx.run(fx.lb_c, &syn.bytes());
    assert_eq!(verdict, XDP_TX);
    let snat_port = u16::from_be(fx.ct(&syn).snat_port);
    let expected = syn
        .translated(
            LB_C_MAC,
            ONE_ARM_BACKEND_MAC,
            ip("10.200.1.1"),
            snat_port,
            ip("10.200.1.50"),
            8080,
        )
        .bytes();
    assert_eq!(hex(&out), hex(&expected));
}

/// Over its rate, a source is dropped; another source is still served.
#[test]
fn rate_limited_source() {
    let mut fx = Fx::start();
    let from = |src: &str, sport: u16| Pkt::from_client(src, sport, "10.200.100.2", 80, SYN);
    for sport in [1000, 1001] {
        let (v, _) = fx.run(fx.lb_c, &from("10.200.1.2", sport).bytes());
        assert_eq!(v, XDP_REDIRECT, "within the burst of 2");
    }
    fx.check(&Row {
        name: "third SYN over rate 1/s burst 2",
        ingress: fx.lb_c,
        input: from("10.200.1.2", 1002).bytes(),
        verdict: XDP_DROP,
        output: None,
        reason: Reason::RateLimited,
    });
    let (v, _) = fx.run(fx.lb_c, &from("10.200.1.3", 1000).bytes());
    assert_eq!(v, XDP_REDIRECT, "another source keeps being served");
    let s = fx.service("limited");
    assert_eq!((s.new_flows, s.drops), (3, 1));
    // The web service, on another VIP, has no limit: the same source is fine there.
    let (v, _) = fx.run(
        fx.lb_c,
        &Pkt::from_client("10.200.1.2", 1003, "10.200.100.1", 80, SYN).bytes(),
    );
    assert_eq!(v, XDP_REDIRECT);
}

/// A `mode = "http"` service: its packets are parsed, rate-limited and checked like any
/// service's, then passed to the kernel untouched (the local route and sk_lookup take them
/// to the gateway), with no conntrack entry; garbage to it is dropped, not passed.
#[test]
fn gateway_service_is_checked_then_passed() {
    let mut fx = Fx::start();
    let ct_before = fx.dp.conntrack_entries();
    let syn = |src: &str, sport: u16| Pkt::from_client(src, sport, "10.200.100.9", 80, SYN);
    fx.check(&Row {
        name: "SYN to the gateway VIP",
        ingress: fx.lb_c,
        input: syn("10.200.1.2", 1000).bytes(),
        verdict: XDP_PASS,
        output: None,
        reason: Reason::ToGateway,
    });
    let mut bad = syn("10.200.1.2", 1001);
    bad.l4 = L4::Tcp {
        syn: true,
        ack: false,
        fin: true,
    };
    fx.check(&Row {
        name: "SYN+FIN to the gateway VIP",
        ingress: fx.lb_c,
        input: bad.bytes(),
        verdict: XDP_DROP,
        output: None,
        reason: Reason::BadTcpFlags,
    });
    fx.check(&Row {
        name: "third packet from one source over rate 1/s burst 2",
        ingress: fx.lb_c,
        input: syn("10.200.1.2", 1002).bytes(),
        verdict: XDP_DROP,
        output: None,
        reason: Reason::RateLimited,
    });
    fx.check(&Row {
        name: "another source is still passed",
        ingress: fx.lb_c,
        input: Pkt::from_client("10.200.1.3", 1000, "10.200.100.9", 80, ACK).bytes(),
        verdict: XDP_PASS,
        output: None,
        reason: Reason::ToGateway,
    });
    assert_eq!(
        fx.dp.conntrack_entries(),
        ct_before,
        "the kernel's TCP stack owns gateway connections: no conntrack entry"
    );
    let s = fx.service("gateway");
    assert_eq!(
        (s.packets, s.new_flows, s.drops),
        (2, 1, 2),
        "passed packets, SYNs among them, drops"
    );
}

#[test]
fn backend_without_neighbour_is_dropped() {
    let mut fx = Fx::start();
    fx.check(&Row {
        name: "no neighbour entry",
        ingress: fx.lb_c,
        input: Pkt::from_client("10.200.1.2", 33300, "10.200.100.4", 80, SYN).bytes(),
        verdict: XDP_DROP,
        output: None,
        reason: Reason::NoNeighbour,
    });
}

/// Stateless rows: traffic that is not ours, and every malformed kind.
#[test]
fn pass_and_malformed_table() {
    let mut fx = Fx::start();
    let syn = Pkt::from_client("10.200.1.2", 33400, "10.200.100.1", 80, SYN).bytes();
    let to_other = Pkt::from_client("10.200.1.2", 33400, "10.200.1.1", 22, SYN).bytes();
    let with_ipv4 = |mut b: Vec<u8>, f: &dyn Fn(&mut [u8])| {
        f(&mut b[14..]);
        b
    };
    // IPv4 options: IHL 6 with a 4-byte NOP option inserted after the header.
    let with_options = |b: &[u8]| {
        let mut v = b[..34].to_vec();
        v.extend_from_slice(&[1, 1, 1, 0]);
        v.extend_from_slice(&b[34..]);
        v[14] = 0x46;
        let tot = u16::from_be_bytes([v[16], v[17]]) + 4;
        v[16..18].copy_from_slice(&tot.to_be_bytes());
        v
    };
    let ipv6_hbh = {
        let mut b = Pkt::from_client("fd00:200:1::2", 1, "fd00:200:100::1", 80, SYN).bytes();
        b[14 + 6] = 0; // next header: hop-by-hop options
        b
    };
    let arp = {
        let mut b = vec![0xff; 6];
        b.extend_from_slice(&CLIENT_MAC);
        b.extend_from_slice(&[0x08, 0x06]);
        b.extend_from_slice(&[0u8; 28]);
        b
    };
    let icmp_to_vip = with_ipv4(syn.clone(), &|ip| ip[9] = 1);
    let rows = vec![
        Row {
            name: "non-service TCP passes untouched",
            ingress: fx.lb_c,
            input: to_other.clone(),
            verdict: XDP_PASS,
            output: None,
            reason: Reason::NoService,
        },
        Row {
            name: "ARP passes",
            ingress: fx.lb_c,
            input: arp,
            verdict: XDP_PASS,
            output: None,
            reason: Reason::NotIp,
        },
        Row {
            // BPF_PROG_TEST_RUN refuses frames under 14 bytes, so truncate the VLAN tag.
            name: "802.1Q ethertype without its tag passes",
            ingress: fx.lb_c,
            input: {
                let mut b = syn[..14].to_vec();
                b[12..14].copy_from_slice(&[0x81, 0x00]);
                b
            },
            verdict: XDP_PASS,
            output: None,
            reason: Reason::TruncatedEth,
        },
        Row {
            name: "truncated IPv4 header drops",
            ingress: fx.lb_c,
            input: syn[..14 + 12].to_vec(),
            verdict: XDP_DROP,
            output: None,
            reason: Reason::MalformedIp,
        },
        Row {
            name: "IHL < 5 drops",
            ingress: fx.lb_c,
            input: with_ipv4(syn.clone(), &|ip| ip[0] = 0x44),
            verdict: XDP_DROP,
            output: None,
            reason: Reason::MalformedIp,
        },
        Row {
            name: "bad IP version drops",
            ingress: fx.lb_c,
            input: with_ipv4(syn.clone(), &|ip| ip[0] = 0x55),
            verdict: XDP_DROP,
            output: None,
            reason: Reason::MalformedIp,
        },
        Row {
            name: "IPv4 options to a VIP drop",
            ingress: fx.lb_c,
            input: with_options(&syn),
            verdict: XDP_DROP,
            output: None,
            reason: Reason::Ipv4Options,
        },
        Row {
            name: "IPv4 options elsewhere pass",
            ingress: fx.lb_c,
            input: with_options(&to_other),
            verdict: XDP_PASS,
            output: None,
            reason: Reason::Ipv4Options,
        },
        Row {
            name: "fragment to a VIP drops",
            ingress: fx.lb_c,
            input: with_ipv4(syn.clone(), &|ip| ip[6] |= 0x20),
            verdict: XDP_DROP,
            output: None,
            reason: Reason::Fragment,
        },
        Row {
            name: "non-first fragment to a VIP drops",
            ingress: fx.lb_c,
            input: with_ipv4(syn.clone(), &|ip| ip[7] = 8),
            verdict: XDP_DROP,
            output: None,
            reason: Reason::Fragment,
        },
        Row {
            name: "fragment elsewhere passes",
            ingress: fx.lb_c,
            input: with_ipv4(to_other.clone(), &|ip| ip[6] |= 0x20),
            verdict: XDP_PASS,
            output: None,
            reason: Reason::Fragment,
        },
        Row {
            name: "IPv6 extension header to a VIP drops",
            ingress: fx.lb_c,
            input: ipv6_hbh,
            verdict: XDP_DROP,
            output: None,
            reason: Reason::Ipv6ExtHeader,
        },
        Row {
            name: "truncated TCP header to a VIP drops",
            ingress: fx.lb_c,
            input: syn[..14 + 20 + 10].to_vec(),
            verdict: XDP_DROP,
            output: None,
            reason: Reason::TruncatedL4,
        },
        Row {
            name: "TCP data offset < 5 to a VIP drops",
            ingress: fx.lb_c,
            input: {
                let mut b = syn.clone();
                b[14 + 20 + 12] = 0x40;
                b
            },
            verdict: XDP_DROP,
            output: None,
            reason: Reason::TruncatedL4,
        },
        Row {
            name: "ICMP to a VIP drops",
            ingress: fx.lb_c,
            input: icmp_to_vip,
            verdict: XDP_DROP,
            output: None,
            reason: Reason::OtherProto,
        },
    ];
    for row in &rows {
        fx.check(row);
    }
    let web = fx.service("web");
    assert_eq!(
        web.packets + web.new_flows,
        0,
        "no malformed packet may reach the service"
    );
}

/// Services whose keys hash to one `SERVICE_SLOTS` slot are both served (the packet path
/// asks `SERVICES` for a shared slot), and the slot follows removals: back to the one
/// remaining service, then empty.
#[test]
fn services_sharing_a_slot() {
    let mut fx = Fx::start();
    let vip = "10.200.100.1";
    let key = |port: u16| {
        ServiceKey::new(
            Addr::from(ip(vip)),
            port.to_be(),
            lb_common::PROTO_TCP,
            lb_common::FAMILY_V4,
        )
    };
    let web_slot = slot_of(&key(80));
    let port = (81..u16::MAX)
        .find(|p| slot_of(&key(*p)) == web_slot)
        .expect("a port that shares web's slot");
    let with_shared = format!(
        "{CONFIG}\n[[service]]\nname = \"shared\"\nvip = \"{vip}\"\nport = {port}\n\
         protocol = \"tcp\"\n[[service.backend]]\naddress = \"10.200.11.2\"\nport = 8081\n"
    );
    let apply = |fx: &mut Fx, toml: &str| {
        let cfg = config::parse(toml, "fixtures.toml").expect("valid config");
        fx.rec
            .apply(&mut fx.dp, &DesiredState::from_config(&cfg))
            .expect("apply");
    };
    let syn = |sport: u16, dport: u16| Pkt::from_client("10.200.1.2", sport, vip, dport, SYN);
    let web_flow = syn(34000, 80);
    let (v, _) = fx.run(fx.lb_c, &web_flow.bytes());
    assert_eq!(v, XDP_REDIRECT);
    apply(&mut fx, &with_shared);
    let ack = |p: &Pkt| Pkt {
        l4: ACK,
        ..p.clone()
    };
    let out = forwarded_bytes(&mut fx, &ack(&web_flow), "web, established, shared slot");
    assert_eq!(
        &out[36..38],
        &8080u16.to_be_bytes(),
        "to web's backend port"
    );
    let out = forwarded_bytes(&mut fx, &syn(34001, port), "new service in web's slot");
    assert_eq!(
        &out[36..38],
        &8081u16.to_be_bytes(),
        "to its own backend port"
    );
    assert_eq!(fx.service("shared").new_flows, 1);

    apply(&mut fx, CONFIG);
    forwarded_bytes(&mut fx, &ack(&web_flow), "web, alone in its slot again");
    let gone = syn(34002, port);
    fx.check(&Row {
        name: "removed service",
        ingress: fx.lb_c,
        input: gone.bytes(),
        verdict: XDP_PASS,
        output: None,
        reason: Reason::NoService,
    });

    let without_web = CONFIG.replacen("port = 80\n", "port = 8000\n", 1);
    apply(&mut fx, &without_web);
    fx.check(&Row {
        name: "web removed: its slot is empty",
        ingress: fx.lb_c,
        input: ack(&web_flow).bytes(),
        verdict: XDP_PASS,
        output: None,
        reason: Reason::NoService,
    });
    forwarded_bytes(&mut fx, &syn(34003, 8000), "web's key moved to port 8000");
}

/// Runs a row expecting a forwarded packet and returns the output bytes (rewritten: their
/// exact form is checked by the flow tests).
fn forwarded_bytes(fx: &mut Fx, p: &Pkt, name: &'static str) -> Vec<u8> {
    let before = fx.reasons();
    let (verdict, out) = fx.run(fx.lb_c, &p.bytes());
    assert_eq!(verdict, XDP_REDIRECT, "{name}");
    let after = fx.reasons();
    assert_eq!(
        after[Reason::Forwarded as usize] - before[Reason::Forwarded as usize],
        1,
        "{name}"
    );
    out
}

/// A table installed through the mmap path reads back slot for slot, and a later install
/// replaces it whole.
#[test]
fn maglev_table_install_reads_back() {
    let mut dp = Dataplane::load(LoadOptions::default()).expect("load");
    let table: Vec<u32> = (0..65537u32).map(|i| i % 7 + 1).collect();
    dp.install_table(5, &table).expect("install");
    assert_eq!(dp.read_table(5).expect("read back"), table);
    let smaller: Vec<u32> = (0..1021u32).map(|i| i % 3 + 10).collect();
    dp.install_table(5, &smaller).expect("swap");
    assert_eq!(dp.read_table(5).expect("read back"), smaller);
    dp.remove_table(5).expect("remove");
    assert!(dp.read_table(5).is_err(), "table still installed");
    dp.remove_table(5)
        .expect("removing a missing table is not an error");
}

/// A service that leaves the config takes its Maglev table with it (the outer map would
/// otherwise keep up to M slots per removed service alive until its id is reused).
#[test]
fn removed_service_drops_its_table() {
    let mut fx = Fx::start();
    let dns_id = fx
        .rec
        .applied()
        .find(|s| s.desired.name == "dns")
        .expect("dns applied")
        .id;
    assert!(fx.dp.read_table(dns_id).is_ok(), "dns has a table");
    let start = CONFIG.find("[[service]]\nname = \"dns\"").unwrap();
    let end = start + CONFIG[start + 1..].find("[[service]]").unwrap() + 1;
    let without_dns = format!("{}{}", &CONFIG[..start], &CONFIG[end..]);
    let cfg = config::parse(&without_dns, "fixtures.toml").unwrap();
    fx.rec
        .apply(&mut fx.dp, &DesiredState::from_config(&cfg))
        .unwrap();
    assert!(fx.rec.applied().all(|s| s.desired.name != "dns"));
    assert!(fx.dp.read_table(dns_id).is_err(), "dns's table outlived it");
    let web_id = fx
        .rec
        .applied()
        .find(|s| s.desired.name == "web")
        .unwrap()
        .id;
    assert!(fx.dp.read_table(web_id).is_ok(), "web kept its table");
}

/// Runs a fixture row and checks verdict, output bytes and the single reason counter.
trait Check {
    fn check(&mut self, row: &Row) -> Vec<u8>;
}

impl Check for Fx {
    fn check(&mut self, row: &Row) -> Vec<u8> {
        let before = self.reasons();
        let (verdict, out) = self.run(row.ingress, &row.input);
        assert_eq!(
            verdict, row.verdict,
            "{}: verdict {} (expected {})",
            row.name, verdict, row.verdict
        );
        if let Some(expected) = &row.output {
            assert_eq!(
                hex(&out),
                hex(expected),
                "{}: output bytes differ (got vs expected)",
                row.name
            );
        } else {
            assert_eq!(out, row.input, "{}: packet must be untouched", row.name);
        }
        self.assert_only_reason(&before, row.reason, row.name);
        out
    }
}

/// `session_affinity = "client_ip"` (`SVC_FLAG_SRC_HASH`): every new flow of one client
/// address picks the same backend, whatever its ports; different clients still spread.
/// The same backends without affinity spread one client's flows (so the check can fail).
#[test]
fn client_ip_affinity_hashes_the_source_only() {
    let mut fx = Fx::start();
    let backends: String = (8081..=8084)
        .map(|p| format!("[[service.backend]]\naddress = \"10.200.11.2\"\nport = {p}\n"))
        .collect();
    let toml = format!(
        "{CONFIG}\n[[service]]\nname = \"sticky\"\nvip = \"10.200.100.5\"\nport = 80\n\
         protocol = \"tcp\"\nsession_affinity = \"client_ip\"\n{backends}\
         [[service]]\nname = \"spread\"\nvip = \"10.200.100.5\"\nport = 81\n\
         protocol = \"tcp\"\n{backends}"
    );
    let cfg = config::parse(&toml, "fixtures.toml").expect("valid config");
    fx.rec
        .apply(&mut fx.dp, &DesiredState::from_config(&cfg))
        .expect("apply");
    let flags = |name: &str| {
        fx.rec
            .applied()
            .find(|s| s.desired.name == name)
            .unwrap()
            .desired
            .flags
    };
    assert_eq!(
        flags("sticky"),
        lb_common::SVC_FLAG_NAT | lb_common::SVC_FLAG_SRC_HASH
    );
    assert_eq!(flags("spread"), lb_common::SVC_FLAG_NAT);

    // The backend port a new flow went to.
    let backend = |fx: &mut Fx, src: &str, sport: u16, dport: u16| {
        let out = forwarded_bytes(
            fx,
            &Pkt::from_client(src, sport, "10.200.100.5", dport, SYN),
            "new flow",
        );
        u16::from_be_bytes([out[36], out[37]])
    };
    let mut per_client = std::collections::BTreeSet::new();
    for host in 2..18 {
        let src = format!("10.200.1.{host}");
        let picks: std::collections::BTreeSet<u16> = (0..8)
            .map(|i| backend(&mut fx, &src, 20000 + i * 7, 80))
            .collect();
        assert_eq!(
            picks.len(),
            1,
            "{src}: one backend for all its flows, got {picks:?}"
        );
        per_client.extend(picks);
    }
    assert!(
        per_client.len() >= 3,
        "16 clients over 4 backends: {per_client:?}"
    );

    let spread: std::collections::BTreeSet<u16> = (0..16)
        .map(|i| backend(&mut fx, "10.200.1.2", 30000 + i * 7, 81))
        .collect();
    assert!(
        spread.len() >= 2,
        "without affinity one client's flows spread: {spread:?}"
    );
}

/// New flows reuse each CPU's cached next hop of a backend (no FIB lookup per flow), and a
/// changed neighbour reaches them once the agent says the next hops changed (it does on every
/// neighbour or route event).
#[test]
fn next_hop_cache_follows_a_new_mac() {
    // The cache is per CPU: every run on the same one.
    // SAFETY: a zeroed cpu_set_t is valid; 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
    let mut fx = Fx::start();
    let new_mac = [2, 0, 0, 0, 0xb, 0x99];
    let dmac_of = |fx: &mut Fx, sport: u16| {
        let syn = Pkt::from_client("10.200.1.2", sport, "10.200.100.1", 80, SYN);
        let (verdict, out) = fx.run(fx.lb_c, &syn.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "SYN from port {sport}");
        assert_eq!(fx.ct(&syn).egress_dmac, out[..6], "entry and frame agree");
        <[u8; 6]>::try_from(&out[..6]).unwrap()
    };
    assert_eq!(dmac_of(&mut fx, 33600), BACKEND_MAC);
    fx.ns
        .ip([
            "neigh",
            "replace",
            "10.200.11.2",
            "lladdr",
            &mac_str(new_mac),
            "dev",
            "lb-b",
            "nud",
            "permanent",
        ])
        .expect("ip neigh replace");
    assert_eq!(
        dmac_of(&mut fx, 33601),
        BACKEND_MAC,
        "cached: no FIB lookup for this flow"
    );
    fx.dp.next_hops_changed().expect("bump");
    assert_eq!(dmac_of(&mut fx, 33602), new_mac, "looked up again");
}
