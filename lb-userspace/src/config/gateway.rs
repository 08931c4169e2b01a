//! The L7 gateway's part of the config: a `mode = "http"` service's `[[service.route]]` and
//! `[[service.tls]]` entries, the `[[auth]]` providers routes name, and the `[gateway]` table.
//!
//! Unlike the rest of the config, these are read and judged in one pass (their shape is
//! nested deep and each value is only meaningful next to its neighbours); the checks across
//! sections (a route's services and auth provider exist) run in `check_references` once
//! every section is read. Certificates and keys are read and matched here, so a bad one is
//! a config error naming its file, line and field rather than a failure at the first
//! handshake.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::diag::Diag;
use super::diag::Span;
use super::doc::{Node, Sp, Table};
use super::{AccessLog, ApiKeyAuth, AuthKind, AuthProvider, GatewaySettings, HeaderMatch};
use super::{ApiKeyStore, OnRedisError, RedisSettings, SharedLimit};
use super::{JwtAuth, JwtKeys, LimitKey, PathMatch, Rewrite, Route, RouteLimit, RouteTarget};
use super::{Service, TlsCert};

/// JWT algorithms a provider may allow: asymmetric only (an HMAC key would be a shared
/// secret the gateway cannot keep apart from the issuer's public key).
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
const DEFAULT_JWT_ALGORITHMS: &[&str] = &["RS256", "ES256"];
/// JWKS refresh when `refresh_s` is not set.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Least time between two fetches triggered by unknown `kid`s.
pub const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// `exp` / `nbf` leeway when `leeway_s` is not set.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
pub const DEFAULT_TENANT_CLAIM: &str = "tenant";
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// A route as read, with the spans the cross-section checks report at.
pub(super) struct RawRoute {
    pub route: Route,
    /// Each target's service name.
    pub services: Vec<Sp<String>>,
    pub auth: Option<Sp<String>>,
    /// Where `shared = "redis"` is, if set (needs `[gateway.redis]`).
    pub redis: Option<Span>,
}

/// An `[[auth]]` entry as read.
pub(super) struct RawAuth {
    pub provider: Option<AuthProvider>,
    pub name: Option<Sp<String>>,
    /// Where `store = "redis"` is and its field path, if set (needs `[gateway.redis]`).
    pub redis: Option<(Span, String)>,
}

/// `[[service.route]]` entries of the service table `t`, and whether every entry was good
/// (if not, the problems were reported).
pub(super) fn routes(t: &Table, d: &mut Diag) -> (Vec<RawRoute>, bool) {
    let Some(node) = t.get("route") else {
        return (Vec::new(), true);
    };
    let Some(tables) = node.tables("an array of tables (`[[service.route]]`)", d) else {
        return (Vec::new(), false);
    };
    let n = tables.len();
    let routes: Vec<RawRoute> = tables
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| route(i, &r?, d))
        .collect();
    let complete = routes.len() == n;
    (routes, complete)
}

