//! JWT verification with keys from files.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::super::{
    AuthError, AuthFailure, AuthMethod, Authenticator, JwtProvider, JwtSettings, Keys, TokenSource,
    identity_headers, reason, strip_identity_headers,
};
use super::fixtures::*;

fn settings(file: &str) -> JwtSettings {
    let mut s = JwtSettings::new(Keys::File(testdata(file)));
    s.issuer = Some(ISS.into());
    s.audiences = vec![AUD.into()];
    s
}

async fn provider(s: JwtSettings) -> JwtProvider {
    JwtProvider::new(s, &CancellationToken::new())
        .await
        .unwrap()
}

async fn reason_of(p: &JwtProvider, token: &str) -> &'static str {
    p.verify(token).await.unwrap_err().reason
}

#[tokio::test]
async fn valid_rs256_and_es256_give_identity_and_headers() {
    let p = provider(settings("jwks.json")).await;
    let mut c = claims("alice");
    c["tenant"] = json!("acme");
    c["scope"] = json!("read write");
    let id = p.verify(&rs256("rsa1", &c)).await.unwrap();
    assert_eq!(id.method, AuthMethod::Jwt);
    assert_eq!(id.subject, "alice");
    assert_eq!(id.tenant.as_deref(), Some("acme"));
    assert_eq!(id.scopes, ["read", "write"]);
    let h: Vec<(String, String)> = id
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        h,
        [
            ("x-user-id".into(), "alice".into()),
            ("x-tenant-id".into(), "acme".into()),
            ("x-scopes".into(), "read write".into())
        ]
    );

    let mut c = claims("bob");
    c["scp"] = json!(["a", "b"]);
    let es = sign(Algorithm::ES256, Some("ec1"), "ec1", &c);
    let id = p.authenticate(&bearer(&es)).await.unwrap();
    assert_eq!(
        (id.subject.as_str(), id.scopes.clone()),
        ("bob", vec!["a".into(), "b".into()])
    );
    assert_eq!(id.tenant, None);
}

#[tokio::test]
async fn eddsa_and_ps256_when_allowed() {
    let mut s = settings("jwks.json");
    s.algorithms = vec![Algorithm::EdDSA, Algorithm::PS256];
    let p = provider(s).await;
    let ed = sign(Algorithm::EdDSA, Some("ed1"), "ed1", &claims("e"));
    assert_eq!(p.verify(&ed).await.unwrap().subject, "e");
    // rsa1's JWK pins `alg: RS256`, so PS256 with it is refused...
    let ps = sign(Algorithm::PS256, Some("rsa1"), "rsa1", &claims("p"));
    assert_eq!(reason_of(&p, &ps).await, reason::ALG_NOT_ALLOWED);
    // ... while a bare PEM RSA key takes it.
    let mut s = settings("rsa1.pub.pem");
    s.algorithms = vec![Algorithm::PS256];
    let p = provider(s).await;
    assert_eq!(p.verify(&ps).await.unwrap().subject, "p");
}

#[tokio::test]
async fn pem_key_matches_any_kid_but_only_its_type() {
    let p = provider(settings("ec1.pub.pem")).await;
    for kid in [None, Some("whatever")] {
        let t = sign(Algorithm::ES256, kid, "ec1", &claims("x"));
        assert!(p.verify(&t).await.is_ok(), "kid {kid:?}");
    }
    let rs = sign(Algorithm::RS256, None, "rsa1", &claims("x"));
    assert_eq!(reason_of(&p, &rs).await, reason::ALG_NOT_ALLOWED);
    // Same type, other key: the signature is what fails.
    let p = provider(settings("rsa2.pub.pem")).await;
    assert_eq!(reason_of(&p, &rs).await, reason::BAD_SIGNATURE);
}

