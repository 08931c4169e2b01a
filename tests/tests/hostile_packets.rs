//! Hostile and malformed frames through the real XDP program (`BPF_PROG_TEST_RUN`): every
//! class of what a router must never forward, IPv4 and IPv6, as table rows. Each row asserts
//! the verdict, that the frame is untouched (nothing half-rewritten), that exactly its reason
//! counter moved, and that nothing reached the service.

use lb_common::{Reason, flow_state::*};
use lb_tests::fixture::*;

const PSH: u8 = 0x08;
const URG: u8 = 0x20;

const L3: usize = 14;

struct Row {
    name: String,
    ingress: u32,
    input: Vec<u8>,
    verdict: u32,
    reason: Reason,
}

fn row(name: impl Into<String>, ingress: u32, input: Vec<u8>, verdict: u32, reason: Reason) -> Row {
    Row {
        name: name.into(),
        ingress,
        input,
        verdict,
        reason,
    }
}

/// Runs rows: verdict, untouched bytes, exactly one reason counter.
fn check_rows(fx: &mut Fx, rows: &[Row]) {
    for r in rows {
        let before = fx.reasons();
        let (verdict, out) = fx.run(r.ingress, &r.input);
        assert_eq!(
            verdict, r.verdict,
            "{}: verdict {verdict} (expected {})",
            r.name, r.verdict
        );
        assert_eq!(
            hex(&out),
            hex(&r.input),
            "{}: the frame must be untouched",
            r.name
        );
        fx.assert_only_reason(&before, r.reason, &r.name);
    }
}

fn is_v6(b: &[u8]) -> bool {
    b[12..14] == [0x86, 0xdd]
}

fn l4_off(b: &[u8]) -> usize {
    L3 + if is_v6(b) { 40 } else { 20 }
}

/// Recomputes the IPv4 header checksum (so a row breaks only what it means to break).
fn fix_ipv4(b: &mut [u8]) {
    if is_v6(b) {
        return;
    }
    b[L3 + 10..L3 + 12].copy_from_slice(&[0, 0]);
    let c = lb_common::csum::checksum(&b[L3..L3 + 20], 0);
    b[L3 + 10..L3 + 12].copy_from_slice(&c.to_ne_bytes());
}

fn edit(mut b: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut b);
    fix_ipv4(&mut b);
    b
}

/// Sets the IP length field to `n` bytes of payload (IPv4: total length `20 + n`).
fn set_ip_payload_len(b: &mut [u8], n: usize) {
    if is_v6(b) {
        b[L3 + 4..L3 + 6].copy_from_slice(&(n as u16).to_be_bytes());
    } else {
        b[L3 + 2..L3 + 4].copy_from_slice(&(20 + n as u16).to_be_bytes());
    }
}

fn ip_payload_len(b: &[u8]) -> usize {
    b.len() - l4_off(b)
}

fn set_ttl(b: &mut [u8], ttl: u8) {
    if is_v6(b) {
        b[L3 + 7] = ttl;
    } else {
        b[L3 + 8] = ttl;
    }
}

