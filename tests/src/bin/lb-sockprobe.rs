//! `lb-sockprobe MODE ADDR [N]`: the client of the socket LB tests, run inside a test cgroup
//! (and network namespace). Talks to the name servers of `lb_tests::servers` (TCP: they send
//! their name, then echo; UDP: they answer every datagram with their name) and prints one
//! line per exchange, `peer=ADDR name=NAME`, where ADDR is what the application sees
//! (`getpeername()` for TCP, the source `recvfrom()` reports for UDP); `error=...` for a
//! failed one. Every operation has a 2 s timeout.
//!
//! Modes:
//! - `tcp ADDR N`: N connections one after another.
//! - `udp ADDR N`: N queries from one unconnected socket.
//! - `udp-fresh ADDR N`: N queries, each from a new socket.
//! - `hold ADDR N`: opens N connections, prints `ready` with their names, waits for a line
//!   on stdin, then sends a line on each and reads it back; prints `echoed=K` (how many came
//!   back whole).

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: lb-sockprobe tcp|udp|udp-fresh|hold ADDR [N]");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is ip:port or [ip6]:port");
    let n: usize = args.get(3).map_or(1, |s| s.parse().expect("N is a number"));
    match mode.as_str() {
        "tcp" => (0..n).for_each(|_| report(tcp_once(addr).map(|(_, p, name)| (p, name)))),
        "udp" => {
            let s = udp_socket(addr);
            (0..n).for_each(|_| report(udp_once(&s, addr)));
        }
        "udp-fresh" => (0..n).for_each(|_| report(udp_once(&udp_socket(addr), addr))),
        "hold" => hold(addr, n),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}

fn report(r: std::io::Result<(SocketAddr, String)>) {
    match r {
        Ok((peer, name)) => println!("peer={peer} name={name}"),
        Err(e) => println!("error={e}"),
    }
}

fn tcp_once(addr: SocketAddr) -> std::io::Result<(TcpStream, SocketAddr, String)> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let peer = s.peer_addr()?;
    let name = read_line(&s)?;
    Ok((s, peer, name))
}

fn read_line(mut s: &TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' {
        out.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn udp_socket(addr: SocketAddr) -> UdpSocket {
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(any).expect("bind a UDP socket");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn udp_once(s: &UdpSocket, addr: SocketAddr) -> std::io::Result<(SocketAddr, String)> {
    s.send_to(b"who\n", addr)?;
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok((from, String::from_utf8_lossy(&buf[..n]).trim().to_string()))
}

fn hold(addr: SocketAddr, n: usize) {
    let mut conns = Vec::new();
    let mut names = Vec::new();
    for _ in 0..n {
        match tcp_once(addr) {
            Ok((s, _, name)) => {
                names.push(name);
                conns.push(s);
            }
            Err(e) => println!("error={e}"),
        }
    }
    println!("ready {}", names.join(" "));
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let mut echoed = 0;
    for (i, mut s) in conns.into_iter().enumerate() {
        let msg = format!("ping {i}\n");
        let mut back = vec![0u8; msg.len()];
        if s.write_all(msg.as_bytes()).is_ok()
            && s.read_exact(&mut back).is_ok()
            && back == msg.as_bytes()
        {
            echoed += 1;
        }
    }
    println!("echoed={echoed}");
}
