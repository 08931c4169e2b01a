//! Why a packet left the fast path: the index of the `REASONS` per-CPU counter array.
//!
//! Each reason has one documented verdict. The rule for packets the load balancer does not
//! handle (IPv4 options, fragments, IPv6 extension headers, truncated L4 headers): if the
//! destination address is a VIP they are dropped (a VIP packet is never forwarded half-handled),
//! otherwise they are passed to the kernel untouched.

/// Counter index; `Reason as u32` indexes `REASONS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): pass.
    NotIp = 0,
    /// Frame shorter than its Ethernet (+802.1Q) header: pass (the kernel drops it).
    TruncatedEth = 1,
    /// IP header truncated, bad version, IHL < 5 or total length shorter than the header: drop.
    MalformedIp = 2,
    /// IPv4 with options: drop if to a VIP, else pass.
    Ipv4Options = 3,
    /// IPv4 fragment (MF set or offset != 0): drop if to a VIP, else pass.
    Fragment = 4,
    /// IPv6 extension header or other next header we do not parse: drop if to a VIP, else pass.
    Ipv6ExtHeader = 5,
    /// TCP/UDP header truncated or TCP data offset < 5: drop if to a VIP, else pass.
    TruncatedL4 = 6,
    /// IP protocol other than TCP/UDP: drop if to a VIP, else pass (ICMP to a VIP included).
    OtherProto = 7,
    /// TCP/UDP to no configured service: pass.
    NoService = 8,
    /// Source over its token-bucket rate: drop.
    RateLimited = 9,
    /// Service has no usable backend (no table, or empty slot): drop.
    NoBackend = 10,
    /// Backend address family differs from the VIP's (not supported): drop.
    FamilyMismatch = 11,
    /// FIB lookup failed (no route, blackhole, ...): drop.
    FibFailed = 12,
    /// FIB has a route but no neighbour entry yet: drop (the agent keeps neighbours resolved).
    NoNeighbour = 13,
    /// No free SNAT source port after the allowed attempts: drop.
    SnatExhausted = 14,
    /// No SNAT address configured on the egress interface: drop.
    NoSnatAddr = 15,
    /// Forwarded to a backend (new or established flow).
    Forwarded = 16,
    /// Reply translated back to the client.
    ReplyForwarded = 17,
    /// Could not write the conntrack entries (map full and not LRU-evictable): drop.
    CtInsertFailed = 18,
    /// Non-first packet of a TCP flow with no conntrack entry (e.g. after expiry): drop with
    /// counter, as the backend would not know the flow anyway. Only SYNs open flows.
    NoFlow = 19,
    /// Redirect to the egress interface failed (not in the devmap): drop.
    RedirectFailed = 20,
    /// FIB lookup refused because forwarding is off on the ingress interface: drop. The
    /// agent turns forwarding on for the interfaces it attaches to.
    ForwardingDisabled = 21,
    /// Frame not addressed to the receiving interface (another host's MAC, broadcast,
    /// multicast): drop. A router never forwards a frame that was not sent to it.
    BadDstMac = 22,
    /// Broadcast or multicast source MAC (no station sends from one): drop.
    BadSrcMac = 23,
    /// IP length longer than the frame, or too short for the headers it claims: drop.
    BadIpLength = 24,
    /// IPv4 header checksum wrong: drop.
    BadIpChecksum = 25,
    /// TTL / hop limit would reach 0 here. Client side: pass (the kernel answers ICMP time
    /// exceeded, as a router does); reply side: drop.
    TtlExceeded = 26,
    /// TCP data offset past the end of the segment, or UDP length not within the IP
    /// payload: drop.
    BadL4Length = 27,
    /// TCP flag set Linux conntrack calls invalid (no flags, SYN+FIN, SYN+RST, FIN
    /// without ACK, ...): drop.
    BadTcpFlags = 28,
    /// Source port 0: drop.
    BadSrcPort = 29,
    /// Martian source address (the VIP itself, unspecified, loopback, multicast, broadcast,
    /// link-local, reserved, IPv4-mapped/-compatible IPv6) opening a flow: drop.
    MartianSource = 30,
    /// To an L7 gateway service (`mode = "http"`), past the rate limit and the checks: pass
    /// (the kernel delivers it to the gateway's socket through the VIP's local route and
    /// sk_lookup).
    ToGateway = 31,
    /// To a `scope = "cluster"` service from the wire: drop (such a service is reachable only
    /// through the socket LB, from processes on this node).
    ClusterOnly = 32,
    /// SYN of a new flow from a source not verified, while the SYN-flood guard is on: answered
    /// with a challenge SYN-ACK (XDP_TX; see `syn_guard`), not forwarded.
    SynChallenged = 33,
    /// RST carrying the challenge's cookie: its source is verified (its next SYNs open flows);
    /// the RST itself is dropped.
    SynVerified = 34,
}

