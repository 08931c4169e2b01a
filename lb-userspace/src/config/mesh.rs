//! `[mesh]` (read and judged at once, like `[socket_lb]`): workload identities, where their
//! certificates come from, trust bundles, the cgroup -> identity map and L4 authorization
//! policies; and each service's `mtls`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::diag::Diag;
use super::doc::{Node, Sp, Table};
use super::raw::RawService;
use super::{Mode, Service, SocketLbSettings, SourceConfig};

/// Inbound HBONE listener when `listen` is not set (ztunnel's port).
pub const DEFAULT_MESH_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15008);
/// Outbound listener the socket LB steers to when `outbound` is not set.
pub const DEFAULT_MESH_OUTBOUND: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001);
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Lifetime of an issued certificate when `cert_ttl_s` is not set.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(3600);
/// Share of a certificate's lifetime after which it is replaced, when `rotate_at_percent` is
/// not set.
pub const DEFAULT_ROTATE_AT_PERCENT: u8 = 50;
/// How often `cert_dir` is checked for changed files, when `cert_dir_poll_ms` is not set.
pub const DEFAULT_CERT_DIR_POLL: Duration = Duration::from_secs(1);

/// `[mesh]`: the sidecarless mesh between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// `enabled` (default false).
    pub enabled: bool,
    /// `trust_domain`: this mesh's SPIFFE trust domain (lower-case DNS-like name).
    pub trust_domain: String,
    /// `listen`: inbound HBONE (HTTP/2 CONNECT over mTLS), default [`DEFAULT_MESH_LISTEN`].
    pub listen: SocketAddr,
    /// `outbound`: where the socket LB steers local connects to `mtls` services, default
    /// [`DEFAULT_MESH_OUTBOUND`].
    pub outbound: SocketAddr,
    /// Where certificates come from. `None` only when the mesh is disabled.
    pub certs: Option<CertSource>,
    /// `trust_bundles`: CAs of other trust domains whose workloads may connect.
    pub trust_bundles: Vec<TrustBundle>,
    /// `node_identity`: what the agent presents as a server (default `lb-system`/`lb`).
    pub node_identity: WorkloadName,
    /// `[[mesh.workload]]`: plain hosts' cgroup -> identity map, in file order.
    pub workloads: Vec<Workload>,
    /// `[[mesh.policy]]`: L4 authorization, in file order.
    pub policies: Vec<Policy>,
    /// The `kind = "kubernetes"` source whose API server, credentials and node name the
    /// agent uses to follow this node's Pods (pod address -> namespace and service account,
    /// the identity of workloads without a `[[mesh.workload]]`). From `pod_source`, else the
    /// first kubernetes source of the file; `None` with `pod_identities = false` or without
    /// a kubernetes source.
    pub pod_source: Option<String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            listen: DEFAULT_MESH_LISTEN,
            outbound: DEFAULT_MESH_OUTBOUND,
            certs: None,
            trust_bundles: Vec::new(),
            node_identity: WorkloadName {
                namespace: "lb-system".to_owned(),
                service_account: "lb".to_owned(),
            },
            workloads: Vec::new(),
            policies: Vec::new(),
            pod_source: None,
        }
    }
}

/// Where the workload certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `ca_cert_file` + `ca_key_file`: the agent issues certificates itself.
    Ca {
        cert_file: PathBuf,
        key_file: PathBuf,
        /// `cert_ttl_s` (60 s to 30 days; tests may go down to 1 s).
        ttl: Duration,
        /// `rotate_at_percent` (10..=90): a certificate is replaced after this share of its
        /// lifetime, well before it expires.
        rotate_at_percent: u8,
    },
    /// `cert_dir`: an external issuer (SPIRE-style) writes
    /// `<dir>/<namespace>/<service_account>/{cert.pem,key.pem}` (leaf first, then
    /// intermediates) and `<dir>/bundle.pem` (the trust domain's CAs); changes are picked up.
    Dir { dir: PathBuf, poll: Duration },
}

