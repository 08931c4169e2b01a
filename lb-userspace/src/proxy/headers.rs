//! Header rules both directions: hop-by-hop removal, forwarding headers (`X-Forwarded-*`,
//! RFC 7239 `Forwarded`), `X-Request-ID`, W3C `traceparent`.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::pipeline::ConnInfo;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A client-supplied request id longer than this is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Is this HTTP/1.1 request a WebSocket handshake (`GET`, `Connection: upgrade`,
/// `Upgrade: websocket`)? Only WebSocket is passed through: an `h2c` (or other) upgrade would
/// turn the connection into a tunnel whose later requests skip the pipeline.
pub fn wants_websocket(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::GET
        && connection_lists(headers, "upgrade")
        && headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).iter().any(|t| t == token)
}

/// Remove hop-by-hop headers: `Connection` and the names it lists, `Keep-Alive`,
/// `Proxy-Connection`, `TE` (unless exactly `trailers`, which gRPC needs end to end),
/// `Transfer-Encoding` (each hop frames its own body), `Upgrade` (unless `upgrading`, where
/// `Connection: upgrade` + `Upgrade` are kept so the next hop sees the handshake).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    for token in connection_tokens(headers) {
        if upgrading && token == "upgrade" {
            continue;
        }
        // Never let a client delete end-to-end headers the proxy itself relies on.
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            && !matches!(name, header::HOST | header::CONTENT_LENGTH)
        {
            headers.remove(name);
        }
    }
    headers.remove(header::CONNECTION);
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Add this hop to `X-Forwarded-For` and `Forwarded` (appending to the client's), and set
/// `X-Forwarded-Proto` and `X-Forwarded-Host`. `host` is the request's Host (header or, for
/// HTTP/2, `:authority`).
pub fn add_forwarding(headers: &mut HeaderMap, conn: &ConnInfo, host: Option<&str>) {
    let ip = conn.peer.ip().to_canonical();
    let proto = if conn.tls { "https" } else { "http" };

    append_list(headers, X_FORWARDED_FOR, &ip.to_string());

    let for_node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut elem = format!("for={for_node};proto={proto}");
    if let Some(h) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
        elem.push_str(";host=");
        elem.push_str(&quote_if_needed(h));
    }
    append_list(headers, header::FORWARDED, &elem);

    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(v) => {
            headers.insert(X_FORWARDED_HOST, v);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Join all existing values of `name` and `value` into one comma-separated line.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut parts: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    parts.push(value.to_owned());
    match HeaderValue::from_str(&parts.join(", ")) {
        Ok(v) => {
            headers.insert(name, v);
        }
        // A client value that cannot be re-joined: start over with ours.
        Err(_) => {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
    }
}

/// RFC 7230 token characters; anything else (`:` of host:port, `[`) needs a quoted-string.
fn quote_if_needed(v: &str) -> String {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !v.is_empty() && v.bytes().all(tchar) {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\"))
    }
}

/// Is a client-supplied request id acceptable as is?
pub fn request_id_sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_REQUEST_ID_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-:+/=".contains(c))
}

/// Keep a sane `X-Request-ID` or set a fresh random 128-bit hex one; returns the value in use.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(X_REQUEST_ID).filter(|v| request_id_sane(v)) {
        let v = v.clone();
        // Several values: keep exactly the first.
        headers.insert(X_REQUEST_ID, v.clone());
        return v;
    }
    let v = HeaderValue::from_str(&hex(&random::<16>())).expect("hex is a valid header value");
    headers.insert(X_REQUEST_ID, v.clone());
    v
}

