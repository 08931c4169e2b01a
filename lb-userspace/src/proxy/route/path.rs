//! Request path normalization: what is matched is what is forwarded, so `/public/../admin`
//! cannot reach a route the operator meant to keep apart.
//!
//! Like Envoy's `normalize_path` + `merge_slashes`:
//! 1. the path must start with `/` (the request-target `*` is accepted as is, for `OPTIONS`);
//! 2. `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, others kept
//!    with upper-case hex (RFC 3986 6.2.2); a malformed escape is rejected;
//! 3. an encoded `/` or `\` (`%2F`, `%5C`), a literal `\`, and bytes outside visible ASCII are
//!    rejected: a backend may decode or treat them as separators after we matched;
//! 4. `//` runs are merged and `.`/`..` segments resolved (RFC 3986 5.2.4; `..` above the root
//!    is dropped); a trailing slash is kept.
//!
//! The query string (after the first `?`) is kept byte for byte, never normalized.

use thiserror::Error;

/// Why a request path was refused; the caller answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path must start with \"/\"")]
    NotAbsolute,
    #[error("\"*\" is only a valid target for OPTIONS")]
    AsteriskNotOptions,
    #[error("path contains an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a malformed percent escape")]
    BadEscape,
    #[error("path contains a byte that is not visible ASCII")]
    BadByte,
}

/// A request target split and normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    /// Normalized path, starting with `/` (or exactly `*`).
    pub path: String,
    /// The raw query without its `?`; `None` when the target had no `?` at all.
    pub query: Option<String>,
}

impl RequestPath {
    /// Splits `path_and_query` (origin-form, or `*`) and normalizes the path.
    pub fn parse(path_and_query: &str) -> Result<Self, PathError> {
        let (raw, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (path_and_query, None),
        };
        let path = if raw == "*" {
            raw.to_owned()
        } else {
            normalize(raw)?
        };
        Ok(Self { path, query })
    }

    /// `path` with a new path part and this query appended (`?` kept even when empty).
    pub fn with_path(&self, path: &str) -> String {
        match &self.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        }
    }
}

/// Normalizes a path (no query); see the module doc for the steps.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(raw)?;
    Ok(resolve_segments(&decoded))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                if v == b'/' || v == b'\\' {
                    return Err(PathError::EncodedSlash);
                }
                if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            // Visible ASCII only: no spaces, controls, DEL or raw UTF-8 ('#' is not part of a
            // request path either).
            0x21..=0x7e if b != b'#' => {
                out.push(char::from(b));
                i += 1;
            }
            _ => return Err(PathError::BadByte),
        }
    }
    Ok(out)
}

/// Merges slashes and resolves dot segments of a path that starts with `/`.
fn resolve_segments(path: &str) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for seg in &segments {
        // Only the last segment decides whether the result ends in `/`.
        trailing_slash = true;
        match *seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() || trailing_slash {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p)
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/b",
            "/a/b/",
            "/a.b/c-d_e~f",
            "/a%20b",
            "/x;y=1",
            "/a:b@c",
        ] {
            assert_eq!(n(p).unwrap(), p, "{p}");
        }
    }

    #[test]
    fn slashes_are_merged() {
        assert_eq!(n("//").unwrap(), "/");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("//a//").unwrap(), "/a/");
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(n("/public/../admin").unwrap(), "/admin");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("/a/b/../../..").unwrap(), "/");
        // Not dot segments: dots inside names.
        assert_eq!(n("/a/..b/.c/...").unwrap(), "/a/..b/.c/...");
    }

    #[test]
    fn unreserved_escapes_are_decoded_before_dot_segments() {
        assert_eq!(n("/%7Euser/%41").unwrap(), "/~user/A");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(n("/a/%2e/b").unwrap(), "/a/b");
    }

    #[test]
    fn reserved_escapes_stay_encoded_in_upper_case() {
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/a%20b%00").unwrap(), "/a%20b%00");
        assert_eq!(n("/%25").unwrap(), "/%25");
        // A decoded `%` is not decoded again.
        assert_eq!(n("/%252e%252e/x").unwrap(), "/%252e%252e/x");
    }

    #[test]
    fn encoded_slashes_and_backslashes_are_rejected() {
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5Cb"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%5c..%5cadmin"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
    }

    #[test]
    fn malformed_input_is_rejected() {
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
        assert_eq!(n("/a%"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a b"), Err(PathError::BadByte));
        assert_eq!(n("/a\tb"), Err(PathError::BadByte));
        assert_eq!(n("/caf\u{e9}"), Err(PathError::BadByte));
        assert_eq!(n("/a#frag"), Err(PathError::BadByte));
    }

    #[test]
    fn query_is_split_off_and_kept_verbatim() {
        let r = RequestPath::parse("/a/../b?x=%2F&y=/../z?w").unwrap();
        assert_eq!(r.path, "/b");
        assert_eq!(r.query.as_deref(), Some("x=%2F&y=/../z?w"));
        assert_eq!(r.with_path("/c"), "/c?x=%2F&y=/../z?w");
        let empty = RequestPath::parse("/a?").unwrap();
        assert_eq!(empty.with_path("/a"), "/a?");
        let none = RequestPath::parse("/a").unwrap();
        assert_eq!(none.with_path("/a"), "/a");
    }

    #[test]
    fn output_is_canonical_for_every_short_input() {
        // Every path of up to 5 pieces from these: the result has no empty, `.` or `..`
        // segment, and normalizing it again changes nothing.
        let pieces = ["/", ".", "a", "%2e", "%2E%2e", "%41", "%7e", "%3f"];
        let mut paths = vec![String::from("/")];
        for _ in 0..5 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| pieces.iter().map(move |x| format!("{p}{x}")))
                .collect();
            for p in &longer {
                let once = normalize(p).unwrap();
                assert!(once.starts_with('/'), "{p} -> {once}");
                let inner = once.trim_end_matches('/');
                for seg in inner.split('/').skip(1) {
                    assert!(!matches!(seg, "" | "." | ".."), "{p} -> {once}");
                }
                assert!(
                    !once.contains("%2E") && !once.contains("%41"),
                    "{p} -> {once}"
                );
                assert_eq!(normalize(&once).unwrap(), once, "{p}");
            }
            paths = longer;
        }
    }

    #[test]
    fn asterisk_is_kept() {
        assert_eq!(RequestPath::parse("*").unwrap().path, "*");
        assert_eq!(RequestPath::parse("*x"), Err(PathError::NotAbsolute));
    }
}