#[tokio::test]
async fn expired_not_yet_valid_and_leeway() {
    let t = |exp: i64, nbf: Option<i64>| {
        let mut c = claims("a");
        c["exp"] = json!(now() as i64 + exp);
        if let Some(nbf) = nbf {
            c["nbf"] = json!(now() as i64 + nbf);
        }
        rs256("rsa1", &c)
    };
    let p = provider(settings("jwks.json")).await; // 60 s leeway
    assert_eq!(reason_of(&p, &t(-120, None)).await, reason::EXPIRED);
    assert!(p.verify(&t(-30, None)).await.is_ok(), "within leeway");
    assert!(
        p.verify(&t(600, Some(30))).await.is_ok(),
        "nbf within leeway"
    );
    assert_eq!(
        reason_of(&p, &t(600, Some(120))).await,
        reason::NOT_YET_VALID
    );

    let mut s = settings("jwks.json");
    s.leeway = Duration::ZERO;
    let p = provider(s).await;
    assert_eq!(reason_of(&p, &t(-30, None)).await, reason::EXPIRED);
    assert_eq!(reason_of(&p, &t(-1, None)).await, reason::EXPIRED);
    assert_eq!(
        reason_of(&p, &t(600, Some(30))).await,
        reason::NOT_YET_VALID
    );
    let f = p.verify(&t(-30, None)).await.unwrap_err();
    assert_eq!(f.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        f.www_authenticate.unwrap(),
        "Bearer realm=\"lb\", error=\"invalid_token\", error_description=\"the token has expired\""
    );
}

#[tokio::test]
async fn issuer_audience_subject_and_exp_rules() {
    let p = provider(settings("jwks.json")).await;
    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims("a");
        c[k] = v;
        rs256("rsa1", &c)
    };
    let without = |k: &str| {
        let mut c = claims("a");
        c.as_object_mut().unwrap().remove(k);
        rs256("rsa1", &c)
    };
    assert_eq!(
        reason_of(&p, &with("iss", json!("https://evil"))).await,
        reason::WRONG_ISSUER
    );
    assert_eq!(reason_of(&p, &without("iss")).await, reason::WRONG_ISSUER);
    assert_eq!(
        reason_of(&p, &with("aud", json!("other"))).await,
        reason::WRONG_AUDIENCE
    );
    assert_eq!(
        reason_of(&p, &with("aud", json!(["x", "y"]))).await,
        reason::WRONG_AUDIENCE
    );
    assert_eq!(reason_of(&p, &without("aud")).await, reason::WRONG_AUDIENCE);
    assert!(p.verify(&with("aud", json!(["x", AUD]))).await.is_ok());
    assert_eq!(reason_of(&p, &without("sub")).await, reason::MISSING_CLAIM);
    assert_eq!(reason_of(&p, &without("exp")).await, reason::MISSING_CLAIM);
    assert_eq!(
        reason_of(&p, &with("exp", json!("tomorrow"))).await,
        reason::MALFORMED
    );

    let mut s = settings("jwks.json");
    s.require_exp = false;
    s.issuer = None;
    s.audiences.clear();
    let p = provider(s).await;
    assert!(p.verify(&without("exp")).await.is_ok());
    assert!(p.verify(&with("iss", json!("https://any"))).await.is_ok());
}

#[tokio::test]
async fn alg_none_is_refused() {
    let p = provider(settings("jwks.json")).await;
    let header = B64.encode(br#"{"alg":"none","typ":"JWT","kid":"rsa1"}"#);
    let body = B64.encode(claims("root").to_string());
    for token in [format!("{header}.{body}."), format!("{header}.{body}.AAAA")] {
        assert_eq!(
            reason_of(&p, &token).await,
            reason::ALG_NOT_ALLOWED,
            "{token}"
        );
    }
    // A real RS256 signature with the header swapped to `none` is refused too.
    let signed = rs256("rsa1", &claims("root"));
    let swapped = format!("{header}.{}", signed.split_once('.').unwrap().1);
    assert_eq!(reason_of(&p, &swapped).await, reason::ALG_NOT_ALLOWED);
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let public_pem = std::fs::read(testdata("rsa1.pub.pem")).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa1".into());
    let forged =
        jsonwebtoken::encode(&h, &claims("root"), &EncodingKey::from_secret(&public_pem)).unwrap();
    for file in ["jwks.json", "rsa1.pub.pem"] {
        let p = provider(settings(file)).await;
        assert_eq!(
            reason_of(&p, &forged).await,
            reason::ALG_NOT_ALLOWED,
            "{file}"
        );
        assert_eq!(p.signature_checks(), 0, "an HMAC token reached a key");
    }
    // And HMAC cannot be allowed at all.
    let mut s = settings("rsa1.pub.pem");
    s.algorithms = vec![Algorithm::RS256, Algorithm::HS256];
    let e = JwtProvider::new(s, &CancellationToken::new())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, AuthError::HmacAlgorithm(Algorithm::HS256)),
        "{e}"
    );
    // A JWKS that carries a symmetric key (with the PEM as value) does not load it.
    let jwks = json!({ "keys": [
        { "kty": "oct", "kid": "rsa1", "k": B64.encode(&public_pem) },
    ]});
    let f = TempFile::new("oct.json", &jwks.to_string());
    let e = JwtProvider::new(
        JwtSettings::new(Keys::File(f.0.clone())),
        &CancellationToken::new(),
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("no usable signature key"), "{e}");
}

