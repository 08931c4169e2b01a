//! Checks the values of a [`RawConfig`] and builds the plain [`Config`]: the global settings
//! here, services in `services` (their health checks in `health`), the control-plane
//! sections in `control` and `sources`.
//!
//! A value that is missing or wrong is reported and replaced by its default so checking goes
//! on; the config built then is thrown away by `parse`, which returns the errors instead.

use super::diag::Diag;
use super::doc::Sp;
use super::raw::{RawConfig, RawConntrack, RawGlobal, RawRateLimit, RawStrings, RawSynGuard};
use super::{
    AttachPoint, Config, Conntrack, DEFAULT_PIN_PATH, Global, MIN_CT_MAX_ENTRIES, MIN_MAGLEV_SIZE,
    MIN_SNAT_PORT, RateLimit, SynGuard, XdpMode, control, gateway, services, socket_lb, sources,
};
use lb_common::maglev::{is_prime, next_prime};
use lb_common::{DEFAULT_MAGLEV_SIZE, MAX_MAGLEV_SIZE, Settings};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub(super) fn validate(raw: &RawConfig, d: &mut Diag) -> Config {
    let global = raw.global.as_ref().map(|g| global(g, d)).unwrap_or(Global {
        interfaces: Vec::new(),
        xdp_mode: XdpMode::default(),
        attach: BTreeMap::new(),
        maglev_table_size: DEFAULT_MAGLEV_SIZE,
        snat_port_min: Settings::default().snat_port_min,
        snat_port_max: Settings::default().snat_port_max,
        rate_limit: RateLimit::UNLIMITED,
        conntrack: Conntrack::default(),
        syn_guard: SynGuard::default(),
        pin_path: Some(DEFAULT_PIN_PATH.into()),
    });
    let services = services::services(&raw.services, &global, d);
    let service_names: Vec<&str> = raw
        .services
        .iter()
        .filter_map(|s| s.name.as_ref().map(|n| n.val.as_str()))
        .collect();
    let routes: Vec<_> = raw
        .services
        .iter()
        .filter_map(|s| Some((s.name.clone()?, format!("service[{}]", s.index), &s.routes)))
        .collect();
    gateway::check_references(
        &services,
        &routes,
        &raw.auth,
        raw.gateway.redis.is_some(),
        d,
    );
    super::resilience::check_upstreams(&raw.gateway.resilience, &services, d);
    socket_lb::check_scopes(&raw.services, &services, &raw.socket_lb, d);
    super::mesh::check_services(&raw.services, &services, &raw.socket_lb, &raw.mesh, d);
    let admin = control::admin(raw.admin.as_ref(), d);
    let registry = control::registry(raw.registry.as_ref(), d);
    let sources = sources::sources(&raw.sources, &service_names, &global.interfaces, d);
    let mut mesh = raw.mesh.settings.clone();
    // Judged even when the mesh is off (a wrong name is wrong), used only when it is on.
    mesh.pod_source =
        super::mesh::pod_source(&raw.mesh, &sources, d).filter(|_| raw.mesh.settings.enabled);
    Config {
        global,
        admin,
        registry,
        sources,
        services,
        auth: raw.auth.iter().filter_map(|a| a.provider.clone()).collect(),
        gateway: raw.gateway.clone(),
        socket_lb: raw.socket_lb.clone(),
        mesh,
    }
}

