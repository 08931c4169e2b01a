//! The route table: routes grouped by host, then indexed by exact path and by prefix, so
//! `find` does a few hash lookups instead of scanning every route.

use std::collections::HashMap;

use http::{HeaderMap, Method};

use super::{
    PathError, PathMatch, Problem, RequestPath, Route, RouteError, RouteSpec,
    compile::compile,
    host::{HostPattern, request_host},
};

/// A checked, indexed set of routes; immutable (build a new one on reload).
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
    exact_hosts: HashMap<String, Group>,
    /// Keyed by `.example.com` for `*.example.com`.
    suffix_hosts: HashMap<String, Group>,
    any_host: Group,
}

/// The routes of one host pattern. Each list is in precedence order: more conditions first,
/// then config order.
#[derive(Debug, Default)]
struct Group {
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
}

/// The route a request matched.
#[derive(Debug)]
pub struct Matched<'a, T> {
    pub route: &'a Route<T>,
    /// What to send upstream: the normalized, rewritten path and the query as received.
    pub path: String,
    /// The normalized request path before the rewrite, without the query (what was
    /// matched; for logs and path-based policies).
    pub normalized: String,
}

impl<T> RouteTable<T> {
    pub fn build(specs: Vec<RouteSpec<T>>) -> Result<Self, RouteError> {
        let mut routes: Vec<Route<T>> = Vec::with_capacity(specs.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (index, spec) in specs.into_iter().enumerate() {
            if let Some(&first) = names.get(&spec.name) {
                return Err(RouteError {
                    index,
                    name: spec.name,
                    field: "name".into(),
                    problem: Problem::DuplicateName(first),
                });
            }
            names.insert(spec.name.clone(), index);
            routes.push(compile(index, spec)?);
        }
        let mut exact_hosts: HashMap<String, Group> = HashMap::new();
        let mut suffix_hosts: HashMap<String, Group> = HashMap::new();
        let mut any_host = Group::default();
        for route in &routes {
            if route.hosts.is_empty() {
                any_host.add(route);
            }
            // Patterns are deduplicated, so a route lands in each group at most once.
            for h in &route.hosts {
                let group = match h {
                    HostPattern::Exact(k) => exact_hosts.entry(k.clone()).or_default(),
                    HostPattern::Suffix(k) => suffix_hosts.entry(k.clone()).or_default(),
                };
                group.add(route);
            }
        }
        let order = |ids: &mut Vec<usize>| {
            ids.sort_by_key(|&i| (std::cmp::Reverse(routes[i].conditions()), i));
        };
        for g in exact_hosts
            .values_mut()
            .chain(suffix_hosts.values_mut())
            .chain([&mut any_host])
        {
            g.exact
                .values_mut()
                .chain(g.prefix.values_mut())
                .for_each(order);
        }
        Ok(Self {
            routes,
            exact_hosts,
            suffix_hosts,
            any_host,
        })
    }

    /// The route for a request, in precedence order (see the module doc), and the path to
    /// forward. `host` is the Host header or `:authority` (port and case ignored; the
    /// caller decides which one when both are present); `path_and_query` the raw request
    /// target in origin form or `*`: for hyper, `uri.path_and_query()`, never the
    /// absolute-form URI.
    ///
    /// `Err` means the path is refused (answer 400); `Ok(None)` that no route matches
    /// (404), which is always the case for `OPTIONS *`.
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Matched<'_, T>>, PathError> {
        let req = RequestPath::parse(path_and_query)?;
        if req.path == "*" {
            return if method == Method::OPTIONS {
                Ok(None)
            } else {
                Err(PathError::AsteriskNotOptions)
            };
        }
        let host = host.map(request_host).unwrap_or_default();
        let found = self
            .host_groups(&host)
            .find_map(|g| g.find(&self.routes, &req.path, method, headers));
        Ok(found.map(|(i, matched)| {
            let route = &self.routes[i];
            Matched {
                route,
                path: req.with_path(&route.rewrite(&req.path, matched)),
                normalized: req.path.clone(),
            }
        }))
    }

    /// All routes, in the order given to `build`.
    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }

    /// The groups a host belongs to, most specific first: exact, then wildcards from the
    /// longest suffix (`a.b.example.com`: `*.b.example.com`, `*.example.com`, `*.com`),
    /// then host-less routes.
    fn host_groups<'s>(&'s self, host: &'s str) -> impl Iterator<Item = &'s Group> + 's {
        let exact = if host.is_empty() {
            None
        } else {
            self.exact_hosts.get(host)
        };
        // A wildcard needs at least one label before its suffix, so never the whole host.
        let suffixes = host
            .char_indices()
            .filter(|&(i, c)| c == '.' && i > 0)
            .filter_map(|(i, _)| self.suffix_hosts.get(&host[i..]));
        exact.into_iter().chain(suffixes).chain([&self.any_host])
    }
}

impl Group {
    fn add<T>(&mut self, route: &Route<T>) {
        let (map, p) = match &route.spec().path {
            PathMatch::Exact(p) => (&mut self.exact, p),
            PathMatch::Prefix(p) => (&mut self.prefix, p),
        };
        map.entry(p.clone()).or_default().push(route.index());
    }

    /// The first route whose path and conditions hold, and how many bytes of `path` its
    /// path condition covered.
    fn find<T>(
        &self,
        routes: &[Route<T>],
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<(usize, usize)> {
        let first = |ids: &Vec<usize>| {
            ids.iter()
                .copied()
                .find(|&i| routes[i].conditions_hold(method, headers))
        };
        if let Some(i) = self.exact.get(path).and_then(first) {
            return Some((i, path.len()));
        }
        if self.prefix.is_empty() {
            return None;
        }
        prefix_candidates(path)
            .find_map(|p| self.prefix.get(p).and_then(first).map(|i| (i, p.len())))
    }
}

/// The segment-aware prefixes of a normalized `path`, longest first: for `/api/v1` these
/// are `/api/v1`, `/api/`, `/api`, `/`.
fn prefix_candidates(path: &str) -> impl Iterator<Item = &str> {
    let cuts = path
        .char_indices()
        .rev()
        .filter(|&(_, c)| c == '/')
        .flat_map(move |(i, _)| {
            let with_slash = (i + 1 != path.len()).then(|| &path[..=i]);
            let without = (i > 0).then(|| &path[..i]);
            with_slash.into_iter().chain(without)
        });
    std::iter::once(path).chain(cuts)
}

#[cfg(test)]
mod tests {
    use super::prefix_candidates;

    #[test]
    fn candidates_are_segment_prefixes_longest_first() {
        let c = |p| prefix_candidates(p).collect::<Vec<_>>();
        assert_eq!(c("/api/v1"), ["/api/v1", "/api/", "/api", "/"]);
        assert_eq!(c("/api/"), ["/api/", "/api", "/"]);
        assert_eq!(c("/"), ["/"]);
    }
}
