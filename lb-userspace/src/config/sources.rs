//! Checks the `[[source]]` entries: each source's values by kind, then their names (unique,
//! not reserved).
//!
//! A source feeds backends into the config's services by name, so a service it is told to
//! watch must be one the file defines: otherwise its instances would have nowhere to go.

use std::collections::HashMap;
use std::net::IpAddr;

use super::control::{HttpUrl, absolute_path, parse_http_url};
use super::diag::Diag;
use super::doc::Sp;
use super::raw::{RawSource, RawStrings, SOURCE_KINDS};
use super::{
    ConsulSource, DEFAULT_CONSUL_ADDRESS, DEFAULT_ETCD_PREFIX, DEFAULT_K8S_NAMESPACE, EtcdSource,
    KubernetesSource, NodeAddresses, SourceConfig,
};

/// Source names the agent uses for its own backend sets (merge and status name them).
const RESERVED_NAMES: [(&str, &str); 2] = [
    ("config", "the config file's static backends"),
    ("registry", "the built-in registry"),
];

/// `service_names`: the names of the file's `[[service]]` entries, valid or not (so a bad
/// service is not reported again through the sources that name it). `interfaces`: the
/// global ones (a kubernetes source serves NodePorts on their addresses by default).
pub(super) fn sources(
    raw: &[RawSource],
    service_names: &[&str],
    interfaces: &[String],
    d: &mut Diag,
) -> Vec<SourceConfig> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for s in raw {
        let p = format!("source[{}]", s.index);
        let kind = s.kind.as_ref().filter(|k| known_kind(k, &p, d));
        let name = name(s, kind, &p, d);
        if let Some(name) = &name {
            if let Some(first) = seen.get(&name.val) {
                let hint = if s.name.is_none() {
                    format!("; give each `{}` source its own `name`", name.val)
                } else {
                    String::new()
                };
                d.error(
                    &name.span,
                    &format!("{p}.name"),
                    format!(
                        "duplicate source name `{}` (first at line {first}){hint}",
                        name.val
                    ),
                );
            } else {
                seen.insert(name.val.clone(), d.line(&name.span));
            }
        }
        // The kind's fields are checked even when the name is bad, to report everything.
        let source = match kind.map(|k| k.val.as_str()) {
            Some("etcd") => etcd(s, &p, d).map(SourceConfig::Etcd),
            Some("consul") => consul(s, service_names, &p, d).map(SourceConfig::Consul),
            Some("kubernetes") => {
                kubernetes(s, service_names, interfaces, &p, d).map(SourceConfig::Kubernetes)
            }
            _ => None,
        };
        if let (Some(mut source), Some(name)) = (source, name) {
            set_name(&mut source, name.val);
            out.push(source);
        }
    }
    out
}

fn set_name(source: &mut SourceConfig, name: String) {
    match source {
        SourceConfig::Etcd(s) => s.name = name,
        SourceConfig::Consul(s) => s.name = name,
        SourceConfig::Kubernetes(s) => s.name = name,
    }
}

fn known_kind(kind: &Sp<String>, p: &str, d: &mut Diag) -> bool {
    let known = SOURCE_KINDS.iter().any(|(k, _)| *k == kind.val);
    if !known {
        d.error(
            &kind.span,
            &format!("{p}.kind"),
            format!(
                "unknown source kind `{}`; expected `etcd`, `consul` or `kubernetes`",
                kind.val
            ),
        );
    }
    known
}

/// The source's name (its kind when not set) with where to report it; `None` if invalid or
/// unknown.
fn name(s: &RawSource, kind: Option<&Sp<String>>, p: &str, d: &mut Diag) -> Option<Sp<String>> {
    let Some(name) = &s.name else {
        return kind.map(|k| Sp {
            val: k.val.clone(),
            span: s.span.clone(),
        });
    };
    let field = format!("{p}.name");
    let n = &name.val;
    let valid = (1..=63).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !valid {
        d.error(
            &name.span,
            &field,
            format!("invalid source name `{n}`: use 1 to 63 of A-Z a-z 0-9 _ . -"),
        );
        return None;
    }
    if let Some((_, meaning)) = RESERVED_NAMES.iter().find(|(r, _)| r == n) {
        d.error(
            &name.span,
            &field,
            format!("source name `{n}` is reserved: it names {meaning}"),
        );
        return None;
    }
    Some(name.clone())
}

/// The checks below leave `name` empty: `sources` sets it.
fn etcd(s: &RawSource, p: &str, d: &mut Diag) -> Option<EtcdSource> {
    let endpoints = s
        .endpoints
        .as_ref()
        .map(|e| etcd_endpoints(e, &format!("{p}.endpoints"), d));
    let prefix = match &s.prefix {
        None => Some(DEFAULT_ETCD_PREFIX.to_owned()),
        Some(prefix) if prefix.val.starts_with('/') && prefix.val.ends_with('/') => {
            Some(prefix.val.clone())
        }
        Some(prefix) => {
            d.error(
                &prefix.span,
                &format!("{p}.prefix"),
                format!(
                    "prefix `{}` must start and end with `/` (e.g. `{DEFAULT_ETCD_PREFIX}`)",
                    prefix.val
                ),
            );
            None
        }
    };
    Some(EtcdSource {
        name: String::new(),
        endpoints: endpoints??,
        prefix: prefix?,
    })
}

