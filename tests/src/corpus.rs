//! Hostile traffic for issue 10 ("never forward what a router would drop"): a corpus of frames
//! to a VIP, a reference model of the policy, and checks for frames the data plane forwarded.
//!
//! - [`build`]: every class of bad frame the data plane must never forward, for IPv4 and IPv6,
//!   plus valid controls that must be forwarded (trimmed to the IP length when they carry
//!   trailing bytes). Frames are built by hand so that any field can be wrong.
//! - Every frame is tagged so it is recognised after NAT (addresses and ports change, the TCP
//!   sequence number and the payload do not): TCP sequence number [`SEQ_BASE`] + index * 256,
//!   and a payload of [`TAG`] followed by the index (2 bytes, big endian). See [`find_tag`].
//!   (Index * 256, not + index: a peer's RST answering entry i's SYN-ACK carries sequence
//!   number seq(i) + 1, which must not read as entry i + 1.)
//! - [`policy_violation`]: which rule of the policy a frame breaks (the reference model; the
//!   corpus labels are checked against it in the unit tests below).
//! - [`forwarded_problems`]: what is wrong with a frame the data plane forwarded (lengths,
//!   checksums, TTL, TCP data offset, martian source).
//!
//! Frames are untagged Ethernet; the parser also reads one 802.1Q tag (mutated frames may
//! carry one).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Payload tag: `LBHOSTILE` then the entry index (u16, big endian).
pub const TAG: &[u8; 9] = b"LBHOSTILE";
/// TCP sequence number of entry `i` is `SEQ_BASE + i * 256` (so at most [`MAX_ENTRIES`]).
pub const SEQ_BASE: u32 = 0xBAD0_0000;
/// How many entries the sequence-number tag can tell apart.
pub const MAX_ENTRIES: usize = 256;
/// TCP sequence number of the valid SYN that opens entry `i`'s flow: `OPENER_SEQ_BASE + i`.
pub const OPENER_SEQ_BASE: u32 = 0x0BE0_0000;
/// TTL / hop limit of every corpus frame unless its class says otherwise.
pub const TTL: u8 = 64;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

/// Where the corpus is sent: the client's side of the LB.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Source MAC of valid frames (the client's).
    pub client_mac: [u8; 6],
    /// Destination MAC of valid frames: the LB's receiving interface.
    pub lb_mac: [u8; 6],
    pub client4: Ipv4Addr,
    pub client6: Ipv6Addr,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// The TCP service's port on both VIPs.
    pub tcp_port: u16,
    /// The UDP service's port on both VIPs.
    pub udp_port: u16,
    /// Entry `i` uses source port `first_sport + i` (except the source-port-0 classes)...
    pub first_sport: u16,
    /// ...unless this is set: then every entry uses it (frames on one existing flow, e.g. a
    /// backend's replies to an SNAT port).
    pub fixed_sport: Option<u16>,
}

/// One corpus frame.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Position in the corpus, also in the tag.
    pub index: u16,
    /// `group/what`, e.g. `l2/dst-broadcast`.
    pub class: String,
    pub v6: bool,
    pub tcp: bool,
    pub frame: Vec<u8>,
    /// True for hostile frames; false for the valid controls.
    pub must_not_forward: bool,
    /// A valid SYN on the same 5-tuple to send first, so that a frame that is not a SYN meets
    /// an open flow (otherwise "no conntrack entry" would drop it for the wrong reason).
    pub opener: Option<Vec<u8>>,
}

impl Entry {
    pub fn family(&self) -> &'static str {
        if self.v6 { "IPv6" } else { "IPv4" }
    }
}

/// TCP or UDP part of a [`Spec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with these flags.
    Tcp(u8),
    Udp,
}