fn route(index: usize, t: &Table, d: &mut Diag) -> Option<RawRoute> {
    t.deny_unknown(
        &[
            "name",
            "hosts",
            "path",
            "path_prefix",
            "strip_prefix",
            "rewrite_prefix",
            "rewrite_path",
            "methods",
            "headers",
            "service",
            "backends",
            "http2",
            "auth",
            "scopes",
            "rate_limit",
            "timeout_ms",
            "per_try_timeout_ms",
            "retry",
            "fault",
        ],
        d,
    );
    let mut ok = true;
    let name = match t.get("name").and_then(|n| n.str(d)) {
        Some(n) if valid_name(&n.val) => n.val,
        Some(n) => {
            d.error(
                &n.span,
                &t.field("name"),
                format!(
                    "invalid route name `{}`: use 1 to 63 of A-Z a-z 0-9 _ . -",
                    n.val
                ),
            );
            ok = false;
            String::new()
        }
        None => format!("route{index}"),
    };
    let hosts = strings(t, "hosts", d)
        .into_iter()
        .filter_map(|h| match host_pattern(&h.val) {
            Ok(h) => Some(h),
            Err(why) => {
                d.error(
                    &h.span,
                    &t.field("hosts"),
                    format!("invalid host `{}`: {why}", h.val),
                );
                ok = false;
                None
            }
        })
        .collect();
    let exact = t.get("path").and_then(|n| n.str(d));
    let prefix = t.get("path_prefix").and_then(|n| n.str(d));
    let path = match (exact, prefix) {
        (Some(e), Some(_)) => {
            d.error(
                &e.span,
                &t.field("path"),
                "set `path` (exact) or `path_prefix`, not both",
            );
            ok = false;
            PathMatch::Prefix("/".into())
        }
        (Some(p), None) | (None, Some(p))
            if !p.val.starts_with('/') || p.val.contains(char::is_whitespace) =>
        {
            d.error(
                &p.span,
                &t.field("path"),
                format!(
                    "path `{}` must start with `/` and hold no whitespace",
                    p.val
                ),
            );
            ok = false;
            PathMatch::Prefix("/".into())
        }
        (Some(p), None) | (None, Some(p)) if let Err(why) = normal_path(&p.val) => {
            d.error(&p.span, &t.field("path"), format!("path `{}` {why}", p.val));
            ok = false;
            PathMatch::Prefix("/".into())
        }
        (Some(e), None) => PathMatch::Exact(e.val),
        (None, Some(p)) => PathMatch::Prefix(p.val),
        (None, None) => PathMatch::Prefix("/".into()),
    };
    let rewrite = rewrite(t, &path, d).unwrap_or_else(|| {
        ok = false;
        Rewrite::None
    });
    let methods = strings(t, "methods", d)
        .into_iter()
        .filter_map(|m| {
            let upper = m.val.to_ascii_uppercase();
            if METHODS.contains(&upper.as_str()) {
                Some(upper)
            } else {
                d.error(
                    &m.span,
                    &t.field("methods"),
                    format!("unknown HTTP method `{}`", m.val),
                );
                ok = false;
                None
            }
        })
        .collect();
    let headers = headers(t, d).unwrap_or_else(|| {
        ok = false;
        Vec::new()
    });
    let (targets, services) = targets(t, d).unwrap_or_else(|| {
        ok = false;
        (Vec::new(), Vec::new())
    });
    let http2 = t
        .get("http2")
        .and_then(|n| n.bool(d))
        .is_some_and(|b| b.val);
    let auth = t.get("auth").and_then(|n| n.str(d));
    let scopes: Vec<String> = strings(t, "scopes", d).into_iter().map(|s| s.val).collect();
    if !scopes.is_empty() && auth.is_none() {
        let span = t.get("scopes").map_or(t.span.clone(), |n| n.span);
        d.error(
            &span,
            &t.field("scopes"),
            "required scopes need an `auth` provider on the route",
        );
        ok = false;
    }
    let mut redis = None;
    let rate_limit = match t.get("rate_limit").and_then(|n| n.table(d)) {
        None => None,
        Some(rt) => match route_limit(&rt, d) {
            Some(l) => {
                if l.shared.is_some() {
                    redis = rt.get("shared").map(|n| n.span);
                }
                Some(l)
            }
            None => {
                ok = false;
                None
            }
        },
    };
    let resilience = super::resilience::route(t, d).unwrap_or_else(|| {
        ok = false;
        Default::default()
    });
    ok.then(|| RawRoute {
        route: Route {
            name,
            hosts,
            path,
            rewrite,
            methods,
            headers,
            targets,
            http2,
            auth: auth.as_ref().map(|a| a.val.clone()),
            scopes,
            rate_limit,
            resilience,
        },
        services,
        auth,
        redis,
    })
}

fn rewrite(t: &Table, path: &PathMatch, d: &mut Diag) -> Option<Rewrite> {
    let strip = t.get("strip_prefix").and_then(|n| n.bool(d));
    let prefix = t.get("rewrite_prefix").and_then(|n| n.str(d));
    let whole = t.get("rewrite_path").and_then(|n| n.str(d));
    let set = [
        strip.as_ref().filter(|s| s.val).map(|s| s.span.clone()),
        prefix.as_ref().map(|p| p.span.clone()),
        whole.as_ref().map(|p| p.span.clone()),
    ];
    if let Some(second) = set.iter().flatten().nth(1) {
        d.error(
            second,
            &t.field("rewrite_path"),
            "set at most one of `strip_prefix`, `rewrite_prefix` and `rewrite_path`",
        );
        return None;
    }
    for p in [&prefix, &whole].into_iter().flatten() {
        if !p.val.starts_with('/') || p.val.contains(char::is_whitespace) || p.val.contains('?') {
            d.error(
                &p.span,
                &t.field("rewrite_path"),
                format!(
                    "`{}` must start with `/` and hold no whitespace or `?`",
                    p.val
                ),
            );
            return None;
        }
    }
    let prefix_needed = strip
        .as_ref()
        .filter(|s| s.val)
        .map(|s| s.span.clone())
        .or(prefix.as_ref().map(|p| p.span.clone()));
    if let (Some(span), PathMatch::Exact(_)) = (prefix_needed, path) {
        d.error(
            &span,
            &t.field("strip_prefix"),
            "`strip_prefix` and `rewrite_prefix` need a `path_prefix`",
        );
        return None;
    }
    Some(if strip.is_some_and(|s| s.val) {
        Rewrite::StripPrefix
    } else if let Some(p) = prefix {
        Rewrite::ReplacePrefix(p.val)
    } else if let Some(p) = whole {
        Rewrite::ReplacePath(p.val)
    } else {
        Rewrite::None
    })
}

