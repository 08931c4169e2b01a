//! Wire headers. Fields are in network byte order, read and written as they are.
//!
//! Headers sit at 2-byte offsets in the frame, so a `&T` to one (or a plain `*p` of a
//! `u32` field) could be misaligned: fields are read and written through raw pointers with
//! [`get!`] and [`set!`], which go through `wire` (one instruction per field, no alignment
//! assumed).

/// Reads field `$f` of the header at raw pointer `$p` (bounds-checked by `ptr_at`).
macro_rules! get {
    ($p:expr, $f:ident) => {
        // SAFETY: `$p` was bounds-checked for the whole header; no alignment is assumed.
        unsafe { $crate::wire::Field::get(&raw const (*$p).$f) }
    };
}

/// Writes field `$f` of the header at raw pointer `$p` (bounds-checked by `ptr_at`).
macro_rules! set {
    ($p:expr, $f:ident, $v:expr) => {{
        let v = $v;
        // SAFETY: as for `get!`.
        unsafe { $crate::wire::Field::set(&raw mut (*$p).$f, v) }
    }};
}

pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88A8u16.to_be();

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

#[repr(C)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// Data offset (high 4 bits of the first byte) and flags (second byte).
    pub off_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == 14);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == 40);
const _: () = assert!(core::mem::size_of::<TcpHdr>() == 20);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == 8);
