//! Route table: build errors, precedence, conditions, rewrites, normalization at the edge.

use http::{HeaderMap, HeaderValue, Method};

use super::*;

fn spec(name: &str, path: PathMatch) -> RouteSpec<()> {
    RouteSpec::new(name, path, vec![(format!("svc-{name}"), 1)], ())
}

fn exact(name: &str, p: &str) -> RouteSpec<()> {
    spec(name, PathMatch::Exact(p.into()))
}

fn prefix(name: &str, p: &str) -> RouteSpec<()> {
    spec(name, PathMatch::Prefix(p.into()))
}

fn hosts(mut s: RouteSpec<()>, h: &[&str]) -> RouteSpec<()> {
    s.hosts = h.iter().map(|h| (*h).to_owned()).collect();
    s
}

fn table(specs: Vec<RouteSpec<()>>) -> RouteTable<()> {
    RouteTable::build(specs).unwrap()
}

/// The matched route's name and forwarded path, or "-" for no match.
fn get(t: &RouteTable<()>, host: &str, path: &str) -> (String, String) {
    req(t, Some(host), &Method::GET, path, &HeaderMap::new())
}

fn req(
    t: &RouteTable<()>,
    host: Option<&str>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> (String, String) {
    match t.find(host, method, path, headers).unwrap() {
        Some(m) => (m.route.name().to_owned(), m.path),
        None => ("-".into(), String::new()),
    }
}

fn name(t: &RouteTable<()>, host: &str, path: &str) -> String {
    get(t, host, path).0
}

fn build_err(specs: Vec<RouteSpec<()>>) -> RouteError {
    RouteTable::build(specs).unwrap_err()
}

#[test]
fn errors_name_route_field_and_problem() {
    let e = build_err(vec![prefix("a", "/"), prefix("users", "api")]);
    assert_eq!(
        e.to_string(),
        r#"route[1] (users).path_prefix: must start with "/""#
    );
    assert_eq!(e.problem, Problem::NoLeadingSlash);

    let e = build_err(vec![prefix("a", "/"), prefix("a", "/x")]);
    assert_eq!((e.index, e.field.as_str()), (1, "name"));
    assert_eq!(e.problem, Problem::DuplicateName(0));

    let e = build_err(vec![prefix("", "/")]);
    assert_eq!((e.field.as_str(), e.problem), ("name", Problem::Empty));

    let e = build_err(vec![exact("x", "/a/../b")]);
    assert_eq!(e.field, "path_exact");
    assert_eq!(e.problem, Problem::NotNormalized("/b".into()));
    let e = build_err(vec![exact("x", "/a?b")]);
    assert_eq!(e.problem, Problem::Query);
    let e = build_err(vec![exact("x", "/a%2fb")]);
    assert_eq!(e.problem, Problem::BadPath(PathError::EncodedSlash));
    let e = build_err(vec![exact("x", "/%7Eu")]);
    assert_eq!(e.problem, Problem::NotNormalized("/~u".into()));
}

#[test]
fn host_errors() {
    let e = build_err(vec![hosts(prefix("w", "/"), &["ok.com", "a.*.com"])]);
    assert_eq!(e.field, "hosts[1]");
    assert_eq!(e.problem, Problem::BadWildcard);
    let e = build_err(vec![hosts(prefix("w", "/"), &["a.com:8080"])]);
    assert_eq!(e.problem, Problem::HostPort);
    let e = build_err(vec![hosts(prefix("w", "/"), &["a b"])]);
    assert_eq!(e.problem, Problem::BadHost);
    let e = build_err(vec![hosts(prefix("w", "/"), &[""])]);
    assert_eq!(e.problem, Problem::Empty);
}

#[test]
fn target_errors() {
    let mut s = prefix("t", "/");
    s.targets = vec![];
    let e = build_err(vec![s]);
    assert_eq!((e.field.as_str(), e.problem), ("targets", Problem::Empty));
    let mut s = prefix("t", "/");
    s.targets = vec![("a".into(), 0), ("b".into(), 0)];
    assert_eq!(build_err(vec![s]).problem, Problem::AllZeroWeights);
    let mut s = prefix("t", "/");
    s.targets = vec![("a".into(), 1), ("a".into(), 2)];
    let e = build_err(vec![s]);
    assert_eq!(e.field, "targets[1]");
    assert_eq!(e.problem, Problem::DuplicateTarget("a".into()));
    let mut s = prefix("t", "/");
    s.targets = vec![("a".into(), 1), (String::new(), 2)];
    assert_eq!(build_err(vec![s]).field, "targets[1]");
    // Some zero weights are fine.
    let mut s = prefix("t", "/");
    s.targets = vec![("a".into(), 0), ("b".into(), 3)];
    let t = table(vec![s]);
    let m = t
        .find(None, &Method::GET, "/", &HeaderMap::new())
        .unwrap()
        .unwrap();
    assert!((0..10).all(|r| m.route.pick(r) == "b"));
}

#[test]
fn header_and_rewrite_errors() {
    let mut s = prefix("h", "/");
    s.headers = vec![HeaderMatch {
        name: "bad name".into(),
        value: HeaderValueMatch::Present,
        invert: false,
    }];
    let e = build_err(vec![s]);
    assert_eq!(
        e.to_string(),
        "route[0] (h).headers[0].name: not a valid header name"
    );
    let mut s = prefix("h", "/");
    s.headers = vec![HeaderMatch {
        name: "x-a".into(),
        value: HeaderValueMatch::Exact("a\nb".into()),
        invert: false,
    }];
    assert_eq!(build_err(vec![s]).field, "headers[0].value");
    let mut s = prefix("r", "/");
    s.rewrite = Rewrite::ReplacePrefix("v2".into());
    let e = build_err(vec![s]);
    assert_eq!(
        (e.field.as_str(), e.problem),
        ("rewrite", Problem::NoLeadingSlash)
    );
    let mut s = prefix("r", "/");
    s.rewrite = Rewrite::ReplacePath("/a//b".into());
    assert_eq!(
        build_err(vec![s]).problem,
        Problem::NotNormalized("/a/b".into())
    );
}

#[test]
fn prefix_is_segment_aware() {
    let t = table(vec![prefix("api", "/api"), prefix("slash", "/v1/")]);
    assert_eq!(name(&t, "h", "/api"), "api");
    assert_eq!(name(&t, "h", "/api/"), "api");
    assert_eq!(name(&t, "h", "/api/x/y"), "api");
    assert_eq!(name(&t, "h", "/apiary"), "-");
    assert_eq!(name(&t, "h", "/ap"), "-");
    assert_eq!(name(&t, "h", "/v1/"), "slash");
    assert_eq!(name(&t, "h", "/v1/x"), "slash");
    assert_eq!(name(&t, "h", "/v1"), "-");
    assert_eq!(name(&t, "h", "/v10"), "-");
}

#[test]
fn exact_before_prefix_and_longer_prefix_first() {
    let t = table(vec![
        prefix("root", "/"),
        prefix("api", "/api"),
        prefix("api-slash", "/api/"),
        prefix("users", "/api/users"),
        exact("login", "/api/users/login"),
    ]);
    assert_eq!(name(&t, "h", "/api/users/login"), "login");
    assert_eq!(name(&t, "h", "/api/users/login/x"), "users");
    assert_eq!(name(&t, "h", "/api/users"), "users");
    assert_eq!(name(&t, "h", "/api/other"), "api-slash");
    assert_eq!(name(&t, "h", "/api"), "api");
    assert_eq!(name(&t, "h", "/other"), "root");
    assert_eq!(name(&t, "h", "/"), "root");
}

#[test]
fn host_precedence_exact_then_longest_wildcard_then_any() {
    let t = table(vec![
        prefix("any", "/"),
        hosts(prefix("com", "/"), &["*.com"]),
        hosts(prefix("wild", "/"), &["*.example.com"]),
        hosts(prefix("wild-b", "/"), &["*.b.example.com"]),
        hosts(
            prefix("exact", "/"),
            &["api.example.com", "API2.example.com"],
        ),
    ]);
    assert_eq!(name(&t, "api.example.com", "/"), "exact");
    assert_eq!(name(&t, "Api.Example.COM:8443", "/"), "exact");
    assert_eq!(name(&t, "api2.example.com.", "/"), "exact");
    assert_eq!(name(&t, "x.example.com", "/"), "wild");
    assert_eq!(name(&t, "x.y.example.com", "/"), "wild");
    assert_eq!(name(&t, "a.b.example.com", "/"), "wild-b");
    // The wildcard needs a label before the suffix.
    assert_eq!(name(&t, "b.example.com", "/"), "wild");
    assert_eq!(name(&t, "example.com", "/"), "com");
    assert_eq!(name(&t, "other.org", "/"), "any");
    assert_eq!(req(&t, None, &Method::GET, "/", &HeaderMap::new()).0, "any");
    assert_eq!(name(&t, "", "/"), "any");
}

#[test]
fn no_host_routes_means_no_match_for_unknown_hosts() {
    let t = table(vec![hosts(prefix("a", "/"), &["a.com"])]);
    assert_eq!(name(&t, "a.com", "/x"), "a");
    assert_eq!(name(&t, "b.com", "/x"), "-");
    assert_eq!(req(&t, None, &Method::GET, "/x", &HeaderMap::new()).0, "-");
}

#[test]
fn a_host_without_a_matching_route_falls_through() {
    let t = table(vec![
        hosts(prefix("api", "/api"), &["api.example.com"]),
        prefix("health", "/health"),
    ]);
    assert_eq!(name(&t, "api.example.com", "/health"), "health");
    assert_eq!(name(&t, "api.example.com", "/other"), "-");
    // A catch-all closes the host.
    let t = table(vec![
        hosts(prefix("api", "/api"), &["api.example.com"]),
        hosts(prefix("closed", "/"), &["api.example.com"]),
        prefix("health", "/health"),
    ]);
    assert_eq!(name(&t, "api.example.com", "/health"), "closed");
}

#[test]
fn host_beats_path_length() {
    // Host specificity is decided first, even over a longer path prefix.
    let t = table(vec![
        prefix("deep", "/a/b/c"),
        hosts(prefix("host", "/"), &["h.com"]),
    ]);
    assert_eq!(name(&t, "h.com", "/a/b/c"), "host");
    assert_eq!(name(&t, "x.com", "/a/b/c"), "deep");
}

#[test]
fn more_conditions_first_then_config_order() {
    let mut post = prefix("post", "/api");
    post.methods = vec![Method::POST];
    let mut beta = prefix("beta", "/api");
    beta.headers = vec![HeaderMatch {
        name: "X-Beta".into(),
        value: HeaderValueMatch::Exact("1".into()),
        invert: false,
    }];
    let mut beta_post = prefix("beta-post", "/api");
    beta_post.methods = vec![Method::POST, Method::PUT];
    beta_post.headers = beta.headers.clone();
    let t = table(vec![
        prefix("plain", "/api"),
        prefix("plain2", "/api"),
        post,
        beta,
        beta_post,
    ]);
    let mut h = HeaderMap::new();
    assert_eq!(req(&t, None, &Method::GET, "/api", &h).0, "plain");
    assert_eq!(req(&t, None, &Method::POST, "/api", &h).0, "post");
    h.insert("x-beta", HeaderValue::from_static("1"));
    assert_eq!(req(&t, None, &Method::GET, "/api", &h).0, "beta");
    assert_eq!(req(&t, None, &Method::PUT, "/api", &h).0, "beta-post");
    assert_eq!(req(&t, None, &Method::POST, "/api", &h).0, "beta-post");
    h.insert("x-beta", HeaderValue::from_static("2"));
    assert_eq!(req(&t, None, &Method::PUT, "/api", &h).0, "plain");
}

#[test]
fn failed_conditions_on_exact_fall_back_to_prefix() {
    let mut e = exact("admin-get", "/admin");
    e.methods = vec![Method::GET];
    let t = table(vec![e, prefix("rest", "/")]);
    let h = HeaderMap::new();
    assert_eq!(req(&t, None, &Method::GET, "/admin", &h).0, "admin-get");
    assert_eq!(req(&t, None, &Method::HEAD, "/admin", &h).0, "rest");
    assert_eq!(req(&t, None, &Method::DELETE, "/admin", &h).0, "rest");
}

#[test]
fn header_present_inverted_and_multi_valued() {
    let mut no_debug = prefix("no-debug", "/");
    no_debug.headers = vec![HeaderMatch {
        name: "x-debug".into(),
        value: HeaderValueMatch::Present,
        invert: true,
    }];
    let mut tenant = prefix("tenant-a", "/");
    tenant.headers = vec![HeaderMatch {
        name: "x-tenant".into(),
        value: HeaderValueMatch::Exact("a".into()),
        invert: false,
    }];
    let t = table(vec![no_debug, tenant]);
    let mut h = HeaderMap::new();
    assert_eq!(req(&t, None, &Method::GET, "/", &h).0, "no-debug");
    h.insert("x-debug", HeaderValue::from_static(""));
    assert_eq!(req(&t, None, &Method::GET, "/", &h).0, "-");
    h.append("x-tenant", HeaderValue::from_static("b"));
    assert_eq!(req(&t, None, &Method::GET, "/", &h).0, "-");
    h.append("x-tenant", HeaderValue::from_static("a"));
    assert_eq!(req(&t, None, &Method::GET, "/", &h).0, "tenant-a");
    // Values are case-sensitive.
    let mut h = HeaderMap::new();
    h.insert("x-debug", HeaderValue::from_static("1"));
    h.insert("x-tenant", HeaderValue::from_static("A"));
    assert_eq!(req(&t, None, &Method::GET, "/", &h).0, "-");
}

#[test]
fn rewrites_keep_the_query_and_never_empty_the_path() {
    let mut strip = prefix("strip", "/api");
    strip.rewrite = Rewrite::StripPrefix;
    let mut strip_slash = prefix("strip-slash", "/s/");
    strip_slash.rewrite = Rewrite::StripPrefix;
    let mut repl = prefix("repl", "/old");
    repl.rewrite = Rewrite::ReplacePrefix("/new/v2".into());
    let mut repl_root = prefix("repl-root", "/r");
    repl_root.rewrite = Rewrite::ReplacePrefix("/".into());
    let mut whole = exact("whole", "/login");
    whole.rewrite = Rewrite::ReplacePath("/auth/login".into());
    let mut strip_exact = exact("strip-exact", "/e");
    strip_exact.rewrite = Rewrite::StripPrefix;
    let t = table(vec![
        strip,
        strip_slash,
        repl,
        repl_root,
        whole,
        strip_exact,
        prefix("none", "/"),
    ]);
    let p = |path: &str| get(&t, "h", path).1;
    assert_eq!(p("/api"), "/");
    assert_eq!(p("/api?x=1"), "/?x=1");
    assert_eq!(p("/api/"), "/");
    assert_eq!(p("/api/v1/users?id=7&a=%2F"), "/v1/users?id=7&a=%2F");
    assert_eq!(p("/s/"), "/");
    assert_eq!(p("/s/x/"), "/x/");
    assert_eq!(p("/old"), "/new/v2");
    assert_eq!(p("/old/"), "/new/v2/");
    assert_eq!(p("/old/a?q"), "/new/v2/a?q");
    assert_eq!(p("/r/a"), "/a");
    assert_eq!(p("/r"), "/");
    assert_eq!(p("/login?next=/x"), "/auth/login?next=/x");
    assert_eq!(p("/e"), "/");
    assert_eq!(p("/x/./y//z/..?"), "/x/y/?");
}

#[test]
fn normalization_blocks_traversal_into_other_routes() {
    let mut admin = prefix("admin", "/admin");
    admin.hosts = vec!["internal.example.com".into()];
    let t = table(vec![
        admin,
        prefix("public", "/public"),
        prefix("root", "/"),
    ]);
    assert_eq!(
        get(&t, "h", "/public/../admin"),
        ("root".into(), "/admin".into())
    );
    let m = t
        .find(
            Some("h"),
            &Method::GET,
            "/%70ublic//x/.?a=..",
            &HeaderMap::new(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.normalized.as_str(), m.path.as_str()),
        ("/public/x/", "/public/x/?a=..")
    );
    assert_eq!(name(&t, "h", "/public/%2e%2e/admin/x"), "root");
    assert_eq!(name(&t, "h", "/%70ublic/x"), "public");
    assert_eq!(name(&t, "h", "//public//x"), "public");
    assert_eq!(name(&t, "h", "/admin/../public"), "public");
    let h = HeaderMap::new();
    for bad in [
        "/public%2F..%2Fadmin",
        "/public/..%5Cadmin",
        "public",
        "/a\\b",
    ] {
        assert!(t.find(Some("h"), &Method::GET, bad, &h).is_err(), "{bad}");
    }
}

#[test]
fn asterisk_is_for_options_only_and_matches_nothing() {
    let t = table(vec![prefix("root", "/")]);
    let h = HeaderMap::new();
    assert!(t.find(None, &Method::OPTIONS, "*", &h).unwrap().is_none());
    assert_eq!(
        t.find(None, &Method::GET, "*", &h).unwrap_err(),
        PathError::AsteriskNotOptions
    );
}

#[test]
fn payload_and_index_are_exposed() {
    let mut s = RouteSpec::new(
        "r",
        PathMatch::Prefix("/".into()),
        vec![("a".into(), 95), ("b".into(), 5)],
        42u32,
    );
    s.hosts = vec!["x.com".into(), "X.com".into()];
    let t = RouteTable::build(vec![s]).unwrap();
    let m = t
        .find(Some("x.com"), &Method::GET, "/", &HeaderMap::new())
        .unwrap()
        .unwrap();
    assert_eq!(*m.route.payload(), 42);
    assert_eq!(m.route.index(), 0);
    assert_eq!(m.route.pick(96), "b");
    assert_eq!(m.route.targets().services().len(), 2);
    assert_eq!(t.routes().len(), 1);
}

#[test]
fn many_routes_one_host_each() {
    // Index sanity at scale: each of 2000 hosts gets its own route.
    let specs: Vec<_> = (0..2000)
        .map(|i| {
            hosts(
                prefix(&format!("r{i}"), &format!("/p{i}")),
                &[&format!("h{i}.com")],
            )
        })
        .collect();
    let t = table(specs);
    assert_eq!(name(&t, "h1234.com", "/p1234/x"), "r1234");
    assert_eq!(name(&t, "h1234.com", "/p1235/x"), "-");
}