/// Number of reasons (size of `REASONS`).
pub const REASON_COUNT: u32 = 35;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::NotIp,
        Reason::TruncatedEth,
        Reason::MalformedIp,
        Reason::Ipv4Options,
        Reason::Fragment,
        Reason::Ipv6ExtHeader,
        Reason::TruncatedL4,
        Reason::OtherProto,
        Reason::NoService,
        Reason::RateLimited,
        Reason::NoBackend,
        Reason::FamilyMismatch,
        Reason::FibFailed,
        Reason::NoNeighbour,
        Reason::SnatExhausted,
        Reason::NoSnatAddr,
        Reason::Forwarded,
        Reason::ReplyForwarded,
        Reason::CtInsertFailed,
        Reason::NoFlow,
        Reason::RedirectFailed,
        Reason::ForwardingDisabled,
        Reason::BadDstMac,
        Reason::BadSrcMac,
        Reason::BadIpLength,
        Reason::BadIpChecksum,
        Reason::TtlExceeded,
        Reason::BadL4Length,
        Reason::BadTcpFlags,
        Reason::BadSrcPort,
        Reason::MartianSource,
        Reason::ToGateway,
        Reason::ClusterOnly,
        Reason::SynChallenged,
        Reason::SynVerified,
    ];

    /// Stable snake_case name, used in metrics labels and `lb status`.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotIp => "not_ip",
            Reason::TruncatedEth => "truncated_eth",
            Reason::MalformedIp => "malformed_ip",
            Reason::Ipv4Options => "ipv4_options",
            Reason::Fragment => "fragment",
            Reason::Ipv6ExtHeader => "ipv6_ext_header",
            Reason::TruncatedL4 => "truncated_l4",
            Reason::OtherProto => "other_proto",
            Reason::NoService => "no_service",
            Reason::RateLimited => "rate_limited",
            Reason::NoBackend => "no_backend",
            Reason::FamilyMismatch => "family_mismatch",
            Reason::FibFailed => "fib_failed",
            Reason::NoNeighbour => "no_neighbour",
            Reason::SnatExhausted => "snat_exhausted",
            Reason::NoSnatAddr => "no_snat_addr",
            Reason::Forwarded => "forwarded",
            Reason::ReplyForwarded => "reply_forwarded",
            Reason::CtInsertFailed => "ct_insert_failed",
            Reason::NoFlow => "no_flow",
            Reason::RedirectFailed => "redirect_failed",
            Reason::ForwardingDisabled => "forwarding_disabled",
            Reason::BadDstMac => "bad_dst_mac",
            Reason::BadSrcMac => "bad_src_mac",
            Reason::BadIpLength => "bad_ip_length",
            Reason::BadIpChecksum => "bad_ip_checksum",
            Reason::TtlExceeded => "ttl_exceeded",
            Reason::BadL4Length => "bad_l4_length",
            Reason::BadTcpFlags => "bad_tcp_flags",
            Reason::BadSrcPort => "bad_src_port",
            Reason::MartianSource => "martian_source",
            Reason::ToGateway => "to_gateway",
            Reason::ClusterOnly => "cluster_only",
            Reason::SynChallenged => "syn_challenged",
            Reason::SynVerified => "syn_verified",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_indexed_by_discriminant() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of place in Reason::ALL");
        }
    }
}
