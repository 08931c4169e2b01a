//! A stand-in for a Consul agent's `/v1/health/service/NAME` endpoint, for end-to-end tests
//! of the agent's Consul source (no Consul can be installed here). It answers in the
//! documented shape: a JSON array of `{Node, Service, Checks}` with an `X-Consul-Index`
//! header, and holds blocking queries (`?index=N`) until the set changes or the wait ends.
//!
//! It runs inside a test namespace (bound on that namespace's loopback) so an agent there can
//! reach it; threads, stopped on drop.

use std::{
    io::{BufReader, Write},
    net::TcpStream,
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::ns_server::{NsServer, query_param, read_request};
use serde_json::json;

/// Longest a blocking query is held (Consul's default `wait` is 5 minutes; tests need less).
const MAX_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    index: u64,
    /// (service, address, port, weight) of passing instances.
    instances: Vec<(String, String, u16, u32)>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

pub struct FakeConsul {
    shared: Shared,
    server: NsServer,
}

impl FakeConsul {
    /// Starts it on the loopback of the namespace at `netns` (`/run/netns/NAME`).
    pub fn start_in(netns: &Path) -> Result<FakeConsul> {
        let shared: Shared = Arc::new((
            Mutex::new(State {
                index: 1,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let sh = shared.clone();
        let server = NsServer::start_in(
            netns,
            Arc::new(move |conn, stop: &AtomicBool| serve(conn, &sh, stop)),
        )?;
        Ok(FakeConsul { shared, server })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Replaces the passing instances (service, address, port, weight) and bumps the index,
    /// waking blocked queries.
    pub fn set(&self, instances: &[(&str, &str, u16, u32)]) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().unwrap();
        s.instances = instances
            .iter()
            .map(|(a, b, c, d)| (a.to_string(), b.to_string(), *c, *d))
            .collect();
        s.index += 1;
        cv.notify_all();
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        // Wake blocked requests so their threads see the stop flag.
        self.shared.1.notify_all();
        self.server.stop();
    }
}

fn serve(conn: TcpStream, shared: &Shared, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut out = conn;
    // Keep-alive: answer requests until the client closes.
    loop {
        let Some(target) = read_request(&mut reader) else {
            return;
        };
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let Some(service) = path.strip_prefix("/v1/health/service/") else {
            let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let wanted: u64 = query_param(query, "index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (m, cv) = &**shared;
        let mut s = m.lock().unwrap();
        let deadline = Instant::now() + MAX_WAIT;
        while s.index == wanted && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            s = cv.wait_timeout(s, Duration::from_millis(50)).unwrap().0;
        }
        let body =
            json!(s
            .instances
            .iter()
            .filter(|(svc, ..)| svc == service)
            .map(|(svc, addr, port, weight)| json!({
                "Node": {"ID": "n1", "Node": "node-1", "Address": addr, "Datacenter": "dc1"},
                "Service": {
                    "ID": format!("{svc}-{addr}-{port}"), "Service": svc, "Tags": ["test"],
                    "Address": addr, "Port": port, "Meta": {"fake": "yes"},
                    "Weights": {"Passing": weight, "Warning": 1}
                },
                "Checks": [{"Node": "node-1", "CheckID": "serfHealth", "Status": "passing"}]
            }))
            .collect::<Vec<_>>())
            .to_string();
        let index = s.index;
        drop(s);
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: {index}\r\nX-Consul-Knownleader: true\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}