fn global(raw: &RawGlobal, d: &mut Diag) -> Global {
    let defaults = Settings::default();
    let (snat_port_min, snat_port_max) = raw
        .snat_ports
        .as_ref()
        .and_then(|p| snat_ports(p, d))
        .unwrap_or((defaults.snat_port_min, defaults.snat_port_max));
    let interfaces = raw
        .interfaces
        .as_ref()
        .map(|i| interfaces(i, d))
        .unwrap_or_default();
    Global {
        attach: attach(&raw.attach, &interfaces, d),
        interfaces,
        xdp_mode: raw
            .xdp_mode
            .as_ref()
            .and_then(|m| xdp_mode(m, d))
            .unwrap_or_default(),
        maglev_table_size: raw
            .maglev_table_size
            .as_ref()
            .and_then(|s| table_size(s, "global.maglev_table_size", d))
            .unwrap_or(DEFAULT_MAGLEV_SIZE),
        snat_port_min,
        snat_port_max,
        rate_limit: raw
            .rate_limit
            .as_ref()
            .map(|r| rate_limit(r, d))
            .unwrap_or(RateLimit::UNLIMITED),
        conntrack: raw
            .conntrack
            .as_ref()
            .map(|c| conntrack(c, d))
            .unwrap_or_default(),
        syn_guard: raw
            .syn_guard
            .as_ref()
            .map(|g| syn_guard(g, d))
            .unwrap_or_default(),
        pin_path: control::pin_path(raw.pin_path.as_ref(), d),
    }
}

