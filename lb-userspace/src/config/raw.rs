//! The config as written: the shape of the TOML checked (known fields, value types, required
//! fields present), values not yet judged. Every value keeps its span for later errors.
//!
//! Keeping this stage separate means `validate` only deals with meaning, and a field with the
//! wrong type (reported here) comes out as `None` and is not reported again as missing.

use super::diag::{Diag, Span};
use super::doc::{Node, Sp, Table};

pub(super) struct RawConfig {
    pub global: Option<RawGlobal>,
    pub services: Vec<RawService>,
}

pub(super) struct RawGlobal {
    /// The array's span, and each element (`None` if it was not a string).
    pub interfaces: Option<Sp<Vec<Option<Sp<String>>>>>,
    pub xdp_mode: Option<Sp<String>>,
    pub maglev_table_size: Option<Sp<i64>>,
    pub snat_ports: Option<Sp<Vec<Option<Sp<i64>>>>>,
    pub rate_limit: Option<RawRateLimit>,
    pub conntrack: Option<RawConntrack>,
}

pub(super) struct RawRateLimit {
    pub path: String,
    pub rate: Option<Sp<i64>>,
    pub burst: Option<Sp<i64>>,
}

pub(super) struct RawConntrack {
    pub max_entries: Option<Sp<i64>>,
    pub tcp_syn_timeout: Option<Sp<i64>>,
    pub tcp_established_timeout: Option<Sp<i64>>,
    pub tcp_closing_timeout: Option<Sp<i64>>,
    pub udp_timeout: Option<Sp<i64>>,
}

pub(super) struct RawService {
    /// Position among the `[[service]]` entries of the file (0-based).
    pub index: usize,
    pub span: Span,
    pub name: Option<Sp<String>>,
    pub vip: Option<Sp<String>>,
    pub port: Option<Sp<i64>>,
    pub protocol: Option<Sp<String>>,
    pub mode: Option<Sp<String>>,
    pub maglev_table_size: Option<Sp<i64>>,
    pub rate_limit: Option<RawRateLimit>,
    pub backends: Vec<RawBackend>,
    /// False if an entry of `backend` (or `backend` itself) was not a table: then the
    /// backends are not all known.
    pub backends_complete: bool,
}

pub(super) struct RawBackend {
    /// Position among the service's `[[service.backend]]` entries (0-based).
    pub index: usize,
    pub span: Span,
    pub address: Option<Sp<String>>,
    pub port: Option<Sp<i64>>,
    pub weight: Option<Sp<i64>>,
}

/// Reads the document root, reporting unknown fields, wrong types and missing fields.
pub(super) fn read(root: &Table, d: &mut Diag) -> RawConfig {
    root.deny_unknown(&["global", "service"], d);
    let global = root
        .required("global", "the `[global]` table of agent-wide settings", d)
        .and_then(|n| n.table(d))
        .map(|t| global(&t, d));
    let services = root
        .get("service")
        .and_then(|n| n.tables("an array of tables (`[[service]]`)", d))
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(index, t)| Some(service(index, &t?, d)))
        .collect();
    RawConfig { global, services }
}

fn int(t: &Table, key: &str, d: &mut Diag) -> Option<Sp<i64>> {
    t.get(key).and_then(|n| n.int(d))
}

fn string(t: &Table, key: &str, d: &mut Diag) -> Option<Sp<String>> {
    t.get(key).and_then(|n| n.str(d))
}

/// An inline array, its elements read by `each` (`None` for an element of the wrong type).
fn array<T>(
    node: Node,
    d: &mut Diag,
    each: impl Fn(&Node, &mut Diag) -> Option<Sp<T>>,
) -> Option<Sp<Vec<Option<Sp<T>>>>> {
    let elements = node.array(d)?;
    let val = elements.iter().map(|e| each(e, d)).collect();
    Some(Sp {
        val,
        span: node.span,
    })
}

