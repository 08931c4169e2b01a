//! Connection-tracking state machine, shared so it is unit-tested on the host.
//!
//! Deliberately small: the load balancer only needs to know how long to keep a flow. A flow
//! starts in `CT_SYN_SENT`, becomes `CT_ESTABLISHED` on the first ACK without SYN, and
//! `CT_CLOSING` (short timeout) once a FIN or RST is seen. UDP flows are `CT_UDP`.

use crate::{CT_CLOSING, CT_ESTABLISHED, CT_SYN_SENT, CT_UDP, PROTO_UDP, Settings};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// State of a new flow opened by a packet with these TCP flags.
#[inline(always)]
pub fn initial(proto: u8) -> u8 {
    if proto == PROTO_UDP {
        CT_UDP
    } else {
        CT_SYN_SENT
    }
}

/// State after a packet with `flags` on a flow in state `cur`.
#[inline(always)]
pub fn next(cur: u8, proto: u8, flags: u8) -> u8 {
    if proto == PROTO_UDP {
        return CT_UDP;
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        return CT_CLOSING;
    }
    if cur == CT_SYN_SENT && flags & (TCP_ACK | TCP_SYN) == TCP_ACK {
        return CT_ESTABLISHED;
    }
    cur
}

/// True if only a SYN without ACK may open a TCP flow (mid-flow packets cannot, since the
/// backend would not know the connection).
#[inline(always)]
pub fn opens_flow(proto: u8, flags: u8) -> bool {
    proto == PROTO_UDP || flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// True if an existing entry must be replaced by a new flow: idle past its timeout, or a new
/// SYN on a connection that was closing (the client reusing its port).
#[inline(always)]
pub fn is_stale(state: u8, last_seen_ns: u64, now_ns: u64, flags: u8, s: &Settings) -> bool {
    now_ns.saturating_sub(last_seen_ns) > s.timeout_ns(state)
        || (state == CT_CLOSING && flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTO_TCP;

    #[test]
    fn handshake_then_close() {
        let mut s = initial(PROTO_TCP);
        assert_eq!(s, CT_SYN_SENT);
        s = next(s, PROTO_TCP, TCP_SYN); // retransmitted SYN
        assert_eq!(s, CT_SYN_SENT);
        s = next(s, PROTO_TCP, TCP_ACK);
        assert_eq!(s, CT_ESTABLISHED);
        s = next(s, PROTO_TCP, TCP_ACK | TCP_FIN);
        assert_eq!(s, CT_CLOSING);
        s = next(s, PROTO_TCP, TCP_ACK);
        assert_eq!(s, CT_CLOSING, "closing is sticky");
    }

    #[test]
    fn rst_closes_and_udp_is_udp() {
        assert_eq!(next(CT_ESTABLISHED, PROTO_TCP, TCP_RST), CT_CLOSING);
        assert_eq!(next(CT_UDP, PROTO_UDP, 0xff), CT_UDP);
    }

    #[test]
    fn only_syn_opens() {
        assert!(opens_flow(PROTO_TCP, TCP_SYN));
        assert!(!opens_flow(PROTO_TCP, TCP_SYN | TCP_ACK));
        assert!(!opens_flow(PROTO_TCP, TCP_ACK));
        assert!(opens_flow(PROTO_UDP, 0));
    }

    #[test]
    fn staleness() {
        let s = Settings::default();
        let sec = 1_000_000_000;
        assert!(!is_stale(CT_ESTABLISHED, 0, 3000 * sec, TCP_ACK, &s));
        assert!(is_stale(CT_ESTABLISHED, 0, 3601 * sec, TCP_ACK, &s));
        assert!(is_stale(CT_CLOSING, 0, 11 * sec, TCP_ACK, &s));
        assert!(
            is_stale(CT_CLOSING, 0, 1, TCP_SYN, &s),
            "port reuse after close"
        );
        assert!(
            !is_stale(CT_SYN_SENT, 0, 1, TCP_SYN, &s),
            "SYN retransmission"
        );
    }
}
