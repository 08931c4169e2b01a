//! A UDP flood generator: `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` runs a
//! trivial `XDP_TX` program over copies of one frame, and the kernel transmits each copy out
//! of the interface named as the frame's ingress (a veth: its peer receives them).
//!
//! The program writes the whole frame before `XDP_TX`: live-frames mode recycles its pages
//! without restoring their contents, and whoever receives a frame (the LB rewriting it for
//! NAT, the kernel decrementing the TTL) changes it in place, so without the rewrite the
//! generator would soon be sending the forwarded packets instead of the flood.
//!
//! Raw `bpf(2)` (as `crate::xdp` does): the program is a few dozen instructions made from
//! the frame, and the live-frames flag needs only a few fields of the test-run attributes.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: u32 = 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_TX: u32 = 3;
const XDP_DROP: u32 = 1;
/// Frames per test-run call; calls repeat until the duration is over.
const FRAMES_PER_CALL: u32 = 1 << 16;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-initialised buffer of the size passed; the pointers in it
    // point to data that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// The loaded `XDP_TX` program.
#[derive(Debug)]
pub struct Generator {
    prog: OwnedFd,
}

/// What a flood sent.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Frames handed to the kernel.
    pub frames: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Generator {
    /// Loads the program that writes `frame` into every packet and returns `XDP_TX`.
    pub fn load(frame: &[u8]) -> Result<Generator> {
        let prog = load_xdp(&program(frame, false)?, *b"lbb_gen\0").context("XDP_TX generator")?;
        Ok(Generator { prog })
    }

    /// Like [`Generator::load`] for a [`syn_frame`], but every copy gets a random source
    /// address in the frame's /16 (65536 sources) and a source port that keeps both
    /// checksums right (see [`spoof_insns`]): a spoofed SYN flood.
    pub fn load_spoofing(frame: &[u8]) -> Result<Generator> {
        let prog = load_xdp(&program(frame, true)?, *b"lbb_syn\0").context("SYN generator")?;
        Ok(Generator { prog })
    }

    /// Sends `repeat` copies of `frame` out of interface `ifindex` of the calling thread's
    /// namespace.
    fn send(&self, ifindex: u32, frame: &[u8], repeat: u32) -> std::io::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
        let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let mut attr = [0u64; 16];
        attr[0] = self.prog.as_raw_fd() as u64;
        attr[1] = frame.len() as u64; // data_size_in (data_size_out 0)
        attr[2] = frame.as_ptr() as u64; // data_in
        attr[4] = u64::from(repeat); // repeat (duration out in the upper half)
        attr[5] = std::mem::size_of_val(&ctx) as u64; // ctx_size_in
        attr[6] = ctx.as_ptr() as u64; // ctx_in
        attr[8] = u64::from(BPF_F_TEST_XDP_LIVE_FRAMES); // flags (cpu 0)
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(drop)
    }

    /// Sends copies of `frame` out of `ifname` in `ns` for `duration`.
    pub fn flood(
        &self,
        ns: &Netns,
        ifname: &str,
        frame: &[u8],
        duration: Duration,
    ) -> Result<Flood> {
        ns.try_enter(|| -> Result<Flood> {
            let name = std::ffi::CString::new(ifname)?;
            // SAFETY: a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {ifname}");
            }
            let start = Instant::now();
            let mut frames = 0u64;
            while start.elapsed() < duration {
                self.send(ifindex, frame, FRAMES_PER_CALL)
                    .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
                frames += u64::from(FRAMES_PER_CALL);
            }
            Ok(Flood {
                frames,
                elapsed: start.elapsed(),
            })
        })?
    }
}