/// One entry of `trust_bundles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    pub trust_domain: String,
    /// PEM file of the trust domain's CA certificates (absolute).
    pub file: PathBuf,
}

/// A namespace and service account: a SPIFFE ID within the trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadName {
    pub namespace: String,
    pub service_account: String,
}

/// `[[mesh.workload]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// A cgroup v2 directory (absolute); matched at run time by its inode (the cgroup id).
    pub cgroup: PathBuf,
    pub name: WorkloadName,
}

/// `[[mesh.policy]]`: Istio's AuthorizationPolicy, L4 part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Unique among policies.
    pub name: String,
    /// The `[[service]]` it protects (by name).
    pub service: String,
    pub action: PolicyAction,
    /// A connection matches if any entry matches; empty: every source matches.
    pub from: Vec<PolicySource>,
    /// Destination ports; empty: every port.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// One entry of a policy's `from`: every list that is set must match (each list matches if
/// one of its values does). Values may start or end with `*` (Istio's wildcards).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySource {
    /// `<trust domain>/ns/<namespace>/sa/<service account>` (a SPIFFE ID without `spiffe://`).
    pub principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub trust_domains: Vec<String>,
}

/// `[mesh]` as read, with the places later checks (against the services) report at.
pub(super) struct RawMesh {
    pub settings: MeshConfig,
    /// The `[mesh]` table's span, when present.
    pub span: Option<super::diag::Span>,
    /// Each policy's `service` value and its field path.
    pub policy_services: Vec<(Sp<String>, String)>,
    /// `pod_identities` (default true).
    pub pod_identities: bool,
    /// `pod_source` and its field path, resolved against the sources by [`pod_source`].
    pub pod_source: Option<(Sp<String>, String)>,
}

impl Default for RawMesh {
    fn default() -> Self {
        Self {
            settings: MeshConfig::default(),
            span: None,
            policy_services: Vec::new(),
            pod_identities: true,
            pod_source: None,
        }
    }
}