#[tokio::test]
async fn allowed_list_and_key_type_are_enforced() {
    let mut s = settings("jwks.json");
    s.algorithms = vec![Algorithm::ES256];
    let p = provider(s).await;
    assert_eq!(
        reason_of(&p, &rs256("rsa1", &claims("a"))).await,
        reason::ALG_NOT_ALLOWED
    );
    assert!(
        p.verify(&sign(Algorithm::ES256, Some("ec1"), "ec1", &claims("a")))
            .await
            .is_ok()
    );
    // ES256 header naming the RSA key: alg does not fit the key.
    let p = provider(settings("jwks.json")).await;
    let mixed = sign(Algorithm::ES256, Some("rsa1"), "ec1", &claims("a"));
    assert_eq!(reason_of(&p, &mixed).await, reason::ALG_NOT_ALLOWED);
    // RS384 not in the default list.
    let rs384 = sign(Algorithm::RS384, Some("rsa1"), "rsa1", &claims("a"));
    assert_eq!(reason_of(&p, &rs384).await, reason::ALG_NOT_ALLOWED);
    assert_eq!(p.signature_checks(), 0);
    // Unknown kid with a file: nothing to refetch.
    let other = sign(Algorithm::RS256, Some("nope"), "rsa1", &claims("a"));
    assert_eq!(reason_of(&p, &other).await, reason::UNKNOWN_KID);
}