/// A well-formed frame's fields; [`Spec::build`] writes it with correct lengths and checksums.
#[derive(Clone, Debug)]
pub struct Spec {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl Spec {
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = match self.l4 {
            L4::Tcp(flags) => {
                let mut h = Vec::with_capacity(20);
                h.extend_from_slice(&self.sport.to_be_bytes());
                h.extend_from_slice(&self.dport.to_be_bytes());
                h.extend_from_slice(&self.seq.to_be_bytes());
                let ack: u32 = if flags & ACK != 0 { 1 } else { 0 };
                h.extend_from_slice(&ack.to_be_bytes());
                h.push(5 << 4);
                h.push(flags);
                h.extend_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                h
            }
            L4::Udp => {
                let mut h = Vec::with_capacity(8);
                h.extend_from_slice(&self.sport.to_be_bytes());
                h.extend_from_slice(&self.dport.to_be_bytes());
                h.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h
            }
        };
        l4.extend_from_slice(&self.payload);
        let proto = match self.l4 {
            L4::Tcp(_) => 6,
            L4::Udp => 17,
        };
        let mut f = Vec::with_capacity(14 + 40 + l4.len());
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                let tot = (20 + l4.len()) as u16;
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&tot.to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, DF
                f.extend_from_slice(&[self.ttl, proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[proto, self.ttl]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&l4);
        refresh_ipv4_checksum(&mut f);
        refresh_l4_checksum(&mut f);
        f
    }
}

// ---------------------------------------------------------------------------------------------
// Checksums and field access on untagged frames (what the corpus builds).

/// Ones' complement sum of `data` (big-endian 16-bit words, odd byte padded) added to `sum`.
pub fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

/// Folds a 32-bit sum to 16 bits and complements it.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn is_v6_frame(f: &[u8]) -> bool {
    f.len() >= 14 && u16::from_be_bytes([f[12], f[13]]) == ETH_P_IPV6
}

/// Offset of the L4 header in an untagged frame (by IHL for IPv4).
fn l4_offset(f: &[u8]) -> usize {
    if is_v6_frame(f) {
        14 + 40
    } else {
        14 + usize::from(f[14] & 0x0f) * 4
    }
}

