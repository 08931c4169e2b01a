//! The config as written: the shape of the TOML checked (known fields, value types, required
//! fields present), values not yet judged. Every value keeps its span for later errors.
//!
//! Keeping this stage separate means `validate` only deals with meaning, and a field with the
//! wrong type (reported here) comes out as `None` and is not reported again as missing.

use super::diag::{Diag, Span};
use super::doc::{Node, Sp, Table};

pub(super) struct RawConfig {
    pub global: Option<RawGlobal>,
    /// `[[auth]]`, read and judged at once (see `gateway`).
    pub auth: Vec<super::gateway::RawAuth>,
    /// `[gateway]`, read and judged at once.
    pub gateway: super::GatewaySettings,
    /// `[socket_lb]`, read and judged at once.
    pub socket_lb: super::SocketLbSettings,
    /// `[mesh]`, read and judged at once.
    pub mesh: super::mesh::RawMesh,
    pub admin: Option<RawAdmin>,
    pub registry: Option<RawRegistry>,
    pub sources: Vec<RawSource>,
    pub services: Vec<RawService>,
}

/// An inline array of strings: the array's span, and each element (`None` if it was not a
/// string).
pub(super) type RawStrings = Sp<Vec<Option<Sp<String>>>>;

pub(super) struct RawGlobal {
    /// The array's span, and each element (`None` if it was not a string).
    pub interfaces: Option<RawStrings>,
    pub xdp_mode: Option<Sp<String>>,
    /// `attach`: each interface named, with its value (`None` if not a string).
    pub attach: Vec<(String, Option<Sp<String>>)>,
    pub maglev_table_size: Option<Sp<i64>>,
    pub snat_ports: Option<Sp<Vec<Option<Sp<i64>>>>>,
    pub rate_limit: Option<RawRateLimit>,
    pub conntrack: Option<RawConntrack>,
    pub syn_guard: Option<RawSynGuard>,
    pub pin_path: Option<Sp<String>>,
}

pub(super) struct RawSynGuard {
    pub rate: Option<Sp<i64>>,
    pub verified_secs: Option<Sp<i64>>,
}

pub(super) struct RawRateLimit {
    pub path: String,
    pub rate: Option<Sp<i64>>,
    pub burst: Option<Sp<i64>>,
}

pub(super) struct RawConntrack {
    pub max_entries: Option<Sp<i64>>,
    pub tcp_syn_timeout: Option<Sp<i64>>,
    pub tcp_syn_reclaim_ms: Option<Sp<i64>>,
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
    pub scope: Option<Sp<String>>,
    pub mtls: Option<Sp<bool>>,
    /// `identity = "<namespace>/<service account>"` of an `mtls` service's backends.
    pub identity: Option<Sp<String>>,
    pub session_affinity: Option<Sp<String>>,
    pub maglev_table_size: Option<Sp<i64>>,
    pub rate_limit: Option<RawRateLimit>,
    pub backends: Vec<RawBackend>,
    /// False if an entry of `backend` (or `backend` itself) was not a table: then the
    /// backends are not all known.
    pub backends_complete: bool,
    pub health: Option<RawHealth>,
    /// `[[service.route]]`, read and judged at once (see `gateway`).
    pub routes: Vec<super::gateway::RawRoute>,
    /// `[[service.tls]]`, read and judged (files read) at once.
    pub tls: Vec<super::TlsCert>,
    /// Whether `vip` and `port` are written at all (even with a wrong type, reported).
    pub has_vip: bool,
    pub has_port: bool,
    /// Some `route` entry was malformed (reported): do not also report "no routes".
    pub routes_complete: bool,
}

pub(super) struct RawBackend {
    /// Position among the service's `[[service.backend]]` entries (0-based).
    pub index: usize,
    pub span: Span,
    pub address: Option<Sp<String>>,
    pub port: Option<Sp<i64>>,
    pub weight: Option<Sp<i64>>,
}

