//! Checks the `[[service]]` entries: each service's values and backends, then the rules
//! across services (unique names, unique vip/port/protocol, how many fit the data plane).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use lb_common::MAX_SERVICES;

use super::diag::Diag;
use super::doc::Sp;
use super::health::health;
use super::raw::{RawBackend, RawService};
use super::validate::{port, rate_limit, table_size};
use super::{
    Backend, Global, HttpService, MAX_TOTAL_BACKENDS, MAX_WEIGHT, Mode, Protocol, Service,
};

/// What the cross-service checks need from one service, whatever else was wrong with it.
struct Checked {
    name: Option<Sp<String>>,
    /// vip, port and protocol, when all three are valid.
    key: Option<(IpAddr, u16, Protocol)>,
    /// The service, when everything in it is valid.
    service: Option<Service>,
}

pub(super) fn services(raw: &[RawService], global: &Global, d: &mut Diag) -> Vec<Service> {
    let checked: Vec<Checked> = raw.iter().map(|s| service(s, global, d)).collect();
    unique(raw, &checked, d);
    limits(raw, d);
    checked.into_iter().filter_map(|c| c.service).collect()
}

/// Names and vip/port/protocol must be unique; the second occurrence is the error.
fn unique(raw: &[RawService], checked: &[Checked], d: &mut Diag) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<(IpAddr, u16, Protocol), (usize, String)> = HashMap::new();
    for (r, c) in raw.iter().zip(checked) {
        let p = format!("service[{}]", r.index);
        if let Some(name) = &c.name {
            if let Some(first) = names.get(name.val.as_str()) {
                d.error(
                    &name.span,
                    &format!("{p}.name"),
                    format!(
                        "duplicate service name `{}` (first defined at line {first})",
                        name.val
                    ),
                );
            } else {
                names.insert(&name.val, d.line(&name.span));
            }
        }
        if let (Some(key), Some(vip)) = (c.key, &r.vip) {
            let (ip, port, proto) = key;
            if let Some((first_line, first_label)) = keys.get(&key) {
                d.error(
                    &vip.span,
                    &format!("{p}.vip"),
                    format!(
                        "duplicate service: {} has the same vip, port and protocol ({}/{proto}) \
                         as {first_label} at line {first_line}",
                        label(r),
                        SocketAddr::new(ip, port)
                    ),
                );
            } else {
                keys.insert(key, (d.line(&vip.span), label(r)));
            }
        }
    }
}

/// The data plane's fixed-size maps bound the number of services and of backends.
fn limits(raw: &[RawService], d: &mut Diag) {
    if let Some(over) = raw.get(MAX_SERVICES as usize) {
        d.error(
            &over.span,
            &format!("service[{}]", over.index),
            format!("too many services: {} (at most {MAX_SERVICES})", raw.len()),
        );
    }
    let total: usize = raw.iter().map(|s| s.backends.len()).sum();
    let over = raw
        .iter()
        .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
        .nth(MAX_TOTAL_BACKENDS as usize);
    if let Some((s, b)) = over {
        d.error(
            &b.span,
            &format!("service[{}].backend[{}]", s.index, b.index),
            format!("too many backends: {total} in total (at most {MAX_TOTAL_BACKENDS})"),
        );
    }
}

/// "service `web`", or "service[3]" when it has no name.
fn label(raw: &RawService) -> String {
    match &raw.name {
        Some(n) => format!("service `{}`", n.val),
        None => format!("service[{}]", raw.index),
    }
}