/// Recomputes the IPv4 header checksum over IHL*4 bytes (as far as the frame goes).
pub fn refresh_ipv4_checksum(f: &mut [u8]) {
    if is_v6_frame(f) || f.len() < 14 + 20 {
        return;
    }
    let hl = (usize::from(f[14] & 0x0f) * 4).max(20).min(f.len() - 14);
    f[24] = 0;
    f[25] = 0;
    let c = fold(sum16(&f[14..14 + hl], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Pseudo-header sum for `len` bytes of protocol `proto` between the frame's addresses.
fn pseudo_sum(f: &[u8], ip: usize, v6: bool, proto: u8, len: usize) -> u32 {
    let mut s = if v6 {
        sum16(&f[ip + 8..ip + 40], 0)
    } else {
        sum16(&f[ip + 12..ip + 20], 0)
    };
    s += u32::from(proto);
    s += (len as u32) >> 16;
    s += len as u32 & 0xffff;
    s
}

/// Recomputes the TCP/UDP checksum of an untagged frame over the L4 segment the IP header
/// declares (clamped to the frame).
pub fn refresh_l4_checksum(f: &mut [u8]) {
    let v6 = is_v6_frame(f);
    if f.len() < if v6 { 14 + 40 } else { 14 + 20 } {
        return;
    }
    let l4 = l4_offset(f);
    if l4 < 14 + 20 {
        return;
    }
    let (proto, end) = if v6 {
        let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
        (f[20], (14 + 40 + plen).min(f.len()))
    } else {
        let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
        (f[23], (14 + tot).min(f.len()))
    };
    let csum_at = match proto {
        6 => l4 + 16,
        17 => l4 + 6,
        _ => return,
    };
    if end < csum_at + 2 {
        return;
    }
    f[csum_at] = 0;
    f[csum_at + 1] = 0;
    let s = pseudo_sum(f, 14, v6, proto, end - l4);
    let mut c = fold(sum16(&f[l4..end], s));
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// Parsing (tolerant: never panics on any input).

/// A frame's IP view. Offsets are into the frame.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// Ethernet header length (14, or 18 with one 802.1Q tag).
    pub l2: usize,
    pub v6: bool,
    pub version: u8,
    /// IPv4 IHL*4, or 40.
    pub ip_hdr: usize,
    /// What the IP header says the datagram's length is (IPv4 total length, IPv6 40 + payload
    /// length).
    pub ip_len: usize,
    /// IPv4 protocol or IPv6 next header.
    pub proto: u8,
    pub ttl: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 only: the MF flag or a fragment offset is set.
    pub fragment: bool,
}

impl Parsed {
    /// Offset of the L4 header.
    pub fn l4(&self) -> usize {
        self.l2 + self.ip_hdr
    }
    /// End of the datagram as declared, clamped to the frame.
    pub fn end(&self, frame: &[u8]) -> usize {
        (self.l2 + self.ip_len).min(frame.len())
    }
}

/// Parses Ethernet (one optional 802.1Q tag) and the fixed IP header; `None` when the frame is
/// not IP or shorter than the fixed header.
pub fn parse(f: &[u8]) -> Option<Parsed> {
    if f.len() < 14 {
        return None;
    }
    let mut l2 = 14;
    let mut et = u16::from_be_bytes([f[12], f[13]]);
    if et == ETH_P_8021Q {
        if f.len() < 18 {
            return None;
        }
        et = u16::from_be_bytes([f[16], f[17]]);
        l2 = 18;
    }
    let ip = &f[l2..];
    match et {
        ETH_P_IPV4 if ip.len() >= 20 => {
            let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
            Some(Parsed {
                l2,
                v6: false,
                version: ip[0] >> 4,
                ip_hdr: usize::from(ip[0] & 0x0f) * 4,
                ip_len: usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                proto: ip[9],
                ttl: ip[8],
                src: a(12).into(),
                dst: a(16).into(),
                fragment: u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0,
            })
        }
        ETH_P_IPV6 if ip.len() >= 40 => {
            let a = |o: usize| {
                let b: [u8; 16] = ip[o..o + 16].try_into().expect("16 bytes");
                Ipv6Addr::from(b)
            };
            Some(Parsed {
                l2,
                v6: true,
                version: ip[0] >> 4,
                ip_hdr: 40,
                ip_len: 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
                proto: ip[6],
                ttl: ip[7],
                src: a(8).into(),
                dst: a(24).into(),
                fragment: false,
            })
        }
        _ => None,
    }
}

/// Whether the IPv4 header checksum is right (always true for IPv6).
pub fn ipv4_checksum_ok(f: &[u8], p: &Parsed) -> bool {
    if p.v6 {
        return true;
    }
    let hl = p.ip_hdr.max(20);
    f.len() >= p.l2 + hl && fold(sum16(&f[p.l2..p.l2 + hl], 0)) == 0
}

/// Whether the TCP/UDP checksum over the declared segment is right (`None`: the segment does
/// not fit in the frame or the protocol is neither). An IPv4 UDP checksum of 0 counts as right.
pub fn l4_checksum_ok(f: &[u8], p: &Parsed) -> Option<bool> {
    let l4 = p.l4();
    let end = p.l2 + p.ip_len;
    let min = match p.proto {
        6 => 20,
        17 => 8,
        _ => return None,
    };
    if p.ip_len < p.ip_hdr || end > f.len() || end < l4 + min {
        return None;
    }
    if p.proto == 17 && !p.v6 && f[l4 + 6] == 0 && f[l4 + 7] == 0 {
        return Some(true);
    }
    let s = pseudo_sum(f, p.l2, p.v6, p.proto, end - l4);
    Some(fold(sum16(&f[l4..end], s)) == 0)
}

/// Whether `a` is a martian source: the addresses the policy lists (the VIPs are checked
/// separately, see [`policy_violation`]).
pub fn is_martian(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 0 || o[0] == 127 || o[0] >= 224 || (o[0] == 169 && o[1] == 254)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let first96_zero = s[..6].iter().all(|x| *x == 0);
            let v4_mapped = s[..5].iter().all(|x| *x == 0) && s[5] == 0xffff;
            first96_zero || v4_mapped || s[0] & 0xff00 == 0xff00 || s[0] & 0xffc0 == 0xfe80
        }
    }
}

/// Whether Linux conntrack's `tcp_valid_flags` accepts these flags (PSH, ECE, CWR ignored).
pub fn tcp_flags_valid(flags: u8) -> bool {
    matches!(
        flags & !(PSH | ECE | CWR),
        x if x == SYN
            || x == SYN | URG
            || x == SYN | ACK
            || x == RST
            || x == RST | ACK
            || x == FIN | ACK
            || x == FIN | ACK | URG
            || x == ACK
            || x == ACK | URG
    )
}

/// The reference model: which rule of the policy forbids forwarding `f` when it arrives on an
/// interface with MAC `rx_mac` (`None`: it may be forwarded). `vips` are martian as sources.
pub fn policy_violation(f: &[u8], rx_mac: [u8; 6], vips: &[IpAddr]) -> Option<&'static str> {
    if f.len() < 14 {
        return Some("truncated ethernet");
    }
    if f[..6] != rx_mac {
        return Some("destination MAC is not the receiving interface's");
    }
    if f[6] & 1 != 0 {
        return Some("broadcast/multicast source MAC");
    }
    let Some(p) = parse(f) else {
        return Some("not IP or truncated IP header");
    };
    let avail = f.len() - p.l2;
    if p.version != if p.v6 { 6 } else { 4 } {
        return Some("bad IP version");
    }
    if !p.v6 {
        if p.ip_hdr < 20 {
            return Some("IPv4 IHL < 5");
        }
        if p.ip_hdr > 20 {
            return Some("IPv4 options");
        }
        if !ipv4_checksum_ok(f, &p) {
            return Some("bad IPv4 header checksum");
        }
        if p.fragment {
            return Some("IPv4 fragment");
        }
    }
    if p.ip_len > avail {
        return Some("IP length longer than the frame");
    }
    match p.proto {
        6 | 17 => {}
        _ if p.v6 => return Some("IPv6 extension header or other protocol"),
        _ => return Some("other protocol"),
    }
    let l4_min = if p.proto == 6 { 20 } else { 8 };
    if p.ip_len < p.ip_hdr + l4_min {
        return Some("IP length too short for the L4 header");
    }
    if p.ttl <= 1 {
        return Some("TTL/hop limit <= 1");
    }
    if is_martian(p.src) || vips.contains(&p.src) {
        return Some("martian source");
    }
    let l4 = p.l4();
    let seg = p.ip_len - p.ip_hdr;
    let sport = u16::from_be_bytes([f[l4], f[l4 + 1]]);
    if p.proto == 6 {
        let doff = usize::from(f[l4 + 12] >> 4) * 4;
        if doff < 20 {
            return Some("TCP data offset < 5");
        }
        if doff > seg {
            return Some("TCP data offset past the segment");
        }
        if !tcp_flags_valid(f[l4 + 13]) {
            return Some("invalid TCP flags");
        }
    } else {
        let ulen = usize::from(u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]));
        if ulen < 8 {
            return Some("UDP length < 8");
        }
        if ulen > seg {
            return Some("UDP length longer than the IP payload");
        }
    }
    if sport == 0 {
        return Some("source port 0");
    }
    None
}

