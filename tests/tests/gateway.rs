//! End to end: the L7 gateway inside the real `lb` agent, reached through the XDP handoff
//! (XDP passes VIP:port to the kernel, sk_lookup steers the connection to the gateway), with
//! `lb-echo` HTTP backends and curl as the client, each in its own namespace
//! (see `lb_tests::gateway_lab`). Needs root, the agent built
//! (`cargo build --release -p lb-userspace`), and curl (with HTTP/2), openssl and python3.
//!
//! Every scenario is bounded: curl transfers by `--max-time`, waits by deadlines, loops by
//! counts. A missing tool fails the test, it never skips.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lb_tests::{
    VIP4,
    gateway_lab::{ECHO_NAMES, GatewayLab, GwConfig, Reply},
    netns::run_checked,
};
use sha2::{Digest, Sha256};

/// The client's address in the topology (what X-Forwarded-For must say).
const CLIENT_IP: &str = "10.200.1.2";

fn url(path: &str) -> String {
    format!("http://{VIP4}{path}")
}

fn routes(cfg: &str) -> GwConfig {
    GwConfig {
        routes: cfg.to_owned(),
        ..GwConfig::default()
    }
}

/// Panics with the reply and the agent's log unless `r.status == want`.
#[track_caller]
fn expect_status(lab: &GatewayLab, what: &str, r: &Reply, want: u16) {
    assert_eq!(
        r.status,
        want,
        "{what}: want {want}, got {r:?}\nagent output:\n{}",
        lab.agent_log()
    );
}