/// `[admin]`.
pub(super) struct RawAdmin {
    pub listen: Option<Sp<String>>,
    pub allow_remote: Option<Sp<bool>>,
    pub token_file: Option<Sp<String>>,
}

/// `[registry]`.
pub(super) struct RawRegistry {
    pub state_file: Option<Sp<String>>,
    pub default_ttl: Option<Sp<i64>>,
    pub max_ttl: Option<Sp<i64>>,
}

/// One `[[source]]`. Which fields it may have depends on `kind`, so only the fields of its
/// kind are read (the others are reported as unknown here); with a missing or unknown kind,
/// the fields of every kind are accepted so that only the kind is reported.
pub(super) struct RawSource {
    /// Position among the `[[source]]` entries of the file (0-based).
    pub index: usize,
    pub span: Span,
    pub kind: Option<Sp<String>>,
    pub name: Option<Sp<String>>,
    /// etcd.
    pub endpoints: Option<RawStrings>,
    pub prefix: Option<Sp<String>>,
    /// consul.
    pub address: Option<Sp<String>>,
    pub datacenter: Option<Sp<String>>,
    /// consul and kubernetes.
    pub services: Option<RawStrings>,
    pub token_file: Option<Sp<String>>,
    /// kubernetes.
    pub api_server: Option<Sp<String>>,
    pub namespace: Option<Sp<String>>,
    pub ca_file: Option<Sp<String>>,
    pub discover_services: Option<Sp<bool>>,
    pub node_name: Option<Sp<String>>,
    pub node_addresses: Option<RawStrings>,
}

/// The fields each source kind has besides `kind` and `name`.
pub(super) const SOURCE_KINDS: [(&str, &[&str]); 3] = [
    ("etcd", &["endpoints", "prefix"]),
    (
        "consul",
        &["address", "services", "datacenter", "token_file"],
    ),
    (
        "kubernetes",
        &[
            "api_server",
            "namespace",
            "services",
            "token_file",
            "ca_file",
            "discover_services",
            "node_name",
            "node_addresses",
        ],
    ),
];

/// `[service.health]`.
pub(super) struct RawHealth {
    /// Field path of the table, e.g. `service[0].health`.
    pub path: String,
    pub kind: Option<Sp<String>>,
    pub interval_ms: Option<Sp<i64>>,
    pub timeout_ms: Option<Sp<i64>>,
    pub rise: Option<Sp<i64>>,
    pub fall: Option<Sp<i64>>,
    pub port: Option<Sp<i64>>,
    /// HTTP only: the `path` key.
    pub http_path: Option<Sp<String>>,
    pub host: Option<Sp<String>>,
    pub expect_status: Option<Sp<i64>>,
    /// HTTPS only.
    pub ca_file: Option<Sp<String>>,
    pub server_name: Option<Sp<String>>,
}

/// Reads the document root, reporting unknown fields, wrong types and missing fields.
pub(super) fn read(root: &Table, d: &mut Diag) -> RawConfig {
    root.deny_unknown(
        &[
            "global",
            "admin",
            "registry",
            "source",
            "service",
            "auth",
            "gateway",
            "socket_lb",
            "mesh",
        ],
        d,
    );
    let global = root
        .required("global", "the `[global]` table of agent-wide settings", d)
        .and_then(|n| n.table(d))
        .map(|t| global(&t, d));
    let admin = root
        .get("admin")
        .and_then(|n| n.table(d))
        .map(|t| admin(&t, d));
    let registry = root
        .get("registry")
        .and_then(|n| n.table(d))
        .map(|t| registry(&t, d));
    let sources = root
        .get("source")
        .and_then(|n| n.tables("an array of tables (`[[source]]`)", d))
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(index, t)| Some(source(index, &t?, d)))
        .collect();
    let services = root
        .get("service")
        .and_then(|n| n.tables("an array of tables (`[[service]]`)", d))
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(index, t)| Some(service(index, &t?, d)))
        .collect();
    RawConfig {
        global,
        auth: super::gateway::auth(root, d),
        gateway: super::gateway::settings(root, d),
        socket_lb: super::socket_lb::settings(root, d),
        mesh: super::mesh::settings(root, d),
        admin,
        registry,
        sources,
        services,
    }
}

