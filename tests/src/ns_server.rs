//! A TCP server on the loopback of a test namespace, one thread per connection: the
//! skeleton of the registry stand-ins ([`crate::fake_consul`], [`crate::fake_k8s`]), which
//! must be reachable from an agent inside that namespace. Stopped on drop.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

/// Handles one connection; the flag turns true when the server stops.
pub type Handler = dyn Fn(TcpStream, &AtomicBool) + Send + Sync + 'static;

pub struct NsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NsServer {
    /// Listens on 127.0.0.1 (an ephemeral port) inside the namespace at `netns`
    /// (`/run/netns/NAME`) and hands each connection to `handler` on its own thread.
    pub fn start_in(netns: &Path, handler: Arc<Handler>) -> Result<NsServer> {
        let file =
            std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on a valid fd; this thread (and those it spawns) live in the ns.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            // Non-blocking accept, so the loop sees the stop flag.
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(listener.local_addr());
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let (h, st) = (handler.clone(), st.clone());
                        std::thread::spawn(move || h(conn, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let addr = rx.recv().context("namespace server thread")??;
        Ok(NsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tells handlers to finish (they poll the flag) and stops accepting.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request's line and headers from `reader`; its target (`/path?query`), or
/// `None` once the client closed the connection. Bodies are not read (the stand-ins serve
/// GETs only).
pub fn read_request(reader: &mut impl std::io::BufRead) -> Option<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    Some(line.split_whitespace().nth(1).unwrap_or("/").to_string())
}

/// The value of `key` in a query string (`a=1&b=2`).
pub fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

impl Drop for NsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
