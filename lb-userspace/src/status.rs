//! The agent's state as operators see it: one snapshot type served as JSON by the admin
//! API (`GET /v1/status`), rendered as Prometheus metrics, and printed by `lb status`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Config generation: 1 at start, +1 per applied reload.
    pub generation: u64,
    /// Checksum of every Maglev table and service record (hex): equal on agents given
    /// equal inputs.
    pub table_checksum: String,
    /// Times the tables were recomputed (config reloads, registry changes, health flips).
    pub syncs: u64,
    /// Live conntrack entries, all services.
    pub conntrack_entries: u64,
    pub services: Vec<ServiceStatus>,
    pub sources: Vec<SourceStatus>,
    /// Every data-path verdict reason with its packet count.
    pub reasons: Vec<ReasonCount>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `vip:port` (`[v6]:port`).
    pub address: String,
    pub protocol: String,
    pub packets: u64,
    pub bytes: u64,
    /// New flows (connections) balanced.
    pub connections: u64,
    pub drops: u64,
    /// Live conntrack entries of this service.
    pub conntrack_entries: u64,
    /// True when the service has a health check.
    pub health_checked: bool,
    /// Every backend is down, so all are kept (fail open).
    pub fail_open: bool,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `addr:port` (`[v6]:port`).
    pub address: String,
    /// Weight as configured or registered.
    pub weight: u32,
    /// Weight in the Maglev table now: 0 when drained or down.
    pub effective_weight: u32,
    /// `config` or the source's name.
    pub origin: String,
    pub up: bool,
    pub health_transitions: u64,
    pub last_error: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub endpoints: u64,
    /// Complete sets received.
    pub updates: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Endpoints of this source not used (unknown service, wrong family).
    pub ignored: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: u64,
}

/// `a:p`, with brackets for IPv6.
pub fn socket_label(addr: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

impl Status {
    /// The table `lb status` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "generation {}  table checksum {}  syncs {}  conntrack entries {}",
            self.generation, self.table_checksum, self.syncs, self.conntrack_entries
        );
        let _ = writeln!(
            out,
            "\n{:<16} {:<26} {:<8} {:>7} {:<6} {:>11} {:>13} {:>9} {:>8}",
            "SERVICE",
            "BACKEND",
            "ORIGIN",
            "WEIGHT",
            "HEALTH",
            "PACKETS",
            "BYTES",
            "CONNS",
            "DROPS"
        );
        for s in &self.services {
            let health = match (s.health_checked, s.fail_open) {
                (_, true) => "OPEN!",
                (true, false) => "check",
                (false, false) => "-",
            };
            let _ = writeln!(
                out,
                "{:<16} {:<26} {:<8} {:>7} {:<6} {:>11} {:>13} {:>9} {:>8}",
                s.name,
                format!("{} {}", s.address, s.protocol),
                "",
                "",
                health,
                s.packets,
                s.bytes,
                s.connections,
                s.drops
            );
            for b in &s.backends {
                let weight = if b.effective_weight == b.weight {
                    b.weight.to_string()
                } else {
                    format!("{}>{}", b.weight, b.effective_weight)
                };
                let health = match (s.health_checked, b.up) {
                    (false, _) => "-",
                    (true, true) => "up",
                    (true, false) => "DOWN",
                };
                let _ = writeln!(
                    out,
                    "{:<16} {:<26} {:<8} {:>7} {:<6} {:>11} {:>13} {:>9}",
                    "", b.address, b.origin, weight, health, b.packets, b.bytes, b.connections
                );
            }
        }
        if !self.sources.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<16} {:>9} {:>8} {:>7} {:>8}  LAST ERROR",
                "SOURCE", "ENDPOINTS", "UPDATES", "ERRORS", "IGNORED"
            );
            for s in &self.sources {
                let _ = writeln!(
                    out,
                    "{:<16} {:>9} {:>8} {:>7} {:>8}  {}",
                    s.name,
                    s.endpoints,
                    s.updates,
                    s.errors,
                    s.ignored,
                    s.last_error.as_deref().unwrap_or("-")
                );
            }
        }
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .filter(|r| r.packets > 0)
            .map(|r| format!("{}={}", r.reason, r.packets))
            .collect();
        let _ = writeln!(out, "\nverdicts: {}", reasons.join(" "));
        out
    }
}