fn int(t: &Table, key: &str, d: &mut Diag) -> Option<Sp<i64>> {
    t.get(key).and_then(|n| n.int(d))
}

fn string(t: &Table, key: &str, d: &mut Diag) -> Option<Sp<String>> {
    t.get(key).and_then(|n| n.str(d))
}

fn strings(t: &Table, key: &str, d: &mut Diag) -> Option<RawStrings> {
    t.get(key).and_then(|n| array(n, d, |e, d| e.str(d)))
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
            "attach",
            "maglev_table_size",
            "snat_ports",
            "rate_limit",
            "conntrack",
            "syn_guard",
            "pin_path",
        ],
        d,
    );
    RawGlobal {
        interfaces: t
            .required("interfaces", "the network interfaces to attach to", d)
            .and_then(|n| array(n, d, |e, d| e.str(d))),
        xdp_mode: string(t, "xdp_mode", d),
        attach: t
            .get("attach")
            .and_then(|n| n.table(d))
            .map(|a| {
                a.keys()
                    .into_iter()
                    .map(|k| {
                        let v = string(&a, &k, d);
                        (k, v)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        maglev_table_size: int(t, "maglev_table_size", d),
        snat_ports: t
            .get("snat_ports")
            .and_then(|n| array(n, d, |e, d| e.int(d))),
        rate_limit: rate_limit(t, d),
        conntrack: t
            .get("conntrack")
            .and_then(|n| n.table(d))
            .map(|t| conntrack(&t, d)),
        syn_guard: t.get("syn_guard").and_then(|n| n.table(d)).map(|t| {
            t.deny_unknown(&["rate", "verified_secs"], d);
            RawSynGuard {
                rate: int(&t, "rate", d),
                verified_secs: int(&t, "verified_secs", d),
            }
        }),
        pin_path: string(t, "pin_path", d),
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
            "tcp_syn_reclaim_ms",
            "tcp_established_timeout",
            "tcp_closing_timeout",
            "udp_timeout",
        ],
        d,
    );
    RawConntrack {
        max_entries: int(t, "max_entries", d),
        tcp_syn_timeout: int(t, "tcp_syn_timeout", d),
        tcp_syn_reclaim_ms: int(t, "tcp_syn_reclaim_ms", d),
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
            "scope",
            "mtls",
            "identity",
            "session_affinity",
            "maglev_table_size",
            "rate_limit",
            "backend",
            "health",
            "route",
            "tls",
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
    let (routes, routes_complete) = super::gateway::routes(t, d);
    RawService {
        index,
        span: t.span.clone(),
        name: t
            .required("name", "a unique name for logs and stats", d)
            .and_then(|n| n.str(d)),
        // All three optional here: a service without `vip` and `port` is a backend set for
        // gateway routes (`services` judges which combinations are valid).
        has_vip: t.get("vip").is_some(),
        has_port: t.get("port").is_some(),
        vip: string(t, "vip", d),
        port: int(t, "port", d),
        protocol: string(t, "protocol", d),
        mode: string(t, "mode", d),
        scope: string(t, "scope", d),
        mtls: t.get("mtls").and_then(|n| n.bool(d)),
        identity: string(t, "identity", d),
        session_affinity: string(t, "session_affinity", d),
        maglev_table_size: int(t, "maglev_table_size", d),
        rate_limit: rate_limit(t, d),
        backends,
        backends_complete,
        health: t
            .get("health")
            .and_then(|n| n.table(d))
            .map(|t| health(&t, d)),
        routes,
        routes_complete,
        tls: super::gateway::tls(t, d),
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

fn admin(t: &Table, d: &mut Diag) -> RawAdmin {
    t.deny_unknown(&["listen", "allow_remote", "token_file"], d);
    RawAdmin {
        listen: string(t, "listen", d),
        allow_remote: t.get("allow_remote").and_then(|n| n.bool(d)),
        token_file: string(t, "token_file", d),
    }
}

fn registry(t: &Table, d: &mut Diag) -> RawRegistry {
    t.deny_unknown(&["state_file", "default_ttl", "max_ttl"], d);
    RawRegistry {
        state_file: string(t, "state_file", d),
        default_ttl: int(t, "default_ttl", d),
        max_ttl: int(t, "max_ttl", d),
    }
}

fn source(index: usize, t: &Table, d: &mut Diag) -> RawSource {
    let kind = t
        .required("kind", "`etcd`, `consul` or `kubernetes`", d)
        .and_then(|n| n.str(d));
    let fields = kind.as_ref().and_then(|k| {
        SOURCE_KINDS
            .iter()
            .find(|(name, _)| *name == k.val)
            .map(|(_, fields)| *fields)
    });
    let mut known = vec!["kind", "name"];
    match (&kind, fields) {
        (Some(k), Some(fields)) => {
            known.extend(fields);
            t.deny_unknown_in(&known, &format!(" for a `{}` source", k.val), d);
        }
        _ => {
            for field in SOURCE_KINDS.iter().flat_map(|(_, fields)| *fields) {
                if !known.contains(field) {
                    known.push(field);
                }
            }
            t.deny_unknown(&known, d);
        }
    }
    // A field of another kind was reported as unknown: don't read it (and report its type).
    let has = |key: &str| known.contains(&key);
    let opt_string = |key: &str, d: &mut Diag| has(key).then(|| string(t, key, d)).flatten();
    let kind_is = |k: &str| kind.as_ref().is_some_and(|kind| kind.val == k);
    let endpoints = if kind_is("etcd") {
        t.required(
            "endpoints",
            "the `http://host:port` URLs of etcd members",
            d,
        )
        .and_then(|n| array(n, d, |e, d| e.str(d)))
    } else {
        has("endpoints")
            .then(|| strings(t, "endpoints", d))
            .flatten()
    };
    let discover_services = has("discover_services")
        .then(|| t.get("discover_services").and_then(|n| n.bool(d)))
        .flatten();
    // With `discover_services = true` the Kubernetes Services themselves are the services:
    // `services` (EndpointSlices for the file's own services) is optional.
    let discovers = discover_services.as_ref().is_some_and(|b| b.val);
    let services = if kind_is("consul") || (kind_is("kubernetes") && !discovers) {
        t.required("services", "the names of the services to watch", d)
            .and_then(|n| array(n, d, |e, d| e.str(d)))
    } else {
        has("services").then(|| strings(t, "services", d)).flatten()
    };
    RawSource {
        index,
        span: t.span.clone(),
        name: string(t, "name", d),
        endpoints,
        prefix: opt_string("prefix", d),
        address: opt_string("address", d),
        datacenter: opt_string("datacenter", d),
        services,
        token_file: opt_string("token_file", d),
        api_server: opt_string("api_server", d),
        namespace: opt_string("namespace", d),
        ca_file: opt_string("ca_file", d),
        discover_services,
        node_name: opt_string("node_name", d),
        node_addresses: has("node_addresses")
            .then(|| strings(t, "node_addresses", d))
            .flatten(),
        kind,
    }
}

fn health(t: &Table, d: &mut Diag) -> RawHealth {
    t.deny_unknown(
        &[
            "kind",
            "interval_ms",
            "timeout_ms",
            "rise",
            "fall",
            "port",
            "path",
            "host",
            "expect_status",
            "ca_file",
            "server_name",
        ],
        d,
    );
    RawHealth {
        path: t.path.clone(),
        kind: string(t, "kind", d),
        interval_ms: int(t, "interval_ms", d),
        timeout_ms: int(t, "timeout_ms", d),
        rise: int(t, "rise", d),
        fall: int(t, "fall", d),
        port: int(t, "port", d),
        http_path: string(t, "path", d),
        host: string(t, "host", d),
        expect_status: int(t, "expect_status", d),
        ca_file: string(t, "ca_file", d),
        server_name: string(t, "server_name", d),
    }
}
