//! One rtnetlink request at a time on a blocking socket: send, then read answers until the
//! kernel's ack (or its refusal).

use std::{os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::NetlinkError;

/// How long a request waits for the kernel (it answers at once; this only bounds a bug).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A `NETLINK_ROUTE` socket for requests.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        set_recv_timeout(&sock, ANSWER_TIMEOUT)?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends `msg` with `flags` (besides REQUEST and ACK) and returns the messages answered
    /// before the ack. A refusal is [`NetlinkError::Kernel`] with the kernel's errno.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = encode(msg, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq);
        self.sock.send(&bytes, 0).map_err(NetlinkError::Socket)?;
        let mut answers = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(|e| {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    NetlinkError::NoAnswer
                } else {
                    NetlinkError::Socket(e)
                }
            })?;
            for m in decode(&data)? {
                if m.header.sequence_number != self.seq {
                    continue; // a late answer to an earlier request
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                    NetlinkPayload::Error(e) => return Err(NetlinkError::Kernel(e.to_io())),
                    NetlinkPayload::Done(_) => return Ok(answers),
                    _ => {}
                }
            }
        }
    }
}

/// The bytes of one request.
pub(crate) fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut bytes = vec![0u8; m.buffer_len()];
    m.serialize(&mut bytes);
    bytes
}

/// Every message of one datagram (the kernel packs several into one).
pub(crate) fn decode(
    mut data: &[u8],
) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, NetlinkError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = NetlinkBuffer::new_checked(data)
            .map_err(|e| NetlinkError::Decode(e.to_string()))?
            .length() as usize;
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len])
            .map_err(|e| NetlinkError::Decode(e.to_string()))?;
        out.push(m);
        // Messages are 4-byte aligned.
        data = data.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(out)
}

fn set_recv_timeout(sock: &Socket, t: Duration) -> Result<(), NetlinkError> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid timeval of the size given, on our own socket.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
    }
    Ok(())
}