fn service(raw: &RawService, global: &Global, d: &mut Diag) -> Checked {
    let p = format!("service[{}]", raw.index);
    let name = raw
        .name
        .as_ref()
        .filter(|n| check_name(n, &format!("{p}.name"), d));
    let vip = raw
        .vip
        .as_ref()
        .and_then(|v| address(v, &format!("{p}.vip"), "VIP", d));
    let port = raw
        .port
        .as_ref()
        .and_then(|v| port(v, &format!("{p}.port"), d));
    let mode = match &raw.mode {
        None => Some(Mode::Nat),
        Some(m) => mode(m, &format!("{p}.mode"), d),
    };
    let scope = match &raw.scope {
        None => Some(super::Scope::External),
        Some(s) => super::socket_lb::scope(s, &format!("{p}.scope"), d),
    };
    let protocol = match &raw.protocol {
        Some(v) => protocol(v, &format!("{p}.protocol"), d),
        // A backend set without a VIP carries HTTP (gateway routes): TCP goes without saying.
        None if !raw.has_vip && !raw.has_port => Some(Protocol::Tcp),
        None => {
            d.error(
                &raw.span,
                &format!("{p}.protocol"),
                "missing required field `protocol` (`tcp` or `udp`)",
            );
            None
        }
    };
    let client_affinity = match &raw.session_affinity {
        None => Some(false),
        Some(a) => match a.val.as_str() {
            "none" => Some(false),
            "client_ip" => Some(true),
            other => {
                d.error(
                    &a.span,
                    &format!("{p}.session_affinity"),
                    format!("unknown session_affinity `{other}`; expected `none` or `client_ip`"),
                );
                None
            }
        },
    };
    let frontend_ok = frontend_shape(raw, &p, mode, protocol, d);
    let maglev_table_size = match &raw.maglev_table_size {
        None => Some(global.maglev_table_size),
        Some(s) => table_size(s, &format!("{p}.maglev_table_size"), d),
    };
    let rate_limit = raw
        .rate_limit
        .as_ref()
        .map_or(global.rate_limit, |r| rate_limit(r, d));
    let backends = backends(raw, vip, d);
    let health = raw.health.as_ref().map(|h| health(h, d));
    if let (Some(backends), Some(size)) = (&backends, maglev_table_size) {
        let active = backends.iter().filter(|b| b.weight > 0).count();
        if active > size as usize {
            let span = raw
                .maglev_table_size
                .as_ref()
                .map_or(&raw.span, |s| &s.span);
            d.error(
                span,
                &format!("{p}.maglev_table_size"),
                format!(
                    "{} has {active} backends with weight > 0 but a Maglev table of only {size} \
                     entries: raise maglev_table_size",
                    label(raw)
                ),
            );
        }
    }
    let key = match (vip, port, protocol) {
        (Some(v), Some(p), Some(pr)) => Some((v, p, pr)),
        _ => None,
    };
    let frontend = match (vip, port) {
        (Some(v), Some(p)) => Some(Some(SocketAddr::new(v, p))),
        _ if !raw.has_vip && !raw.has_port => Some(None),
        _ => None,
    };
    let http = match mode {
        Some(Mode::Http) => Some(HttpService {
            tls: raw.tls.clone(),
            routes: raw.routes.iter().map(|r| r.route.clone()).collect(),
        }),
        _ => None,
    };
    let service = (|| {
        frontend_ok.then_some(())?;
        Some(Service {
            name: name?.val.clone(),
            frontend: frontend?,
            protocol: protocol?,
            mode: mode?,
            scope: scope?,
            client_affinity: client_affinity?,
            mtls: raw.mtls.as_ref().is_some_and(|m| m.val),
            identity: super::mesh::service_identity(raw, &p, d),
            http,
            maglev_table_size: maglev_table_size?,
            rate_limit,
            backends: backends?,
            health,
        })
    })();
    Checked {
        name: name.cloned(),
        key,
        service,
    }
}

/// `[A-Za-z0-9_.-]{1,63}`: safe in logs, metrics labels and file names.
fn check_name(name: &Sp<String>, field: &str, d: &mut Diag) -> bool {
    let n = &name.val;
    let ok = (1..=63).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        d.error(
            &name.span,
            field,
            format!("invalid service name `{n}`: use 1 to 63 of A-Z a-z 0-9 _ . -"),
        );
    }
    ok
}