#[tokio::test]
async fn truncated_tampered_and_garbage_tokens() {
    let p = provider(settings("jwks.json")).await;
    let good = rs256("rsa1", &claims("alice"));
    let (head, sig) = good.rsplit_once('.').unwrap();
    assert_eq!(reason_of(&p, head).await, reason::MALFORMED);
    // A cut signature fails as base64 (trailing bits) or as a signature.
    let cut = reason_of(&p, &format!("{head}.{}", &sig[..sig.len() - 8])).await;
    assert!(
        [reason::BAD_SIGNATURE, reason::MALFORMED].contains(&cut),
        "{cut}"
    );
    let (h, rest) = good.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let forged_body = B64.encode(claims("root").to_string());
    assert_eq!(
        reason_of(&p, &format!("{h}.{forged_body}.{s}")).await,
        reason::BAD_SIGNATURE
    );
    let long = "a".repeat(20_000);
    for junk in ["x", "a.b.c", "..", "eyJ.eyJ.sig", "!!!.###.$$$", &long] {
        assert_eq!(reason_of(&p, junk).await, reason::MALFORMED, "{junk:.20}");
    }
    assert!(
        p.verify(&good).await.is_ok(),
        "the untampered token still passes"
    );

    // A `crit` extension we cannot understand refuses the token (RFC 7515 4.1.11), even
    // correctly signed.
    let crit_header = B64.encode(br#"{"alg":"RS256","kid":"rsa1","crit":["exp-ext"],"exp-ext":1}"#);
    let body = B64.encode(claims("a").to_string());
    let message = format!("{crit_header}.{body}");
    let pem = std::fs::read(testdata("rsa1.key.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
    assert_eq!(
        reason_of(&p, &format!("{message}.{sig}")).await,
        reason::MALFORMED
    );
    // The same claims without `crit` pass: the signing above is right.
    let plain = B64.encode(br#"{"alg":"RS256","kid":"rsa1"}"#);
    let message = format!("{plain}.{body}");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
    assert!(p.verify(&format!("{message}.{sig}")).await.is_ok());
}

#[tokio::test]
async fn where_the_token_is_read_from() {
    let p = provider(settings("jwks.json")).await;
    let t = rs256("rsa1", &claims("a"));
    let hdr = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    };
    let f = p.authenticate(&HeaderMap::new()).await.unwrap_err();
    assert_eq!(f.reason, reason::MISSING);
    assert_eq!(f.www_authenticate.unwrap(), "Bearer realm=\"lb\"");
    let bad = [
        (
            vec![("authorization", "Basic dXNlcjpwdw==")],
            reason::MISSING,
        ),
        (vec![("authorization", "Bearer")], reason::MALFORMED),
        (vec![("authorization", "Bearer   ")], reason::MALFORMED),
    ];
    for (pairs, want) in bad {
        assert_eq!(
            p.authenticate(&hdr(&pairs)).await.unwrap_err().reason,
            want,
            "{pairs:?}"
        );
    }
    let two = format!("Bearer {t}");
    let dup = hdr(&[("authorization", &two), ("authorization", &two)]);
    assert_eq!(
        p.authenticate(&dup).await.unwrap_err().reason,
        reason::MALFORMED
    );
    assert!(
        p.authenticate(&hdr(&[("authorization", &format!("bearer {t}"))]))
            .await
            .is_ok()
    );

    let mut s = settings("jwks.json");
    s.token_source = TokenSource::Header(HeaderName::from_static("x-jwt"));
    let p = provider(s).await;
    assert!(p.authenticate(&hdr(&[("x-jwt", &t)])).await.is_ok());
    assert_eq!(
        p.authenticate(&bearer(&t)).await.unwrap_err().reason,
        reason::MISSING
    );
}

#[tokio::test]
async fn claim_headers_and_injection_refused() {
    let mut s = settings("jwks.json");
    s.tenant_claim = "org".into();
    s.claim_headers = vec![
        ("email".into(), HeaderName::from_static("x-user-email")),
        (
            "https://ex.com/roles".into(),
            HeaderName::from_static("x-roles"),
        ),
    ];
    let strip = identity_headers([&s]);
    let p = provider(s).await;
    let mut c = claims("José");
    c["org"] = json!(42);
    c["email"] = json!("j@ex.com");
    c["https://ex.com/roles"] = json!(["admin", "dev"]);
    let id = p.verify(&rs256("rsa1", &c)).await.unwrap();
    let mut h = HeaderMap::new();
    id.apply(&mut h);
    assert_eq!(h["x-user-id"].as_bytes(), "José".as_bytes());
    assert_eq!(h["x-tenant-id"], "42");
    assert_eq!(h["x-user-email"], "j@ex.com");
    assert_eq!(h["x-roles"], "admin,dev");
    assert!(!h.contains_key("x-scopes"));

    for (claim, value) in [
        ("sub", json!("alice\r\nX-Admin: 1")),
        ("sub", json!("a\0b")),
        ("org", json!("acme\nx")),
        ("org", json!({"nested": 1})),
        ("email", json!("a@b\u{7f}")),
        ("email", json!({"a": 1})),
        ("https://ex.com/roles", json!(["ok", "bad\r\n"])),
        ("scope", json!("read\u{1}write")),
        ("scp", json!([1, 2])),
    ] {
        let mut c = claims("alice");
        c[claim] = value.clone();
        assert_eq!(
            reason_of(&p, &rs256("rsa1", &c)).await,
            reason::BAD_CLAIM,
            "{claim}: {value}"
        );
    }

    // The caller strips client-sent copies on every route.
    assert_eq!(
        strip.iter().map(HeaderName::as_str).collect::<Vec<_>>(),
        [
            "x-user-id",
            "x-tenant-id",
            "x-scopes",
            "x-user-email",
            "x-roles"
        ]
    );
    let mut req = HeaderMap::new();
    for n in ["x-user-id", "X-Scopes", "x-roles", "x-other"] {
        req.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_static("forged"),
        );
    }
    strip_identity_headers(&mut req, &strip);
    assert_eq!(
        req.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
        ["x-other"]
    );
}

#[tokio::test]
async fn reserved_claim_header_is_refused() {
    for name in ["x-user-id", "authorization", "host"] {
        let mut s = settings("jwks.json");
        s.claim_headers = vec![("c".into(), HeaderName::from_static(name))];
        let e = JwtProvider::new(s, &CancellationToken::new()).await.err();
        assert!(matches!(e, Some(AuthError::ReservedHeader(_))), "{name}");
    }
}

#[tokio::test]
async fn cache_hit_skips_verification() {
    let p = provider(settings("jwks.json")).await;
    let t = rs256("rsa1", &claims("a"));
    let first = p.verify(&t).await.unwrap();
    for _ in 0..5 {
        let again = p.authenticate(&bearer(&t)).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again));
    }
    assert_eq!(p.signature_checks(), 1);
    // Failures are not cached (and a different token is a miss).
    let other = rs256("rsa1", &claims("b"));
    p.verify(&other).await.unwrap();
    assert_eq!(p.signature_checks(), 2);
}