/// The rows every family shares, for a client SYN to a TCP service built by `syn(src, sport)`.
fn shared_rows(
    fx: &Fx,
    fam: &str,
    syn: &dyn Fn(&str, u16) -> Pkt,
    client: &str,
    martians: &[&str],
) -> Vec<Row> {
    let c = fx.lb_c;
    let base = |sport: u16| syn(client, sport).bytes();
    let mut rows = vec![
        row(
            format!("{fam}: broadcast destination MAC"),
            c,
            edit(base(1001), |b| b[..6].fill(0xff)),
            XDP_DROP,
            Reason::BadDstMac,
        ),
        row(
            format!("{fam}: multicast destination MAC"),
            c,
            edit(base(1002), |b| {
                b[..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1])
            }),
            XDP_DROP,
            Reason::BadDstMac,
        ),
        row(
            format!("{fam}: another host's destination MAC"),
            c,
            edit(base(1003), |b| b[..6].copy_from_slice(&[2, 0, 0, 0, 9, 9])),
            XDP_DROP,
            Reason::BadDstMac,
        ),
        row(
            format!("{fam}: broadcast source MAC"),
            c,
            edit(base(1004), |b| b[6..12].fill(0xff)),
            XDP_DROP,
            Reason::BadSrcMac,
        ),
        row(
            format!("{fam}: multicast source MAC"),
            c,
            edit(base(1005), |b| {
                b[6..12].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1])
            }),
            XDP_DROP,
            Reason::BadSrcMac,
        ),
        row(
            format!("{fam}: IP length longer than the frame"),
            c,
            edit(base(1006), |b| {
                let n = ip_payload_len(b) + 10;
                set_ip_payload_len(b, n)
            }),
            XDP_DROP,
            Reason::BadIpLength,
        ),
        row(
            format!("{fam}: IP length shorter than the TCP header"),
            c,
            edit(base(1007), |b| set_ip_payload_len(b, 10)),
            XDP_DROP,
            Reason::BadIpLength,
        ),
        row(
            format!("{fam}: IP length of zero payload"),
            c,
            edit(base(1008), |b| set_ip_payload_len(b, 0)),
            XDP_DROP,
            Reason::BadIpLength,
        ),
        row(
            format!("{fam}: TTL 0 goes to the kernel"),
            c,
            edit(base(1009), |b| set_ttl(b, 0)),
            XDP_PASS,
            Reason::TtlExceeded,
        ),
        row(
            format!("{fam}: TTL 1 goes to the kernel"),
            c,
            edit(base(1010), |b| set_ttl(b, 1)),
            XDP_PASS,
            Reason::TtlExceeded,
        ),
        row(
            format!("{fam}: TCP data offset past the segment"),
            c,
            edit(base(1011), |b| {
                let o = l4_off(b);
                b[o + 12] = 0xf0
            }),
            XDP_DROP,
            Reason::BadL4Length,
        ),
        row(
            format!("{fam}: source port 0"),
            c,
            base(0),
            XDP_DROP,
            Reason::BadSrcPort,
        ),
    ];
    for (i, flags) in [
        0,
        TCP_SYN | TCP_FIN,
        TCP_SYN | TCP_RST,
        TCP_FIN,
        TCP_FIN | PSH | URG,
        0xff,
        PSH,
        TCP_SYN | TCP_FIN | TCP_ACK,
        TCP_FIN | TCP_RST | TCP_ACK,
    ]
    .into_iter()
    .enumerate()
    {
        rows.push(row(
            format!("{fam}: TCP flags {flags:#04x}"),
            c,
            edit(base(1100 + i as u16), |b| {
                let o = l4_off(b);
                b[o + 13] = flags
            }),
            XDP_DROP,
            Reason::BadTcpFlags,
        ));
    }
    for (i, src) in martians.iter().enumerate() {
        rows.push(row(
            format!("{fam}: martian source {src}"),
            c,
            syn(src, 1200 + i as u16).bytes(),
            XDP_DROP,
            Reason::MartianSource,
        ));
    }
    rows
}

#[test]
fn hostile_client_frames_never_reach_a_backend() {
    let mut fx = Fx::start();
    let syn4 = |src: &str, sport: u16| Pkt::from_client(src, sport, "10.200.100.1", 80, SYN);
    let syn6 = |src: &str, sport: u16| Pkt::from_client(src, sport, "fd00:200:100::1", 80, SYN);
    let mut rows = shared_rows(
        &fx,
        "IPv4",
        &syn4,
        "10.200.1.2",
        &[
            "0.0.0.5",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
            "10.200.100.1",
        ],
    );
    rows.extend(shared_rows(
        &fx,
        "IPv6",
        &syn6,
        "fd00:200:1::2",
        &[
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.200.1.2",
            "::10.200.1.2",
            "fd00:200:100::1",
        ],
    ));
    // IPv4 only: the header checksum.
    let c = fx.lb_c;
    rows.push(row(
        "IPv4: bad header checksum",
        c,
        {
            let mut b = syn4("10.200.1.2", 1300).bytes();
            b[L3 + 10] ^= 0x5a;
            b
        },
        XDP_DROP,
        Reason::BadIpChecksum,
    ));
    // UDP (an IPv4 service): lengths and the source port.
    let udp =
        |sport: u16| Pkt::from_client("10.200.1.2", sport, "10.200.100.1", 53, L4::Udp).bytes();
    rows.push(row(
        "UDP: length under 8",
        c,
        edit(udp(1400), |b| {
            let o = l4_off(b);
            b[o + 4..o + 6].copy_from_slice(&4u16.to_be_bytes())
        }),
        XDP_DROP,
        Reason::BadL4Length,
    ));
    rows.push(row(
        "UDP: length past the IP payload",
        c,
        edit(udp(1401), |b| {
            let o = l4_off(b);
            b[o + 4..o + 6].copy_from_slice(&200u16.to_be_bytes())
        }),
        XDP_DROP,
        Reason::BadL4Length,
    ));
    rows.push(row(
        "UDP: IP length shorter than the UDP header",
        c,
        edit(udp(1402), |b| set_ip_payload_len(b, 4)),
        XDP_DROP,
        Reason::BadIpLength,
    ));
    rows.push(row(
        "UDP: source port 0",
        c,
        udp(0),
        XDP_DROP,
        Reason::BadSrcPort,
    ));
    rows.push(row(
        "UDP: martian source",
        c,
        Pkt::from_client("127.0.0.1", 1403, "10.200.100.1", 53, L4::Udp).bytes(),
        XDP_DROP,
        Reason::MartianSource,
    ));
    check_rows(&mut fx, &rows);
    for svc in ["web", "web6", "dns"] {
        let s = fx.service(svc);
        assert_eq!(
            (s.packets, s.new_flows),
            (0, 0),
            "{svc}: a hostile frame was forwarded"
        );
    }
    assert_eq!(
        fx.dp.conntrack_entries(),
        0,
        "a hostile frame opened a flow"
    );
}

