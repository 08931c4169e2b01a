//! Traffic that must not notice an agent hand-over (a rolling update): connections opened
//! before it and held open, echoing all along, and new connections made all along, from a
//! thread in the client's namespace while the caller stops one agent and starts the next.

use std::{
    fmt,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow};

use crate::{Netns, Spread};

/// Per connect, read or write.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between rounds (each round: one echo per held connection, one new connection).
const ROUND_PAUSE: Duration = Duration::from_millis(20);

/// What the traffic saw.
#[derive(Debug, Default)]
pub struct HandoverReport {
    /// Connections held open through the hand-over, and the backend each went to.
    pub held: Vec<String>,
    /// Echo round trips that worked on the held connections.
    pub echoes: u64,
    /// Held connections that failed (index, backend, error): each is a lost connection.
    pub lost: Vec<String>,
    /// New connections made during the hand-over, by backend (and errors).
    pub new: Spread,
}

impl fmt::Display for HandoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  held connections: {}, echoes on them: {}, lost: {}",
            self.held.len(),
            self.echoes,
            self.lost.len()
        )?;
        for l in &self.lost {
            writeln!(f, "    lost {l}")?;
        }
        write!(f, "  new connections during the hand-over:\n{}", self.new)
    }
}

fn connect(addr: SocketAddr) -> Result<(BufReader<TcpStream>, String)> {
    let s =
        TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut r = BufReader::new(s);
    let mut name = String::new();
    r.read_line(&mut name).context("read the backend's name")?;
    if name.is_empty() {
        return Err(anyhow!("closed before the name"));
    }
    Ok((r, name.trim().to_owned()))
}

fn echo(conn: &mut BufReader<TcpStream>, round: u64) -> Result<()> {
    let msg = format!("{round:08}");
    conn.get_mut().write_all(msg.as_bytes())?;
    let mut back = [0u8; 8];
    conn.read_exact(&mut back)?;
    if back != msg.as_bytes() {
        return Err(anyhow!(
            "echo {:?} != {msg:?}",
            String::from_utf8_lossy(&back)
        ));
    }
    Ok(())
}

/// Opens `held` connections from `client` to `addr:port`, then runs `during` while a thread
/// keeps echoing on them and making new connections; returns what `during` returned and the
/// report. The thread stops once `during` returns (or fails).
pub fn with_traffic<R>(
    client: &Netns,
    addr: IpAddr,
    port: u16,
    held: usize,
    during: impl FnOnce() -> Result<R>,
) -> Result<(R, HandoverReport)> {
    let target = SocketAddr::new(addr, port);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let stop = &stop;
        let worker = scope.spawn(move || -> Result<HandoverReport> {
            client.enter(|| {
                let mut report = HandoverReport::default();
                let mut conns = Vec::new();
                for i in 0..held {
                    match connect(target) {
                        Ok((c, name)) => {
                            report.held.push(name);
                            conns.push(Some(c));
                        }
                        Err(e) => {
                            let e = e.context(format!("held connection {i}"));
                            let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                            return Err(e);
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                let mut round = 0u64;
                // One last round after the stop flag: the connections still work at the end.
                loop {
                    let last = stop.load(Ordering::SeqCst);
                    for (i, slot) in conns.iter_mut().enumerate() {
                        let Some(c) = slot else { continue };
                        match echo(c, round) {
                            Ok(()) => report.echoes += 1,
                            Err(e) => {
                                report
                                    .lost
                                    .push(format!("#{i} ({}): {e:#}", report.held[i]));
                                *slot = None;
                            }
                        }
                    }
                    match connect(target) {
                        Ok((_, name)) => *report.new.counts.entry(name).or_default() += 1,
                        Err(e) => {
                            report.new.errors += 1;
                            report.new.last_error = Some(format!("{e:#}"));
                        }
                    }
                    if last {
                        return Ok(report);
                    }
                    round += 1;
                    std::thread::sleep(ROUND_PAUSE);
                }
            })
        });
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("traffic thread ended")));
        let result = ready.and_then(|()| during());
        stop.store(true, Ordering::SeqCst);
        let report = worker
            .join()
            .map_err(|_| anyhow!("traffic thread panicked"))?;
        Ok((result?, report?))
    })
}