pub(super) fn settings(root: &Table, d: &mut Diag) -> RawMesh {
    let mut raw = RawMesh::default();
    let Some(t) = root.get("mesh").and_then(|n| n.table(d)) else {
        return raw;
    };
    raw.span = Some(t.span.clone());
    t.deny_unknown(
        &[
            "enabled",
            "trust_domain",
            "listen",
            "outbound",
            "ca_cert_file",
            "ca_key_file",
            "cert_ttl_s",
            "rotate_at_percent",
            "cert_dir",
            "cert_dir_poll_ms",
            "trust_bundles",
            "node_identity",
            "workload",
            "policy",
            "pod_identities",
            "pod_source",
        ],
        d,
    );
    let s = &mut raw.settings;
    if let Some(e) = t.get("enabled").and_then(|n| n.bool(d)) {
        s.enabled = e.val;
    }
    if let Some(td) = t.get("trust_domain").and_then(|n| n.str(d)) {
        if is_trust_domain(&td.val) {
            s.trust_domain = td.val;
        } else {
            d.error(
                &td.span,
                &t.field("trust_domain"),
                "a trust domain is lower-case letters, digits, `.`, `-` and `_`",
            );
        }
    }
    for (key, slot) in [("listen", &mut s.listen), ("outbound", &mut s.outbound)] {
        if let Some(a) = t.get(key).and_then(|n| n.str(d)) {
            match a.val.parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => *slot = addr,
                _ => d.error(
                    &a.span,
                    &t.field(key),
                    format!(
                        "expected `address:port` with a port other than 0, found `{}`",
                        a.val
                    ),
                ),
            }
        }
    }
    s.certs = cert_source(&t, s.enabled, d);
    if let Some(b) = t.get("pod_identities").and_then(|n| n.bool(d)) {
        raw.pod_identities = b.val;
    }
    if let Some(n) = t.get("pod_source").and_then(|n| n.str(d)) {
        raw.pod_source = Some((n, t.field("pod_source")));
    }
    if let Some(bundles) = t
        .get("trust_bundles")
        .and_then(|n| n.tables("an array of tables", d))
    {
        for b in bundles.into_iter().flatten() {
            b.deny_unknown(&["trust_domain", "file"], d);
            let td = b
                .required("trust_domain", "whose CAs these are", d)
                .and_then(|n| n.str(d));
            let file = b
                .required("file", "a PEM file of CA certificates", d)
                .and_then(|n| absolute(&n, d));
            let td = td.and_then(|td| {
                if !is_trust_domain(&td.val) {
                    d.error(
                        &td.span,
                        &b.field("trust_domain"),
                        "not a valid trust domain",
                    );
                    None
                } else if td.val == s.trust_domain {
                    d.error(
                        &td.span,
                        &b.field("trust_domain"),
                        "this is the mesh's own trust domain (its CA is trusted already)",
                    );
                    None
                } else if s.trust_bundles.iter().any(|x| x.trust_domain == td.val) {
                    d.error(&td.span, &b.field("trust_domain"), "listed twice");
                    None
                } else {
                    Some(td.val)
                }
            });
            if let (Some(trust_domain), Some(file)) = (td, file) {
                s.trust_bundles.push(TrustBundle { trust_domain, file });
            }
        }
    }
    if let Some(n) = t.get("node_identity").and_then(|n| n.table(d))
        && let Some(name) = workload_name(&n, d)
    {
        s.node_identity = name;
    }
    if let Some(ws) = t
        .get("workload")
        .and_then(|n| n.tables("an array of tables (`[[mesh.workload]]`)", d))
    {
        for w in ws.into_iter().flatten() {
            w.deny_unknown(&["cgroup", "namespace", "service_account"], d);
            let cgroup = w
                .required("cgroup", "the workload's cgroup v2 directory", d)
                .and_then(|n| absolute(&n, d));
            let name = workload_name(&w, d);
            if let (Some(cgroup), Some(name)) = (cgroup, name) {
                s.workloads.push(Workload { cgroup, name });
            }
        }
    }
    if let Some(ps) = t
        .get("policy")
        .and_then(|n| n.tables("an array of tables (`[[mesh.policy]]`)", d))
    {
        for p in ps.into_iter().flatten() {
            if let Some((policy, service)) = policy(&p, &s.policies, d) {
                s.policies.push(policy);
                raw.policy_services.push((service, p.field("service")));
            }
        }
    }
    raw
}