/// An IP address that can be a VIP or a backend: not unspecified, multicast or broadcast.
fn address(raw: &Sp<String>, field: &str, what: &str, d: &mut Diag) -> Option<IpAddr> {
    let Ok(ip) = raw.val.parse::<IpAddr>() else {
        d.error(
            &raw.span,
            field,
            format!(
                "invalid IP address `{}` (write a bare IPv4 or IPv6 address, without port or \
                 prefix length)",
                raw.val
            ),
        );
        return None;
    };
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    let kind = if ip.is_unspecified() {
        "an unspecified"
    } else if ip.is_multicast() {
        "a multicast"
    } else if broadcast {
        "the broadcast"
    } else {
        return Some(ip);
    };
    d.error(
        &raw.span,
        field,
        format!("invalid IP address `{ip}`: a {what} cannot be {kind} address"),
    );
    None
}

fn protocol(raw: &Sp<String>, field: &str, d: &mut Diag) -> Option<Protocol> {
    match raw.val.as_str() {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        other => {
            d.error(
                &raw.span,
                field,
                format!("unknown protocol `{other}`; expected `tcp` or `udp`"),
            );
            None
        }
    }
}

fn mode(raw: &Sp<String>, field: &str, d: &mut Diag) -> Option<Mode> {
    match raw.val.as_str() {
        "nat" => return Some(Mode::Nat),
        "http" => return Some(Mode::Http),
        m @ ("dsr" | "ipip") => d.error(
            &raw.span,
            field,
            format!("mode `{m}` is not supported yet (only `nat` and `http`)"),
        ),
        other => d.error(
            &raw.span,
            field,
            format!("unknown mode `{other}`; expected `nat` or `http`"),
        ),
    }
    None
}

/// The combinations of `vip`, `port`, `mode`, routes, TLS and backends that make sense:
/// `vip` and `port` together or not at all (without them the service is a backend set for
/// gateway routes); `mode = "http"` needs both, TCP, at least one route and no backends of
/// its own; routes and TLS only with `mode = "http"`.
fn frontend_shape(
    raw: &RawService,
    p: &str,
    mode: Option<Mode>,
    protocol: Option<Protocol>,
    d: &mut Diag,
) -> bool {
    let mut errors = 0;
    let mut err = |span: &super::diag::Span, field: &str, msg: String| {
        d.error(span, &format!("{p}.{field}"), msg);
        errors += 1;
    };
    let mut incomplete = false;
    match (raw.has_vip, raw.has_port) {
        (true, false) => err(
            &raw.span,
            "port",
            "missing required field `port` (a service with a `vip` needs its port)".into(),
        ),
        (false, true) => err(
            &raw.span,
            "vip",
            "missing required field `vip` (a `port` needs its virtual IP address)".into(),
        ),
        _ => {}
    }
    let no_vip = !raw.has_vip && !raw.has_port;
    if no_vip
        && let Some(pr) = &raw.protocol
        && protocol == Some(Protocol::Udp)
    {
        err(
            &pr.span,
            "protocol",
            "a service without `vip` is a backend set for gateway routes, which carry TCP".into(),
        );
    }
    if mode == Some(Mode::Http) {
        let span = raw.mode.as_ref().map_or(&raw.span, |m| &m.span);
        if no_vip {
            err(
                span,
                "vip",
                "`mode = \"http\"` needs a `vip` and `port` to listen on".into(),
            );
        }
        if protocol == Some(Protocol::Udp) {
            err(
                span,
                "protocol",
                "`mode = \"http\"` needs `protocol = \"tcp\"`".into(),
            );
        }
        if raw.routes.is_empty() && raw.routes_complete {
            err(
                span,
                "route",
                "`mode = \"http\"` needs at least one `[[service.route]]`".into(),
            );
        }
        if let Some(b) = raw.backends.first() {
            err(&b.span, &format!("backend[{}]", b.index), "a `mode = \"http\"` service has no backends of its own: its routes name the services that do".into());
        }
        if let Some(s) = &raw.maglev_table_size {
            err(
                &s.span,
                "maglev_table_size",
                "a `mode = \"http\"` service has no Maglev table".into(),
            );
        }
    } else if mode.is_some() {
        if !raw.routes.is_empty() {
            err(&raw.span, "route", "routes need `mode = \"http\"`".into());
        } else if !raw.routes_complete {
            incomplete = true;
        }
        if !raw.tls.is_empty() {
            err(
                &raw.span,
                "tls",
                "`[[service.tls]]` needs `mode = \"http\"`".into(),
            );
        }
    }
    if no_vip && raw.rate_limit.is_some() {
        err(
            &raw.span,
            "rate_limit",
            "a service without `vip` gets no packets to limit (set limits on its routes)".into(),
        );
    }
    errors == 0 && !incomplete && raw.routes_complete
}

