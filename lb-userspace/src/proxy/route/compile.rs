//! One `RouteSpec` checked and turned into a `Route`: parsed hosts, header names and
//! values, and weighted targets.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{
    HeaderValueMatch, PathError, PathMatch, Problem, Rewrite, RouteError, RouteSpec, Targets,
    host::{BadHost, HostPattern},
    normalize,
};

/// A checked route, as the table holds it.
#[derive(Debug)]
pub struct Route<T> {
    index: usize,
    spec: RouteSpec<T>,
    pub(super) hosts: Vec<HostPattern>,
    headers: Vec<HeaderCond>,
    targets: Targets,
}

#[derive(Debug)]
struct HeaderCond {
    name: HeaderName,
    value: Option<HeaderValue>,
    invert: bool,
}

impl<T> Route<T> {
    /// Position in the list given to `RouteTable::build` (not stable across reloads: use
    /// `name` for state that must survive one).
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn payload(&self) -> &T {
        &self.spec.payload
    }

    pub fn spec(&self) -> &RouteSpec<T> {
        &self.spec
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The service for a random (or hashed) `r`; see [`Targets::pick`].
    pub fn pick(&self, r: u64) -> &str {
        self.targets.pick(r)
    }

    /// Method and header conditions, counted for precedence.
    pub(super) fn conditions(&self) -> usize {
        self.headers.len() + usize::from(!self.spec.methods.is_empty())
    }

    pub(super) fn conditions_hold(&self, method: &Method, headers: &HeaderMap) -> bool {
        (self.spec.methods.is_empty() || self.spec.methods.contains(method))
            && self.headers.iter().all(|c| {
                let hit = match &c.value {
                    None => headers.contains_key(&c.name),
                    Some(v) => headers.get_all(&c.name).iter().any(|x| x == v),
                };
                hit != c.invert
            })
    }

    /// The upstream path (no query) for a request `path` that matched this route's path
    /// condition over its first `matched` bytes.
    pub(super) fn rewrite(&self, path: &str, matched: usize) -> String {
        let rest = &path[matched..];
        match &self.spec.rewrite {
            Rewrite::None => path.to_owned(),
            Rewrite::StripPrefix => join("/", rest),
            Rewrite::ReplacePrefix(base) => join(base, rest),
            Rewrite::ReplacePath(p) => p.clone(),
        }
    }
}

/// `base` then what followed the matched prefix (`""`, `"/x"`, or `"x"` after a prefix that
/// ends in `/`), with exactly one `/` between.
fn join(base: &str, rest: &str) -> String {
    if rest.is_empty() {
        return base.to_owned();
    }
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    format!("{}/{rest}", base.trim_end_matches('/'))
}

pub(super) fn compile<T>(index: usize, spec: RouteSpec<T>) -> Result<Route<T>, RouteError> {
    let err = |field: String, problem: Problem| RouteError {
        index,
        name: spec.name.clone(),
        field,
        problem,
    };
    if spec.name.is_empty() {
        return Err(err("name".into(), Problem::Empty));
    }
    let mut hosts = Vec::with_capacity(spec.hosts.len());
    for (i, h) in spec.hosts.iter().enumerate() {
        let pattern = HostPattern::parse(h).map_err(|e| {
            let problem = match e {
                BadHost::Empty => Problem::Empty,
                BadHost::Port => Problem::HostPort,
                BadHost::Wildcard => Problem::BadWildcard,
                BadHost::Char => Problem::BadHost,
            };
            err(format!("hosts[{i}]"), problem)
        })?;
        if !hosts.contains(&pattern) {
            hosts.push(pattern);
        }
    }
    let (field, p) = match &spec.path {
        PathMatch::Exact(p) => ("path_exact", p),
        PathMatch::Prefix(p) => ("path_prefix", p),
    };
    check_path(p).map_err(|problem| err(field.into(), problem))?;
    match &spec.rewrite {
        Rewrite::None | Rewrite::StripPrefix => {}
        Rewrite::ReplacePrefix(p) | Rewrite::ReplacePath(p) => {
            check_path(p).map_err(|problem| err("rewrite".into(), problem))?;
        }
    }
    let mut headers = Vec::with_capacity(spec.headers.len());
    for (i, h) in spec.headers.iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| err(format!("headers[{i}].name"), Problem::BadHeaderName))?;
        let value = match &h.value {
            HeaderValueMatch::Present => None,
            HeaderValueMatch::Exact(v) => Some(
                HeaderValue::from_str(v)
                    .map_err(|_| err(format!("headers[{i}].value"), Problem::BadHeaderValue))?,
            ),
        };
        headers.push(HeaderCond {
            name,
            value,
            invert: h.invert,
        });
    }
    if spec.targets.is_empty() {
        return Err(err("targets".into(), Problem::Empty));
    }
    for (i, (service, _)) in spec.targets.iter().enumerate() {
        if service.is_empty() {
            return Err(err(format!("targets[{i}]"), Problem::Empty));
        }
        if spec.targets[..i].iter().any(|(s, _)| s == service) {
            return Err(err(
                format!("targets[{i}]"),
                Problem::DuplicateTarget(service.clone()),
            ));
        }
    }
    let targets = Targets::new(spec.targets.clone())
        .ok_or_else(|| err("targets".into(), Problem::AllZeroWeights))?;
    Ok(Route {
        index,
        spec,
        hosts,
        headers,
        targets,
    })
}

/// A configured path (match or rewrite) must be what normalization would produce, or it
/// could never match / would forward something unnormalized.
fn check_path(p: &str) -> Result<(), Problem> {
    if p.contains('?') {
        return Err(Problem::Query);
    }
    match normalize(p) {
        Err(PathError::NotAbsolute) => Err(Problem::NoLeadingSlash),
        Err(e) => Err(Problem::BadPath(e)),
        Ok(n) if n != p => Err(Problem::NotNormalized(n)),
        Ok(_) => Ok(()),
    }
}
