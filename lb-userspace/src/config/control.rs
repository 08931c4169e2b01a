//! Checks the control-plane settings: `[global] pin_path`, `[admin]` and `[registry]`, and the
//! path and URL rules the `[[source]]` checks (`sources`) share.
//!
//! Files named here (token, state, CA) are not opened: the agent reads them when it starts,
//! and a file that appears later should not make the config invalid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::diag::Diag;
use super::doc::Sp;
use super::raw::{RawAdmin, RawRegistry};
use super::{Admin, AdminListen, BuiltinRegistry, DEFAULT_PIN_PATH};

/// Longest registry TTL accepted, in seconds (a year): far beyond any heartbeat, and small
/// enough that deadlines computed from it never overflow.
const MAX_TTL_SECS: i64 = 365 * 86_400;

/// Longest unix socket path: `sun_path` is 108 bytes with the terminating NUL.
const MAX_UNIX_PATH: usize = 107;

/// `[global] pin_path`: absent means the default, `""` means no pinning.
pub(super) fn pin_path(raw: Option<&Sp<String>>, d: &mut Diag) -> Option<PathBuf> {
    let default = || Some(PathBuf::from(DEFAULT_PIN_PATH));
    match raw {
        None => default(),
        Some(p) if p.val.is_empty() => None,
        Some(p) => absolute_path(p, "global.pin_path", d).map_or_else(default, Some),
    }
}

/// A path that must be absolute: the agent's working directory is not the config's, so a
/// relative path would mean something different depending on how the agent was started.
pub(super) fn absolute_path(raw: &Sp<String>, field: &str, d: &mut Diag) -> Option<PathBuf> {
    let p = &raw.val;
    let problem = if p.is_empty() {
        "must not be empty".to_owned()
    } else if !p.starts_with('/') {
        format!(
            "`{p}` is not an absolute path: write it from `/` (paths are not resolved against \
             the config's directory)"
        )
    } else if p.contains('\0') {
        format!("`{}` contains a NUL byte", p.escape_debug())
    } else {
        return Some(PathBuf::from(p));
    };
    d.error(&raw.span, field, problem);
    None
}

pub(super) fn admin(raw: Option<&RawAdmin>, d: &mut Diag) -> Admin {
    let Some(raw) = raw else {
        return Admin::default();
    };
    let allow_remote = raw.allow_remote.as_ref().is_some_and(|a| a.val);
    Admin {
        listen: raw
            .listen
            .as_ref()
            .and_then(|l| listen(l, allow_remote, d))
            .unwrap_or_else(|| Admin::default().listen),
        token_file: raw
            .token_file
            .as_ref()
            .and_then(|t| absolute_path(t, "admin.token_file", d)),
    }
}

/// `IP:PORT` (loopback unless `allow_remote`) or `unix:/absolute/path`.
fn listen(raw: &Sp<String>, allow_remote: bool, d: &mut Diag) -> Option<AdminListen> {
    const FIELD: &str = "admin.listen";
    if let Some(path) = raw.val.strip_prefix("unix:") {
        let path = Sp {
            val: path.to_owned(),
            span: raw.span.clone(),
        };
        let path = absolute_path(&path, FIELD, d)?;
        let len = path.as_os_str().len();
        if len > MAX_UNIX_PATH {
            d.error(
                &raw.span,
                FIELD,
                format!(
                    "unix socket path is {len} bytes; the kernel allows at most {MAX_UNIX_PATH}"
                ),
            );
            return None;
        }
        return Some(AdminListen::Unix(path));
    }
    let Ok(addr) = raw.val.parse::<SocketAddr>() else {
        d.error(
            &raw.span,
            FIELD,
            format!(
                "invalid listen address `{}`: write IP:PORT (`127.0.0.1:9180`, `[::1]:9180`) or \
                 `unix:/absolute/path`",
                raw.val
            ),
        );
        return None;
    };
    if addr.port() == 0 {
        d.error(&raw.span, FIELD, "port must not be 0");
        return None;
    }
    if !addr.ip().to_canonical().is_loopback() && !allow_remote {
        d.error(
            &raw.span,
            FIELD,
            format!(
                "{addr} is not a loopback address: the admin API changes the registry and shows \
                 the topology, so listening beyond this host needs `allow_remote = true` in \
                 [admin] (with a `token_file`)"
            ),
        );
        return None;
    }
    Some(AdminListen::Tcp(addr))
}