/// A parsed W3C trace context (`traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parse per W3C Trace Context level 1: version 00 exactly `00-<32 hex>-<16 hex>-<2 hex>`,
    /// lowercase, ids not all zero; a higher version (not `ff`) may carry more after a `-`.
    pub fn parse(v: &str) -> Option<Self> {
        let b = v.as_bytes();
        if b.len() < 55 {
            return None;
        }
        let version = unhex::<1>(&v[0..2])?[0];
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = unhex::<16>(&v[3..35])?;
        let parent_id = unhex::<8>(&v[36..52])?;
        let flags = unhex::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    pub fn render(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

/// Propagate a valid `traceparent` with this hop's new span id (flags kept), or start a new
/// trace (sampled if `sample_new`) and drop `tracestate`, which W3C ties to the parent.
/// Returns the trace context sent upstream.
pub fn propagate_trace(headers: &mut HeaderMap, sample_new: bool) -> TraceParent {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .filter(|_| headers.get_all(TRACEPARENT).iter().count() == 1);
    let next = match incoming {
        Some(tp) => TraceParent {
            parent_id: nonzero_random(),
            flags: tp.flags & 0x01,
            ..tp
        },
        None => {
            headers.remove(TRACESTATE);
            TraceParent {
                trace_id: nonzero_random(),
                parent_id: nonzero_random(),
                flags: u8::from(sample_new),
            }
        }
    };
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_str(&next.render()).expect("hex is a valid header value"),
    );
    next
}

fn random<const N: usize>() -> [u8; N] {
    super::ids::random_bytes()
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let b = random::<N>();
        if b != [0; N] {
            return b;
        }
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Lowercase hex only (W3C forbids uppercase).
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::SocketAddr, sync::Arc};

    fn conn(peer: &str, tls: bool) -> ConnInfo {
        ConnInfo {
            peer: peer.parse::<SocketAddr>().unwrap(),
            local: "10.0.0.1:443".parse().unwrap(),
            tls,
            sni: None::<Arc<str>>,
            alpn_h2: false,
            smuggled: Default::default(),
        }
    }

    #[test]
    fn hop_by_hop_removed_and_listed_names_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, X-Secret, upgrade".parse().unwrap(),
        );
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep"]);
    }

    #[test]
    fn te_trailers_kept_and_upgrade_kept_when_upgrading() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers, deflate;q=0.5".parse().unwrap());
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn only_websocket_get_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        assert!(wants_websocket(&http::Method::GET, &h));
        assert!(!wants_websocket(&http::Method::POST, &h));
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!wants_websocket(&http::Method::GET, &h));
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        assert!(!wants_websocket(&http::Method::GET, &h));
    }

    #[test]
    fn connection_cannot_delete_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a.example".parse().unwrap());
        h.insert(header::CONNECTION, "host".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::HOST], "a.example");
    }

    #[test]
    fn forwarding_appends_v4_and_quotes_v6() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.insert(header::FORWARDED, "for=1.1.1.1".parse().unwrap());
        add_forwarding(
            &mut h,
            &conn("192.0.2.7:5555", true),
            Some("api.example:8443"),
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 192.0.2.7");
        assert_eq!(
            h[header::FORWARDED],
            "for=1.1.1.1, for=192.0.2.7;proto=https;host=\"api.example:8443\""
        );
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "api.example:8443");

        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            &conn("[2001:db8::1]:5555", false),
            Some("a.example"),
        );
        assert_eq!(h[X_FORWARDED_FOR], "2001:db8::1");
        assert_eq!(
            h[header::FORWARDED],
            "for=\"[2001:db8::1]\";proto=http;host=a.example"
        );
        assert_eq!(h[X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn v4_mapped_peer_is_written_as_v4() {
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &conn("[::ffff:10.1.2.3]:1", false), None);
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[header::FORWARDED], "for=10.1.2.3;proto=http");
        assert!(h.get(X_FORWARDED_HOST).is_none());
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc-123_x.y".parse().unwrap());
        assert_eq!(ensure_request_id(&mut h), "abc-123_x.y");

        for bad in ["", "has space", "semi;colon", &"a".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID, bad.parse().unwrap());
            let v = ensure_request_id(&mut h);
            assert_eq!(v.len(), 32, "{bad:?}");
            assert!(v.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_eq!(h[X_REQUEST_ID], v);
        }
        let mut h = HeaderMap::new();
        let a = ensure_request_id(&mut h);
        let b = ensure_request_id(&mut HeaderMap::new());
        assert_ne!(a, b);
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_parse_rules() {
        let tp = TraceParent::parse(TP).unwrap();
        assert_eq!(tp.render(), TP);
        assert_eq!(tp.flags, 1);
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        // A future version may append fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn trace_propagated_with_new_span_or_started() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, TP.parse().unwrap());
        h.insert(TRACESTATE, "vendor=1".parse().unwrap());
        let next = propagate_trace(&mut h, false);
        let tp = TraceParent::parse(TP).unwrap();
        assert_eq!(next.trace_id, tp.trace_id);
        assert_ne!(next.parent_id, tp.parent_id);
        assert_eq!(next.flags, 1);
        assert_eq!(h[TRACEPARENT], next.render().as_str());
        assert_eq!(h[TRACESTATE], "vendor=1");

        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "garbage".parse().unwrap());
        h.insert(TRACESTATE, "vendor=1".parse().unwrap());
        let next = propagate_trace(&mut h, true);
        assert_ne!(next.trace_id, tp.trace_id);
        assert_eq!(next.flags, 1);
        assert!(h.get(TRACESTATE).is_none());
        assert_eq!(
            TraceParent::parse(h[TRACEPARENT].to_str().unwrap()),
            Some(next)
        );
    }
}