fn global(t: &Table, d: &mut Diag) -> RawGlobal {
    t.deny_unknown(
        &[
            "interfaces",
            "xdp_mode",
            "maglev_table_size",
            "snat_ports",
            "rate_limit",
            "conntrack",
        ],
        d,
    );
    RawGlobal {
        interfaces: t
            .required("interfaces", "the network interfaces to attach to", d)
            .and_then(|n| array(n, d, |e, d| e.str(d))),
        xdp_mode: string(t, "xdp_mode", d),
        maglev_table_size: int(t, "maglev_table_size", d),
        snat_ports: t
            .get("snat_ports")
            .and_then(|n| array(n, d, |e, d| e.int(d))),
        rate_limit: rate_limit(t, d),
        conntrack: t
            .get("conntrack")
            .and_then(|n| n.table(d))
            .map(|t| conntrack(&t, d)),
    }
}

/// The optional `rate_limit` table inside `parent`.
fn rate_limit(parent: &Table, d: &mut Diag) -> Option<RawRateLimit> {
    let t = parent.get("rate_limit")?.table(d)?;
    t.deny_unknown(&["rate", "burst"], d);
    Some(RawRateLimit {
        path: t.path.clone(),
        rate: t
            .required("rate", "packets per second per source; 0 = unlimited", d)
            .and_then(|n| n.int(d)),
        burst: int(&t, "burst", d),
    })
}

fn conntrack(t: &Table, d: &mut Diag) -> RawConntrack {
    t.deny_unknown(
        &[
            "max_entries",
            "tcp_syn_timeout",
            "tcp_established_timeout",
            "tcp_closing_timeout",
            "udp_timeout",
        ],
        d,
    );
    RawConntrack {
        max_entries: int(t, "max_entries", d),
        tcp_syn_timeout: int(t, "tcp_syn_timeout", d),
        tcp_established_timeout: int(t, "tcp_established_timeout", d),
        tcp_closing_timeout: int(t, "tcp_closing_timeout", d),
        udp_timeout: int(t, "udp_timeout", d),
    }
}

fn service(index: usize, t: &Table, d: &mut Diag) -> RawService {
    t.deny_unknown(
        &[
            "name",
            "vip",
            "port",
            "protocol",
            "mode",
            "maglev_table_size",
            "rate_limit",
            "backend",
        ],
        d,
    );
    let tables = t
        .get("backend")
        .map(|n| n.tables("an array of tables (`[[service.backend]]`)", d));
    // `backend = 5` or `backend = [5]` was reported; don't also report "no backend".
    let backends_complete = match &tables {
        None => true,
        Some(None) => false,
        Some(Some(v)) => v.iter().all(Option::is_some),
    };
    let backends = tables
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(index, b)| Some(backend(index, &b?, d)))
        .collect();
    RawService {
        index,
        span: t.span.clone(),
        name: t
            .required("name", "a unique name for logs and stats", d)
            .and_then(|n| n.str(d)),
        vip: t
            .required("vip", "the virtual IP address clients connect to", d)
            .and_then(|n| n.str(d)),
        port: t
            .required("port", "the virtual port", d)
            .and_then(|n| n.int(d)),
        protocol: t
            .required("protocol", "`tcp` or `udp`", d)
            .and_then(|n| n.str(d)),
        mode: string(t, "mode", d),
        maglev_table_size: int(t, "maglev_table_size", d),
        rate_limit: rate_limit(t, d),
        backends,
        backends_complete,
    }
}

fn backend(index: usize, t: &Table, d: &mut Diag) -> RawBackend {
    t.deny_unknown(&["address", "port", "weight"], d);
    RawBackend {
        index,
        span: t.span.clone(),
        address: t
            .required("address", "the backend's IP address", d)
            .and_then(|n| n.str(d)),
        port: t
            .required("port", "the backend's port", d)
            .and_then(|n| n.int(d)),
        weight: int(t, "weight", d),
    }
}