/// Non-empty, unique `http://host:port` URLs; `None` if any is invalid.
fn etcd_endpoints(raw: &RawStrings, field: &str, d: &mut Diag) -> Option<Vec<String>> {
    if raw.val.is_empty() {
        d.error(
            &raw.span,
            field,
            "no endpoint listed: name at least one etcd member as http://host:port",
        );
        return None;
    }
    let mut all_valid = true;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, e) in raw.val.iter().enumerate() {
        let Some(e) = e else {
            all_valid = false;
            continue;
        };
        let field = format!("{field}[{i}]");
        let url = match parse_http_url(&e.val) {
            Ok(HttpUrl { https: true, .. }) => Err(format!(
                "`{}`: https endpoints are not supported yet (the etcd source speaks plain \
                 HTTP); use http://",
                e.val
            )),
            Ok(HttpUrl { port: None, .. }) => Err(format!(
                "`{}` has no port: write http://host:port (etcd's client port is usually 2379)",
                e.val
            )),
            other => other,
        };
        match url {
            Err(why) => {
                d.error(&e.span, &field, why);
                all_valid = false;
            }
            Ok(url) => {
                if let Some(first) = seen.get(&url.normalized) {
                    d.error(
                        &e.span,
                        &field,
                        format!(
                            "endpoint `{}` is listed twice (first at line {first})",
                            e.val
                        ),
                    );
                    all_valid = false;
                } else {
                    seen.insert(url.normalized.clone(), d.line(&e.span));
                    out.push(url.normalized);
                }
            }
        }
    }
    all_valid.then_some(out)
}

fn consul(s: &RawSource, service_names: &[&str], p: &str, d: &mut Diag) -> Option<ConsulSource> {
    let address = match &s.address {
        None => Some(DEFAULT_CONSUL_ADDRESS.to_owned()),
        Some(a) => url(a, &format!("{p}.address"), d),
    };
    let services = s
        .services
        .as_ref()
        .map(|l| watched_services(l, &format!("{p}.services"), service_names, None, d));
    let datacenter = s.datacenter.as_ref().filter(|dc| {
        let valid = !dc.val.is_empty()
            && dc
                .val
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            d.error(
                &dc.span,
                &format!("{p}.datacenter"),
                format!("invalid datacenter `{}`: use A-Z a-z 0-9 _ . -", dc.val),
            );
        }
        valid
    });
    let token_file = optional_path(&s.token_file, &format!("{p}.token_file"), d);
    Some(ConsulSource {
        name: String::new(),
        address: address?,
        services: services??,
        datacenter: datacenter.map(|dc| dc.val.clone()),
        token_file: token_file?,
    })
}

fn kubernetes(
    s: &RawSource,
    service_names: &[&str],
    interfaces: &[String],
    p: &str,
    d: &mut Diag,
) -> Option<KubernetesSource> {
    let api_server = match &s.api_server {
        None => Some(None),
        Some(a) => url(a, &format!("{p}.api_server"), d).map(Some),
    };
    let namespace = match &s.namespace {
        None => Some(DEFAULT_K8S_NAMESPACE.to_owned()),
        Some(ns) if is_dns_label(&ns.val, false) => Some(ns.val.clone()),
        Some(ns) => {
            d.error(
                &ns.span,
                &format!("{p}.namespace"),
                format!(
                    "invalid namespace `{}`: a Kubernetes namespace is 1 to 63 of a-z 0-9 -, \
                     starting and ending with a letter or digit",
                    ns.val
                ),
            );
            None
        }
    };
    let discover_services = s.discover_services.as_ref().is_some_and(|b| b.val);
    let services = match &s.services {
        // One source publishes one complete set: the file's services' EndpointSlices and
        // discovered Services would replace each other's.
        Some(l) if discover_services => {
            d.error(
                &l.span,
                &format!("{p}.services"),
                "`services` and `discover_services = true` cannot be combined: use a second \
                 kubernetes source (with its own `name`) for the file's services",
            );
            None
        }
        Some(l) => {
            let field = format!("{p}.services");
            watched_services(l, &field, service_names, Some(k8s_service_name), d).map(Some)
        }
        // Only allowed (by `raw`) with discover_services.
        None if discover_services => Some(Some(Vec::new())),
        None => Some(None),
    };
    let token_file = optional_path(&s.token_file, &format!("{p}.token_file"), d);
    let ca_file = optional_path(&s.ca_file, &format!("{p}.ca_file"), d);
    let node_name = match &s.node_name {
        None => Some(None),
        Some(n) if is_dns_subdomain(&n.val) => Some(Some(n.val.clone())),
        Some(n) => {
            d.error(
                &n.span,
                &format!("{p}.node_name"),
                format!(
                    "invalid node name `{}`: a Kubernetes node name is 1 to 253 of a-z 0-9 - ., \
                     in dot-separated labels",
                    n.val
                ),
            );
            None
        }
    };
    let node_addresses = match &s.node_addresses {
        None => Some(NodeAddresses::Interfaces(interfaces.to_vec())),
        Some(l) => node_addresses(l, &format!("{p}.node_addresses"), d).map(NodeAddresses::List),
    };
    Some(KubernetesSource {
        name: String::new(),
        api_server: api_server?,
        namespace: namespace?,
        services: services??,
        token_file: token_file?,
        ca_file: ca_file?,
        discover_services,
        node_name: node_name?,
        node_addresses: node_addresses?,
    })
}