/// Panics unless the request reached echo `backend` with `path` (path + query as received).
#[track_caller]
fn expect_echo(lab: &GatewayLab, what: &str, r: &Reply, backend: &str, path: &str) {
    expect_status(lab, what, r, 200);
    assert_eq!(r.backend(), backend, "{what}: wrong backend: {r:?}");
    assert_eq!(
        r.echoed_path(),
        path,
        "{what}: backend saw another path: {r:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Routing

const ROUTING: &str = r#"
[[service.route]]
name = "exact"
path = "/exact"
service = "b0"

[[service.route]]
name = "prefix"
path_prefix = "/api"
service = "b1"

[[service.route]]
name = "api-v2"
path_prefix = "/api"
headers = { "x-api-version" = "2" }
service = "b2"

[[service.route]]
name = "host"
hosts = ["h.example.test"]
path_prefix = "/api"
service = "b0"

[[service.route]]
name = "empty"
path_prefix = "/empty"
service = "none"

[[service.route]]
name = "strip"
path_prefix = "/strip"
strip_prefix = true
service = "b0"

[[service.route]]
name = "rewrite"
path_prefix = "/old"
rewrite_prefix = "/new"
service = "b1"
"#;

/// Exact vs prefix vs host vs header routes, 404 without a route, 503 for a route whose
/// service has no backends, strip_prefix / rewrite_prefix as the backend sees them, the query
/// kept, dot segments normalized.
#[test]
fn routing_table() {
    let mut lab = GatewayLab::new();
    lab.start(&routes(ROUTING));

    let r = lab.curl(&[&url("/exact")]);
    expect_echo(&lab, "exact", &r, "b0", "/exact");
    // An exact path is not a prefix.
    let r = lab.curl(&[&url("/exact/more")]);
    expect_status(&lab, "exact is not a prefix", &r, 404);

    let r = lab.curl(&[&url("/api/users?id=7&x=%20y")]);
    expect_echo(
        &lab,
        "prefix, query kept",
        &r,
        "b1",
        "/api/users?id=7&x=%20y",
    );
    let r = lab.curl(&[&url("/api")]);
    expect_echo(&lab, "prefix itself", &r, "b1", "/api");
    // Prefixes match on segment boundaries.
    let r = lab.curl(&[&url("/apix")]);
    expect_status(&lab, "/apix is not under /api", &r, 404);

    let r = lab.curl(&["-H", "x-api-version: 2", &url("/api/users")]);
    expect_echo(&lab, "header route", &r, "b2", "/api/users");
    let r = lab.curl(&["-H", "x-api-version: 1", &url("/api/users")]);
    expect_echo(&lab, "other header value", &r, "b1", "/api/users");

    let r = lab.curl(&["-H", "Host: h.example.test", &url("/api/users")]);
    expect_echo(&lab, "host route", &r, "b0", "/api/users");
    let r = lab.curl(&["-H", "Host: H.Example.Test:80", &url("/api/users")]);
    expect_echo(
        &lab,
        "host route, case and port ignored",
        &r,
        "b0",
        "/api/users",
    );

    let r = lab.curl(&[&url("/nothing/here")]);
    expect_status(&lab, "no route", &r, 404);
    let r = lab.curl(&[&url("/empty/x")]);
    expect_status(&lab, "route to a backend set with no backend", &r, 503);

    let r = lab.curl(&[&url("/strip/a/b?x=1&y=2")]);
    expect_echo(&lab, "strip_prefix", &r, "b0", "/a/b?x=1&y=2");
    let r = lab.curl(&[&url("/old/x?q=1")]);
    expect_echo(&lab, "rewrite_prefix", &r, "b1", "/new/x?q=1");

    // The gateway normalizes (curl would otherwise do it itself).
    let r = lab.curl(&["--path-as-is", &url("/api/../exact")]);
    expect_echo(&lab, "dot segments", &r, "b0", "/exact");
}

/// A 95 / 5 split over 400 requests: the canary gets 3..=45 of them (each tail of the
/// binomial(400, 0.05) beyond is < 5e-7, so a correct gateway fails this < 1e-6 of the time).
#[test]
fn canary_split_95_5() {
    let mut lab = GatewayLab::new();
    lab.start(&routes(
        r#"
[[service.route]]
name = "canary"
path_prefix = "/"
backends = [{ service = "b0", weight = 95 }, { service = "b1", weight = 5 }]
"#,
    ));
    let urls: Vec<String> = (0..400).map(|i| url(&format!("/c/{i}"))).collect();
    let run = lab.curl_many(&[], &urls);
    let mut count = BTreeMap::<String, usize>::new();
    for r in &run.replies {
        expect_status(&lab, "canary request", r, 200);
        *count.entry(r.backend()).or_default() += 1;
    }
    println!("canary split over 400: {count:?}");
    let (b0, b1) = (count.get("b0").copied(), count.get("b1").copied());
    assert_eq!(
        b0.unwrap_or(0) + b1.unwrap_or(0),
        400,
        "requests reached other backends: {count:?}"
    );
    let canary = b1.unwrap_or(0);
    assert!(
        (3..=45).contains(&canary),
        "canary got {canary}/400, want 3..=45 (5%): {count:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Forwarding headers and identity

/// Writes an API-key file with `(name, key, tenant, scopes)` entries; returns its path.
fn write_key_file(lab: &GatewayLab, file: &str, keys: &[(&str, &str, &str, &[&str])]) -> String {
    let mut s = String::new();
    for (name, key, tenant, scopes) in keys {
        let digest = hex(&Sha256::digest(key.as_bytes()));
        let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
        s += &format!(
            "[[key]]\nname = \"{name}\"\nsha256 = \"{digest}\"\ntenant = \"{tenant}\"\nscopes = [{}]\n\n",
            scopes.join(", ")
        );
    }
    let path = lab.dir.join(file);
    // Write-then-rename, as an operator's editor or config management would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.display().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const KEY_CI: &str = "ci-secret-key-0123456789";
const KEY_OTHER: &str = "other-secret-key-9876543210";

fn api_key_auth(file: &str) -> String {
    format!("\n[[auth]]\nname = \"keys\"\nkind = \"api_key\"\nfile = \"{file}\"\n")
}

/// X-Forwarded-For (the client's address), X-Forwarded-Proto and Forwarded reach the
/// backend; X-User-ID / X-Tenant-ID / X-Scopes sent by the client are dropped on a route
/// without auth and replaced on a route with auth.
#[test]
fn forwarded_headers_and_spoofed_identity() {
    let mut lab = GatewayLab::new();
    let file = write_key_file(&lab, "keys.toml", &[("ci", KEY_CI, "acme", &["read"])]);
    lab.start(&GwConfig {
        routes: r#"
[[service.route]]
name = "open"
path_prefix = "/open"
service = "b0"

[[service.route]]
name = "keyed"
path_prefix = "/keyed"
service = "b1"
auth = "keys"
"#
        .into(),
        extra: api_key_auth(&file),
        ..GwConfig::default()
    });
    let spoof = [
        "-H",
        "X-User-ID: mallory",
        "-H",
        "X-Tenant-ID: evil",
        "-H",
        "X-Scopes: admin",
    ];

    let mut args = spoof.to_vec();
    let u = url("/open/x");
    args.push(&u);
    let r = lab.curl(&args);
    expect_echo(&lab, "open route", &r, "b0", "/open/x");
    assert_eq!(
        r.echoed_header("x-forwarded-for").as_deref(),
        Some(CLIENT_IP),
        "X-Forwarded-For: {r:?}"
    );
    assert_eq!(
        r.echoed_header("x-forwarded-proto").as_deref(),
        Some("http"),
        "X-Forwarded-Proto: {r:?}"
    );
    let fwd = r
        .echoed_header("forwarded")
        .unwrap_or_else(|| panic!("no Forwarded header at the backend: {r:?}"));
    let fwd_l = fwd.to_ascii_lowercase();
    assert!(
        fwd_l.contains(&format!("for={CLIENT_IP}"))
            || fwd_l.contains(&format!("for=\"{CLIENT_IP}\"")),
        "Forwarded lacks for={CLIENT_IP}: {fwd}"
    );
    assert!(
        fwd_l.contains("proto=http"),
        "Forwarded lacks proto=http: {fwd}"
    );
    for h in ["x-user-id", "x-tenant-id", "x-scopes"] {
        assert_eq!(
            r.echoed_header(h),
            None,
            "client-sent {h} reached the backend on a route without auth: {r:?}"
        );
    }

    let key = format!("x-api-key: {KEY_CI}");
    let mut args = spoof.to_vec();
    let u = url("/keyed/x");
    args.extend(["-H", key.as_str(), u.as_str()]);
    let r = lab.curl(&args);
    expect_echo(&lab, "keyed route", &r, "b1", "/keyed/x");
    assert_eq!(r.echoed_header("x-user-id").as_deref(), Some("ci"), "{r:?}");
    assert_eq!(
        r.echoed_header("x-tenant-id").as_deref(),
        Some("acme"),
        "{r:?}"
    );
    assert_ne!(
        r.echoed_header("x-scopes").as_deref(),
        Some("admin"),
        "{r:?}"
    );
    // The secret itself stops at the gateway (Envoy's jwt_authn `forward: false`).
    assert_eq!(
        r.echoed_header("x-api-key"),
        None,
        "API key forwarded: {r:?}"
    );
}

/// API keys: a valid key passes with its identity, an unknown or missing one gets 401 with
/// WWW-Authenticate, and a key removed from the file is refused within 5 s.
#[test]
fn api_keys_valid_unknown_revoked() {
    let mut lab = GatewayLab::new();
    let both: &[(&str, &str, &str, &[&str])] = &[
        ("ci", KEY_CI, "acme", &["read"]),
        ("other", KEY_OTHER, "globex", &[]),
    ];
    let file = write_key_file(&lab, "keys.toml", both);
    lab.start(&GwConfig {
        routes: "\n[[service.route]]\nname = \"keyed\"\npath_prefix = \"/\"\nservice = \"b2\"\nauth = \"keys\"\n"
            .into(),
        extra: api_key_auth(&file),
        ..GwConfig::default()
    });
    let ci = format!("x-api-key: {KEY_CI}");
    let other = format!("x-api-key: {KEY_OTHER}");

    let r = lab.curl(&["-H", &ci, &url("/k")]);
    expect_echo(&lab, "valid key", &r, "b2", "/k");
    assert_eq!(r.echoed_header("x-user-id").as_deref(), Some("ci"), "{r:?}");
    assert_eq!(
        r.echoed_header("x-tenant-id").as_deref(),
        Some("acme"),
        "{r:?}"
    );
    let r = lab.curl(&["-H", &other, &url("/k")]);
    expect_echo(&lab, "second key", &r, "b2", "/k");
    assert_eq!(
        r.echoed_header("x-user-id").as_deref(),
        Some("other"),
        "{r:?}"
    );

    let before = lab.echo_requests(2);
    for (what, args) in [
        ("unknown key", vec!["-H", "x-api-key: not-a-key"]),
        ("no key", vec![]),
        (
            "key in another header",
            vec!["-H", "authorization: Bearer ci-secret-key-0123456789"],
        ),
    ] {
        let u = url("/k");
        let mut a = args.clone();
        a.push(&u);
        let r = lab.curl(&a);
        expect_status(&lab, what, &r, 401);
        assert!(
            r.header("www-authenticate").is_some(),
            "{what}: 401 without WWW-Authenticate: {r:?}"
        );
    }
    assert_eq!(
        lab.echo_requests(2),
        before,
        "refused requests reached the backend"
    );

    // Revoke "ci": the file now holds only "other".
    write_key_file(&lab, "keys.toml", &both[1..]);
    let start = Instant::now();
    loop {
        let r = lab.curl(&["-H", &ci, &url("/k")]);
        if r.status == 401 {
            println!("revoked key refused after {:?}", start.elapsed());
            break;
        }
        expect_status(&lab, "revoked key, before the file is re-read", &r, 200);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "revoked key still accepted after 5 s\nagent output:\n{}",
            lab.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = lab.curl(&["-H", &other, &url("/k")]);
    expect_echo(&lab, "the key left in the file", &r, "b2", "/k");
}

// ---------------------------------------------------------------------------------------
// JWT

/// Keys made with `openssl genpkey`, and the JWKS document holding their public halves.
struct JwtKeys {
    rsa_pem: Vec<u8>,
    rsa_pub_pem: Vec<u8>,
    ec_pem: Vec<u8>,
    jwks: String,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    run_checked(std::process::Command::new("openssl").args(args))
        .expect("openssl")
        .stdout
}

fn jwt_keys(lab: &GatewayLab) -> JwtKeys {
    let p = |n: &str| lab.dir.join(n).display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &p("rsa.pem"),
        "-pubout",
        "-out",
        &p("rsa.pub.pem"),
    ]);
    // Modulus=HEX; the exponent is openssl's default, 65537.
    let modulus = String::from_utf8(openssl(&[
        "pkey",
        "-pubin",
        "-in",
        &p("rsa.pub.pem"),
        "-noout",
        "-text",
    ]))
    .unwrap();
    assert!(
        modulus.contains("65537"),
        "unexpected RSA exponent:\n{modulus}"
    );
    let n_hex = String::from_utf8(openssl(&[
        "rsa",
        "-pubin",
        "-in",
        &p("rsa.pub.pem"),
        "-noout",
        "-modulus",
    ]))
    .unwrap();
    let n = unhex(n_hex.trim().trim_start_matches("Modulus="));
    let (ec_pem, ec_jwk) = ec_key(lab, "ec1");
    let jwks = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "rsa1", "use": "sig", "alg": "RS256",
         "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"},
        ec_jwk,
    ]})
    .to_string();
    JwtKeys {
        rsa_pem: std::fs::read(p("rsa.pem")).unwrap(),
        rsa_pub_pem: std::fs::read(p("rsa.pub.pem")).unwrap(),
        ec_pem,
        jwks,
    }
}