/// `ca_cert_file` + `ca_key_file` (+ `cert_ttl_s`, `rotate_at_percent`) or `cert_dir`
/// (+ `cert_dir_poll_ms`): exactly one of the two when the mesh is enabled.
fn cert_source(t: &Table, enabled: bool, d: &mut Diag) -> Option<CertSource> {
    let cert = t.get("ca_cert_file").and_then(|n| absolute(&n, d));
    let key = t.get("ca_key_file").and_then(|n| absolute(&n, d));
    let dir = t.get("cert_dir").and_then(|n| absolute(&n, d));
    let ttl = t.get("cert_ttl_s").and_then(|n| n.int(d)).and_then(|v| {
        if (1..=30 * 86400).contains(&v.val) {
            Some(Duration::from_secs(v.val as u64))
        } else {
            d.error(
                &v.span,
                &t.field("cert_ttl_s"),
                "expected 1 to 2592000 (30 days)",
            );
            None
        }
    });
    let rotate = t
        .get("rotate_at_percent")
        .and_then(|n| n.int(d))
        .and_then(|v| {
            if (10..=90).contains(&v.val) {
                Some(v.val as u8)
            } else {
                d.error(&v.span, &t.field("rotate_at_percent"), "expected 10 to 90");
                None
            }
        });
    let poll = t
        .get("cert_dir_poll_ms")
        .and_then(|n| n.int(d))
        .and_then(|v| {
            if (10..=60_000).contains(&v.val) {
                Some(Duration::from_millis(v.val as u64))
            } else {
                d.error(
                    &v.span,
                    &t.field("cert_dir_poll_ms"),
                    "expected 10 to 60000",
                );
                None
            }
        });
    let has = |k: &str| t.get(k).is_some();
    let ca_keys = [
        "ca_cert_file",
        "ca_key_file",
        "cert_ttl_s",
        "rotate_at_percent",
    ];
    if has("cert_dir") {
        if let Some(k) = ca_keys.iter().find(|k| has(k)) {
            d.error(
                &t.get(k).map(|n| n.span).unwrap_or_default(),
                &t.field(k),
                "`cert_dir` (certificates written by an external issuer) and the agent's own CA \
                 exclude each other",
            );
            return None;
        }
        return Some(CertSource::Dir {
            dir: dir?,
            poll: poll.unwrap_or(DEFAULT_CERT_DIR_POLL),
        });
    }
    if let Some(p) = t.get("cert_dir_poll_ms") {
        d.error(&p.span, &p.path, "only with `cert_dir`");
    }
    match (has("ca_cert_file"), has("ca_key_file")) {
        (true, true) => Some(CertSource::Ca {
            cert_file: cert?,
            key_file: key?,
            ttl: ttl.unwrap_or(DEFAULT_CERT_TTL),
            rotate_at_percent: rotate.unwrap_or(DEFAULT_ROTATE_AT_PERCENT),
        }),
        (true, false) | (false, true) => {
            let (present, missing) = if has("ca_cert_file") {
                ("ca_cert_file", "ca_key_file")
            } else {
                ("ca_key_file", "ca_cert_file")
            };
            d.error(
                &t.get(present).map(|n| n.span).unwrap_or_default(),
                &t.field(missing),
                format!("`{present}` needs `{missing}` too"),
            );
            None
        }
        (false, false) => {
            if enabled {
                d.error(
                    &t.span,
                    &t.field("ca_cert_file"),
                    "an enabled mesh needs `ca_cert_file` and `ca_key_file` (the agent issues \
                     certificates) or `cert_dir` (an external issuer writes them)",
                );
            }
            None
        }
    }
}

fn policy(t: &Table, earlier: &[Policy], d: &mut Diag) -> Option<(Policy, Sp<String>)> {
    t.deny_unknown(&["name", "service", "action", "from", "ports"], d);
    let name = t
        .required("name", "a unique name for logs and counters", d)
        .and_then(|n| n.str(d))
        .and_then(|n| {
            if earlier.iter().any(|p| p.name == n.val) {
                d.error(
                    &n.span,
                    &t.field("name"),
                    format!("policy `{}` is defined twice", n.val),
                );
                None
            } else if n.val.is_empty() {
                d.error(&n.span, &t.field("name"), "must not be empty");
                None
            } else {
                Some(n.val)
            }
        });
    let service = t
        .required("service", "the service it protects", d)
        .and_then(|n| n.str(d));
    let action = t
        .required("action", "`allow` or `deny`", d)
        .and_then(|n| n.str(d))
        .and_then(|a| match a.val.as_str() {
            "allow" => Some(PolicyAction::Allow),
            "deny" => Some(PolicyAction::Deny),
            other => {
                d.error(
                    &a.span,
                    &t.field("action"),
                    format!("unknown action `{other}`; expected `allow` or `deny`"),
                );
                None
            }
        });
    let mut from = Vec::new();
    let mut from_ok = true;
    if let Some(entries) = t
        .get("from")
        .and_then(|n| n.tables("an array of tables", d))
    {
        for e in entries {
            match e.and_then(|e| source(&e, d)) {
                Some(s) => from.push(s),
                None => from_ok = false,
            }
        }
    }
    let mut ports = Vec::new();
    let mut ports_ok = true;
    if let Some(list) = t.get("ports").and_then(|n| n.array(d)) {
        for p in list {
            match p.int(d) {
                Some(v) if (1..=65535).contains(&v.val) => ports.push(v.val as u16),
                Some(v) => {
                    d.error(&v.span, &p.path, "expected a port, 1 to 65535");
                    ports_ok = false;
                }
                None => ports_ok = false,
            }
        }
    }
    let service_val = service.clone()?.val;
    (from_ok && ports_ok).then_some(())?;
    Some((
        Policy {
            name: name?,
            service: service_val,
            action: action?,
            from,
            ports,
        },
        service?,
    ))
}