/// Non-empty, unique IP addresses; `None` if any is invalid.
fn node_addresses(raw: &RawStrings, field: &str, d: &mut Diag) -> Option<Vec<IpAddr>> {
    if raw.val.is_empty() {
        d.error(
            &raw.span,
            field,
            "no address listed: leave node_addresses out to use the interfaces' addresses",
        );
        return None;
    }
    let mut out: Vec<IpAddr> = Vec::new();
    let mut all_valid = true;
    for (i, a) in raw.val.iter().enumerate() {
        let Some(a) = a else {
            all_valid = false;
            continue;
        };
        match a.val.parse::<IpAddr>() {
            Ok(ip) if out.contains(&ip) => {
                d.error(
                    &a.span,
                    &format!("{field}[{i}]"),
                    format!("address `{ip}` is listed twice"),
                );
                all_valid = false;
            }
            Ok(ip) => out.push(ip),
            Err(_) => {
                d.error(
                    &a.span,
                    &format!("{field}[{i}]"),
                    format!("`{}` is not an IP address", a.val),
                );
                all_valid = false;
            }
        }
    }
    all_valid.then_some(out)
}

/// A DNS subdomain (RFC 1123), as Kubernetes node names are.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| is_dns_label(l, false))
}

/// An http or https URL, normalized (see [`HttpUrl::normalized`]).
fn url(raw: &Sp<String>, field: &str, d: &mut Diag) -> Option<String> {
    match parse_http_url(&raw.val) {
        Ok(url) => Some(url.normalized),
        Err(why) => {
            d.error(&raw.span, field, why);
            None
        }
    }
}

/// `Some(None)` when absent, `None` when invalid.
fn optional_path(
    raw: &Option<Sp<String>>,
    field: &str,
    d: &mut Diag,
) -> Option<Option<std::path::PathBuf>> {
    match raw {
        None => Some(None),
        Some(p) => absolute_path(p, field, d).map(Some),
    }
}

/// Why a service name is not valid for a source, if it is not.
type NameRule = fn(&str) -> Option<&'static str>;

fn k8s_service_name(name: &str) -> Option<&'static str> {
    (!is_dns_label(name, true)).then_some(
        "not a Kubernetes service name (1 to 63 of a-z 0-9 -, starting with a letter, ending \
         with a letter or digit)",
    )
}

/// The services a source watches: non-empty, unique, each a `[[service]]` of this file and,
/// with `rule`, valid for the source.
fn watched_services(
    raw: &RawStrings,
    field: &str,
    service_names: &[&str],
    rule: Option<NameRule>,
    d: &mut Diag,
) -> Option<Vec<String>> {
    if raw.val.is_empty() {
        d.error(
            &raw.span,
            field,
            "no service listed: name at least one service to watch",
        );
        return None;
    }
    let mut all_valid = true;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in raw.val.iter().enumerate() {
        let Some(n) = n else {
            all_valid = false;
            continue;
        };
        let field = format!("{field}[{i}]");
        let problem = if let Some(why) = rule.and_then(|rule| rule(&n.val)) {
            Some(format!("`{}` is {why}", n.val))
        } else if let Some(first) = seen.get(n.val.as_str()) {
            Some(format!(
                "service `{}` is listed twice (first at line {first})",
                n.val
            ))
        } else if !service_names.contains(&n.val.as_str()) {
            Some(format!(
                "no [[service]] named `{}` in this file: a source only supplies backends to \
                 the services the config defines",
                n.val
            ))
        } else {
            None
        };
        match problem {
            Some(why) => {
                d.error(&n.span, &field, why);
                all_valid = false;
            }
            None => {
                seen.insert(&n.val, d.line(&n.span));
            }
        }
    }
    let names = raw.val.iter().flatten().map(|n| n.val.clone()).collect();
    all_valid.then_some(names)
}

/// A DNS label (RFC 1123; RFC 1035 when `letter_first`, as Kubernetes service names are):
/// 1 to 63 of a-z 0-9 -, not starting or ending with `-`.
fn is_dns_label(s: &str, letter_first: bool) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && (!letter_first || b[0].is_ascii_lowercase())
}
