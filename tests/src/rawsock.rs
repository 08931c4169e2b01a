//! `AF_PACKET` sockets: send hand-made frames out of an interface, and capture what arrives on
//! one. Open them inside the namespace they belong to (`Netns::enter`); the socket stays in
//! that namespace for its life and may be used from any thread afterwards.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

/// A packet socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

fn ifindex(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i as i32)
}

fn sockaddr(ifindex: i32, proto: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto.to_be();
    sa.sll_ifindex = ifindex;
    sa
}

impl PacketSocket {
    /// A socket that only sends (it is bound with protocol 0, so nothing is queued to it).
    pub fn sender(ifname: &str) -> io::Result<PacketSocket> {
        Self::open(ifname, 0)
    }

    /// A socket that receives every frame arriving on `ifname` (8 MiB receive buffer).
    pub fn capture(ifname: &str) -> io::Result<PacketSocket> {
        let s = Self::open(ifname, ETH_P_ALL)?;
        let size: libc::c_int = 8 << 20;
        // SAFETY: valid fd and option buffer. SO_RCVBUFFORCE needs CAP_NET_ADMIN (we are root);
        // failing it only means a smaller buffer.
        unsafe {
            libc::setsockopt(
                s.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(s)
    }

    fn open(ifname: &str, proto: u16) -> io::Result<PacketSocket> {
        let ifindex = ifindex(ifname)?;
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sa = sockaddr(ifindex, proto);
        // SAFETY: valid fd and sockaddr of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends `frame` (a whole Ethernet frame, as is) out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let proto = if frame.len() >= 14 {
            u16::from_be_bytes([frame[12], frame[13]])
        } else {
            0
        };
        let sa = sockaddr(self.ifindex, proto);
        // SAFETY: valid fd, buffer and sockaddr.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    /// Receives incoming frames (not the interface's own outgoing ones) until none arrived for
    /// `quiet`, `limit` passed, or `max` frames were read.
    pub fn drain(&self, quiet: Duration, limit: Duration, max: usize) -> Vec<Vec<u8>> {
        let start = Instant::now();
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        while frames.len() < max && start.elapsed() < limit {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, quiet.as_millis() as libc::c_int) };
            if ready <= 0 {
                break;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid fd, buffer and address buffer of the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sa as *mut libc::sockaddr_ll).cast(),
                    &mut sl,
                )
            };
            if n < 0 {
                continue;
            }
            if sa.sll_pkttype != PACKET_OUTGOING {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    }
}