/// A new P-256 key (`openssl genpkey`): its PEM (PKCS#8) and its public JWK with `kid`.
fn ec_key(lab: &GatewayLab, kid: &str) -> (Vec<u8>, serde_json::Value) {
    let pem = lab.dir.join(&format!("{kid}.pem")).display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &pem,
    ]);
    // A P-256 SubjectPublicKeyInfo ends with the point 04 || x || y.
    let spki = openssl(&["pkey", "-in", &pem, "-pubout", "-outform", "DER"]);
    let point = &spki[spki.len() - 65..];
    assert_eq!(point[0], 4, "uncompressed EC point expected");
    let jwk = serde_json::json!({
        "kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    (std::fs::read(&pem).unwrap(), jwk)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

const ISSUER: &str = "https://issuer.test/";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, aud: &str, exp: u64, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": "alice", "iss": iss, "aud": aud, "exp": exp, "iat": now(),
        "scope": scope, "tenant": "t1",
    })
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

/// RS256 and ES256 tokens checked against a JWKS file and a JWKS URL (a web server in the
/// LB namespace); expired, wrong issuer / audience, `alg: none`, HS256 keyed with the public
/// key, garbage and no token get 401; a token without the route's scope gets 403; a key
/// added at the URL is picked up (refetch on an unknown `kid`).
#[test]
fn jwt_rs256_es256_from_file_and_url() {
    let mut lab = GatewayLab::new();
    let keys = jwt_keys(&lab);
    let jwks_dir = lab.dir.join("jwks");
    std::fs::create_dir_all(&jwks_dir).unwrap();
    std::fs::write(jwks_dir.join("jwks.json"), &keys.jwks).unwrap();
    lab.serve_dir_in_lb(&jwks_dir, 8099);
    let jwks_file = jwks_dir.join("jwks.json").display().to_string();
    let provider = |name: &str, source: &str| {
        format!(
            "\n[[auth]]\nname = \"{name}\"\nkind = \"jwt\"\n{source}\nissuer = \"{ISSUER}\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\", \"ES256\"]\n"
        )
    };
    lab.start(&GwConfig {
        routes: r#"
[[service.route]]
name = "jf"
path_prefix = "/jf"
service = "b0"
auth = "jwt-file"

[[service.route]]
name = "ju"
path_prefix = "/ju"
service = "b1"
auth = "jwt-url"

[[service.route]]
name = "admin"
path_prefix = "/admin"
service = "b2"
auth = "jwt-file"
scopes = ["admin"]
"#
        .into(),
        extra: provider("jwt-file", &format!("jwks_file = \"{jwks_file}\""))
            + &provider(
                "jwt-url",
                "jwks_url = \"http://127.0.0.1:8099/jwks.json\"\nmin_refetch_s = 1",
            ),
        ..GwConfig::default()
    });

    let rsa = EncodingKey::from_rsa_pem(&keys.rsa_pem).unwrap();
    let ec = EncodingKey::from_ec_pem(&keys.ec_pem).unwrap();
    let good = claims(ISSUER, "api", now() + 600, "read write");
    let rs = sign(Algorithm::RS256, "rsa1", &rsa, &good);
    let es = sign(Algorithm::ES256, "ec1", &ec, &good);
    let bearer = |t: &str| format!("Authorization: Bearer {t}");

    for (prefix, backend) in [("/jf", "b0"), ("/ju", "b1")] {
        for (alg, tok) in [("RS256", &rs), ("ES256", &es)] {
            let what = format!("{alg} token on {prefix}");
            let r = lab.curl(&[
                "-H",
                &bearer(tok),
                "-H",
                "X-User-ID: mallory",
                &url(&format!("{prefix}/x")),
            ]);
            expect_echo(&lab, &what, &r, backend, &format!("{prefix}/x"));
            assert_eq!(
                r.echoed_header("x-user-id").as_deref(),
                Some("alice"),
                "{what}: {r:?}"
            );
            assert_eq!(
                r.echoed_header("x-tenant-id").as_deref(),
                Some("t1"),
                "{what}: {r:?}"
            );
            assert_eq!(
                r.echoed_header("authorization"),
                None,
                "{what}: the token stops at the gateway: {r:?}"
            );
        }
    }

    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"rsa1"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let bad = [
        (
            "expired",
            sign(
                Algorithm::RS256,
                "rsa1",
                &rsa,
                &claims(ISSUER, "api", now() - 3600, "read"),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                "rsa1",
                &rsa,
                &claims("https://evil.test/", "api", now() + 600, "read"),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::ES256,
                "ec1",
                &ec,
                &claims(ISSUER, "other", now() + 600, "read"),
            ),
        ),
        ("alg none", none_token),
        (
            "HS256 keyed with the RSA public key",
            sign(
                Algorithm::HS256,
                "rsa1",
                &EncodingKey::from_secret(&keys.rsa_pub_pem),
                &good,
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
        ("unknown kid", sign(Algorithm::RS256, "nope", &rsa, &good)),
    ];
    let before = lab.echo_requests_total();
    for (what, tok) in &bad {
        for prefix in ["/jf", "/ju"] {
            let r = lab.curl(&["-H", &bearer(tok), &url(&format!("{prefix}/x"))]);
            expect_status(&lab, &format!("{what} on {prefix}"), &r, 401);
        }
    }
    let r = lab.curl(&[&url("/jf/x")]);
    expect_status(&lab, "no token", &r, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer")),
        "401 without WWW-Authenticate: Bearer: {r:?}"
    );

    let r = lab.curl(&["-H", &bearer(&rs), &url("/admin/x")]);
    expect_status(&lab, "token without the route's scope", &r, 403);
    assert_eq!(
        lab.echo_requests_total(),
        before,
        "refused requests reached a backend"
    );
    let admin = sign(
        Algorithm::ES256,
        "ec1",
        &ec,
        &claims(ISSUER, "api", now() + 600, "read admin"),
    );
    let r = lab.curl(&["-H", &bearer(&admin), &url("/admin/x")]);
    expect_echo(&lab, "token with the scope", &r, "b2", "/admin/x");

    // Key rotation at the URL: a token signed by a new key (unknown kid) passes once the
    // gateway refetches the JWKS (min_refetch_s = 1), within 5 s.
    let (ec2_pem, ec2_jwk) = ec_key(&lab, "ec2");
    let mut doc: serde_json::Value = serde_json::from_str(&keys.jwks).unwrap();
    doc["keys"].as_array_mut().unwrap().push(ec2_jwk);
    let tmp = jwks_dir.join("jwks.json.tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, jwks_dir.join("jwks.json")).unwrap();
    let ec2 = EncodingKey::from_ec_pem(&ec2_pem).unwrap();
    let rotated = sign(Algorithm::ES256, "ec2", &ec2, &good);
    let start = Instant::now();
    loop {
        let r = lab.curl(&["-H", &bearer(&rotated), &url("/ju/rotated")]);
        if r.status == 200 {
            expect_echo(&lab, "token of the rotated-in key", &r, "b1", "/ju/rotated");
            println!("rotated-in key accepted after {:?}", start.elapsed());
            break;
        }
        expect_status(&lab, "token of a key not yet fetched", &r, 401);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a token of the new JWKS key is still refused after 5 s\nagent output:\n{}",
            lab.agent_log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

// ---------------------------------------------------------------------------------------
// Rate limit

/// `rate_limit = { rate = 5, burst = 5 }`: five quick requests pass with X-RateLimit
/// headers, the sixth gets 429 with X-RateLimit-Limit: 5, X-RateLimit-Remaining: 0 and
/// Retry-After; after Retry-After a request passes again. Another route is not limited.
#[test]
fn rate_limit_429_then_recovers() {
    let mut lab = GatewayLab::new();
    lab.start(&routes(
        r#"
[[service.route]]
name = "limited"
path_prefix = "/rl"
service = "b0"
rate_limit = { rate = 5, burst = 5 }

[[service.route]]
name = "free"
path_prefix = "/free"
service = "b1"
"#,
    ));
    let urls: Vec<String> = (0..6).map(|i| url(&format!("/rl/{i}"))).collect();
    let t = Instant::now();
    let run = lab.curl_many(&[], &urls);
    // A burst slower than 200 ms would earn a token back; say so if it fails.
    let burst_took = t.elapsed();
    println!("burst of 6 took {burst_took:?}");
    let mut remaining = Vec::new();
    for (i, r) in run.replies[..5].iter().enumerate() {
        expect_echo(
            &lab,
            &format!("request {i} of the burst"),
            r,
            "b0",
            &format!("/rl/{i}"),
        );
        assert_eq!(
            r.header("x-ratelimit-limit"),
            Some("5"),
            "allowed response {i}: {r:?}"
        );
        let rem: u64 = r
            .header("x-ratelimit-remaining")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("allowed response {i} lacks X-RateLimit-Remaining: {r:?}"));
        remaining.push(rem);
    }
    assert!(
        remaining.windows(2).all(|w| w[1] < w[0]) && remaining[4] == 0,
        "X-RateLimit-Remaining should count down to 0: {remaining:?}"
    );
    let r = &run.replies[5];
    expect_status(
        &lab,
        &format!("sixth request of the burst ({burst_took:?})"),
        r,
        429,
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"), "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"), "{r:?}");
    assert!(
        r.header("x-ratelimit-reset").is_some(),
        "429 without X-RateLimit-Reset: {r:?}"
    );
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {r:?}"));
    assert!(
        (1..=2).contains(&retry),
        "Retry-After {retry} s for a 5/s bucket: {r:?}"
    );
    assert_eq!(
        lab.echo[0]
            .output()
            .lines()
            .filter(|l| l.starts_with("REQ GET /rl/5"))
            .count(),
        0,
        "the limited request reached the backend"
    );

    let r = lab.curl(&[&url("/free/x")]);
    expect_echo(&lab, "another route", &r, "b1", "/free/x");

    std::thread::sleep(Duration::from_secs(retry) + Duration::from_millis(100));
    let r = lab.curl(&[&url("/rl/after")]);
    expect_echo(&lab, "after Retry-After", &r, "b0", "/rl/after");
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// TLS, HTTP/2

/// Two names with two certificates: each name gets its own (checked by subject and by curl's
/// verification against them), a client without SNI gets the first; ALPN h2 works, and the
/// backend sees X-Forwarded-Proto: https.
#[test]
fn tls_sni_two_certs_and_alpn_h2() {
    let mut lab = GatewayLab::new();
    let a = lab.cert(&["a.example.test"]);
    let b = lab.cert(&["b.example.test", "*.b.example.test"]);
    let bundle = lab.dir.join("bundle.pem");
    let mut pem = std::fs::read(&a.cert).unwrap();
    pem.extend(std::fs::read(&b.cert).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let bundle = bundle.display().to_string();
    lab.start(&GwConfig {
        routes: "\n[[service.route]]\nname = \"all\"\npath_prefix = \"/\"\nservice = \"all\"\n"
            .into(),
        tls: vec![a.clone(), b.clone()],
        ..GwConfig::default()
    });
    let subject_of = |stderr: &str| -> String {
        stderr
            .lines()
            .find_map(|l| l.trim_start_matches("* ").trim().strip_prefix("subject: "))
            .unwrap_or("")
            .to_owned()
    };
    let check = |name: &str, want_cn: &str, extra: &[&str]| -> (Reply, String) {
        let resolve = format!("{name}:443:{VIP4}");
        let u = format!("https://{name}/tls");
        let mut args = vec![
            "-v",
            "--cacert",
            bundle.as_str(),
            "--resolve",
            resolve.as_str(),
        ];
        args.extend_from_slice(extra);
        args.push(&u);
        let run = lab.curl_run(&args);
        let r = run.replies.into_iter().next().unwrap_or_default();
        assert_eq!(
            r.status,
            200,
            "{name}: {r:?}\ncurl stderr:\n{}\nagent:\n{}",
            run.stderr,
            lab.agent_log()
        );
        let subject = subject_of(&run.stderr);
        assert!(
            subject.contains(&format!("CN={want_cn}"))
                || subject.contains(&format!("CN = {want_cn}")),
            "{name}: served certificate subject {subject:?}, want CN={want_cn}\n{}",
            run.stderr
        );
        (r, run.stderr)
    };
    let (r, _) = check("a.example.test", "a.example.test", &["--http1.1"]);
    assert_eq!(r.proto, "HTTP/1.1");
    assert_eq!(
        r.echoed_header("x-forwarded-proto").as_deref(),
        Some("https"),
        "{r:?}"
    );
    check("b.example.test", "b.example.test", &["--http1.1"]);
    check("x.b.example.test", "b.example.test", &["--http1.1"]);
    let (r, stderr) = check("b.example.test", "b.example.test", &["--http2"]);
    assert_eq!(r.proto, "HTTP/2", "ALPN did not give h2:\n{stderr}");
    assert!(
        stderr.contains("ALPN: server accepted h2")
            || stderr.contains("ALPN, server accepted to use h2"),
        "no h2 in ALPN:\n{stderr}"
    );

    // No SNI (an address): the first certificate.
    let run = lab.curl_run(&["-v", "-k", &format!("https://{VIP4}/tls")]);
    let subject = subject_of(&run.stderr);
    assert!(
        subject.contains("a.example.test"),
        "default certificate: {subject:?}\n{}",
        run.stderr
    );
}

/// h2c with prior knowledge, and a gRPC-shaped exchange over an `http2 = true` route: the
/// backend gets HTTP/2, the client gets `content-type: application/grpc` and the trailers
/// `grpc-status: 0`, `grpc-message: ok`.
#[test]
fn h2c_and_grpc_trailers() {
    let mut lab = GatewayLab::new();
    lab.start(&routes(
        r#"
[[service.route]]
name = "grpc"
path = "/grpc"
service = "b0"
http2 = true

[[service.route]]
name = "rest"
path_prefix = "/"
service = "b1"
"#,
    ));
    let r = lab.curl(&["--http2-prior-knowledge", &url("/h2c?a=1")]);
    expect_echo(&lab, "h2c prior knowledge", &r, "b1", "/h2c?a=1");
    assert_eq!(r.proto, "HTTP/2", "{r:?}");

    // An empty gRPC message: flag 0, length 0.
    let msg = lab.dir.join("grpc-msg.bin");
    std::fs::write(&msg, [0u8; 5]).unwrap();
    let data = format!("@{}", msg.display());
    let run = lab.curl_run(&[
        "--http2-prior-knowledge",
        "-v",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        &data,
        &url("/grpc"),
    ]);
    let r = run.replies.first().cloned().unwrap_or_default();
    assert_eq!(
        r.status,
        200,
        "{r:?}\n{}\nagent:\n{}",
        run.stderr,
        lab.agent_log()
    );
    assert_eq!(r.proto, "HTTP/2");
    assert_eq!(r.header("content-type"), Some("application/grpc"), "{r:?}");
    assert!(r.body.contains("\"backend\":\"b0\""), "{r:?}");
    assert!(
        r.body.contains("\"version\":\"HTTP/2.0\""),
        "the backend was not spoken to in HTTP/2: {r:?}"
    );
    // curl -v shows trailers as `< name: value` after the body.
    let trailers: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("< grpc-"))
        .collect();
    assert!(
        trailers.iter().any(|l| l.trim() == "< grpc-status: 0"),
        "no grpc-status: 0 trailer: {trailers:?}\n{}",
        run.stderr
    );
    assert!(
        trailers.iter().any(|l| l.trim() == "< grpc-message: ok"),
        "{trailers:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Malformed requests, reload, metrics

/// Requests smuggling-prone or broken at the HTTP/1.1 level get a 4xx and never reach a
/// backend as a complete request: Content-Length with Transfer-Encoding, a bad chunk size,
/// two different Content-Lengths, a Transfer-Encoding whose last coding is not chunked, a
/// 100 KiB header.
#[test]
fn malformed_http_is_refused() {
    let mut lab = GatewayLab::new();
    lab.start(&routes(
        "\n[[service.route]]\nname = \"all\"\npath_prefix = \"/\"\nservice = \"all\"\n",
    ));
    let big = "a".repeat(100 * 1024);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "CL+TE",
            b"POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "bad chunk size",
            b"POST /bad-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "two different Content-Lengths",
            b"POST /two-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
                .to_vec(),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST /te-gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabcd".to_vec(),
        ),
        (
            "oversized header",
            format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").into_bytes(),
        ),
    ];
    // Every case is tried before failing, so one run shows them all.
    let mut problems = Vec::new();
    for (what, bytes) in &cases {
        let got = lab.raw_http(bytes, Duration::from_secs(3));
        let text = String::from_utf8_lossy(&got);
        let line = text.lines().next().unwrap_or("").to_owned();
        let code: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        println!("{what}: {line:?}");
        if !(400..500).contains(&code) {
            let shown: String = text.chars().take(1200).collect();
            problems.push(format!(
                "{what}: want a 4xx, got {line:?}; whole answer:\n{shown}"
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for (i, e) in lab.echo.iter().enumerate() {
        let log = e.output();
        for path in ["/cl-te", "/bad-chunk", "/two-cl", "/te-gzip", "/big"] {
            if let Some(l) = log
                .lines()
                .find(|l| l.starts_with("REQ") && l.ends_with(path))
            {
                problems.push(format!("{} received {path} in full: {l:?}", ECHO_NAMES[i]));
            }
        }
        let broken = log.lines().filter(|l| l.starts_with("BAD")).count();
        if broken > 0 {
            println!(
                "{}: {broken} request heads arrived whose body broke off",
                ECHO_NAMES[i]
            );
        }
    }
    assert!(
        problems.is_empty(),
        "malformed requests were not refused:\n{}\nagent output:\n{}",
        problems.join("\n"),
        lab.agent_log()
    );
    // The gateway still serves.
    let r = lab.curl(&[&url("/fine")]);
    expect_status(&lab, "a good request afterwards", &r, 200);
}

/// 300 requests on kept-alive connections at 100/s while the config is rewritten (a route
/// added): every one gets 200, and the new route works afterwards.
#[test]
fn reload_under_load_loses_nothing() {
    let mut lab = GatewayLab::new();
    let base = "\n[[service.route]]\nname = \"all\"\npath_prefix = \"/\"\nservice = \"all\"\n";
    lab.start(&routes(base));
    let urls: Vec<String> = (0..300).map(|i| url(&format!("/load/{i}"))).collect();
    let added = format!(
        "{base}\n[[service.route]]\nname = \"added\"\npath_prefix = \"/added\"\nrewrite_prefix = \"/was-added\"\nservice = \"b2\"\n"
    );
    let lab = &lab;
    let run = std::thread::scope(|s| {
        let load = s.spawn(|| lab.curl_many(&["--rate", "100/s"], &urls));
        std::thread::sleep(Duration::from_millis(1000));
        let t = Instant::now();
        lab.reload(&routes(&added));
        println!("reload applied in {:?} during the load", t.elapsed());
        load.join().expect("load thread")
    });
    let failed: Vec<(usize, &Reply)> = run
        .replies
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status != 200)
        .collect();
    let conns: u32 = run.replies.iter().map(|r| r.new_conns).sum();
    println!("300 requests over {conns} connections");
    assert!(
        failed.is_empty(),
        "{} of 300 failed across the reload, first: {:?}\ncurl: {}\nagent output:\n{}",
        failed.len(),
        failed.first(),
        run.stderr,
        lab.agent_log()
    );
    assert!(
        conns < 100,
        "keep-alive was not used: {conns} connections for 300 requests"
    );
    let r = lab.curl(&[&url("/added/x")]);
    expect_echo(lab, "the added route", &r, "b2", "/was-added/x");
}

/// The agent's metrics count the gateway's requests per route (the upstream connections
/// themselves worked in every test above, so XDP/sk_lookup did not catch them).
#[test]
fn metrics_count_route_requests() {
    let mut lab = GatewayLab::new();
    lab.start(&routes(
        "\n[[service.route]]\nname = \"counted\"\npath_prefix = \"/\"\nservice = \"all\"\n",
    ));
    let urls: Vec<String> = (0..20).map(|i| url(&format!("/m/{i}"))).collect();
    let sum_for_route = |text: &str| -> (f64, Vec<String>) {
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("counted"))
            .filter(|l| l.split(['{', ' ']).next() == Some("lb_gateway_requests_total"))
            .map(str::to_owned)
            .collect();
        let sum = lines
            .iter()
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum();
        (sum, lines)
    };
    for r in lab.curl_many(&[], &urls).replies {
        expect_status(&lab, "counted request", &r, 200);
    }
    let m1 = lab.metrics().expect("GET /metrics");
    let (s1, lines1) = sum_for_route(&m1);
    let gateway_lines: Vec<&str> = m1
        .lines()
        .filter(|l| l.contains("gateway"))
        .take(40)
        .collect();
    assert!(
        s1 >= 20.0,
        "lb_gateway_requests_total for route \"counted\" does not show the 20 requests: {lines1:?}\n\
         gateway lines in /metrics:\n{}",
        gateway_lines.join("\n")
    );
    for r in lab.curl_many(&[], &urls).replies {
        expect_status(&lab, "counted request", &r, 200);
    }
    let (s2, lines2) = sum_for_route(&lab.metrics().expect("GET /metrics"));
    assert!(
        s2 >= s1 + 20.0,
        "route counters did not grow by 20: {s1} -> {s2}\n{lines1:?}\n{lines2:?}"
    );
}