/// `headers = { "x-api-version" = "2", "x-canary" = "*" }`: exact value, `*` = present.
fn headers(t: &Table, d: &mut Diag) -> Option<Vec<(String, HeaderMatch)>> {
    let Some(ht) = t.get("headers").and_then(|n| n.table(d)) else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    let mut ok = true;
    for key in ht.keys() {
        let Some(v) = ht.get(&key).and_then(|n| n.str(d)) else {
            ok = false;
            continue;
        };
        let name = key.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            d.error(
                &v.span,
                &ht.field(&key),
                format!("invalid header name `{key}`"),
            );
            ok = false;
            continue;
        }
        if http::HeaderValue::from_str(&v.val).is_err() {
            d.error(
                &v.span,
                &ht.field(&key),
                "header value holds characters a header cannot",
            );
            ok = false;
            continue;
        }
        let m = if v.val == "*" {
            HeaderMatch::Present
        } else {
            HeaderMatch::Exact(v.val)
        };
        out.push((name, m));
    }
    ok.then_some(out)
}

/// `service = "users"` or `backends = [{ service = "users-v1", weight = 95 }, ...]`.
fn targets(t: &Table, d: &mut Diag) -> Option<(Vec<RouteTarget>, Vec<Sp<String>>)> {
    let one = t.get("service").and_then(|n| n.str(d));
    let many = t.get("backends");
    match (one, many) {
        (Some(s), None) => Some((
            vec![RouteTarget {
                service: s.val.clone(),
                weight: 1,
            }],
            vec![s],
        )),
        (Some(s), Some(_)) => {
            d.error(
                &s.span,
                &t.field("service"),
                "set `service` or `backends`, not both",
            );
            None
        }
        (None, None) => {
            d.error(
                &t.span,
                &t.field("service"),
                "missing `service` (or `backends`): where the route sends requests",
            );
            None
        }
        (None, Some(n)) => {
            let mut targets = Vec::new();
            let mut names = Vec::new();
            let mut ok = true;
            for bt in n.tables(
                "an array of tables (`backends = [{ service = ..., weight = ... }]`)",
                d,
            )? {
                let Some(bt) = bt else {
                    ok = false;
                    continue;
                };
                bt.deny_unknown(&["service", "weight"], d);
                let service = bt
                    .required("service", "a service name", d)
                    .and_then(|n| n.str(d));
                let weight = match bt.get("weight").and_then(|n| n.int(d)) {
                    None => Some(1),
                    Some(w) if (0..=super::MAX_WEIGHT as i64).contains(&w.val) => {
                        Some(w.val as u32)
                    }
                    Some(w) => {
                        d.error(
                            &w.span,
                            &bt.field("weight"),
                            format!("weight {} out of range 0..={}", w.val, super::MAX_WEIGHT),
                        );
                        None
                    }
                };
                match (service, weight) {
                    (Some(s), Some(w)) => {
                        targets.push(RouteTarget {
                            service: s.val.clone(),
                            weight: w,
                        });
                        names.push(s);
                    }
                    _ => ok = false,
                }
            }
            if ok && targets.iter().all(|t| t.weight == 0) {
                d.error(
                    &n.span,
                    &t.field("backends"),
                    "at least one backend set needs a weight > 0",
                );
                ok = false;
            }
            ok.then_some((targets, names))
        }
    }
}

