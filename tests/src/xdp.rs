//! Tiny XDP programs (a few instructions, loaded with raw `bpf(2)`) for veth peers and for
//! checking how veth treats XDP frames.
//!
//! Why they exist: on veth, a frame sent with `XDP_REDIRECT` or `XDP_TX` is queued on the
//! *peer's* XDP ring and delivered by the peer's NAPI, which exists only if the peer has an XDP
//! program or GRO on; otherwise the frame is dropped (`xdp_tx_errors` / `xdp_redirect_errors`).
//! Measured on this kernel (see `tests/tests/harness.rs`): with GRO only, redirected frames
//! arrive but `XDP_TX`ed frames sit in the ring until something else wakes the peer's NAPI,
//! because veth kicks the peer after `XDP_TX` only if the peer has an XDP program. So an
//! `XDP_PASS` program on the peer ([`attach_xdp_pass`]) is the dependable way.
//!
//! Raw instructions instead of an object file: the harness must not depend on the eBPF crate,
//! which other people edit, nor on clang.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_FUNC_REDIRECT: u32 = 23;

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`: bounce every frame back out of the interface it came in on.
pub const XDP_TX: u32 = 3;

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K) as a little-endian `struct bpf_insn` word.
fn mov_imm(dst: u8, imm: u32) -> u64 {
    0xb7 | (u64::from(dst) << 8) | (u64::from(imm) << 32)
}

/// `call helper` (BPF_JMP | BPF_CALL).
fn call(helper: u32) -> u64 {
    0x85 | (u64::from(helper) << 32)
}

/// `exit` (BPF_JMP | BPF_EXIT).
const EXIT: u64 = 0x95;

/// An attached XDP program; dropping it closes the link, which detaches the program.
#[derive(Debug)]
pub struct XdpLink {
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

fn load(insns: &[u64]) -> std::io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // prog_name at byte 48; expected_attach_type at byte 68 (upper half of word 8).
    attr[6] = u64::from_le_bytes(*b"lbt_test");
    attr[8] = u64::from(BPF_XDP) << 32;
    bpf(BPF_PROG_LOAD, &mut attr)
}

fn ifindex(ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
    }
    Ok(index)
}

/// Loads the program `build(ns)` returns and attaches it to `ifname` in `ns` (driver mode).
/// `build` runs inside the namespace, so it can resolve interface indexes there.
fn attach(
    ns: &Netns,
    ifname: &str,
    build: impl FnOnce() -> Result<Vec<u64>> + Send,
) -> Result<XdpLink> {
    let link = ns
        .try_enter(|| -> Result<OwnedFd> {
            let index = ifindex(ifname)?;
            let prog = load(&build()?).context("BPF_PROG_LOAD of a test XDP program")?;
            let mut attr = [0u64; 16];
            attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(index) << 32);
            attr[1] = u64::from(BPF_XDP) | (u64::from(XDP_FLAGS_DRV_MODE) << 32);
            // The link keeps its own reference to the program; `prog` may close.
            bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (XDP, driver mode)")
        })
        .with_context(|| format!("enter {}", ns.name()))?
        .with_context(|| format!("attach XDP to {ifname} in {}", ns.name()))?;
    Ok(XdpLink {
        _link: link,
        ifname: ifname.to_owned(),
    })
}

/// Attaches an `XDP_PASS` program to `ifname` in `ns`, in driver (native) mode.
pub fn attach_xdp_pass(ns: &Netns, ifname: &str) -> Result<XdpLink> {
    attach_xdp_action(ns, ifname, XDP_PASS)
}

/// Attaches a program returning `action` for every frame to `ifname` in `ns` (driver mode).
/// `XDP_TX` makes a crude reflector, used to check that a peer receives `XDP_TX` frames.
pub fn attach_xdp_action(ns: &Netns, ifname: &str, action: u32) -> Result<XdpLink> {
    attach(ns, ifname, || Ok(vec![mov_imm(0, action), EXIT]))
}

/// Attaches a program that redirects every frame arriving on `ifname` out of `target` (both in
/// `ns`) with `bpf_redirect`, unchanged: checks that `target`'s peer receives redirected frames.
pub fn attach_xdp_redirect(ns: &Netns, ifname: &str, target: &str) -> Result<XdpLink> {
    attach(ns, ifname, || {
        let to = ifindex(target)?;
        Ok(vec![
            mov_imm(1, to),
            mov_imm(2, 0),
            call(BPF_FUNC_REDIRECT),
            EXIT,
        ])
    })
}
