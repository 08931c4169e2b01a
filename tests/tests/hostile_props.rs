//! Issue 10 through `BPF_PROG_TEST_RUN`: the hostile corpus row by row, and a property test
//! over mutated frames.
//!
//! Property: whenever the program answers `XDP_TX` or `XDP_REDIRECT`, the input was a frame the
//! policy allows (`corpus::policy_violation`, the reference model) and the output is sound
//! (`corpus::forwarded_problems`): IP length == frame length - L2 header, right IPv4 header
//! checksum, TTL/hop limit = input - 1 and > 0, TCP/UDP checksum right whenever the input's
//! was, TCP data offset within the segment, no martian source.
//!
//! The mutations come from a small deterministic PRNG: fixed seed, or `HOSTILE_SEED=N` to
//! reproduce or explore; `HOSTILE_CASES=N` cases (default 10000, about a second), 120 s at most. Each problem
//! is reported once per kind with its first case (seed, case number, input and output hex).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    VIP4, VIP6,
    corpus::{self, Endpoints},
    fixture::*,
};
use lb_userspace::{config, reconcile::DesiredState};

const DEFAULT_SEED: u64 = 0x0010_0BAD_5EED;
const DEFAULT_CASES: usize = 10_000;
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// The fixture's services plus a UDP service on the IPv6 VIP (the corpus has IPv6 UDP).
fn start() -> Fx {
    let mut fx = Fx::start();
    let toml = format!(
        "{CONFIG}\n[[service]]\nname = \"dns6\"\nvip = \"fd00:200:100::1\"\nport = 53\n\
         protocol = \"udp\"\n[[service.backend]]\naddress = \"fd00:200:11::2\"\nport = 5353\n"
    );
    let cfg = config::parse(&toml, "hostile.toml").expect("valid config");
    fx.rec
        .apply(&mut fx.dp, &DesiredState::from_config(&cfg))
        .expect("apply");
    fx
}

fn forwarded(verdict: u32) -> bool {
    verdict == XDP_TX || verdict == XDP_REDIRECT
}