/// Loads an XDP program (`name`: 8 bytes, NUL-padded).
fn load_xdp(insns: &[u64], name: [u8; 8]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[6] = u64::from_le_bytes(name); // prog_name
    attr[8] = u64::from(BPF_XDP) << 32; // expected_attach_type
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD")?;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// An XDP program attached to a backend's interface that drops the flood (IPv4, no options,
/// UDP to `port`) and passes everything else, ARP included (the kernel-forwarding
/// configurations must still resolve the backends). Dropping the link detaches it.
#[derive(Debug)]
pub struct FloodSink {
    _link: OwnedFd,
}

impl FloodSink {
    /// Attaches the sink to `ifname` in `ns` (driver mode).
    pub fn attach(ns: &Netns, ifname: &str, port: u16) -> Result<FloodSink> {
        let link = ns.try_enter(|| -> Result<OwnedFd> {
            let name = std::ffi::CString::new(ifname)?;
            // SAFETY: a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {ifname}");
            }
            let prog = load_xdp(&sink_program(port), *b"lbb_sink")?;
            let mut attr = [0u64; 16];
            attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(ifindex) << 32);
            attr[1] = u64::from(BPF_XDP) | (u64::from(XDP_FLAGS_DRV_MODE) << 32);
            let fd = bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (XDP)")?;
            // SAFETY: a new fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        })??;
        Ok(FloodSink { _link: link })
    }
}

/// `XDP_DROP` for IPv4 (IHL 5) UDP to `port`, `XDP_PASS` for the rest.
fn sink_program(port: u16) -> Vec<u64> {
    // Loads are little-endian: a big-endian field reads back byte-swapped.
    let ipv4 = i32::from(0x0800u16.swap_bytes());
    let dport = i32::from(port.swap_bytes());
    const PASS_AT: i16 = 13; // index of the XDP_PASS return
    let j = |at: i16| PASS_AT - at - 1; // jump offset from instruction `at` to PASS_AT
    vec![
        insn(0x61, 2, 1, 0, 0),               // 0: r2 = data
        insn(0x61, 3, 1, 4, 0),               // 1: r3 = data_end
        insn(0xbf, 4, 2, 0, 0),               // 2: r4 = r2
        insn(0x07, 4, 0, 0, 38),              // 3: r4 += 38 (through the UDP destination port)
        insn(0x2d, 4, 3, j(4), 0),            // 4: if r4 > r3 pass
        insn(0x69, 5, 2, 12, 0),              // 5: r5 = *(u16 *)(r2 + 12)  ethertype
        insn(0x55, 5, 0, j(6), ipv4),         // 6: if r5 != IPv4 pass
        insn(0x71, 5, 2, 23, 0),              // 7: r5 = *(u8 *)(r2 + 23)  protocol
        insn(0x55, 5, 0, j(8), 17),           // 8: if r5 != UDP pass
        insn(0x69, 5, 2, 36, 0),              // 9: r5 = *(u16 *)(r2 + 36)  destination port
        insn(0x55, 5, 0, j(10), dport),       // 10: if r5 != port pass
        insn(0xb7, 0, 0, 0, XDP_DROP as i32), // 11: r0 = XDP_DROP
        insn(0x95, 0, 0, 0, 0),               // 12: exit
        insn(0xb7, 0, 0, 0, XDP_PASS as i32), // 13: r0 = XDP_PASS
        insn(0x95, 0, 0, 0, 0),               // 14: exit
    ]
}

/// One `struct bpf_insn` as a little-endian word.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(src << 4 | dst) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// Offsets in an untagged IPv4 frame: IP id, the source address's last two bytes, the
/// TCP/UDP source port.
const IP_ID_OFF: usize = 18;
const SRC_LO_OFF: usize = 28;
const SPORT_OFF: usize = 34;

/// Instructions that give the frame at `r6` a random source `k` in place of the last two
/// bytes of the source address, and keep both checksums right without recomputing them: the
/// IP id and the source port take `old + src_lo - k` (ones' complement), so the IP header's
/// sum and the TCP pseudo-header + header sum do not change. Words are as loads read them
/// (little-endian of the wire bytes): ones' complement sums do not depend on byte order.
fn spoof_insns(frame: &[u8]) -> Vec<u64> {
    let le = |o: usize| u32::from(u16::from_le_bytes([frame[o], frame[o + 1]]));
    let src_lo = le(SRC_LO_OFF);
    let mut p = vec![
        insn(0xbf, 6, 2, 0, 0),      // r6 = r2 (callee-saved across the helper call)
        insn(0x85, 0, 0, 0, 7),      // call bpf_get_prandom_u32
        insn(0x57, 0, 0, 0, 0xffff), // r0 &= 0xffff: k
        insn(0x6b, 6, 0, SRC_LO_OFF as i16, 0), // *(u16 *)(r6 + src_lo) = k
        insn(0xbf, 7, 0, 0, 0),      // r7 = k
        insn(0xa7, 7, 0, 0, 0xffff), // r7 ^= 0xffff: -k in ones' complement
    ];
    for off in [IP_ID_OFF, SPORT_OFF] {
        p.extend([
            insn(0xbf, 8, 7, 0, 0),                         // r8 = -k
            insn(0x07, 8, 0, 0, (le(off) + src_lo) as i32), // r8 += old + src_lo
            // Fold twice (at most 0x2fffd before, 0x10001 after one fold).
            insn(0xbf, 9, 8, 0, 0),      // r9 = r8
            insn(0x77, 9, 0, 0, 16),     // r9 >>= 16
            insn(0x57, 8, 0, 0, 0xffff), // r8 &= 0xffff
            insn(0x0f, 8, 9, 0, 0),      // r8 += r9
            insn(0xbf, 9, 8, 0, 0),
            insn(0x77, 9, 0, 0, 16),
            insn(0x57, 8, 0, 0, 0xffff),
            insn(0x0f, 8, 9, 0, 0),
            insn(0x6b, 6, 8, off as i16, 0), // *(u16 *)(r6 + off) = r8
        ]);
    }
    p
}

/// `r2 = data; r3 = data_end; if r2 + len > r3 drop; *(u32 *)(r2 + i) = frame[i..i+4]...;
/// [spoof_insns]; return XDP_TX`.
fn program(frame: &[u8], spoof: bool) -> Result<Vec<u64>> {
    if frame.is_empty() || !frame.len().is_multiple_of(4) || frame.len() > 512 {
        bail!(
            "frame length {} is not a multiple of 4 up to 512",
            frame.len()
        );
    }
    let words = frame.len() / 4;
    let spoofing = if spoof {
        spoof_insns(frame)
    } else {
        Vec::new()
    };
    let mut p = vec![
        insn(0x61, 2, 1, 0, 0),                  // r2 = ctx->data (LDX W)
        insn(0x61, 3, 1, 4, 0),                  // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),                  // r4 = r2
        insn(0x07, 4, 0, 0, frame.len() as i32), // r4 += len
        // if r4 > r3: skip the stores and the XDP_TX return
        insn(0x2d, 4, 3, (words + spoofing.len() + 2) as i16, 0),
    ];
    for (i, w) in frame.chunks(4).enumerate() {
        let imm = i32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        p.push(insn(0x62, 2, 0, (i * 4) as i16, imm)); // *(u32 *)(r2 + 4i) = imm (ST W)
    }
    p.extend(spoofing);
    p.push(insn(0xb7, 0, 0, 0, XDP_TX as i32)); // r0 = XDP_TX
    p.push(insn(0x95, 0, 0, 0, 0)); // exit
    p.push(insn(0xb7, 0, 0, 0, XDP_DROP as i32)); // r0 = XDP_DROP
    p.push(insn(0x95, 0, 0, 0, 0)); // exit
    Ok(p)
}

/// The Internet checksum of `data` (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A minimum-size (60-byte) Ethernet/IPv4/UDP frame with UDP checksum 0 (none).
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    const PAYLOAD: usize = 18;
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + PAYLOAD) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x5a; PAYLOAD]);
    f
}