fn route_limit(t: &Table, d: &mut Diag) -> Option<RouteLimit> {
    t.deny_unknown(
        &["rate", "burst", "key", "shared", "on_redis_error", "lease"],
        d,
    );
    let rate = t
        .required("rate", "requests per second", d)
        .and_then(|n| n.int(d));
    let rate = match rate {
        Some(r) if (1..=10_000_000).contains(&r.val) => r.val as u32,
        Some(r) => {
            d.error(
                &r.span,
                &t.field("rate"),
                format!(
                    "rate {} out of range 1..=10000000 requests per second",
                    r.val
                ),
            );
            return None;
        }
        None => return None,
    };
    let burst = match t.get("burst").and_then(|n| n.int(d)) {
        None => rate,
        Some(b) if (1..=100_000_000).contains(&b.val) => b.val as u32,
        Some(b) => {
            d.error(
                &b.span,
                &t.field("burst"),
                format!("burst {} out of range 1..=100000000", b.val),
            );
            return None;
        }
    };
    let key = match t.get("key").and_then(|n| n.str(d)) {
        None => LimitKey::ClientIp,
        Some(k) => match k.val.as_str() {
            "client_ip" => LimitKey::ClientIp,
            "identity" => LimitKey::Identity,
            "tenant" => LimitKey::Tenant,
            "route" => LimitKey::Route,
            other => {
                d.error(&k.span, &t.field("key"), format!("unknown limit key `{other}`; expected `client_ip`, `identity`, `tenant` or `route`"));
                return None;
            }
        },
    };
    let shared = match t.get("shared").and_then(|n| n.str(d)) {
        None => false,
        Some(v) => match v.val.as_str() {
            "local" => false,
            "redis" => true,
            other => {
                d.error(
                    &v.span,
                    &t.field("shared"),
                    format!("unknown `shared` value `{other}`; expected `local` or `redis`"),
                );
                return None;
            }
        },
    };
    let on_error = match t.get("on_redis_error").and_then(|n| n.str(d)) {
        None => OnRedisError::default(),
        Some(v) => {
            match v.val.as_str() {
                "local" => OnRedisError::Local,
                "open" => OnRedisError::Open,
                "closed" => OnRedisError::Closed,
                other => {
                    d.error(
                    &v.span,
                    &t.field("on_redis_error"),
                    format!("unknown `on_redis_error` `{other}`; expected `local`, `open` or `closed`"),
                );
                    return None;
                }
            }
        }
    };
    let lease = match t.get("lease").and_then(|n| n.int(d)) {
        None => super::default_lease(burst),
        Some(l) if (1..=i64::from(burst)).contains(&l.val) => l.val as u32,
        Some(l) => {
            d.error(
                &l.span,
                &t.field("lease"),
                format!("lease {} out of range 1..={burst} (the burst)", l.val),
            );
            return None;
        }
    };
    if !shared {
        for k in ["on_redis_error", "lease"] {
            if let Some(n) = t.get(k) {
                d.error(
                    &n.span,
                    &t.field(k),
                    format!("`{k}` only applies to `shared = \"redis\"`"),
                );
                return None;
            }
        }
    }
    Some(RouteLimit {
        rate,
        burst,
        key,
        shared: shared.then_some(SharedLimit { lease, on_error }),
    })
}

/// `[[service.tls]]`: certificates by SNI name. Each file is read and the key matched to the
/// certificate now.
pub(super) fn tls(t: &Table, d: &mut Diag) -> Vec<TlsCert> {
    let Some(node) = t.get("tls") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ct in node
        .tables("an array of tables (`[[service.tls]]`)", d)
        .unwrap_or_default()
        .into_iter()
        .flatten()
    {
        ct.deny_unknown(&["names", "cert_file", "key_file"], d);
        let names: Vec<String> = strings(&ct, "names", d)
            .into_iter()
            .filter_map(|n| match host_pattern(&n.val) {
                Ok(h) => Some(h),
                Err(why) => {
                    d.error(
                        &n.span,
                        &ct.field("names"),
                        format!("invalid name `{}`: {why}", n.val),
                    );
                    None
                }
            })
            .collect();
        let cert = ct
            .required("cert_file", "PEM certificate chain", d)
            .and_then(|n| n.str(d));
        let key = ct
            .required("key_file", "PEM private key", d)
            .and_then(|n| n.str(d));
        let (Some(cert), Some(key)) = (cert, key) else {
            continue;
        };
        if check_pair(&cert, &key, &ct, d) {
            out.push(TlsCert {
                names,
                cert_file: cert.val.into(),
                key_file: key.val.into(),
            });
        }
    }
    out
}

/// Reads the certificate chain and key and checks the key is the certificate's.
fn check_pair(cert: &Sp<String>, key: &Sp<String>, t: &Table, d: &mut Diag) -> bool {
    let certs: Result<Vec<CertificateDer>, _> = match CertificateDer::pem_file_iter(&cert.val) {
        Ok(it) => it.collect(),
        Err(e) => {
            d.error(
                &cert.span,
                &t.field("cert_file"),
                format!("cannot read `{}`: {e}", cert.val),
            );
            return false;
        }
    };
    let certs = match certs {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            d.error(
                &cert.span,
                &t.field("cert_file"),
                format!("`{}` holds no PEM certificate", cert.val),
            );
            return false;
        }
        Err(e) => {
            d.error(
                &cert.span,
                &t.field("cert_file"),
                format!("`{}` is not a PEM certificate chain: {e}", cert.val),
            );
            return false;
        }
    };
    let private = match PrivateKeyDer::from_pem_file(&key.val) {
        Ok(k) => k,
        Err(e) => {
            d.error(
                &key.span,
                &t.field("key_file"),
                format!("`{}` holds no usable PEM private key: {e}", key.val),
            );
            return false;
        }
    };
    let provider = rustls::crypto::ring::default_provider();
    let signing = match provider.key_provider.load_private_key(private) {
        Ok(k) => k,
        Err(e) => {
            d.error(
                &key.span,
                &t.field("key_file"),
                format!("`{}`: unsupported private key: {e}", key.val),
            );
            return false;
        }
    };
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    if let Err(e) = certified.keys_match() {
        d.error(
            &key.span,
            &t.field("key_file"),
            format!("`{}` is not the key of `{}`: {e}", key.val, cert.val),
        );
        return false;
    }
    true
}