/// The service's backends, or `None` if any is invalid. Also requires one with weight > 0.
fn backends(raw: &RawService, vip: Option<IpAddr>, d: &mut Diag) -> Option<Vec<Backend>> {
    let p = format!("service[{}]", raw.index);
    let mut seen: HashMap<(IpAddr, u16), usize> = HashMap::new();
    let mut all_valid = raw.backends_complete;
    let mut weights_known = raw.backends_complete;
    let mut out = Vec::new();
    for b in &raw.backends {
        let bp = format!("{p}.backend[{}]", b.index);
        let address = b
            .address
            .as_ref()
            .and_then(|a| backend_address(a, &format!("{bp}.address"), vip, d));
        let port = b
            .port
            .as_ref()
            .and_then(|v| port(v, &format!("{bp}.port"), d));
        let weight = match &b.weight {
            None => Some(1),
            Some(w) => weight(w, &format!("{bp}.weight"), d),
        };
        weights_known &= weight.is_some();
        if let (Some(address), Some(port), Some(a)) = (address, port, &b.address) {
            if let Some(first) = seen.get(&(address, port)) {
                d.error(
                    &a.span,
                    &format!("{bp}.address"),
                    format!(
                        "duplicate backend {} in {} (first at line {first})",
                        SocketAddr::new(address, port),
                        label(raw)
                    ),
                );
                all_valid = false;
            } else {
                seen.insert((address, port), d.line(&a.span));
            }
        }
        match (address, port, weight) {
            (Some(address), Some(port), Some(weight)) => out.push(Backend {
                address,
                port,
                weight,
            }),
            _ => all_valid = false,
        }
    }
    let any_active = out.iter().any(|b| b.weight > 0)
        || raw
            .backends
            .iter()
            .any(|b| b.weight.as_ref().is_none_or(|w| w.val > 0));
    // No backend at all is fine: registries supply them. Backends that all drain are not.
    if weights_known && !any_active && !raw.backends.is_empty() {
        no_active_backend(raw, d);
        all_valid = false;
    }
    all_valid.then_some(out)
}

/// Points at the first backend's weight.
fn no_active_backend(raw: &RawService, d: &mut Diag) {
    let p = format!("service[{}]", raw.index);
    let msg = format!("no backend with weight > 0 in {}", label(raw));
    if let Some(RawBackend {
        index,
        span,
        weight,
        ..
    }) = raw.backends.first()
    {
        let span = weight.as_ref().map_or(span, |w| &w.span);
        d.error(span, &format!("{p}.backend[{index}].weight"), msg);
    }
}

fn backend_address(
    raw: &Sp<String>,
    field: &str,
    vip: Option<IpAddr>,
    d: &mut Diag,
) -> Option<IpAddr> {
    let ip = address(raw, field, "backend", d)?;
    match vip {
        Some(vip) if vip.is_ipv4() != ip.is_ipv4() => {
            let family = |a: IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
            d.error(
                &raw.span,
                field,
                format!(
                    "backend {ip} is {} but the service VIP {vip} is {}: NAT keeps the address \
                     family",
                    family(ip),
                    family(vip)
                ),
            );
            None
        }
        _ => Some(ip),
    }
}

fn weight(raw: &Sp<i64>, field: &str, d: &mut Diag) -> Option<u32> {
    match u32::try_from(raw.val) {
        Ok(w) if w <= MAX_WEIGHT => Some(w),
        Ok(_) | Err(_) if raw.val > 0 => {
            d.error(
                &raw.span,
                field,
                format!("weight {} is above the maximum {MAX_WEIGHT}", raw.val),
            );
            None
        }
        _ => {
            d.error(
                &raw.span,
                field,
                format!(
                    "weight must not be negative (found {}); 0 drains the backend",
                    raw.val
                ),
            );
            None
        }
    }
}