/// What is wrong with `output`, a frame the data plane forwarded (XDP_TX/REDIRECT) for `input`:
/// IP length not the frame's, bad IPv4 header checksum, TTL/hop limit not decremented by one or
/// zero, TCP/UDP checksum wrong while the input's was right, TCP data offset outside the
/// segment, martian source (`allowed_src`: addresses that are fine as the output's source, the
/// VIPs on replies). Empty: nothing wrong. Each problem is a short stable name, then details.
pub fn forwarded_problems(input: &[u8], output: &[u8], allowed_src: &[IpAddr]) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(o) = parse(output) else {
        problems.push("output not IP".to_string());
        return problems;
    };
    if o.l2 + o.ip_len != output.len() {
        problems.push(format!(
            "length: IP length {} != frame length {} - L2 {}",
            o.ip_len,
            output.len(),
            o.l2
        ));
    }
    if !ipv4_checksum_ok(output, &o) {
        problems.push("ipv4 header checksum wrong".to_string());
    }
    if let Some(i) = parse(input) {
        if u16::from(o.ttl) + 1 != u16::from(i.ttl) {
            problems.push(format!("ttl: in {} out {} (want in - 1)", i.ttl, o.ttl));
        }
        if l4_checksum_ok(input, &i) == Some(true) && l4_checksum_ok(output, &o) != Some(true) {
            problems.push("l4 checksum wrong (input's was right)".to_string());
        }
    }
    if o.ttl == 0 {
        problems.push("ttl: 0 on the wire".to_string());
    }
    if o.proto == 6 {
        let l4 = o.l4();
        let end = o.end(output);
        if l4 + 13 > end {
            problems.push("tcp header truncated".to_string());
        } else {
            let doff = usize::from(output[l4 + 12] >> 4) * 4;
            if doff < 20 || l4 + doff > end {
                problems.push(format!(
                    "tcp data offset: {doff} bytes, outside the segment"
                ));
            }
        }
    }
    if is_martian(o.src) && !allowed_src.contains(&o.src) {
        problems.push(format!("martian source {} in output", o.src));
    }
    problems
}