/// `[[auth]]` entries.
pub(super) fn auth(root: &Table, d: &mut Diag) -> Vec<RawAuth> {
    let Some(node) = root.get("auth") else {
        return Vec::new();
    };
    let mut out: Vec<RawAuth> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in node
        .tables("an array of tables (`[[auth]]`)", d)
        .unwrap_or_default()
        .into_iter()
        .flatten()
    {
        let name = t
            .required("name", "a unique name routes refer to", d)
            .and_then(|n| n.str(d));
        if let Some(n) = &name {
            if !valid_name(&n.val) {
                d.error(
                    &n.span,
                    &t.field("name"),
                    format!(
                        "invalid auth name `{}`: use 1 to 63 of A-Z a-z 0-9 _ . -",
                        n.val
                    ),
                );
            } else if let Some(line) = seen.get(&n.val) {
                d.error(
                    &n.span,
                    &t.field("name"),
                    format!(
                        "duplicate auth name `{}` (first defined at line {line})",
                        n.val
                    ),
                );
            } else {
                seen.insert(n.val.clone(), d.line(&n.span));
            }
        }
        let kind = t
            .required("kind", "`jwt` or `api_key`", d)
            .and_then(|n| n.str(d));
        let provider = match kind.as_ref().map(|k| k.val.as_str()) {
            Some("jwt") => jwt(&t, d).map(AuthKind::Jwt),
            Some("api_key") => api_key(&t, d).map(AuthKind::ApiKey),
            Some(other) => {
                let k = kind.as_ref().expect("kind is set");
                d.error(
                    &k.span,
                    &t.field("kind"),
                    format!("unknown auth kind `{other}`; expected `jwt` or `api_key`"),
                );
                None
            }
            None => None,
        };
        let redis = match &provider {
            Some(AuthKind::ApiKey(ApiKeyAuth {
                store: ApiKeyStore::Redis { .. },
                ..
            })) => t.get("store").map(|n| (n.span, t.field("store"))),
            _ => None,
        };
        out.push(RawAuth {
            redis,
            provider: match (provider, &name) {
                (Some(kind), Some(n)) => Some(AuthProvider {
                    name: n.val.clone(),
                    kind,
                }),
                _ => None,
            },
            name,
        });
    }
    out
}