pub(super) fn registry(raw: Option<&RawRegistry>, d: &mut Diag) -> BuiltinRegistry {
    let defaults = BuiltinRegistry::default();
    let Some(raw) = raw else {
        return defaults;
    };
    let default_ttl = raw
        .default_ttl
        .as_ref()
        .and_then(|t| ttl(t, "default_ttl", d));
    let max_ttl = raw.max_ttl.as_ref().and_then(|t| ttl(t, "max_ttl", d));
    let valid_or_default = |ttl: Option<Duration>, raw: &Option<Sp<i64>>, default| match raw {
        None => Some(default),
        Some(_) => ttl,
    };
    // Compared only when both are known, so a bad value is not reported twice.
    if let (Some(def), Some(max)) = (
        valid_or_default(default_ttl, &raw.default_ttl, defaults.default_ttl),
        valid_or_default(max_ttl, &raw.max_ttl, defaults.max_ttl),
    ) && def > max
    {
        let (span, field) = match (&raw.default_ttl, &raw.max_ttl) {
            (Some(t), _) => (&t.span, "registry.default_ttl"),
            (None, Some(t)) => (&t.span, "registry.max_ttl"),
            (None, None) => unreachable!("the defaults are in order"),
        };
        d.error(
            span,
            field,
            format!(
                "default_ttl {} s is above max_ttl {} s{}: a registration without a TTL would \
                 get more than the longest allowed",
                def.as_secs(),
                max.as_secs(),
                if raw.max_ttl.is_none() {
                    " (the default)"
                } else {
                    ""
                },
            ),
        );
    }
    BuiltinRegistry {
        state_file: match &raw.state_file {
            None => defaults.state_file.clone(),
            Some(s) if s.val.is_empty() => None,
            Some(s) => absolute_path(s, "registry.state_file", d),
        },
        default_ttl: default_ttl.unwrap_or(defaults.default_ttl),
        max_ttl: max_ttl.unwrap_or(defaults.max_ttl),
    }
}

/// Whole seconds in `1..=MAX_TTL_SECS`.
fn ttl(raw: &Sp<i64>, key: &str, d: &mut Diag) -> Option<Duration> {
    if (1..=MAX_TTL_SECS).contains(&raw.val) {
        return Some(Duration::from_secs(raw.val as u64));
    }
    d.error(
        &raw.span,
        &format!("registry.{key}"),
        format!(
            "{key} {} is out of range 1..={MAX_TTL_SECS} (seconds)",
            raw.val
        ),
    );
    None
}

/// An `http://` or `https://` URL to a server's root, as `parse_http_url` reads it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct HttpUrl {
    pub https: bool,
    pub port: Option<u16>,
    /// `scheme://host[:port]`, without a trailing `/`, so clients append their paths to it.
    pub normalized: String,
}

/// Reads `scheme://host[:port][/]`: the scheme `http` or `https`, the host a name, an IPv4
/// address or a bracketed IPv6 address. Paths, queries and credentials are refused: every
/// source talks to the root of its server, and secrets belong in token files.
pub(super) fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(format!("`{url}` is not an `http://` or `https://` URL"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(format!(
            "`{url}` holds credentials: put them in a token file instead"
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "`{url}` has a path, query or fragment: write only scheme://host:port"
        ));
    }
    let (host_ok, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return Err(format!("`{url}` has an unclosed `[`"));
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("`{url}` has text after `]`"))?,
            ),
        };
        (ip.parse::<std::net::Ipv6Addr>().is_ok(), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let name_chars = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        (!host.is_empty() && name_chars, port)
    };
    if !host_ok {
        return Err(format!(
            "`{url}` has no valid host (a name, an IPv4 address or an IPv6 address in `[ ]`)"
        ));
    }
    let port = match port {
        None => None,
        // `parse` alone would take "+80".
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("`{url}` has an invalid port `{p}` (1-65535)")),
        },
    };
    Ok(HttpUrl {
        https,
        port,
        normalized: format!("{}://{authority}", if https { "https" } else { "http" }),
    })
}