/// The corpus index a frame carries: the payload tag if present anywhere in the frame, else a
/// TCP sequence number `SEQ_BASE + i * 256` at the L4 offset the header claims.
pub fn find_tag(f: &[u8]) -> Option<u16> {
    if let Some(pos) = f.windows(TAG.len()).position(|w| w == TAG)
        && f.len() >= pos + TAG.len() + 2
    {
        let at = pos + TAG.len();
        return Some(u16::from_be_bytes([f[at], f[at + 1]]));
    }
    let p = parse(f)?;
    let l4 = p.l4();
    if p.proto != 6 || f.len() < l4 + 8 {
        return None;
    }
    let seq = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
    (seq & 0xffff_00ff == SEQ_BASE).then_some(((seq >> 8) & 0xff) as u16)
}

// ---------------------------------------------------------------------------------------------
// The corpus.

/// Builds the corpus for `ep`: the hostile classes for both families, then the controls.
pub fn build(ep: &Endpoints) -> Vec<Entry> {
    let mut c = Corpus {
        ep: ep.clone(),
        entries: Vec::new(),
    };
    for v6 in [false, true] {
        c.l2(v6);
        c.l3(v6);
        c.l4(v6);
        c.martians(v6);
        c.unsupported(v6);
        c.controls(v6);
    }
    assert!(
        c.entries.len() <= MAX_ENTRIES,
        "too many entries for the tag"
    );
    c.entries
}

struct Corpus {
    ep: Endpoints,
    entries: Vec<Entry>,
}

/// Which base frame a class starts from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Base {
    /// A valid SYN to the TCP service (opens its own flow).
    Syn,
    /// A valid UDP datagram to the UDP service.
    Udp,
}

