//! `lb-paced ADDR RATE SECONDS`: an open-loop HTTP/1.1 client for the bench. Starts a new
//! connection to `ADDR` every 1/`RATE` s for `SECONDS`, whether or not earlier ones finished,
//! and sends `GET /` with `Connection: close` on each. A request's latency runs from the
//! moment it was due to the last byte of the response, so it includes the connect (a SYN
//! retransmission shows as its 1 s) and any wait for a free worker: the client's view, free
//! of the coordinated omission of closed-loop tools such as `wrk`, whose latency starts once
//! the connection is up.
//!
//! Prints one line: `sent=N ok=N failed=N p50_us=X p99_us=X p999_us=X max_us=X`
//! (percentiles over every request due, a failed one counting as its time to failure).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

/// Workers: enough that a few hundred slow connects (SYN retransmissions) at once do not
/// delay the requests due behind them.
const WORKERS: usize = 256;
/// A request that has not finished within this failed.
const TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(rate), Some(secs)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: lb-paced ADDR RATE SECONDS");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is ip:port");
    let rate: f64 = rate.parse().expect("RATE is requests per second");
    let secs: f64 = secs.parse().expect("SECONDS is a number");
    let total = (rate * secs).round() as usize;

    let (due_tx, due_rx) = mpsc::channel::<Instant>();
    let due_rx = Arc::new(Mutex::new(due_rx));
    let (done_tx, done_rx) = mpsc::channel::<(Duration, bool)>();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (due_rx, done_tx) = (due_rx.clone(), done_tx.clone());
            std::thread::spawn(move || {
                loop {
                    let due = match due_rx.lock().unwrap().recv() {
                        Ok(d) => d,
                        Err(_) => return,
                    };
                    let ok = request(addr).is_ok();
                    let _ = done_tx.send((due.elapsed(), ok));
                }
            })
        })
        .collect();
    drop(done_tx);

    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    for i in 0..total {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        due_tx.send(due).expect("workers alive");
    }
    drop(due_tx);
    let mut latencies: Vec<Duration> = Vec::with_capacity(total);
    let mut failed = 0usize;
    for (latency, ok) in done_rx {
        latencies.push(latency);
        failed += usize::from(!ok);
    }
    for w in workers {
        let _ = w.join();
    }
    latencies.sort();
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0, |d| d.as_micros())
    };
    println!(
        "sent={} ok={} failed={failed} p50_us={} p99_us={} p999_us={} max_us={}",
        latencies.len(),
        latencies.len() - failed,
        q(0.50),
        q(0.99),
        q(0.999),
        latencies.last().map_or(0, |d| d.as_micros())
    );
}

/// One connection: connect, `GET /`, read to the end; an error unless the status is 200.
fn request(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::with_capacity(512);
    s.read_to_end(&mut body)?;
    if body.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a 200"))
    }
}