/// A 60-byte Ethernet/IPv4/TCP SYN (no options; 6 bytes of Ethernet padding after the
/// datagram) with both checksums right: the spoofed flood's template.
pub fn syn_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x0101_0101u32.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend_from_slice(&[0; 6]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `spoof_insns` computes, on the host: the frame with source `k`.
    fn spoofed(f: &[u8], k: u16) -> Vec<u8> {
        let le = |o: usize| u32::from(u16::from_le_bytes([f[o], f[o + 1]]));
        let src_lo = le(SRC_LO_OFF);
        let mut out = f.to_vec();
        out[SRC_LO_OFF..SRC_LO_OFF + 2].copy_from_slice(&k.to_le_bytes());
        for off in [IP_ID_OFF, SPORT_OFF] {
            let mut s = (u32::from(k) ^ 0xffff) + le(off) + src_lo;
            s = (s & 0xffff) + (s >> 16);
            s = (s & 0xffff) + (s >> 16);
            out[off..off + 2].copy_from_slice(&(s as u16).to_le_bytes());
        }
        out
    }

    #[test]
    fn spoofing_keeps_both_checksums() {
        let f = syn_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(10, 99, 0, 1),
            Ipv4Addr::new(10, 200, 100, 1),
            40000,
            80,
        );
        assert_eq!(f.len(), 60);
        for k in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
            let g = spoofed(&f, k);
            assert_eq!(checksum(&g[14..34]), 0, "IP checksum, k {k}");
            let mut pseudo = g[26..34].to_vec();
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            pseudo.extend_from_slice(&g[34..54]);
            assert_eq!(checksum(&pseudo), 0, "TCP checksum, k {k}");
        }
        let p = program(&f, true).unwrap();
        // The bounds check jumps over the stores, the spoofing and the XDP_TX return.
        assert_eq!((p[4] >> 16) as u16 as usize, 15 + spoof_insns(&f).len() + 2);
    }

    #[test]
    fn frame_is_well_formed() {
        let f = udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(10, 200, 1, 2),
            Ipv4Addr::new(10, 200, 100, 1),
            40000,
            9,
        );
        assert_eq!(f.len(), 60);
        // A correct IPv4 header checksums to zero.
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9);
    }

    #[test]
    fn program_stores_every_word_and_jumps_past_them() {
        let f = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let p = program(&f, false).unwrap();
        assert_eq!(p.len(), 5 + 2 + 4);
        // The bounds check jumps over 2 stores and the 2-instruction XDP_TX return.
        assert_eq!((p[4] >> 16) as u16, 4);
        assert_eq!((p[5] >> 32) as u32, u32::from_le_bytes([1, 2, 3, 4]));
        assert_eq!((p[6] >> 16) as u16, 4, "second store at offset 4");
        assert!(program(&[0u8; 6], false).is_err());
    }

    #[test]
    fn sink_jumps_land_on_the_pass_return() {
        let p = sink_program(9);
        assert_eq!(p.len(), 15);
        for at in [4usize, 6, 8, 10] {
            let off = (p[at] >> 16) as u16 as i16;
            assert_eq!(at as i16 + off + 1, 13, "jump at {at}");
        }
        assert_eq!((p[13] >> 32) as u32, XDP_PASS);
    }
}