/// The reply path gets the same care: a backend's frame that breaks a rule is dropped
/// before it touches the flow's state.
#[test]
fn hostile_reply_frames_are_dropped() {
    let mut fx = Fx::start();
    let syn = Pkt::from_client("10.200.1.2", 34000, "10.200.100.1", 80, SYN);
    let (verdict, _) = fx.run(fx.lb_c, &syn.bytes());
    assert_eq!(verdict, XDP_REDIRECT);
    let snat_port = u16::from_be(fx.ct(&syn).snat_port);
    let reply = || {
        Pkt::from_backend(
            "10.200.11.2",
            8080,
            "10.200.11.1",
            snat_port,
            SYN_ACK,
            b"world",
        )
        .bytes()
    };
    let b = fx.lb_b;
    let rows = vec![
        row(
            "reply: another host's destination MAC",
            b,
            edit(reply(), |f| f[..6].copy_from_slice(&[2, 0, 0, 0, 9, 9])),
            XDP_DROP,
            Reason::BadDstMac,
        ),
        row(
            "reply: multicast source MAC",
            b,
            edit(reply(), |f| f[6] = 0x01),
            XDP_DROP,
            Reason::BadSrcMac,
        ),
        row(
            "reply: IP length longer than the frame",
            b,
            edit(reply(), |f| {
                let n = ip_payload_len(f) + 1;
                set_ip_payload_len(f, n)
            }),
            XDP_DROP,
            Reason::BadIpLength,
        ),
        row(
            "reply: bad header checksum",
            b,
            {
                let mut f = reply();
                f[L3 + 10] ^= 1;
                f
            },
            XDP_DROP,
            Reason::BadIpChecksum,
        ),
        row(
            "reply: TTL 1 is dropped",
            b,
            edit(reply(), |f| set_ttl(f, 1)),
            XDP_DROP,
            Reason::TtlExceeded,
        ),
        row(
            "reply: SYN+FIN",
            b,
            edit(reply(), |f| {
                let o = l4_off(f);
                f[o + 13] = TCP_SYN | TCP_FIN
            }),
            XDP_DROP,
            Reason::BadTcpFlags,
        ),
        row(
            "reply: RST+SYN",
            b,
            edit(reply(), |f| {
                let o = l4_off(f);
                f[o + 13] = TCP_SYN | TCP_RST
            }),
            XDP_DROP,
            Reason::BadTcpFlags,
        ),
    ];
    let before = fx.ct(&syn);
    check_rows(&mut fx, &rows);
    assert_eq!(
        fx.ct(&syn).state,
        before.state,
        "a dropped reply changed the flow's state"
    );
    // A valid reply still goes through afterwards.
    let (verdict, _) = fx.run(fx.lb_b, &reply());
    assert_eq!(
        verdict, XDP_REDIRECT,
        "the valid reply after the hostile ones"
    );
}

