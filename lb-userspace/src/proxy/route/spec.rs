//! What the integrator fills in for each route (plain data, no serde).

use http::Method;

/// One route: where it applies, how the path is rewritten, where requests go. `T` is the
/// integrator's payload (auth policy, limits ...); the router never looks in it.
#[derive(Debug, Clone)]
pub struct RouteSpec<T> {
    /// Unique, non-empty; stable across reloads (the rate limiter keys on it).
    pub name: String,
    /// `api.example.com`, `*.example.com` (one or more labels) or an IP; empty = any host.
    /// Case-insensitive; the request's `:port` is ignored, so give no port here.
    pub hosts: Vec<String>,
    pub path: PathMatch,
    /// Empty = any method. No implicit HEAD for GET.
    pub methods: Vec<Method>,
    /// All must hold.
    pub headers: Vec<HeaderMatch>,
    pub rewrite: Rewrite,
    /// `(service name, weight)`: a weighted split (e.g. 95/5 canary). Some weights may be 0,
    /// not all.
    pub targets: Vec<(String, u32)>,
    pub payload: T,
}

impl<T> RouteSpec<T> {
    /// A route for any host and method, no header conditions, no rewrite.
    pub fn new(
        name: impl Into<String>,
        path: PathMatch,
        targets: Vec<(String, u32)>,
        payload: T,
    ) -> Self {
        Self {
            name: name.into(),
            hosts: Vec::new(),
            path,
            methods: Vec::new(),
            headers: Vec::new(),
            rewrite: Rewrite::None,
            targets,
            payload,
        }
    }
}

/// How the normalized request path is matched. Both must be in normalized form (see
/// [`super::normalize`]) and start with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path, byte for byte (after normalization; the query is not part of it).
    Exact(String),
    /// Segment-aware prefix: `/api` matches `/api`, `/api/` and `/api/x`, not `/apiary`;
    /// `/api/` matches `/api/` and `/api/x`, not `/api`. `/` matches every path.
    Prefix(String),
}

/// The path sent upstream; the query string is always kept as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Rewrite {
    /// The normalized path.
    #[default]
    None,
    /// Remove the matched prefix (the whole path for `Exact`), keep the rest; never empty:
    /// `/api/v1` with prefix `/api` -> `/v1`, `/api` -> `/`.
    StripPrefix,
    /// Replace the matched prefix: prefix `/api`, `ReplacePrefix("/v2")`: `/api/x` -> `/v2/x`,
    /// `/api` -> `/v2`, `/api/` -> `/v2/`. Exactly one `/` joins the two parts.
    ReplacePrefix(String),
    /// Replace the whole path.
    ReplacePath(String),
}

/// A header condition. Names are case-insensitive, values compared byte for byte; with
/// several values (repeated header) one equal value is enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: HeaderValueMatch,
    /// Holds when the condition does NOT (e.g. "no `x-debug` header").
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueMatch {
    Present,
    Exact(String),
}