impl Corpus {
    fn next_index(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The valid base frame of the next entry, tagged with its index.
    fn spec(&self, v6: bool, l4: L4) -> Spec {
        let i = self.next_index();
        let (src, dst) = if v6 {
            (IpAddr::V6(self.ep.client6), IpAddr::V6(self.ep.vip6))
        } else {
            (IpAddr::V4(self.ep.client4), IpAddr::V4(self.ep.vip4))
        };
        let mut payload = TAG.to_vec();
        payload.extend_from_slice(&i.to_be_bytes());
        Spec {
            dmac: self.ep.lb_mac,
            smac: self.ep.client_mac,
            src,
            dst,
            ttl: TTL,
            l4,
            sport: self
                .ep
                .fixed_sport
                .unwrap_or(self.ep.first_sport.wrapping_add(i)),
            dport: match l4 {
                L4::Tcp(_) => self.ep.tcp_port,
                L4::Udp => self.ep.udp_port,
            },
            seq: SEQ_BASE + (u32::from(i) << 8),
            payload,
        }
    }

    fn base(&self, v6: bool, base: Base) -> Spec {
        match base {
            Base::Syn => self.spec(v6, L4::Tcp(SYN)),
            Base::Udp => self.spec(v6, L4::Udp),
        }
    }

    fn push(&mut self, class: &str, spec: &Spec, frame: Vec<u8>, hostile: bool, opener: bool) {
        let opener = opener.then(|| {
            Spec {
                l4: L4::Tcp(SYN),
                seq: OPENER_SEQ_BASE + u32::from(self.next_index()),
                payload: Vec::new(),
                ..spec.clone()
            }
            .build()
        });
        self.entries.push(Entry {
            index: self.next_index(),
            class: class.to_string(),
            v6: matches!(spec.src, IpAddr::V6(_)),
            tcp: matches!(spec.l4, L4::Tcp(_)),
            frame,
            must_not_forward: hostile,
            opener,
        });
    }

    /// A hostile entry from `base` with `edit` applied to the built frame.
    fn edited(&mut self, class: &str, v6: bool, base: Base, edit: impl FnOnce(&mut Vec<u8>)) {
        let spec = self.base(v6, base);
        let mut f = spec.build();
        edit(&mut f);
        self.push(class, &spec, f, true, false);
    }

    fn l2(&mut self, v6: bool) {
        let mcast: [u8; 6] = if v6 {
            [0x33, 0x33, 0, 0, 0, 1]
        } else {
            [0x01, 0x00, 0x5e, 0, 0, 1]
        };
        let mut other = self.ep.lb_mac;
        other[5] ^= 0x5a;
        for (base, tag) in [(Base::Syn, "tcp"), (Base::Udp, "udp")] {
            for (what, mac, dst) in [
                ("dst-broadcast", [0xff; 6], true),
                ("dst-multicast", mcast, true),
                ("dst-other-unicast", other, true),
                ("src-broadcast", [0xff; 6], false),
                ("src-multicast", mcast, false),
            ] {
                self.edited(&format!("l2/{what}/{tag}"), v6, base, |f| {
                    let at = if dst { 0 } else { 6 };
                    f[at..at + 6].copy_from_slice(&mac);
                });
            }
        }
    }

    fn l3(&mut self, v6: bool) {
        for (base, tag, l4_min) in [(Base::Syn, "tcp", 20u16), (Base::Udp, "udp", 8)] {
            // Declared length longer than the frame.
            self.edited(&format!("ip/len-past-frame/{tag}"), v6, base, |f| {
                add_ip_len(f, 24);
            });
            // Declared length too short for the L4 header it carries (the rest is trailing).
            self.edited(&format!("ip/len-short-for-l4/{tag}"), v6, base, |f| {
                set_l4_len(f, l4_min - 2);
            });
            for ttl in [0u8, 1] {
                self.edited(&format!("ip/ttl-{ttl}/{tag}"), v6, base, |f| {
                    f[if v6 { 14 + 7 } else { 14 + 8 }] = ttl;
                    refresh_ipv4_checksum(f);
                });
            }
            self.edited(&format!("ip/bad-version/{tag}"), v6, base, |f| {
                f[14] = if v6 { 0x40 } else { 0x65 };
                refresh_ipv4_checksum(f);
            });
        }
        if !v6 {
            self.edited("ip/bad-header-checksum/tcp", v6, Base::Syn, |f| {
                f[24] ^= 0x5a
            });
            self.edited("ip/bad-header-checksum/udp", v6, Base::Udp, |f| {
                f[25] ^= 0x01
            });
            self.edited("ip/ihl-4/tcp", v6, Base::Syn, |f| {
                f[14] = 0x44;
                refresh_ipv4_checksum(f);
            });
            self.edited("ip/ihl-0/udp", v6, Base::Udp, |f| {
                f[14] = 0x40;
                refresh_ipv4_checksum(f);
            });
            self.edited("ip/len-below-header/tcp", v6, Base::Syn, |f| {
                f[16..18].copy_from_slice(&16u16.to_be_bytes());
                refresh_ipv4_checksum(f);
            });
        }
    }

    fn l4(&mut self, v6: bool) {
        // TCP data offset.
        self.edited("tcp/doff-4", v6, Base::Syn, |f| set_doff(f, 4));
        self.edited("tcp/doff-0", v6, Base::Syn, |f| set_doff(f, 0));
        self.edited("tcp/doff-past-segment", v6, Base::Syn, |f| set_doff(f, 15));
        // UDP length.
        self.edited("udp/len-4", v6, Base::Udp, |f| set_udp_len(f, |_| 4));
        self.edited("udp/len-0", v6, Base::Udp, |f| set_udp_len(f, |_| 0));
        self.edited("udp/len-past-ip-payload", v6, Base::Udp, |f| {
            set_udp_len(f, |l| l + 10)
        });
        // Flag sets conntrack calls invalid, on an open flow (an opener SYN goes first).
        for (what, flags) in [
            ("none", 0),
            ("syn-fin", SYN | FIN),
            ("syn-rst", SYN | RST),
            ("syn-fin-ack", SYN | FIN | ACK),
            ("fin", FIN),
            ("fin-psh", FIN | PSH),
            ("psh", PSH),
            ("urg", URG),
            ("fin-rst", FIN | RST),
            ("xmas", FIN | PSH | URG),
            ("all", 0x3f),
            ("all-8", 0xff),
        ] {
            let spec = self.spec(v6, L4::Tcp(flags));
            let f = spec.build();
            // A frame without SYN, or with SYN and ACK, cannot open a flow from the client.
            let needs_flow = flags & SYN == 0 || flags & ACK != 0;
            self.push(&format!("tcp/flags-{what}"), &spec, f, true, needs_flow);
        }
        // Source port 0.
        for (base, tag) in [(Base::Syn, "tcp"), (Base::Udp, "udp")] {
            let mut spec = self.base(v6, base);
            spec.sport = 0;
            let f = spec.build();
            self.push(&format!("l4/sport-0/{tag}"), &spec, f, true, false);
        }
    }

    fn martians(&mut self, v6: bool) {
        let sources: Vec<(&str, IpAddr)> = if v6 {
            vec![
                ("vip", self.ep.vip6.into()),
                ("unspecified", Ipv6Addr::UNSPECIFIED.into()),
                ("loopback", Ipv6Addr::LOCALHOST.into()),
                ("multicast", "ff02::1".parse().unwrap()),
                ("multicast-global", "ff0e::1234".parse().unwrap()),
                ("link-local", "fe80::1".parse().unwrap()),
                ("link-local-high", "febf::1".parse().unwrap()),
                ("v4-mapped", self.ep.client4.to_ipv6_mapped().into()),
                ("v4-compatible", "::10.200.1.2".parse().unwrap()),
            ]
        } else {
            vec![
                ("vip", self.ep.vip4.into()),
                ("zero", Ipv4Addr::UNSPECIFIED.into()),
                ("this-net", Ipv4Addr::new(0, 1, 2, 3).into()),
                ("loopback", Ipv4Addr::LOCALHOST.into()),
                ("loopback-high", Ipv4Addr::new(127, 255, 0, 9).into()),
                ("link-local", Ipv4Addr::new(169, 254, 1, 1).into()),
                ("multicast", Ipv4Addr::new(224, 0, 0, 1).into()),
                ("multicast-high", Ipv4Addr::new(239, 1, 2, 3).into()),
                ("class-e", Ipv4Addr::new(240, 0, 0, 1).into()),
                ("broadcast", Ipv4Addr::BROADCAST.into()),
            ]
        };
        for (what, src) in sources {
            for (base, tag) in [(Base::Syn, "tcp"), (Base::Udp, "udp")] {
                let mut spec = self.base(v6, base);
                spec.src = src;
                let f = spec.build();
                self.push(&format!("martian/{what}/{tag}"), &spec, f, true, false);
            }
        }
    }

    /// Already dropped today: IPv4 options and fragments, IPv6 extension headers.
    fn unsupported(&mut self, v6: bool) {
        if v6 {
            for (what, nh) in [("hop-by-hop", 0u8), ("fragment", 44), ("routing", 43)] {
                self.edited(&format!("ipv6/ext-{what}/tcp"), v6, Base::Syn, |f| {
                    // An 8-byte extension header whose next header is TCP.
                    let mut ext = vec![6u8, 0, 0, 0, 0, 0, 0, 0];
                    if nh == 43 {
                        ext[2] = 0; // routing type 0, segments left 0
                    }
                    f.splice(54..54, ext);
                    f[20] = nh;
                    add_ip_len(f, 8);
                });
            }
        } else {
            self.edited("ipv4/options/tcp", v6, Base::Syn, |f| {
                f.splice(34..34, [1u8, 1, 1, 0]);
                f[14] = 0x46;
                add_ip_len(f, 4);
                refresh_ipv4_checksum(f);
            });
            self.edited("ipv4/fragment-mf/udp", v6, Base::Udp, |f| {
                f[20] = 0x20;
                refresh_ipv4_checksum(f);
            });
            self.edited("ipv4/fragment-offset/tcp", v6, Base::Syn, |f| {
                f[20] = 0;
                f[21] = 8;
                refresh_ipv4_checksum(f);
            });
        }
    }

    /// Valid frames that must be forwarded (trimmed to the IP length).
    fn controls(&mut self, v6: bool) {
        let spec = self.spec(v6, L4::Tcp(SYN));
        let f = spec.build();
        self.push("control/syn", &spec, f, false, false);
        let spec = self.spec(v6, L4::Udp);
        let f = spec.build();
        self.push("control/udp", &spec, f, false, false);
        // Ethernet padding: zeros up to the 60-byte minimum (the IPv6 frame is longer already,
        // so it gets 6 zero bytes).
        let spec = self.spec(v6, L4::Udp);
        let mut f = spec.build();
        let padded = if f.len() < 60 { 60 } else { f.len() + 6 };
        f.resize(padded, 0);
        self.push("control/eth-padding/udp", &spec, f, false, false);
        let spec = self.spec(v6, L4::Tcp(SYN));
        let mut f = spec.build();
        f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x55, 0xaa, 0x01, 0x02, 0x03, 0x04]);
        self.push("control/trailing-garbage/tcp", &spec, f, false, false);
        let spec = self.spec(v6, L4::Tcp(SYN | ECE | CWR));
        let f = spec.build();
        self.push("control/syn-ece-cwr", &spec, f, false, false);
        let spec = self.spec(v6, L4::Tcp(ACK | PSH));
        let f = spec.build();
        self.push("control/ack-psh-on-flow", &spec, f, false, true);
    }
}

