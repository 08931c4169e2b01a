//! A two-instruction `XDP_PASS` program, attached to veth peers in native mode.
//!
//! Why: on veth, frames sent with `XDP_REDIRECT` or `XDP_TX` are delivered through the *peer's*
//! NAPI, which exists only if the peer has an XDP program or GRO enabled; otherwise they are
//! dropped silently. This is the "XDP program" way of making a peer ready (the other is GRO, see
//! `Topology`). It is loaded with raw `bpf(2)` calls so the harness needs no object file and does
//! not depend on the eBPF crate, which may be mid-edit.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `r0 = XDP_PASS (2); exit`, as little-endian `struct bpf_insn` words.
const PASS_PROG: [u64; 2] = [
    0xb7 | (2u64 << 32), // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 2
    0x95,                // BPF_JMP | BPF_EXIT
];

/// An attached XDP program; dropping it closes the link, which detaches the program.
#[derive(Debug)]
pub struct XdpPassLink {
    _link: OwnedFd,
    /// Interface it is attached to (inside its namespace).
    pub ifname: String,
}

/// `bpf(cmd, attr)` with a zero-filled attribute block (the kernel requires unused bytes zero).
fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a valid, initialised buffer of the size passed; pointers inside it point to
    // data that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load_pass_prog() -> std::io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | ((PASS_PROG.len() as u64) << 32);
    attr[1] = PASS_PROG.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // prog_name at byte 48; expected_attach_type at byte 68 (upper half of word 8).
    attr[6] = u64::from_le_bytes(*b"lbt_pass");
    attr[8] = u64::from(BPF_XDP) << 32;
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// Attaches the pass program to `ifname` in `ns`, in driver (native) mode.
pub fn attach_xdp_pass(ns: &Netns, ifname: &str) -> Result<XdpPassLink> {
    let name = std::ffi::CString::new(ifname)?;
    let link = ns
        .try_enter(|| -> Result<OwnedFd> {
            // SAFETY: name is a valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
            }
            let prog = load_pass_prog().context("BPF_PROG_LOAD of the XDP pass program")?;
            let mut attr = [0u64; 16];
            attr[0] = prog_fd_word(&prog) | (u64::from(ifindex) << 32);
            attr[1] = u64::from(BPF_XDP) | (u64::from(XDP_FLAGS_DRV_MODE) << 32);
            // The link keeps its own reference to the program; `prog` may close.
            bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (XDP, driver mode)")
        })
        .with_context(|| format!("enter {}", ns.name()))?
        .with_context(|| format!("attach XDP pass to {ifname} in {}", ns.name()))?;
    Ok(XdpPassLink {
        _link: link,
        ifname: ifname.to_owned(),
    })
}

fn prog_fd_word(fd: &OwnedFd) -> u64 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd() as u32 as u64
}
