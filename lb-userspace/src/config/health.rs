//! Checks a service's `[service.health]` table.
//!
//! `path`, `host` and `expect_status` only mean something to HTTP(S) checks, `ca_file` and
//! `server_name` only to HTTPS; written where they do not apply they are errors, since the
//! check would silently not use them.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::diag::Diag;
use super::doc::Sp;
use super::raw::RawHealth;
use super::validate::port;
use super::{HealthCheck, HealthKind, HealthTls};

/// `interval_ms` bounds: checks more often than every 10 ms only load backends, and one an
/// hour is the least that still notices anything.
const INTERVAL_MS: std::ops::RangeInclusive<i64> = 10..=3_600_000;
/// `rise` and `fall` bounds.
const COUNT: std::ops::RangeInclusive<i64> = 1..=100;
/// `expect_status` bounds: the HTTP status codes.
const STATUS: std::ops::RangeInclusive<i64> = 100..=599;
const DEFAULT_HTTP_PATH: &str = "/";
const DEFAULT_EXPECT_STATUS: u16 = 200;

pub(super) fn health(raw: &RawHealth, d: &mut Diag) -> HealthCheck {
    let defaults = HealthCheck::default();
    let field = |key: &str| format!("{}.{key}", raw.path);
    // `None`: the kind was wrong (reported); then the kind-specific fields are not judged.
    let kind_name = match &raw.kind {
        None => Some("tcp"),
        Some(k) if ["tcp", "http", "https"].contains(&k.val.as_str()) => Some(k.val.as_str()),
        Some(k) => {
            d.error(
                &k.span,
                &field("kind"),
                format!(
                    "unknown health check kind `{}`; expected `tcp`, `http` or `https`",
                    k.val
                ),
            );
            None
        }
    };
    let interval_ms = raw.interval_ms.as_ref().and_then(|i| {
        in_range(i, &field("interval_ms"), "interval_ms", INTERVAL_MS, d).then_some(i.val as u64)
    });
    let interval = interval_ms.map_or(defaults.interval, Duration::from_millis);
    let interval_known = raw.interval_ms.is_none() || interval_ms.is_some();
    let timeout = match &raw.timeout_ms {
        // The default, but never more than the interval it must fit in.
        None => defaults.timeout.min(interval),
        Some(t) => timeout(t, &field("timeout_ms"), interval, interval_known, d)
            .unwrap_or(defaults.timeout),
    };
    let mut count = |raw: &Option<Sp<i64>>, key: &str, default: u32| match raw {
        Some(c) if in_range(c, &field(key), key, COUNT, d) => c.val as u32,
        _ => default,
    };
    let rise = count(&raw.rise, "rise", defaults.rise);
    let fall = count(&raw.fall, "fall", defaults.fall);
    let port = raw.port.as_ref().and_then(|p| port(p, &field("port"), d));
    let kind = match kind_name {
        Some("http") => {
            not_applicable(raw, &["ca_file", "server_name"], &field, d);
            http_kind(raw, None, &field, d)
        }
        Some("https") => {
            let tls = tls(raw, &field, d);
            http_kind(raw, Some(tls), &field, d)
        }
        Some(_) => {
            not_applicable(
                raw,
                &["path", "host", "expect_status", "ca_file", "server_name"],
                &field,
                d,
            );
            HealthKind::Tcp
        }
        None => HealthKind::Tcp,
    };
    HealthCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
        port,
    }
}

/// Reports `raw` outside `range` ("{key} 0 is out of range 1..=100 ...").
fn in_range(
    raw: &Sp<i64>,
    field: &str,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
    d: &mut Diag,
) -> bool {
    let ok = range.contains(&raw.val);
    if !ok {
        d.error(
            &raw.span,
            field,
            format!(
                "{key} {} is out of range {}..={}",
                raw.val,
                range.start(),
                range.end()
            ),
        );
    }
    ok
}

/// At least 1 ms and at most the interval (compared only when the interval is valid).
fn timeout(
    raw: &Sp<i64>,
    field: &str,
    interval: Duration,
    interval_known: bool,
    d: &mut Diag,
) -> Option<Duration> {
    if raw.val < 1 {
        d.error(
            &raw.span,
            field,
            format!("timeout_ms must be at least 1 (found {})", raw.val),
        );
        return None;
    }
    let timeout = Duration::from_millis(raw.val as u64);
    if interval_known && timeout > interval {
        d.error(
            &raw.span,
            field,
            format!(
                "timeout_ms {} is above interval_ms {}: a check must end before the next one \
                 starts",
                raw.val,
                interval.as_millis()
            ),
        );
        return None;
    }
    Some(timeout)
}