/// One `from` entry: at least one list, each non-empty, every value a valid pattern.
fn source(t: &Table, d: &mut Diag) -> Option<PolicySource> {
    t.deny_unknown(&["principals", "namespaces", "trust_domains"], d);
    let mut s = PolicySource::default();
    let mut ok = true;
    for (key, slot) in [
        ("principals", &mut s.principals),
        ("namespaces", &mut s.namespaces),
        ("trust_domains", &mut s.trust_domains),
    ] {
        let Some(node) = t.get(key) else { continue };
        let Some(list) = node.array(d) else {
            ok = false;
            continue;
        };
        if list.is_empty() {
            d.error(
                &node.span,
                &node.path,
                "an empty list matches nothing: leave it out",
            );
            ok = false;
        }
        for v in list {
            let Some(v) = v.str(d) else {
                ok = false;
                continue;
            };
            match pattern_problem(key, &v.val) {
                None => slot.push(v.val),
                Some(why) => {
                    d.error(&v.span, &node.path, why);
                    ok = false;
                }
            }
        }
    }
    if t.keys().is_empty() {
        d.error(
            &t.span,
            &t.path,
            "a source names `principals`, `namespaces` or `trust_domains`",
        );
        ok = false;
    }
    ok.then_some(s)
}

/// What is wrong with a `from` value, if anything: one `*` at most, at the start or end.
fn pattern_problem(key: &str, v: &str) -> Option<String> {
    let stars = v.matches('*').count();
    if v.is_empty() {
        return Some("an empty value matches nothing".to_owned());
    }
    if stars > 1 || (stars == 1 && !v.starts_with('*') && !v.ends_with('*')) {
        return Some(format!(
            "`{v}`: `*` may only stand alone or at the start or end of a value"
        ));
    }
    if key == "principals" && v.starts_with("spiffe://") {
        return Some(format!(
            "`{v}`: write principals without `spiffe://` (`<trust domain>/ns/<ns>/sa/<sa>`)"
        ));
    }
    None
}

fn workload_name(t: &Table, d: &mut Diag) -> Option<WorkloadName> {
    if t.path.ends_with("node_identity") {
        t.deny_unknown(&["namespace", "service_account"], d);
    }
    let mut get = |key: &str, what: &str| {
        t.required(key, what, d)
            .and_then(|n| n.str(d))
            .and_then(|v| {
                if is_name(&v.val) {
                    Some(v.val)
                } else {
                    d.error(
                        &v.span,
                        &t.field(key),
                        format!(
                            "`{}` is not a valid name (letters, digits, `.`, `-`, `_`)",
                            v.val
                        ),
                    );
                    None
                }
            })
    };
    let namespace = get("namespace", "the workload's namespace");
    let service_account = get("service_account", "the workload's service account");
    Some(WorkloadName {
        namespace: namespace?,
        service_account: service_account?,
    })
}

fn absolute(n: &Node, d: &mut Diag) -> Option<PathBuf> {
    let v = n.str(d)?;
    if v.val.starts_with('/') {
        Some(v.val.into())
    } else {
        d.error(&v.span, &n.path, "the path must be absolute");
        None
    }
}

/// A SPIFFE trust domain: lower-case letters, digits, `.`, `-`, `_`; 1..=255 characters.
pub fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
}

/// A namespace or service account name as a SPIFFE path segment: 1..=253 characters of
/// letters, digits, `.`, `-`, `_`, not `.` or `..`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
}

