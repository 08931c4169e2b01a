//! An interface's MAC address by ifindex, in the calling thread's network namespace (ioctl on
//! a socket opened there: `/sys/class/net` would show the namespace /sys was mounted in).

use std::{io, os::fd::AsRawFd};

/// The hardware address of interface `ifindex`.
pub fn mac_of(ifindex: u32) -> io::Result<[u8; 6]> {
    // SAFETY: plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_ifindex = ifindex as libc::c_int;
    // SAFETY: SIOCGIFNAME fills ifr_name from ifr_ifindex.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFNAME, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and fills ifr_hwaddr.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union member SIOCGIFHWADDR filled.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_the_zero_mac() {
        assert_eq!(super::mac_of(1).expect("lo is ifindex 1"), [0; 6]);
    }
}