/// `ca_file` must hold at least one PEM certificate (read now: a bad file is a config error,
/// not a check that fails forever); `server_name` must be a DNS name or an IP address.
fn tls(raw: &RawHealth, field: &dyn Fn(&str) -> String, d: &mut Diag) -> HealthTls {
    let ca_file = raw.ca_file.as_ref().map(|c| {
        if let Err(why) = read_ca_file(std::path::Path::new(&c.val)) {
            d.error(&c.span, &field("ca_file"), why);
        }
        std::path::PathBuf::from(&c.val)
    });
    let server_name = raw.server_name.as_ref().map(|n| {
        if rustls_pki_types::ServerName::try_from(n.val.as_str()).is_err() {
            d.error(
                &n.span,
                &field("server_name"),
                format!(
                    "server_name `{}` is neither a DNS name nor an IP address",
                    n.val.escape_debug()
                ),
            );
        }
        n.val.clone()
    });
    HealthTls {
        ca_file,
        server_name,
    }
}

fn http_kind(
    raw: &RawHealth,
    tls: Option<HealthTls>,
    field: &dyn Fn(&str) -> String,
    d: &mut Diag,
) -> HealthKind {
    let path = match &raw.http_path {
        None => DEFAULT_HTTP_PATH.to_owned(),
        Some(p) => {
            if !p.val.starts_with('/') {
                d.error(
                    &p.span,
                    &field("path"),
                    format!("path `{}` must start with `/`", p.val),
                );
            } else if has_space_or_control(&p.val) {
                d.error(
                    &p.span,
                    &field("path"),
                    format!(
                        "path `{}` contains whitespace or control characters (percent-encode \
                         them)",
                        p.val.escape_debug()
                    ),
                );
            }
            p.val.clone()
        }
    };
    let host = raw.host.as_ref().map(|h| {
        if h.val.is_empty() || has_space_or_control(&h.val) {
            d.error(
                &h.span,
                &field("host"),
                format!(
                    "invalid host `{}`: it must be non-empty, without whitespace or control \
                     characters (omit it to send the backend's address)",
                    h.val.escape_debug()
                ),
            );
        }
        h.val.clone()
    });
    let expect_status = match &raw.expect_status {
        Some(s) if in_range(s, &field("expect_status"), "expect_status", STATUS, d) => s.val as u16,
        _ => DEFAULT_EXPECT_STATUS,
    };
    HealthKind::Http {
        path,
        host,
        expect_status,
        tls,
    }
}

/// They would go into the request line and headers as written.
fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Reports each of `keys` that is set although this check's kind does not use it.
fn not_applicable(raw: &RawHealth, keys: &[&str], field: &dyn Fn(&str) -> String, d: &mut Diag) {
    let kind = raw
        .kind
        .as_ref()
        .map_or("`tcp` (the default)".to_owned(), |k| format!("`{}`", k.val));
    let spans = [
        ("path", raw.http_path.as_ref().map(|v| &v.span), "http"),
        ("host", raw.host.as_ref().map(|v| &v.span), "http"),
        (
            "expect_status",
            raw.expect_status.as_ref().map(|v| &v.span),
            "http",
        ),
        ("ca_file", raw.ca_file.as_ref().map(|v| &v.span), "https"),
        (
            "server_name",
            raw.server_name.as_ref().map(|v| &v.span),
            "https",
        ),
    ];
    for (key, span, needs) in spans {
        if let (true, Some(span)) = (keys.contains(&key), span) {
            let what = if needs == "https" { "HTTPS" } else { "HTTP" };
            d.error(
                span,
                &field(key),
                format!(
                    "`{key}` applies only to {what} checks, but this check's kind is {kind}: \
                     set `kind = \"{needs}\"` or remove `{key}`"
                ),
            );
        }
    }
}

/// The certificates in a PEM file; an error text naming the file if there are none. Read at
/// config load (a bad file is a config error) and again by each HTTPS check's connector.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}