fn interfaces(raw: &RawStrings, d: &mut Diag) -> Vec<String> {
    if raw.val.is_empty() {
        d.error(
            &raw.span,
            "global.interfaces",
            "no interface listed: name at least one interface to attach to",
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, name) in raw.val.iter().enumerate() {
        let Some(name) = name else { continue };
        let field = format!("global.interfaces[{i}]");
        if let Err(why) = check_ifname(&name.val) {
            d.error(
                &name.span,
                &field,
                format!("invalid interface name `{}`: {why}", name.val),
            );
        } else if let Some(first) = seen.get(name.val.as_str()) {
            d.error(
                &name.span,
                &field,
                format!(
                    "interface `{}` is listed twice (first at line {first})",
                    name.val
                ),
            );
        } else {
            seen.insert(&name.val, d.line(&name.span));
            out.push(name.val.clone());
        }
    }
    out
}

/// The kernel's rule for interface names (`dev_valid_name`): 1 to 15 bytes (`IFNAMSIZ` - 1),
/// not `.` or `..`, no `/`, `:` or whitespace.
fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name.len() > 15 {
        Err("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Err("`.` and `..` are not allowed")
    } else if name.contains(['/', ':']) {
        Err("it contains `/` or `:`")
    } else if name.chars().any(char::is_whitespace) {
        Err("it contains whitespace")
    } else {
        Ok(())
    }
}

/// `attach = { IFACE = "xdp" | "tc" }`: each key one of `interfaces`.
fn attach(
    raw: &[(String, Option<Sp<String>>)],
    interfaces: &[String],
    d: &mut Diag,
) -> BTreeMap<String, AttachPoint> {
    let mut out = BTreeMap::new();
    for (iface, value) in raw {
        let Some(value) = value else { continue };
        let field = format!("global.attach.{iface}");
        let point = match value.val.as_str() {
            "xdp" => AttachPoint::Xdp,
            "tc" => AttachPoint::Tc,
            other => {
                d.error(
                    &value.span,
                    &field,
                    format!("unknown attach point `{other}`; expected `xdp` or `tc`"),
                );
                continue;
            }
        };
        if !interfaces.iter().any(|i| i == iface) {
            d.error(
                &value.span,
                &field,
                format!("`{iface}` is not in global.interfaces"),
            );
            continue;
        }
        out.insert(iface.clone(), point);
    }
    out
}

fn xdp_mode(raw: &Sp<String>, d: &mut Diag) -> Option<XdpMode> {
    match raw.val.as_str() {
        "native" => Some(XdpMode::Native),
        "generic" => Some(XdpMode::Generic),
        other => {
            d.error(
                &raw.span,
                "global.xdp_mode",
                format!("unknown xdp_mode `{other}`; expected `native` or `generic`"),
            );
            None
        }
    }
}

/// A Maglev table size: prime, in `MIN_MAGLEV_SIZE..=MAX_MAGLEV_SIZE`.
pub(super) fn table_size(raw: &Sp<i64>, field: &str, d: &mut Diag) -> Option<u32> {
    let range = MIN_MAGLEV_SIZE..=MAX_MAGLEV_SIZE;
    let size = u32::try_from(raw.val).ok().filter(|s| range.contains(s));
    let Some(size) = size else {
        d.error(
            &raw.span,
            field,
            format!(
                "maglev_table_size {} is out of range {MIN_MAGLEV_SIZE}..={MAX_MAGLEV_SIZE} \
                 (default {DEFAULT_MAGLEV_SIZE})",
                raw.val
            ),
        );
        return None;
    };
    if !is_prime(size) {
        d.error(
            &raw.span,
            field,
            format!(
                "maglev_table_size {size} is not prime (Maglev needs a prime); the next prime is {}",
                next_prime(size)
            ),
        );
        return None;
    }
    Some(size)
}

/// `[min, max]`: two ports, `MIN_SNAT_PORT <= min <= max <= 65535`.
fn snat_ports(raw: &Sp<Vec<Option<Sp<i64>>>>, d: &mut Diag) -> Option<(u16, u16)> {
    const FIELD: &str = "global.snat_ports";
    let [min, max] = raw.val.as_slice() else {
        d.error(
            &raw.span,
            FIELD,
            format!(
                "expected two ports `[min, max]`, found {} values",
                raw.val.len()
            ),
        );
        return None;
    };
    // Elements of the wrong type were reported already.
    let (min, max) = (min.as_ref()?, max.as_ref()?);
    let mut ok = true;
    for port in [min, max] {
        if port.val > i64::from(u16::MAX) {
            d.error(
                &port.span,
                FIELD,
                format!("port {} is above 65535", port.val),
            );
            ok = false;
        }
    }
    if min.val < i64::from(MIN_SNAT_PORT) {
        d.error(
            &min.span,
            FIELD,
            format!(
                "minimum port {} is below {MIN_SNAT_PORT}: ports under {MIN_SNAT_PORT} are \
                 privileged and may collide with local services",
                min.val
            ),
        );
        ok = false;
    }
    if min.val > max.val {
        d.error(
            &raw.span,
            FIELD,
            format!(
                "range [{}, {}] is empty: the minimum is above the maximum",
                min.val, max.val
            ),
        );
        ok = false;
    }
    // Both fit u16 when `ok`.
    ok.then_some((min.val as u16, max.val as u16))
}

/// A `rate_limit` table; `burst` defaults to `rate`.
pub(super) fn rate_limit(raw: &RawRateLimit, d: &mut Diag) -> RateLimit {
    let non_negative = |v: &Sp<i64>, key: &str, d: &mut Diag| match u64::try_from(v.val) {
        Ok(n) => Some(n),
        Err(_) => {
            d.error(
                &v.span,
                &format!("{}.{key}", raw.path),
                format!("{key} must not be negative (found {})", v.val),
            );
            None
        }
    };
    let rate = raw
        .rate
        .as_ref()
        .and_then(|r| non_negative(r, "rate", d))
        .unwrap_or(0);
    let burst = match &raw.burst {
        None => rate,
        Some(b) => non_negative(b, "burst", d).unwrap_or(rate),
    };
    if let Some(b) = &raw.burst
        && rate > 0
        && b.val == 0
    {
        d.error(
            &b.span,
            &format!("{}.burst", raw.path),
            format!(
                "burst must be at least 1 when rate is {rate} (a bucket must hold a packet); \
                 omit it to default to the rate"
            ),
        );
    }
    RateLimit { rate, burst }
}

fn conntrack(raw: &RawConntrack, d: &mut Diag) -> Conntrack {
    let defaults = Conntrack::default();
    let max_entries = raw.max_entries.as_ref().and_then(|m| {
        let n = u32::try_from(m.val)
            .ok()
            .filter(|&n| n >= MIN_CT_MAX_ENTRIES);
        if n.is_none() {
            d.error(
                &m.span,
                "global.conntrack.max_entries",
                format!(
                    "max_entries {} is out of range {MIN_CT_MAX_ENTRIES}..={} (default {})",
                    m.val,
                    u32::MAX,
                    defaults.max_entries
                ),
            );
        }
        n
    });
    let mut timeout = |raw: &Option<Sp<i64>>, key: &str, default: Duration| {
        let Some(t) = raw else { return default };
        if t.val < 1 {
            d.error(
                &t.span,
                &format!("global.conntrack.{key}"),
                format!(
                    "{key} must be at least 1 second (found {}; default {})",
                    t.val,
                    default.as_secs()
                ),
            );
            return default;
        }
        Duration::from_secs(t.val as u64)
    };
    Conntrack {
        max_entries: max_entries.unwrap_or(defaults.max_entries),
        tcp_syn_timeout: timeout(
            &raw.tcp_syn_timeout,
            "tcp_syn_timeout",
            defaults.tcp_syn_timeout,
        ),
        tcp_established_timeout: timeout(
            &raw.tcp_established_timeout,
            "tcp_established_timeout",
            defaults.tcp_established_timeout,
        ),
        tcp_closing_timeout: timeout(
            &raw.tcp_closing_timeout,
            "tcp_closing_timeout",
            defaults.tcp_closing_timeout,
        ),
        udp_timeout: timeout(&raw.udp_timeout, "udp_timeout", defaults.udp_timeout),
        tcp_syn_reclaim: match &raw.tcp_syn_reclaim_ms {
            None => defaults.tcp_syn_reclaim,
            Some(r) if (0..=MAX_SYN_RECLAIM_MS).contains(&r.val) => {
                Duration::from_millis(r.val as u64)
            }
            Some(r) => {
                d.error(
                    &r.span,
                    "global.conntrack.tcp_syn_reclaim_ms",
                    format!(
                        "tcp_syn_reclaim_ms {} is out of range 0..={MAX_SYN_RECLAIM_MS} (0 disables; default {})",
                        r.val,
                        defaults.tcp_syn_reclaim.as_millis()
                    ),
                );
                defaults.tcp_syn_reclaim
            }
        },
    }
}

fn syn_guard(raw: &RawSynGuard, d: &mut Diag) -> SynGuard {
    let defaults = SynGuard::default();
    let mut ranged = |v: &Option<Sp<i64>>, key: &str, max: i64, min: i64, default: i64| {
        let Some(v) = v else { return default };
        if (min..=max).contains(&v.val) {
            return v.val;
        }
        d.error(
            &v.span,
            &format!("global.syn_guard.{key}"),
            format!(
                "{key} {} is out of range {min}..={max} (default {default})",
                v.val
            ),
        );
        default
    };
    let rate = ranged(
        &raw.rate,
        "rate",
        MAX_SYN_GUARD_RATE,
        0,
        defaults.rate.into(),
    );
    let verified = ranged(
        &raw.verified_secs,
        "verified_secs",
        MAX_SYN_VERIFIED_SECS,
        1,
        defaults.verified.as_secs() as i64,
    );
    SynGuard {
        rate: rate as u32,
        verified: Duration::from_secs(verified as u64),
    }
}

/// Highest `syn_guard.rate` (SYNs per second per CPU): beyond any NIC queue.
const MAX_SYN_GUARD_RATE: i64 = 100_000_000;
/// Longest `syn_guard.verified_secs`: a day.
const MAX_SYN_VERIFIED_SECS: i64 = 86_400;

/// Longest `tcp_syn_reclaim_ms`: an hour (past that, `tcp_syn_timeout` frees ports anyway).
const MAX_SYN_RECLAIM_MS: i64 = 3_600_000;

/// A port that must be in `1..=65535`.
pub(super) fn port(raw: &Sp<i64>, field: &str, d: &mut Diag) -> Option<u16> {
    match u16::try_from(raw.val) {
        Ok(0) => {
            d.error(&raw.span, field, "port must not be 0");
            None
        }
        Ok(p) => Some(p),
        Err(_) => {
            d.error(
                &raw.span,
                field,
                format!("port {} is out of range 1..=65535", raw.val),
            );
            None
        }
    }
}