/// Adds `delta` to the IP length field (IPv4 total length, IPv6 payload length), checksum fixed.
fn add_ip_len(f: &mut [u8], delta: u16) {
    let at = if is_v6_frame(f) { 18 } else { 16 };
    let v = u16::from_be_bytes([f[at], f[at + 1]]).wrapping_add(delta);
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    refresh_ipv4_checksum(f);
}

/// Sets the IP length so that the L4 part it declares is `l4_len` bytes.
fn set_l4_len(f: &mut [u8], l4_len: u16) {
    if is_v6_frame(f) {
        f[18..20].copy_from_slice(&l4_len.to_be_bytes());
    } else {
        f[16..18].copy_from_slice(&(20 + l4_len).to_be_bytes());
        refresh_ipv4_checksum(f);
    }
}

fn set_doff(f: &mut [u8], words: u8) {
    let at = l4_offset(f) + 12;
    f[at] = (words << 4) | (f[at] & 0x0f);
    refresh_l4_checksum(f);
}

fn set_udp_len(f: &mut [u8], new: impl FnOnce(u16) -> u16) {
    let at = l4_offset(f) + 4;
    let v = new(u16::from_be_bytes([f[at], f[at + 1]]));
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    refresh_l4_checksum(f);
}

/// Hex of a frame, for failure messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoints {
        Endpoints {
            client_mac: [2, 0, 10, 200, 1, 2],
            lb_mac: [2, 0, 10, 200, 1, 1],
            client4: Ipv4Addr::new(10, 200, 1, 2),
            client6: "fd00:200:1::2".parse().unwrap(),
            vip4: Ipv4Addr::new(10, 200, 100, 1),
            vip6: "fd00:200:100::1".parse().unwrap(),
            tcp_port: 80,
            udp_port: 53,
            first_sport: 21000,
            fixed_sport: None,
        }
    }

    /// The labels agree with the reference model, every entry carries its tag, and the corpus
    /// covers both families.
    #[test]
    fn corpus_labels_match_the_policy() {
        let ep = ep();
        let vips = [IpAddr::V4(ep.vip4), IpAddr::V6(ep.vip6)];
        let corpus = build(&ep);
        assert!(corpus.len() >= 60, "only {} frames", corpus.len());
        for e in &corpus {
            let v = policy_violation(&e.frame, ep.lb_mac, &vips);
            assert_eq!(
                v.is_some(),
                e.must_not_forward,
                "{} ({}): model says {v:?}\n{}",
                e.class,
                e.family(),
                hex(&e.frame)
            );
            assert_eq!(find_tag(&e.frame), Some(e.index), "{}", e.class);
            if let Some(o) = &e.opener {
                assert_eq!(policy_violation(o, ep.lb_mac, &vips), None, "{}", e.class);
                assert_eq!(find_tag(o), None, "an opener is not tagged");
            }
        }
        for fam in [false, true] {
            assert!(corpus.iter().filter(|e| e.v6 == fam).count() >= 30);
        }
    }

    #[test]
    fn checksums_of_built_frames_verify() {
        let ep = ep();
        for e in build(&ep)
            .iter()
            .filter(|e| e.class.starts_with("control/"))
        {
            let p = parse(&e.frame).unwrap();
            assert!(ipv4_checksum_ok(&e.frame, &p), "{}", e.class);
            assert_eq!(l4_checksum_ok(&e.frame, &p), Some(true), "{}", e.class);
        }
    }

    #[test]
    fn flags_follow_conntrack() {
        for ok in [
            SYN,
            SYN | URG,
            SYN | ACK,
            RST,
            RST | ACK,
            FIN | ACK,
            ACK,
            ACK | PSH,
        ] {
            assert!(tcp_flags_valid(ok), "{ok:#x}");
        }
        for bad in [
            0,
            SYN | FIN,
            SYN | RST,
            FIN,
            FIN | PSH | URG,
            URG,
            PSH,
            0x3f,
        ] {
            assert!(!tcp_flags_valid(bad), "{bad:#x}");
        }
    }

    #[test]
    fn forwarded_checks_catch_untrimmed_and_undecremented() {
        let ep = ep();
        let e = build(&ep)
            .into_iter()
            .find(|e| e.class == "control/trailing-garbage/tcp")
            .unwrap();
        let probs = forwarded_problems(&e.frame, &e.frame, &[]);
        assert!(probs.iter().any(|p| p.starts_with("length")), "{probs:?}");
        assert!(probs.iter().any(|p| p.starts_with("ttl")), "{probs:?}");
    }
}
