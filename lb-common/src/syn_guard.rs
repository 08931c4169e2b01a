//! The SYN-flood guard's pure logic: the challenge cookie, the per-CPU SYN rate window and
//! the checksums of the challenge frame. Shared so it is unit-tested on the host.
//!
//! The guard ("SYN-ACK challenge"): above a SYN rate, a SYN from a source not verified
//! recently is answered (XDP_TX) with a SYN-ACK whose acknowledgment number is a keyed
//! cookie of the flow. A real client in SYN_SENT finds that ACK unacceptable and answers
//! with an RST whose sequence number is that ACK (RFC 793 "If the state is SYN-SENT"; Linux
//! `tcp_rcv_synsent_state_process` also re-arms its SYN retransmit to about 2 jiffies). An RST
//! carrying the right cookie proves the source address is real: it is marked verified and
//! the client's retransmitted SYN opens a flow as usual. Spoofed sources never see the
//! cookie, so their SYNs never reach conntrack, SNAT or a backend.

use crate::{Addr, FlowKey, hash};

/// Cookies rotate every `1 << COOKIE_SLOT_SHIFT` ns (about 8.6 s); the current and the
/// previous slot are accepted.
pub const COOKIE_SLOT_SHIFT: u32 = 33;

/// SYN rates are counted in windows of `1 << RATE_WINDOW_SHIFT` ns (about 67 ms).
pub const RATE_WINDOW_SHIFT: u32 = 26;

/// Flood mode stays on this long after the rate last exceeded the threshold, so it does not
/// flap at the edge of a window.
pub const FLOOD_HOLD_NS: u64 = 1_000_000_000;

/// TCP window advertised by the challenge SYN-ACK (any value works: the client rejects it
/// on its ACK number before looking at the window).
pub const CHALLENGE_WINDOW: u16 = 8192;

/// Per-CPU SYN rate state (`SYN_RATE`, one entry per CPU). Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynRate {
    /// `now >> RATE_WINDOW_SHIFT` of the window being counted.
    pub window: u64,
    /// SYNs of new flows seen in that window.
    pub count: u64,
    /// Flood mode is on on this CPU while `now < flood_until_ns` (coarse monotonic clock).
    pub flood_until_ns: u64,
    /// Challenges sent by this CPU (for `lb status`; the reason counters count them too).
    pub challenges: u64,
}
const _: () = assert!(core::mem::size_of::<SynRate>() == 32);
crate::packed_fields!(SynRate {
    window,
    count,
    flood_until_ns,
    challenges
});

/// The guard's secret (`SYN_SECRET`, one entry): filled once from `bpf_get_prandom_u32` by
/// the first challenge; all zero means not yet chosen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynSecret {
    pub words: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<SynSecret>() == 8);
crate::packed_fields!(SynSecret { words });

/// SYNs a CPU may see per rate window before flood mode turns on, for `pps` per second.
#[inline(always)]
pub const fn window_limit(pps: u32) -> u64 {
    ((pps as u64) << RATE_WINDOW_SHIFT) / 1_000_000_000
}

/// Counts one SYN at `now` and returns true if this CPU is (now) in flood mode.
#[inline(always)]
pub fn count_syn(r: &mut SynRate, now: u64, pps: u32) -> bool {
    let w = now >> RATE_WINDOW_SHIFT;
    if w != r.window {
        r.window = w;
        r.count = 0;
    }
    r.count += 1;
    if r.count > window_limit(pps) {
        r.flood_until_ns = now + FLOOD_HOLD_NS;
    }
    now < r.flood_until_ns
}