fn jwt(t: &Table, d: &mut Diag) -> Option<JwtAuth> {
    t.deny_unknown_in(
        &[
            "name",
            "kind",
            "jwks_url",
            "jwks_file",
            "issuer",
            "audiences",
            "algorithms",
            "leeway_s",
            "refresh_s",
            "min_refetch_s",
            "header",
            "tenant_claim",
            "claim_headers",
        ],
        " for a `jwt` provider",
        d,
    );
    let mut ok = true;
    let url = t.get("jwks_url").and_then(|n| n.str(d));
    let file = t.get("jwks_file").and_then(|n| n.str(d));
    let refresh = secs(t, "refresh_s", DEFAULT_JWKS_REFRESH, 1..=86_400, d, &mut ok);
    let min_refetch = secs(
        t,
        "min_refetch_s",
        DEFAULT_JWKS_MIN_REFETCH,
        0..=3_600,
        d,
        &mut ok,
    );
    let keys = match (url, file) {
        (Some(u), None) => {
            if !(u.val.starts_with("http://") || u.val.starts_with("https://"))
                || reqwest::Url::parse(&u.val).is_err()
            {
                d.error(
                    &u.span,
                    &t.field("jwks_url"),
                    format!("invalid URL `{}`: expected http:// or https://", u.val),
                );
                ok = false;
            }
            JwtKeys::Url {
                url: u.val,
                refresh,
                min_refetch,
            }
        }
        (None, Some(f)) => {
            if !f.val.starts_with('/') {
                d.error(&f.span, &t.field("jwks_file"), "the path must be absolute");
                ok = false;
            }
            JwtKeys::File(f.val.into())
        }
        (Some(u), Some(_)) => {
            d.error(
                &u.span,
                &t.field("jwks_url"),
                "set `jwks_url` or `jwks_file`, not both",
            );
            return None;
        }
        (None, None) => {
            d.error(
                &t.span,
                &t.field("jwks_url"),
                "missing `jwks_url` or `jwks_file`: where the signing keys come from",
            );
            return None;
        }
    };
    let algorithms: Vec<String> = match t.get("algorithms") {
        None => DEFAULT_JWT_ALGORITHMS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(_) => strings(t, "algorithms", d)
            .into_iter()
            .filter_map(|a| {
                if JWT_ALGORITHMS.contains(&a.val.as_str()) {
                    Some(a.val)
                } else {
                    d.error(
                        &a.span,
                        &t.field("algorithms"),
                        format!(
                            "algorithm `{}` not allowed; expected some of {}",
                            a.val,
                            JWT_ALGORITHMS.join(", ")
                        ),
                    );
                    ok = false;
                    None
                }
            })
            .collect(),
    };
    if algorithms.is_empty() && ok {
        let span = t.get("algorithms").map_or(t.span.clone(), |n| n.span);
        d.error(
            &span,
            &t.field("algorithms"),
            "allow at least one algorithm",
        );
        ok = false;
    }
    let leeway = secs(t, "leeway_s", DEFAULT_JWT_LEEWAY, 0..=3_600, d, &mut ok);
    let header = match t.get("header").and_then(|n| n.str(d)) {
        None => None,
        Some(h) => match http::HeaderName::from_bytes(h.val.as_bytes()) {
            Ok(_) => Some(h.val.to_ascii_lowercase()),
            Err(_) => {
                d.error(
                    &h.span,
                    &t.field("header"),
                    format!("invalid header name `{}`", h.val),
                );
                ok = false;
                None
            }
        },
    };
    let claim_headers = match t.get("claim_headers").and_then(|n| n.table(d)) {
        None => Vec::new(),
        Some(ct) => ct
            .keys()
            .into_iter()
            .filter_map(|claim| {
                let h = ct.get(&claim)?.str(d)?;
                if http::HeaderName::from_bytes(h.val.as_bytes()).is_err() {
                    d.error(
                        &h.span,
                        &ct.field(&claim),
                        format!("invalid header name `{}`", h.val),
                    );
                    ok = false;
                    return None;
                }
                Some((claim, h.val.to_ascii_lowercase()))
            })
            .collect(),
    };
    let jwt = JwtAuth {
        keys,
        issuer: t.get("issuer").and_then(|n| n.str(d)).map(|s| s.val),
        audiences: strings(t, "audiences", d)
            .into_iter()
            .map(|s| s.val)
            .collect(),
        algorithms,
        leeway,
        header,
        tenant_claim: t
            .get("tenant_claim")
            .and_then(|n| n.str(d))
            .map_or(DEFAULT_TENANT_CLAIM.into(), |s| s.val),
        claim_headers,
    };
    ok.then_some(jwt)
}

fn api_key(t: &Table, d: &mut Diag) -> Option<ApiKeyAuth> {
    t.deny_unknown_in(
        &["name", "kind", "file", "header", "store", "cache_ttl_ms"],
        " for an `api_key` provider",
        d,
    );
    let redis = match t.get("store").and_then(|n| n.str(d)) {
        None => false,
        Some(v) if v.val == "file" => false,
        Some(v) if v.val == "redis" => true,
        Some(v) => {
            d.error(
                &v.span,
                &t.field("store"),
                format!("unknown key store `{}`; expected `file` or `redis`", v.val),
            );
            return None;
        }
    };
    let store = if redis {
        if let Some(f) = t.get("file") {
            d.error(
                &f.span,
                &t.field("file"),
                "`store = \"redis\"` keeps the keys in Redis: drop `file`",
            );
            return None;
        }
        let cache_ttl = match t.get("cache_ttl_ms").and_then(|n| n.int(d)) {
            None => super::DEFAULT_API_KEY_CACHE_TTL,
            Some(v) if (100..=3_600_000).contains(&v.val) => Duration::from_millis(v.val as u64),
            Some(v) => {
                d.error(
                    &v.span,
                    &t.field("cache_ttl_ms"),
                    format!("cache_ttl_ms {} out of range 100..=3600000", v.val),
                );
                return None;
            }
        };
        ApiKeyStore::Redis { cache_ttl }
    } else {
        if let Some(c) = t.get("cache_ttl_ms") {
            d.error(
                &c.span,
                &t.field("cache_ttl_ms"),
                "`cache_ttl_ms` only applies to `store = \"redis\"`",
            );
            return None;
        }
        let file = t
            .required("file", "the key file (hashed keys)", d)
            .and_then(|n| n.str(d))?;
        if !file.val.starts_with('/') {
            d.error(&file.span, &t.field("file"), "the path must be absolute");
            return None;
        }
        ApiKeyStore::File(PathBuf::from(file.val))
    };
    let header = match t.get("header").and_then(|n| n.str(d)) {
        None => DEFAULT_API_KEY_HEADER.to_owned(),
        Some(h) if http::HeaderName::from_bytes(h.val.as_bytes()).is_ok() => {
            h.val.to_ascii_lowercase()
        }
        Some(h) => {
            d.error(
                &h.span,
                &t.field("header"),
                format!("invalid header name `{}`", h.val),
            );
            return None;
        }
    };
    Some(ApiKeyAuth { store, header })
}