/// Bytes after the IP datagram (Ethernet padding, garbage) are cut before forwarding, both
/// ways, and the TTL / hop limit goes down by one; the output is exactly what a clean frame
/// translates to (etherparse-built, so checksums are proven).
#[test]
fn trailing_bytes_are_trimmed_and_ttl_decremented() {
    let mut fx = Fx::start();
    for (client, vip, backend, snat) in [
        ("10.200.1.2", "10.200.100.1", "10.200.11.2", "10.200.11.1"),
        (
            "fd00:200:1::2",
            "fd00:200:100::1",
            "fd00:200:11::2",
            "fd00:200:11::1",
        ),
    ] {
        let mut syn = Pkt::from_client(client, 35000, vip, 80, SYN);
        syn.ttl = 2;
        let mut padded = syn.bytes();
        padded.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0]);
        let (verdict, out) = fx.run(fx.lb_c, &padded);
        assert_eq!(verdict, XDP_REDIRECT, "{client}: padded SYN");
        let snat_port = u16::from_be(fx.ct(&syn).snat_port);
        let want = syn.translated(
            LB_B_MAC,
            BACKEND_MAC,
            ip(snat),
            snat_port,
            ip(backend),
            8080,
        );
        assert_eq!(want.ttl, 1);
        assert_eq!(
            hex(&out),
            hex(&want.bytes()),
            "{client}: trimmed, TTL 2 -> 1"
        );

        let reply = Pkt::from_backend(backend, 8080, snat, snat_port, SYN_ACK, b"world");
        let mut padded = reply.bytes();
        padded.extend_from_slice(&[0x55; 9]);
        let (verdict, out) = fx.run(fx.lb_b, &padded);
        assert_eq!(verdict, XDP_REDIRECT, "{client}: padded reply");
        let want = reply.translated(LB_C_MAC, CLIENT_MAC, ip(vip), 80, ip(client), 35000);
        assert_eq!(
            hex(&out),
            hex(&want.bytes()),
            "{client}: reply trimmed, TTL 64 -> 63"
        );
    }
}

/// A SYN flood from spoofed sources holds SNAT ports with flows that never complete. Under
/// pressure (every probe finds its port held), a flow still opening and quiet for
/// `tcp_syn_reclaim_ms` gives its port back, and its client-side entry goes with it; a flow
/// whose handshake completed keeps its port, however long it idles.
#[test]
fn snat_ports_of_abandoned_handshakes_are_reclaimed_under_pressure() {
    let mut fx = Fx::start();
    let mut settings = lb_userspace::config::parse(CONFIG, "fixtures.toml")
        .unwrap()
        .global
        .settings();
    (settings.snat_port_min, settings.snat_port_max) = (40000, 40003);
    settings.tcp_syn_reclaim_ms = 0;
    fx.dp.set_settings(&settings).unwrap();

    let syn = |src: &str, sport| Pkt::from_client(src, sport, "10.200.100.1", 80, SYN);
    // Two spoofed SYNs (never answered) and two real clients that complete the handshake.
    let spoofed = [syn("10.200.7.1", 2000), syn("10.200.7.2", 2001)];
    let real = [syn("10.200.1.2", 3000), syn("10.200.1.3", 3001)];
    for p in spoofed.iter().chain(&real) {
        let (verdict, _) = fx.run(fx.lb_c, &p.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "{p:?}");
    }
    for p in &real {
        let ack = Pkt {
            l4: ACK,
            ..p.clone()
        };
        let (verdict, _) = fx.run(fx.lb_c, &ack.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "handshake ACK");
    }
    let newcomer = |i: u16| syn("10.200.1.9", 4000 + i).bytes();
    // Reclaim off: every port is held, the newcomer is refused.
    let (verdict, _) = fx.run(fx.lb_c, &newcomer(0));
    assert_eq!(verdict, XDP_DROP, "all ports held, reclaim off");

    settings.tcp_syn_reclaim_ms = 500;
    fx.dp.set_settings(&settings).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut got = Vec::new();
    for i in 1..=2 {
        let (verdict, _) = fx.run(fx.lb_c, &newcomer(i));
        assert_eq!(
            verdict, XDP_REDIRECT,
            "newcomer {i} takes an abandoned handshake's port"
        );
        got.push(fx.ct(&syn("10.200.1.9", 4000 + i)).snat_port);
    }
    let (verdict, _) = fx.run(fx.lb_c, &newcomer(3));
    assert_eq!(verdict, XDP_DROP, "the completed flows keep their ports");
    for p in &spoofed {
        assert!(
            fx.dp.conntrack_get(&p.flow_key()).is_none(),
            "a reclaimed handshake's client entry must go with its port"
        );
    }
    for p in &real {
        let ct = fx.ct(p);
        assert!(
            !got.contains(&ct.snat_port),
            "an established flow lost its port"
        );
    }
}