#[inline(always)]
fn mix(h: u32, v: u32) -> u32 {
    let mut k = v.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// The cookie of flow `k` (the client's SYN as it arrived) in cookie slot `slot`.
#[inline(always)]
pub fn cookie(k: &FlowKey, s: &SynSecret, slot: u64) -> u32 {
    let h = hash::flow_hash(k, s.words[0] ^ (slot as u32).wrapping_mul(0x9e37_79b9));
    let h = mix(mix(h, s.words[1]), slot as u32);
    h ^ (h >> 16) ^ s.words[1].rotate_left(7)
}

/// The cookie slot of time `now`.
#[inline(always)]
pub const fn slot(now: u64) -> u64 {
    now >> COOKIE_SLOT_SHIFT
}

/// True if `seq` (an RST's sequence number, host order) is the cookie of flow `k` in the
/// current or the previous slot.
#[inline(always)]
pub fn check(k: &FlowKey, s: &SynSecret, now: u64, seq: u32) -> bool {
    let cur = slot(now);
    seq == cookie(k, s, cur) || (cur > 0 && seq == cookie(k, s, cur - 1))
}

/// Ones' complement sum of an address's 16-bit halves (in whatever order the words hold
/// them: the sum does not depend on it).
#[inline(always)]
fn addr_sum(a: &Addr) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i < 4 {
        s += (a.words[i] & 0xffff) as u64 + (a.words[i] >> 16) as u64;
        i += 1;
    }
    s
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The challenge's 20-byte TCP header, as the wire's 16-bit words read natively (checksum
/// word 0). Ports and numbers are given as they go on the wire (network order).
#[inline(always)]
pub fn tcp_words(sport: u16, dport: u16, seq_be: u32, ack_be: u32) -> [u16; 10] {
    [
        sport,
        dport,
        seq_be as u16,
        (seq_be >> 16) as u16,
        ack_be as u16,
        (ack_be >> 16) as u16,
        // Data offset 5 (no options), SYN|ACK.
        u16::from_ne_bytes([0x50, 0x12]),
        CHALLENGE_WINDOW.to_be(),
        0,
        0,
    ]
}

/// TCP checksum (as stored) of a 20-byte header `words` from `src` to `dst` (IPv4 addresses
/// live in `words[0]`, the rest zero, so one formula serves both families).
#[inline(always)]
pub fn tcp_csum(src: &Addr, dst: &Addr, words: &[u16; 10]) -> u16 {
    let mut s = addr_sum(src) + addr_sum(dst);
    // Pseudo-header: protocol 6 and TCP length 20, as wire words.
    s += 6u16.to_be() as u64 + 20u16.to_be() as u64;
    let mut i = 0;
    while i < 10 {
        s += words[i] as u64;
        i += 1;
    }
    !fold(s)
}

/// IPv4 header checksum (as stored) of a 20-byte header given as native-read wire words with
/// the checksum word zero.
#[inline(always)]
pub fn ipv4_csum(words: &[u16; 10]) -> u16 {
    let mut s = 0u64;
    let mut i = 0;
    while i < 10 {
        s += words[i] as u64;
        i += 1;
    }
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, PROTO_TCP, csum::checksum};

    fn key(src_port: u16) -> FlowKey {
        FlowKey::new(
            Addr::v4(u32::from_ne_bytes([10, 0, 0, 1])),
            Addr::v4(u32::from_ne_bytes([10, 0, 0, 100])),
            src_port.to_be(),
            80u16.to_be(),
            PROTO_TCP,
            FAMILY_V4,
        )
    }

    #[test]
    fn cookie_depends_on_flow_secret_and_slot() {
        let s = SynSecret { words: [1, 2] };
        let c = cookie(&key(1000), &s, 5);
        assert_ne!(c, cookie(&key(1001), &s, 5));
        assert_ne!(c, cookie(&key(1000), &SynSecret { words: [1, 3] }, 5));
        assert_ne!(c, cookie(&key(1000), &SynSecret { words: [4, 2] }, 5));
        assert_ne!(c, cookie(&key(1000), &s, 6));
    }

    #[test]
    fn check_accepts_current_and_previous_slot_only() {
        let s = SynSecret { words: [7, 9] };
        let now = 10u64 << COOKIE_SLOT_SHIFT;
        let c = cookie(&key(1), &s, slot(now));
        assert!(check(&key(1), &s, now, c));
        assert!(check(&key(1), &s, now + (1 << COOKIE_SLOT_SHIFT), c));
        assert!(!check(&key(1), &s, now + (2 << COOKIE_SLOT_SHIFT), c));
        assert!(!check(&key(1), &s, now, c.wrapping_add(1)));
    }

    #[test]
    fn flood_mode_turns_on_above_the_rate_and_holds() {
        let mut r = SynRate::default();
        let pps = 1000;
        let limit = window_limit(pps);
        assert_eq!(limit, 67);
        let t0 = 5u64 << RATE_WINDOW_SHIFT;
        for i in 0..limit {
            assert!(!count_syn(&mut r, t0 + i, pps), "flood at SYN {i}");
        }
        assert!(count_syn(&mut r, t0 + limit, pps));
        // Next window: the count restarts but flood mode holds for FLOOD_HOLD_NS.
        let t1 = t0 + (1 << RATE_WINDOW_SHIFT);
        assert!(count_syn(&mut r, t1, pps));
        assert!(!count_syn(&mut r, t0 + limit + FLOOD_HOLD_NS, pps));
    }

    #[test]
    fn checksums_match_the_generic_ones() {
        let src = Addr::v4(u32::from_ne_bytes([192, 0, 2, 1]));
        let dst = Addr::v4(u32::from_ne_bytes([198, 51, 100, 7]));
        let w = tcp_words(
            80u16.to_be(),
            40000u16.to_be(),
            0x1234_5678u32.to_be(),
            0xdead_beefu32.to_be(),
        );
        let mut bytes = [0u8; 20];
        for (i, x) in w.iter().enumerate() {
            bytes[2 * i..2 * i + 2].copy_from_slice(&x.to_ne_bytes());
        }
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&[192, 0, 2, 1]);
        pseudo[4..8].copy_from_slice(&[198, 51, 100, 7]);
        pseudo[9] = 6;
        pseudo[11] = 20;
        let mut all = pseudo.to_vec();
        all.extend_from_slice(&bytes);
        assert_eq!(tcp_csum(&src, &dst, &w), checksum(&all, 0));
        // A header with its checksum in place sums to zero.
        let ip: [u16; 10] = [
            0x4500u16.to_be(),
            40u16.to_be(),
            0,
            0,
            0x4006u16.to_be(),
            0,
            0x1234,
            0x5678,
            0x9abc,
            0xdef0,
        ];
        let c = ipv4_csum(&ip);
        let mut with = ip;
        with[5] = c;
        assert_eq!(ipv4_csum(&with), 0);
    }
}