/// `[gateway]`: agent-wide gateway settings.
pub(super) fn settings(root: &Table, d: &mut Diag) -> GatewaySettings {
    let mut s = GatewaySettings::default();
    let Some(t) = root.get("gateway").and_then(|n| n.table(d)) else {
        return s;
    };
    let known: Vec<&str> = ["access_log", "access_log_file", "threads", "redis"]
        .into_iter()
        .chain(super::resilience::GATEWAY_KEYS.iter().copied())
        .collect();
    t.deny_unknown(&known, d);
    s.resilience = super::resilience::settings(&t, d);
    if let Some(a) = t.get("access_log").and_then(|n| n.str(d)) {
        match a.val.as_str() {
            "off" => s.access_log = AccessLog::Off,
            "text" => s.access_log = AccessLog::Text,
            "json" => s.access_log = AccessLog::Json,
            other => d.error(
                &a.span,
                &t.field("access_log"),
                format!("unknown access_log `{other}`; expected `off`, `text` or `json`"),
            ),
        }
    }
    if let Some(f) = t.get("access_log_file").and_then(|n| n.str(d)) {
        if f.val.starts_with('/') {
            s.access_log_file = Some(f.val.into());
        } else {
            d.error(
                &f.span,
                &t.field("access_log_file"),
                "the path must be absolute",
            );
        }
    }
    if let Some(n) = t.get("threads").and_then(|n| n.int(d)) {
        if (1..=256).contains(&n.val) {
            s.threads = n.val as usize;
        } else {
            d.error(
                &n.span,
                &t.field("threads"),
                format!("threads {} out of range 1..=256", n.val),
            );
        }
    }
    if let Some(rt) = t.get("redis").and_then(|n| n.table(d)) {
        s.redis = redis(&rt, d);
    }
    s
}

/// `[gateway.redis]`.
fn redis(t: &Table, d: &mut Diag) -> Option<RedisSettings> {
    t.deny_unknown(&["url", "timeout_ms", "connect_timeout_ms", "prefix"], d);
    let url = t
        .required("url", "`redis://host:port` or `unix:///path`", d)
        .and_then(|n| n.str(d))?;
    let scheme_ok = url.val.starts_with("redis://") || url.val.starts_with("unix:///");
    if !scheme_ok || redis::Client::open(url.val.as_str()).is_err() {
        d.error(
            &url.span,
            &t.field("url"),
            format!(
                "invalid Redis URL `{}`: expected redis://host:port[/db] or unix:///path",
                url.val
            ),
        );
        return None;
    }
    let mut ok = true;
    let mut ms = |key: &str, default: Duration, max: i64| match t.get(key).and_then(|n| n.int(d)) {
        None => default,
        Some(v) if (1..=max).contains(&v.val) => Duration::from_millis(v.val as u64),
        Some(v) => {
            d.error(
                &v.span,
                &t.field(key),
                format!("{key} {} out of range 1..={max} milliseconds", v.val),
            );
            ok = false;
            default
        }
    };
    let timeout = ms("timeout_ms", super::DEFAULT_REDIS_TIMEOUT, 1_000);
    let connect_timeout = ms(
        "connect_timeout_ms",
        super::DEFAULT_REDIS_CONNECT_TIMEOUT,
        10_000,
    );
    let prefix = match t.get("prefix").and_then(|n| n.str(d)) {
        None => super::DEFAULT_REDIS_PREFIX.to_owned(),
        Some(p) if p.val.len() <= 64 && !p.val.contains(char::is_whitespace) => p.val,
        Some(p) => {
            d.error(
                &p.span,
                &t.field("prefix"),
                "a prefix is at most 64 bytes without whitespace",
            );
            ok = false;
            String::new()
        }
    };
    ok.then_some(RedisSettings {
        url: url.val,
        timeout,
        connect_timeout,
        prefix,
    })
}

