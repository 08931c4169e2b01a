//! Host patterns of routes and the request's Host / `:authority`, compared without port,
//! case or a trailing dot.

/// A route's host pattern, validated and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    /// `api.example.com`, `10.0.0.1`, `[::1]`.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches one or more labels before it.
    Suffix(String),
}

/// Why a route's host pattern is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadHost {
    Empty,
    Port,
    Wildcard,
    Char,
}

impl HostPattern {
    pub(super) fn parse(raw: &str) -> Result<Self, BadHost> {
        let lower = raw.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err(BadHost::Empty);
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') || suffix.starts_with('[') {
                return Err(BadHost::Wildcard);
            }
            check_name(suffix)?;
            // `*.0.0.1` would match IP addresses: no top-level domain is numeric.
            if suffix
                .rsplit('.')
                .next()
                .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(BadHost::Wildcard);
            }
            return Ok(Self::Suffix(format!(".{suffix}")));
        }
        if lower.contains('*') {
            return Err(BadHost::Wildcard);
        }
        if lower.starts_with('[') {
            // An IPv6 literal: `[` hex, colons and dots `]`, nothing after.
            let inner = lower
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .ok_or(BadHost::Port)?;
            if inner.is_empty()
                || !inner
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(BadHost::Char);
            }
            return Ok(Self::Exact(lower));
        }
        check_name(&lower)?;
        Ok(Self::Exact(lower))
    }
}

fn check_name(name: &str) -> Result<(), BadHost> {
    if name.contains(':') {
        return Err(BadHost::Port);
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if labels_ok {
        Ok(())
    } else {
        Err(BadHost::Char)
    }
}

/// The request's host as matched: lower-case, without `:port` or a trailing dot.
pub(super) fn request_host(raw: &str) -> String {
    let no_port = if raw.starts_with('[') {
        // `[v6]:port`: keep through the bracket.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    no_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse() {
        assert_eq!(
            HostPattern::parse("API.Example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.Example.com."),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("[::1]"),
            Ok(HostPattern::Exact("[::1]".into()))
        );
        assert_eq!(
            HostPattern::parse("10.0.0.1"),
            Ok(HostPattern::Exact("10.0.0.1".into()))
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(HostPattern::parse(""), Err(BadHost::Empty));
        assert_eq!(HostPattern::parse("*"), Err(BadHost::Wildcard));
        assert_eq!(HostPattern::parse("*."), Err(BadHost::Wildcard));
        assert_eq!(HostPattern::parse("a.*.com"), Err(BadHost::Wildcard));
        assert_eq!(HostPattern::parse("*example.com"), Err(BadHost::Wildcard));
        assert_eq!(HostPattern::parse("*.*.com"), Err(BadHost::Wildcard));
        assert_eq!(HostPattern::parse("*.0.0.1"), Err(BadHost::Wildcard));
        assert_eq!(HostPattern::parse("a.com:80"), Err(BadHost::Port));
        assert_eq!(HostPattern::parse("[::1]:80"), Err(BadHost::Port));
        assert_eq!(HostPattern::parse("a..com"), Err(BadHost::Char));
        assert_eq!(HostPattern::parse("a com"), Err(BadHost::Char));
        assert_eq!(HostPattern::parse("a/b"), Err(BadHost::Char));
        assert_eq!(HostPattern::parse("[zz]"), Err(BadHost::Char));
    }

    #[test]
    fn request_host_drops_port_case_and_dot() {
        assert_eq!(request_host("API.example.com:8443"), "api.example.com");
        assert_eq!(request_host("api.example.com."), "api.example.com");
        assert_eq!(request_host("[::1]:80"), "[::1]");
        assert_eq!(request_host("[::1]"), "[::1]");
        assert_eq!(request_host("10.0.0.1:1"), "10.0.0.1");
        assert_eq!(request_host("a.com:x"), "a.com:x");
    }
}