/// The kubernetes source pods are followed through (see [`MeshConfig::pod_source`]):
/// `pod_source` must name one; `pod_identities = false` with `pod_source` is a contradiction.
pub(super) fn pod_source(mesh: &RawMesh, sources: &[SourceConfig], d: &mut Diag) -> Option<String> {
    let kubernetes = |name: &str| {
        sources
            .iter()
            .any(|s| matches!(s, SourceConfig::Kubernetes(_)) && s.name() == name)
    };
    match &mesh.pod_source {
        Some((name, field)) if !mesh.pod_identities => {
            d.error(
                &name.span,
                field,
                "`pod_source` with `pod_identities = false`: remove one of them",
            );
            None
        }
        Some((name, field)) if !kubernetes(&name.val) => {
            d.error(
                &name.span,
                field,
                format!("no `kind = \"kubernetes\"` source is named `{}`", name.val),
            );
            None
        }
        Some((name, _)) => Some(name.val.clone()),
        None if !mesh.pod_identities => None,
        None => sources.iter().find_map(|s| match s {
            SourceConfig::Kubernetes(k) => Some(k.name.clone()),
            _ => None,
        }),
    }
}

/// A service's `identity = "<namespace>/<service account>"` (what its backends run as): both
/// parts valid names. Whether the service may have one is judged by [`check_services`].
pub(super) fn service_identity(raw: &RawService, path: &str, d: &mut Diag) -> Option<WorkloadName> {
    let v = raw.identity.as_ref()?;
    let parsed = v
        .val
        .split_once('/')
        .filter(|(ns, sa)| is_name(ns) && is_name(sa));
    match parsed {
        Some((ns, sa)) => Some(WorkloadName {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        }),
        None => {
            d.error(
                &v.span,
                &format!("{path}.identity"),
                format!(
                    "expected `<namespace>/<service account>` (letters, digits, `.`, `-`, `_`), \
                     found `{}`",
                    v.val
                ),
            );
            None
        }
    }
}

/// A service's `mtls = true` needs a frontend in NAT mode, the socket LB and the mesh; a
/// policy's `service` must name a service.
pub(super) fn check_services(
    raw: &[RawService],
    services: &[Service],
    socket_lb: &SocketLbSettings,
    mesh: &RawMesh,
    d: &mut Diag,
) {
    for r in raw {
        if let Some(id) = &r.identity
            && !r.mtls.as_ref().is_some_and(|m| m.val)
        {
            d.error(
                &id.span,
                &format!("service[{}].identity", r.index),
                "`identity` names who an `mtls = true` service's backends run as: set `mtls = true` or remove it",
            );
        }
        let Some(mtls) = r.mtls.as_ref().filter(|m| m.val) else {
            continue;
        };
        let field = format!("service[{}].mtls", r.index);
        let Some(s) = services
            .iter()
            .find(|s| r.name.as_ref().is_some_and(|n| n.val == s.name))
        else {
            continue;
        };
        let problem = if s.frontend.is_none() {
            Some("`mtls = true` needs a `vip` and `port` (the address clients connect to)")
        } else if s.mode != Mode::Nat {
            Some("`mtls = true` is for `mode = \"nat\"` services")
        } else if !socket_lb.enabled {
            Some(
                "`mtls = true` services are steered by the socket LB: set `[socket_lb] enabled = true`",
            )
        } else if !mesh.settings.enabled {
            Some("`mtls = true` needs the mesh: set `[mesh] enabled = true`")
        } else {
            None
        };
        if let Some(p) = problem {
            d.error(&mtls.span, &field, p);
        }
    }
    for (service, field) in &mesh.policy_services {
        if !raw
            .iter()
            .any(|r| r.name.as_ref().is_some_and(|n| n.val == service.val))
        {
            d.error(
                &service.span,
                field,
                format!("no `[[service]]` is named `{}`", service.val),
            );
        }
    }
}