#[tokio::test]
async fn cache_never_serves_past_exp_nor_max_ttl() {
    let mut s = settings("jwks.json");
    s.leeway = Duration::ZERO;
    s.cache_max_ttl = Duration::from_secs(3600);
    let p = provider(s).await;
    let mut c = claims("a");
    // Expires at the next second boundary + 1.
    c["exp"] = json!(now() + 2);
    let t = rs256("rsa1", &c);
    p.verify(&t).await.unwrap();
    p.verify(&t).await.unwrap();
    assert_eq!(p.signature_checks(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(reason_of(&p, &t).await, reason::EXPIRED);
    assert_eq!(p.signature_checks(), 2, "expired token served from cache");

    let mut s = settings("jwks.json");
    s.cache_max_ttl = Duration::from_millis(150);
    let p = provider(s).await;
    let t = rs256("rsa1", &claims("a"));
    p.verify(&t).await.unwrap();
    p.verify(&t).await.unwrap();
    assert_eq!(p.signature_checks(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.verify(&t).await.unwrap();
    assert_eq!(p.signature_checks(), 2, "served past max TTL");
}

#[tokio::test]
async fn scopes_required_gives_403() {
    let p = Authenticator::Jwt(std::sync::Arc::new(provider(settings("jwks.json")).await));
    let mut c = claims("a");
    c["scope"] = json!("read");
    let id = p.authenticate(&bearer(&rs256("rsa1", &c))).await.unwrap();
    assert!(id.require_scopes(&["read".into()]).is_ok());
    assert!(id.require_scopes(&[]).is_ok());
    let f: AuthFailure = id
        .require_scopes(&["read".into(), "admin".into()])
        .unwrap_err();
    assert_eq!(
        (f.status, f.reason),
        (StatusCode::FORBIDDEN, reason::INSUFFICIENT_SCOPE)
    );
    assert_eq!(
        f.www_authenticate.unwrap(),
        "Bearer realm=\"lb\", error=\"insufficient_scope\", error_description=\"the credential \
         lacks a required scope\", scope=\"read admin\""
    );
}

#[tokio::test]
async fn bad_key_files_are_errors() {
    let f = TempFile::new("junk.pem", "not a key");
    let e = JwtProvider::new(
        JwtSettings::new(Keys::File(f.0.clone())),
        &CancellationToken::new(),
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().starts_with(&f.0.display().to_string()), "{e}");
    let missing = JwtSettings::new(Keys::File("/nonexistent/keys.json".into()));
    assert!(matches!(
        JwtProvider::new(missing, &CancellationToken::new()).await,
        Err(AuthError::KeyFile { .. })
    ));
    let mut none = settings("jwks.json");
    none.algorithms.clear();
    assert!(matches!(
        JwtProvider::new(none, &CancellationToken::new()).await,
        Err(AuthError::NoAlgorithm)
    ));
}