fn vips() -> [IpAddr; 2] {
    [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
}

/// Every corpus row through the program (openers first): hostile rows must not be forwarded;
/// controls must be, and soundly. Prints every row that fails, then fails.
#[test]
fn corpus_through_test_run() {
    let mut fx = start();
    let ep = Endpoints {
        client_mac: CLIENT_MAC,
        lb_mac: LB_C_MAC,
        client4: "10.200.1.2".parse().unwrap(),
        client6: "fd00:200:1::2".parse().unwrap(),
        vip4: VIP4,
        vip6: VIP6,
        tcp_port: 80,
        udp_port: 53,
        first_sport: 21000,
        fixed_sport: None,
    };
    let mut failures = Vec::new();
    let entries = corpus::build(&ep);
    for e in &entries {
        if let Some(o) = &e.opener {
            let (v, _) = fx.run(fx.lb_c, o);
            assert!(forwarded(v), "opener of {} not forwarded ({v})", e.class);
        }
        let (v, out) = fx.run(fx.lb_c, &e.frame);
        let label = format!("#{} {} {}", e.index, e.family(), e.class);
        match (e.must_not_forward, forwarded(v)) {
            (true, true) => failures.push(format!(
                "FORWARDED ({v}): {label}\n    in  {}\n    out {}",
                corpus::hex(&e.frame),
                corpus::hex(&out)
            )),
            (false, false) => failures.push(format!(
                "control NOT FORWARDED ({v}): {label}\n    in {}",
                corpus::hex(&e.frame)
            )),
            (false, true) => {
                let p = corpus::forwarded_problems(&e.frame, &out, &[]);
                if !p.is_empty() {
                    failures.push(format!(
                        "control DAMAGED: {label}: {}\n    in  {}\n    out {}",
                        p.join("; "),
                        corpus::hex(&e.frame),
                        corpus::hex(&out)
                    ));
                }
            }
            (true, false) => {}
        }
    }
    println!(
        "{} rows, {} hostile, {} problems",
        entries.len(),
        entries.iter().filter(|e| e.must_not_forward).count(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// splitmix64: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Where a base frame arrives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// From a client, on `lb-c`.
    Client,
    /// A backend's reply to an SNAT port, on `lb-b` (two-arm: forwarded with XDP_REDIRECT).
    Backend,
    /// A one-arm backend's reply, on `lb-c` (forwarded back out of it with XDP_TX).
    OneArmBackend,
}

/// A valid frame to mutate: how to (re)open its flow, and how to build it once open.
struct Base {
    name: &'static str,
    /// Where it arrives.
    side: Side,
    /// The client's packet that opens the flow (its conntrack entry gives the SNAT port).
    opener: Pkt,
    /// Builds the frame given the flow's SNAT port.
    frame: fn(&Pkt, u16) -> Vec<u8>,
}

fn bases() -> Vec<Base> {
    let syn4 = Pkt::from_client("10.200.1.2", 36001, "10.200.100.1", 80, SYN);
    let syn6 = Pkt::from_client("fd00:200:1::2", 36002, "fd00:200:100::1", 80, SYN);
    let udp4 = Pkt::from_client("10.200.1.2", 36003, "10.200.100.1", 53, L4::Udp);
    let udp6 = Pkt::from_client("fd00:200:1::2", 36004, "fd00:200:100::1", 53, L4::Udp);
    fn same(p: &Pkt, _: u16) -> Vec<u8> {
        p.bytes()
    }
    fn data(p: &Pkt, _: u16) -> Vec<u8> {
        Pkt {
            l4: ACK,
            payload: b"some request data".to_vec(),
            ..p.clone()
        }
        .bytes()
    }
    fn reply(p: &Pkt, snat: u16, l4: L4) -> Vec<u8> {
        let (src, dst, sport) = match (p.src, p.l4) {
            (IpAddr::V4(_), L4::Udp) => ("10.200.11.2", "10.200.11.1", 5353),
            (IpAddr::V4(_), _) => ("10.200.11.2", "10.200.11.1", 8080),
            (IpAddr::V6(_), L4::Udp) => ("fd00:200:11::2", "fd00:200:11::1", 5353),
            (IpAddr::V6(_), _) => ("fd00:200:11::2", "fd00:200:11::1", 8080),
        };
        Pkt::from_backend(src, sport, dst, snat, l4, b"answer bytes").bytes()
    }
    fn synack(p: &Pkt, snat: u16) -> Vec<u8> {
        reply(p, snat, SYN_ACK)
    }
    fn ack_reply(p: &Pkt, snat: u16) -> Vec<u8> {
        reply(p, snat, ACK)
    }
    fn udp_reply(p: &Pkt, snat: u16) -> Vec<u8> {
        reply(p, snat, L4::Udp)
    }
    let syn_one_arm = Pkt::from_client("10.200.1.2", 36005, "10.200.100.3", 80, SYN);
    fn one_arm_synack(_: &Pkt, snat: u16) -> Vec<u8> {
        Pkt {
            smac: ONE_ARM_BACKEND_MAC,
            dmac: LB_C_MAC,
            ..Pkt::from_backend("10.200.1.50", 8080, "10.200.1.1", snat, SYN_ACK, b"hi")
        }
        .bytes()
    }
    fn vlan(p: &Pkt, _: u16) -> Vec<u8> {
        Pkt {
            vlan: Some(42),
            ..p.clone()
        }
        .bytes()
    }
    fn vlan_data(p: &Pkt, snat: u16) -> Vec<u8> {
        let mut f = data(p, snat);
        f.splice(12..12, [0x81, 0x00, 0x00, 42]);
        f
    }
    fn udp_zero_checksum(p: &Pkt, _: u16) -> Vec<u8> {
        let mut f = p.bytes();
        f[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        f
    }
    let b = |name, side, opener: &Pkt, frame| Base {
        name,
        side,
        opener: opener.clone(),
        frame,
    };
    vec![
        b("v4 SYN", Side::Client, &syn4, same),
        b("v4 ACK+data", Side::Client, &syn4, data),
        b("v4 UDP", Side::Client, &udp4, same),
        b("v6 SYN", Side::Client, &syn6, same),
        b("v6 ACK+data", Side::Client, &syn6, data),
        b("v6 UDP", Side::Client, &udp6, same),
        b("v4 SYN-ACK reply", Side::Backend, &syn4, synack),
        b("v4 ACK reply", Side::Backend, &syn4, ack_reply),
        b("v4 UDP reply", Side::Backend, &udp4, udp_reply),
        b("v6 SYN-ACK reply", Side::Backend, &syn6, synack),
        b("v6 UDP reply", Side::Backend, &udp6, udp_reply),
        b("v4 802.1Q SYN", Side::Client, &syn4, vlan),
        b("v4 802.1Q ACK+data", Side::Client, &syn4, vlan_data),
        b("v4 802.1Q UDP", Side::Client, &udp4, vlan),
        b("v4 UDP checksum 0", Side::Client, &udp4, udp_zero_checksum),
        b("v4 one-arm SYN (XDP_TX)", Side::Client, &syn_one_arm, same),
        b(
            "v4 one-arm ACK+data (XDP_TX)",
            Side::Client,
            &syn_one_arm,
            data,
        ),
        b(
            "v4 one-arm SYN-ACK reply (XDP_TX)",
            Side::OneArmBackend,
            &syn_one_arm,
            one_arm_synack,
        ),
    ]
}

/// Offsets of the L3 and L4 headers of an untagged frame (as built, before mutation).
fn layout(f: &[u8]) -> (usize, usize, bool) {
    let p = corpus::parse(f).expect("base frames parse");
    (p.l2, p.l4(), p.v6)
}

const MARTIANS4: [[u8; 4]; 6] = [
    [127, 0, 0, 1],
    [0, 0, 0, 0],
    [169, 254, 9, 9],
    [224, 0, 0, 5],
    [255, 255, 255, 255],
    [10, 200, 100, 1],
];

/// Applies one random mutation.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>, l3: usize, l4: usize, v6: bool) {
    let hdr_end = (l4 + 20).min(f.len());
    match rng.below(14) {
        0 => {
            let at = rng.below(hdr_end);
            f[at] ^= 1 << rng.below(8);
        }
        1 => {
            let at = rng.below(hdr_end);
            f[at] = rng.byte();
        }
        2 => {
            let len = 14 + rng.below(f.len() - 14);
            f.truncate(len);
        }
        3 => {
            let n = 1 + rng.below(40);
            let zero = rng.chance(2);
            for _ in 0..n {
                f.push(if zero { 0 } else { rng.byte() });
            }
        }
        4 => {
            // IP length field: random, or a small step.
            let at = if v6 { l3 + 4 } else { l3 + 2 };
            if f.len() >= at + 2 {
                let old = u16::from_be_bytes([f[at], f[at + 1]]);
                let new = if rng.chance(3) {
                    rng.next() as u16
                } else {
                    let d = 1 + rng.below(48) as u16;
                    if rng.chance(2) {
                        old.wrapping_add(d)
                    } else {
                        old.wrapping_sub(d)
                    }
                };
                f[at..at + 2].copy_from_slice(&new.to_be_bytes());
            }
        }
        5 => {
            // UDP length or TCP data offset.
            let proto = f.get(if v6 { l3 + 6 } else { l3 + 9 }).copied();
            if proto == Some(17) && f.len() >= l4 + 6 {
                let new = if rng.chance(2) {
                    rng.below(16) as u16
                } else {
                    u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]).wrapping_add(rng.below(64) as u16)
                };
                f[l4 + 4..l4 + 6].copy_from_slice(&new.to_be_bytes());
            } else if f.len() > l4 + 12 {
                f[l4 + 12] = (rng.byte() & 0xf0) | (f[l4 + 12] & 0x0f);
            }
        }
        6 => {
            if f.len() > l4 + 13 {
                f[l4 + 13] = rng.byte();
            }
        }
        7 => {
            let at = if v6 { l3 + 7 } else { l3 + 8 };
            if f.len() > at {
                f[at] = [0, 1, 2, 255, rng.byte()][rng.below(5)];
            }
        }
        8 => {
            // A martian source.
            if v6 && f.len() >= l3 + 24 {
                let mut a = [0u8; 16];
                match rng.below(5) {
                    0 => a[15] = 1,
                    1 => a[..2].copy_from_slice(&[0xff, 0x02]),
                    2 => a[..2].copy_from_slice(&[0xfe, 0x80]),
                    3 => {
                        a[10..12].copy_from_slice(&[0xff, 0xff]);
                        a[12..].copy_from_slice(&[10, 200, 1, 2]);
                    }
                    _ => a[..16].copy_from_slice(&VIP6.octets()),
                }
                f[l3 + 8..l3 + 24].copy_from_slice(&a);
            } else if !v6 && f.len() >= l3 + 16 {
                f[l3 + 12..l3 + 16].copy_from_slice(&MARTIANS4[rng.below(MARTIANS4.len())]);
            }
        }
        9 => {
            // MACs: broadcast, multicast or another host.
            let at = if rng.chance(2) { 0 } else { 6 };
            let mac = match rng.below(3) {
                0 => [0xff; 6],
                1 => [0x01, 0x00, 0x5e, 0, 0, 9],
                _ => [2, 0, 0, 0, 9, rng.byte()],
            };
            f[at..at + 6].copy_from_slice(&mac);
        }
        10 => {
            // Version / IHL nibbles.
            if f.len() > l3 {
                f[l3] = if rng.chance(2) {
                    (f[l3] & 0xf0) | (rng.byte() & 0x0f)
                } else {
                    (rng.byte() & 0xf0) | (f[l3] & 0x0f)
                };
            }
        }
        12 => {
            // A field no rule looks at: TOS / traffic class, flow label, IPv4 id, TCP ack,
            // window, urgent pointer, or a payload byte (checksums go stale unless refreshed).
            let at = match (v6, rng.below(4)) {
                (false, 0) => l3 + [1, 4, 5][rng.below(3)],
                (true, 0) => l3 + rng.below(4),
                (_, 1) => l4 + 8 + rng.below(4),
                (_, 2) => l4 + 14 + rng.below(2) + rng.below(2) * 4,
                _ => l4 + 20 + rng.below(8),
            };
            if at < f.len() {
                f[at] = rng.byte();
            }
        }
        13 => {
            // A valid TCP flag set, with or without PSH/ECE/CWR.
            const VALID: [u8; 9] = [
                corpus::SYN,
                corpus::SYN | corpus::URG,
                corpus::SYN | corpus::ACK,
                corpus::RST,
                corpus::RST | corpus::ACK,
                corpus::FIN | corpus::ACK,
                corpus::FIN | corpus::ACK | corpus::URG,
                corpus::ACK,
                corpus::ACK | corpus::URG,
            ];
            let proto = f.get(if v6 { l3 + 6 } else { l3 + 9 }).copied();
            if proto == Some(6) && f.len() > l4 + 13 {
                let extra = rng.byte() & (corpus::PSH | corpus::ECE | corpus::CWR);
                f[l4 + 13] = VALID[rng.below(VALID.len())] | extra;
            }
        }
        _ => {
            // Source port 0, or another port.
            if f.len() >= l4 + 2 {
                let p: u16 = if rng.chance(2) { 0 } else { rng.next() as u16 };
                f[l4..l4 + 2].copy_from_slice(&p.to_be_bytes());
            }
        }
    }
}

/// The first case of one kind of problem, and how often it happened.
struct Seen {
    count: usize,
    first: String,
}

#[test]
fn mutated_frames_are_forwarded_only_when_sound() {
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let cases = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    println!("seed {seed} (HOSTILE_SEED), {cases} cases (HOSTILE_CASES)");
    let mut rng = Rng(seed);
    let mut fx = start();
    let bases = bases();
    let mut verdicts: BTreeMap<u32, usize> = BTreeMap::new();
    // Per base: (cases, forwarded).
    let mut per_base: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut problems: BTreeMap<String, Seen> = BTreeMap::new();
    let start = Instant::now();
    let mut ran = 0;
    for case in 0..cases {
        if start.elapsed() > TIME_LIMIT {
            println!("time limit: stopped after {case} cases");
            break;
        }
        let base = &bases[rng.below(bases.len())];
        // (Re)open the flow: a SYN on a closed flow reopens it with its own SNAT port.
        let (v, _) = fx.run(fx.lb_c, &base.opener.bytes());
        assert!(forwarded(v), "{}: opener not forwarded ({v})", base.name);
        let snat = u16::from_be(fx.ct(&base.opener).snat_port);
        let input0 = (base.frame)(&base.opener, snat);
        let (l3, l4, v6) = layout(&input0);
        let mut input = input0.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut input, l3, l4, v6);
        }
        if rng.chance(2) && l3 == 14 {
            // Make the checksums right again, so mutations get past checksum checks.
            corpus::refresh_ipv4_checksum(&mut input);
            corpus::refresh_l4_checksum(&mut input);
        }
        if rng.chance(16) && l3 == 14 && input.len() >= 14 {
            // Tag an untagged frame (802.1Q, VLAN 7): the data plane parses one tag.
            input.splice(12..12, [0x81, 0x00, 0x00, 7]);
        }
        let (ingress, rx_mac, allowed_src) = match base.side {
            Side::Client => (fx.lb_c, LB_C_MAC, Vec::new()),
            Side::Backend => (fx.lb_b, LB_B_MAC, vips().to_vec()),
            Side::OneArmBackend => (fx.lb_c, LB_C_MAC, vips().to_vec()),
        };
        let (verdict, out) = fx.run(ingress, &input);
        ran += 1;
        *verdicts.entry(verdict).or_default() += 1;
        let per = per_base.entry(base.name).or_default();
        per.0 += 1;
        per.1 += usize::from(forwarded(verdict));
        if !forwarded(verdict) {
            continue;
        }
        let mut found: Vec<String> = corpus::forwarded_problems(&input, &out, &allowed_src);
        if let Some(rule) = corpus::policy_violation(&input, rx_mac, &vips()) {
            found.push(format!("forwarded although the policy drops it: {rule}"));
        }
        for p in found {
            let kind = p.split(':').next().unwrap_or(&p).to_string();
            let kind = if kind.starts_with("forwarded although") {
                p.clone()
            } else {
                kind
            };
            let seen = problems.entry(kind).or_insert_with(|| Seen {
                count: 0,
                first: format!(
                    "seed {seed} case {case} base {} verdict {verdict}: {p}\n      in  {}\n      out {}",
                    base.name,
                    corpus::hex(&input),
                    corpus::hex(&out)
                ),
            });
            seen.count += 1;
        }
    }
    println!(
        "{ran} cases in {:.1?}; verdicts {verdicts:?} (1 drop, 2 pass, 3 tx, 4 redirect)",
        start.elapsed()
    );
    for (name, (n, fwd)) in &per_base {
        println!("  {name}: {n} cases, {fwd} forwarded");
    }
    let report: Vec<String> = problems
        .iter()
        .map(|(k, s)| format!("{} x {k}\n    first: {}", s.count, s.first))
        .collect();
    assert!(
        problems.is_empty(),
        "forwarded frames with problems:\n{}",
        report.join("\n")
    );
}