/// The rules across sections: a route's services exist and are plain TCP services (not
/// another gateway), its auth provider exists; an `http` service has routes, others none.
pub(super) fn check_references(
    services: &[Service],
    routes: &[(Sp<String>, String, &Vec<RawRoute>)],
    auth: &[RawAuth],
    redis: bool,
    d: &mut Diag,
) {
    if !redis {
        for a in auth {
            if let Some((span, field)) = &a.redis {
                d.error(
                    span,
                    field,
                    "`store = \"redis\"` needs a `[gateway.redis]` table",
                );
            }
        }
    }
    let by_name: HashMap<&str, &Service> = services.iter().map(|s| (s.name.as_str(), s)).collect();
    let auth_names: Vec<&str> = auth
        .iter()
        .filter_map(|a| a.name.as_ref().map(|n| n.val.as_str()))
        .collect();
    for (_, path, rs) in routes {
        let mut names: HashMap<&str, ()> = HashMap::new();
        for (i, r) in rs.iter().enumerate() {
            if names.insert(r.route.name.as_str(), ()).is_some() {
                let span = r.services.first().map_or(0..0, |s| s.span.clone());
                d.error(
                    &span,
                    &format!("{path}.route[{i}].name"),
                    format!("duplicate route name `{}`", r.route.name),
                );
            }
            let field = format!("{path}.route[{i}]");
            if let (Some(span), false) = (&r.redis, redis) {
                d.error(
                    span,
                    &format!("{field}.rate_limit.shared"),
                    "`shared = \"redis\"` needs a `[gateway.redis]` table",
                );
            }
            for s in &r.services {
                match by_name.get(s.val.as_str()) {
                    None => d.error(&s.span, &format!("{field}.service"), format!("no service named `{}`", s.val)),
                    Some(svc) if svc.http.is_some() => d.error(&s.span, &format!("{field}.service"), format!("`{}` is a gateway itself (mode = \"http\"); route to its upstream services", s.val)),
                    Some(svc) if svc.protocol != super::Protocol::Tcp => d.error(&s.span, &format!("{field}.service"), format!("`{}` is not a TCP service", s.val)),
                    Some(_) => {}
                }
            }
            if let Some(a) = &r.auth
                && !auth_names.contains(&a.val.as_str())
            {
                d.error(
                    &a.span,
                    &format!("{field}.auth"),
                    format!("no `[[auth]]` provider named `{}`", a.val),
                );
            }
        }
    }
}

/// Request paths are normalized before matching (no `.`/`..` segments, no `//`, no
/// escapes), so a configured path that is not in that form could never match.
fn normal_path(p: &str) -> Result<(), &'static str> {
    let body = p.strip_prefix('/').unwrap_or(p);
    if body.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("holds a `.` or `..` segment: write the path it stands for");
    }
    if p.contains("//") {
        return Err("holds `//`: write it with single slashes");
    }
    if p.bytes()
        .any(|b| b == b'%' || b == b'\\' || b == b'#' || !b.is_ascii_graphic())
    {
        return Err("holds `%`, `\\`, `#` or a character that is not visible ASCII");
    }
    Ok(())
}

/// `[A-Za-z0-9_.-]{1,63}`.
fn valid_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A host name, or `*.` followed by one, lower-cased.
fn host_pattern(h: &str) -> Result<String, &'static str> {
    let lower = h.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("expected a DNS name or `*.` and a DNS name");
    }
    Ok(lower)
}

/// The strings of an optional inline array `key` (elements of another type are reported).
fn strings(t: &Table, key: &str, d: &mut Diag) -> Vec<Sp<String>> {
    t.get(key)
        .and_then(|n| n.array(d))
        .unwrap_or_default()
        .iter()
        .filter_map(|e: &Node| e.str(d))
        .collect()
}

fn secs(
    t: &Table,
    key: &str,
    default: Duration,
    range: std::ops::RangeInclusive<i64>,
    d: &mut Diag,
    ok: &mut bool,
) -> Duration {
    match t.get(key).and_then(|n| n.int(d)) {
        None => default,
        Some(v) if range.contains(&v.val) => Duration::from_secs(v.val as u64),
        Some(v) => {
            d.error(
                &v.span,
                &t.field(key),
                format!(
                    "{key} {} out of range {}..={} seconds",
                    v.val,
                    range.start(),
                    range.end()
                ),
            );
            *ok = false;
            default
        }
    }
}
