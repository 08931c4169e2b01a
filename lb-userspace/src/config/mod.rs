//! The agent's TOML configuration: parsed, checked, and handed over as plain values.
//!
//! Reading goes in three stages, each in its own file:
//! 1. `toml_edit` parses the text, keeping every value's place (syntax errors stop here);
//! 2. `raw` checks the shape: known fields, value types, required fields (`doc` is the
//!    spanned view it reads through);
//! 3. `validate` (with `services`) checks the values and the rules between them.
//!
//! Every stage goes on after an error, so one run reports every problem of the file, each as
//! `file:line:column: field: message` (see [`ConfigError`]). The types below carry no spans:
//! the rest of the agent gets only a config that is known to be good.
//!
//! `config/lb.toml` at the repository root documents every option.

mod diag;
mod doc;
mod error;
mod prime;
mod raw;
mod services;
mod validate;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use lb_common::{PROTO_TCP, PROTO_UDP, Settings};

pub use error::{ConfigError, ConfigErrors};

/// Smallest `snat_ports` minimum: ports below 1024 are privileged and used by local services.
pub const MIN_SNAT_PORT: u16 = 1024;
/// Smallest Maglev table size accepted (the smallest odd prime).
pub const MIN_MAGLEV_SIZE: u32 = 3;
/// Largest backend weight. Weights scale a backend's share of the Maglev table, and this
/// bound keeps weight sums far from overflow.
pub const MAX_WEIGHT: u32 = 65535;
/// Most backends over all services: backend ids index a stats array of
/// [`lb_common::MAX_BACKENDS`] entries, and id 0 means "none".
pub const MAX_TOTAL_BACKENDS: u32 = lb_common::MAX_BACKENDS - 1;
/// Conntrack table size when the config does not say.
pub const DEFAULT_CT_MAX_ENTRIES: u32 = 262_144;
/// Smallest conntrack table accepted: below this a handful of clients would fill it.
pub const MIN_CT_MAX_ENTRIES: u32 = 1024;

/// Reads and checks the config file at `path`. Errors name the file as `path` is written.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            column: 0,
            field: "file".to_owned(),
            message: format!("cannot read the config: {e}"),
        }])),
    }
}

/// Parses and checks config `text`; `file_name` is only used in error messages.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    let mut d = diag::Diag::new(file_name, text);
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            // The parser's message spans lines ("invalid key\nexpected ..."); we print one
            // error per line.
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            d.error(&e.span().unwrap_or(0..0), "syntax", message);
            return Err(d.into_errors());
        }
    };
    let raw = raw::read(&doc::Table::root(&doc), &mut d);
    let config = validate::validate(&raw, &mut d);
    d.finish(config)
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub global: Global,
    /// In file order.
    pub services: Vec<Service>,
}

/// Agent-wide settings (`[global]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Interfaces the XDP program is attached to: non-empty, unique, valid Linux names.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Maglev table size for services that do not set their own; a prime.
    pub maglev_table_size: u32,
    /// Source ports used toward backends (SNAT), inclusive; `1024 <= min <= max`.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Default per-source rate limit of every service.
    pub rate_limit: RateLimit,
    pub conntrack: Conntrack,
}

impl Global {
    /// The data plane's `SETTINGS` value for this config.
    pub fn settings(&self) -> Settings {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Settings {
            snat_port_min: self.snat_port_min,
            snat_port_max: self.snat_port_max,
            _pad: 0,
            tcp_syn_timeout_ns: ns(self.conntrack.tcp_syn_timeout),
            tcp_established_timeout_ns: ns(self.conntrack.tcp_established_timeout),
            tcp_closing_timeout_ns: ns(self.conntrack.tcp_closing_timeout),
            udp_timeout_ns: ns(self.conntrack.udp_timeout),
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// In the driver (`native`): fast, needs driver support.
    #[default]
    Native,
    /// In the kernel's generic path (`generic`): works on any interface, slower.
    Generic,
}

/// A per-source token bucket: `rate` packets per second per source address (/32 for IPv4,
/// /64 for IPv6), bursts of up to `burst` packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Packets per second; 0 = unlimited.
    pub rate: u64,
    /// Bucket depth in packets; at least 1 when `rate > 0`.
    pub burst: u64,
}

impl RateLimit {
    pub const UNLIMITED: Self = Self { rate: 0, burst: 0 };

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }
}

/// Connection tracking (`[global.conntrack]`). Timeouts are idle times: a flow with no packet
/// for that long is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    /// Size of the conntrack table (flows); at least [`MIN_CT_MAX_ENTRIES`].
    pub max_entries: u32,
    /// TCP flow that has not completed its handshake.
    pub tcp_syn_timeout: Duration,
    pub tcp_established_timeout: Duration,
    /// TCP flow after FIN or RST.
    pub tcp_closing_timeout: Duration,
    pub udp_timeout: Duration,
}

impl Default for Conntrack {
    /// The data plane's own defaults (`lb_common::Settings`), so the two never disagree.
    fn default() -> Self {
        let s = Settings::default();
        Self {
            max_entries: DEFAULT_CT_MAX_ENTRIES,
            tcp_syn_timeout: Duration::from_nanos(s.tcp_syn_timeout_ns),
            tcp_established_timeout: Duration::from_nanos(s.tcp_established_timeout_ns),
            tcp_closing_timeout: Duration::from_nanos(s.tcp_closing_timeout_ns),
            udp_timeout: Duration::from_nanos(s.udp_timeout_ns),
        }
    }
}

/// A load-balanced service (`[[service]]`): packets to `vip:port` over `protocol` are spread
/// over `backends`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Unique, `[A-Za-z0-9_.-]{1,63}`.
    pub name: String,
    pub vip: IpAddr,
    /// Not 0.
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// A prime in `MIN_MAGLEV_SIZE..=MAX_MAGLEV_SIZE`; the global one unless overridden.
    pub maglev_table_size: u32,
    /// The global one unless overridden.
    pub rate_limit: RateLimit,
    /// In file order; same address family as `vip`; at least one has `weight > 0`.
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number (`PROTO_TCP` / `PROTO_UDP`), as in map keys.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How packets reach backends. Only NAT exists today; the enum leaves room for DSR/IPIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Destination rewritten to the backend, source to our address (SNAT); replies come back
    /// through the load balancer.
    #[default]
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Same family as the service's VIP.
    pub address: IpAddr,
    /// Not 0.
    pub port: u16,
    /// Share of new flows relative to the other backends; 0 = drain (no new flows, existing
    /// ones stay); at most [`MAX_WEIGHT`].
    pub weight: u32,
}
