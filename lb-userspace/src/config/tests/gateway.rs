//! The gateway's sections: a full valid one, and one test per mistake (each a single error at
//! the right line and field).

use std::net::SocketAddr;

use super::{GLOBAL, GW, errors, gw, one_error};
use crate::config::{
    AuthKind, HeaderMatch, JwtKeys, LimitKey, Mode, PathMatch, Rewrite, RouteLimit, parse,
};

#[test]
fn full_gateway_parses() {
    let text = gw(r#"name = "u"
hosts = ["API.example.com", "*.example.com"]
path_prefix = "/users"
strip_prefix = true
methods = ["get", "POST"]
headers = { "X-Api-Version" = "2", "x-canary" = "*" }
auth = "idp"
scopes = ["read"]
rate_limit = { rate = 5, burst = 10, key = "identity" }
[[service.route]]
name = "split"
path = "/exact"
rewrite_path = "/other"
backends = [{ service = "users", weight = 95 }, { service = "users2", weight = 5 }]
http2 = true
[[service]]
name = "users2"
[[auth]]
name = "idp"
kind = "jwt"
jwks_url = "http://127.0.0.1:9999/jwks"
issuer = "me"
audiences = ["api"]
algorithms = ["ES256"]
leeway_s = 5
claim_headers = { email = "X-Email" }
[[auth]]
name = "keys"
kind = "api_key"
file = "/etc/keys.toml"
[gateway]
access_log = "json"
threads = 4
"#);
    let c = parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let users = c.services.iter().find(|s| s.name == "users").unwrap();
    assert_eq!(users.frontend, None, "a backend set has no frontend");
    let api = c.services.iter().find(|s| s.name == "api").unwrap();
    assert_eq!(api.mode, Mode::Http);
    assert_eq!(
        api.frontend,
        Some("10.0.0.2:80".parse::<SocketAddr>().unwrap())
    );
    let http = api.http.as_ref().unwrap();
    assert_eq!(http.routes.len(), 2);
    let r = &http.routes[0];
    assert_eq!(r.name, "u");
    assert_eq!(r.hosts, ["api.example.com", "*.example.com"]);
    assert_eq!(r.path, PathMatch::Prefix("/users".into()));
    assert_eq!(r.rewrite, Rewrite::StripPrefix);
    assert_eq!(r.methods, ["GET", "POST"]);
    assert_eq!(
        r.headers,
        [
            ("x-api-version".into(), HeaderMatch::Exact("2".into())),
            ("x-canary".into(), HeaderMatch::Present)
        ]
    );
    assert_eq!(
        r.rate_limit,
        Some(RouteLimit {
            rate: 5,
            burst: 10,
            key: LimitKey::Identity,
            shared: None,
        })
    );
    assert_eq!(r.auth.as_deref(), Some("idp"));
    let s = &http.routes[1];
    assert_eq!(s.rewrite, Rewrite::ReplacePath("/other".into()));
    assert_eq!(
        s.targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
        [95, 5]
    );
    assert!(s.http2);
    assert_eq!(c.auth.len(), 2);
    match &c.auth[0].kind {
        AuthKind::Jwt(j) => {
            assert!(matches!(j.keys, JwtKeys::Url { .. }));
            assert_eq!(j.algorithms, ["ES256"]);
            assert_eq!(j.claim_headers, [("email".into(), "x-email".into())]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.gateway.threads, 4);
}

#[test]
fn default_route_name_and_path() {
    let c = parse(&gw(""), "t.toml").unwrap();
    let r = &c.services[1].http.as_ref().unwrap().routes[0];
    assert_eq!(r.name, "route0");
    assert_eq!(r.path, PathMatch::Prefix("/".into()));
}

#[test]
fn route_to_unknown_service() {
    one_error(
        &gw("").replace("service = \"users\"\n", "service = \"nope\"\n"),
        13,
        "service[1].route[0].service",
        "no service named `nope`",
    );
}

#[test]
fn route_to_a_gateway() {
    one_error(
        &gw("").replace("service = \"users\"\n", "service = \"api\"\n"),
        13,
        "service[1].route[0].service",
        "is a gateway itself",
    );
}

#[test]
fn unknown_auth_provider() {
    one_error(
        &gw("auth = \"idp\"\n"),
        14,
        "service[1].route[0].auth",
        "no `[[auth]]` provider named `idp`",
    );
}

#[test]
fn http_service_without_routes() {
    let text = format!("{GLOBAL}{}", &GW[..GW.find("[[service.route]]").unwrap()]);
    one_error(&text, 11, "service[1].route", "needs at least one");
}

#[test]
fn http_service_with_own_backends() {
    one_error(
        &gw("[[service.backend]]\naddress = \"10.0.0.9\"\nport = 1\n"),
        14,
        "service[1].backend[0]",
        "no backends of its own",
    );
}

#[test]
fn routes_need_http_mode() {
    let text = gw("").replace("mode = \"http\"\n", "");
    one_error(
        &text,
        6,
        "service[1].route",
        "routes need `mode = \"http\"`",
    );
}

#[test]
fn vip_without_port() {
    let text = gw("").replace("port = 80\n", "");
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|e| e.field == "service[1].port" && e.message.contains("missing required field")),
        "{e:#?}"
    );
}

#[test]
fn backend_set_cannot_be_udp() {
    one_error(
        &format!("{GLOBAL}[[service]]\nname = \"u\"\nprotocol = \"udp\"\n"),
        5,
        "service[0].protocol",
        "carry TCP",
    );
}

#[test]
fn bad_path_prefix() {
    one_error(
        &gw("path_prefix = \"users\"\n"),
        14,
        "service[1].route[0].path",
        "must start with `/`",
    );
}

#[test]
fn strip_prefix_with_exact_path() {
    one_error(
        &gw("path = \"/x\"\nstrip_prefix = true\n"),
        15,
        "service[1].route[0].strip_prefix",
        "need a `path_prefix`",
    );
}

#[test]
fn two_rewrites() {
    one_error(
        &gw("path_prefix = \"/x\"\nstrip_prefix = true\nrewrite_path = \"/y\"\n"),
        16,
        "service[1].route[0].rewrite_path",
        "at most one",
    );
}

#[test]
fn all_zero_weights() {
    let text = gw("").replace(
        "service = \"users\"\n",
        "backends = [{ service = \"users\", weight = 0 }]\n",
    );
    one_error(&text, 13, "service[1].route[0].backends", "weight > 0");
}

#[test]
fn unknown_method_and_bad_host() {
    one_error(
        &gw("methods = [\"FETCH\"]\n"),
        14,
        "service[1].route[0].methods",
        "unknown HTTP method",
    );
    one_error(
        &gw("hosts = [\"bad host\"]\n"),
        14,
        "service[1].route[0].hosts",
        "invalid host",
    );
}

#[test]
fn scopes_need_auth() {
    one_error(
        &gw("scopes = [\"a\"]\n"),
        14,
        "service[1].route[0].scopes",
        "need an `auth` provider",
    );
}

#[test]
fn bad_rate_limit_key() {
    one_error(
        &gw("rate_limit = { rate = 1, key = \"nope\" }\n"),
        14,
        "service[1].route[0].rate_limit.key",
        "unknown limit key",
    );
}

#[test]
fn jwt_hmac_is_refused() {
    one_error(
        &gw(
            "[[auth]]\nname = \"a\"\nkind = \"jwt\"\njwks_file = \"/k\"\nalgorithms = [\"HS256\"]\n",
        ),
        18,
        "auth[0].algorithms",
        "not allowed",
    );
}

#[test]
fn jwt_needs_keys() {
    one_error(
        &gw("[[auth]]\nname = \"a\"\nkind = \"jwt\"\n"),
        14,
        "auth[0].jwks_url",
        "missing `jwks_url` or `jwks_file`",
    );
}

#[test]
fn duplicate_auth_names() {
    one_error(
        &gw(
            "[[auth]]\nname = \"a\"\nkind = \"api_key\"\nfile = \"/k\"\n[[auth]]\nname = \"a\"\nkind = \"api_key\"\nfile = \"/k\"\n",
        ),
        19,
        "auth[1].name",
        "duplicate auth name",
    );
}

#[test]
fn missing_certificate_file_names_file_line_and_field() {
    let e = one_error(
        &gw(
            "[[service.tls]]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n",
        ),
        15,
        "service[1].tls[0].cert_file",
        "cannot read `/nonexistent/c.pem`",
    );
    assert_eq!(e.file, "t.toml");
}

#[test]
fn mismatched_key_is_an_error() {
    let dir = std::env::temp_dir().join(format!("lbt-gwcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
    let (cert, key, garbage) = (dir.join("a.crt"), dir.join("b.key"), dir.join("g.crt"));
    std::fs::write(&cert, a.cert.pem()).unwrap();
    std::fs::write(&key, b.key_pair.serialize_pem()).unwrap();
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let tls = |c: &std::path::Path, k: &std::path::Path| {
        gw(&format!(
            "[[service.tls]]\nnames = [\"a.test\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            c.display(),
            k.display()
        ))
    };
    one_error(
        &tls(&cert, &key),
        17,
        "service[1].tls[0].key_file",
        "is not the key of",
    );
    one_error(
        &tls(&garbage, &key),
        16,
        "service[1].tls[0].cert_file",
        "holds no PEM certificate",
    );
    // The right pair parses.
    let good = dir.join("a.key");
    std::fs::write(&good, a.key_pair.serialize_pem()).unwrap();
    parse(&tls(&cert, &good), "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn paths_must_be_normalized() {
    for (path, why) in [
        ("/a/../b", "`..` segment"),
        ("/a//b", "`//`"),
        ("/a%2Fb", "holds `%`"),
    ] {
        one_error(
            &gw(&format!("path_prefix = \"{path}\"\n")),
            14,
            "service[1].route[0].path",
            why,
        );
    }
}
