//! API keys: lookup, reload, revocation, bad files.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::super::{
    ApiKeySettings, ApiKeys, AuthMethod, Authenticator, KeyFileErrors, KeyLimits, reason,
};
use super::fixtures::{TempFile, eventually};

fn sha(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn entry(name: &str, key: &str, extra: &str) -> String {
    format!(
        "[[key]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n",
        sha(key)
    )
}

fn with_key(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_str(key).unwrap());
    h
}

#[tokio::test]
async fn valid_unknown_and_missing_keys() {
    let f = TempFile::new(
        "keys.toml",
        &(entry(
            "ci",
            "s3cret-ci",
            "tenant = \"acme\"\nscopes = [\"read\", \"write\"]\nrate = 100\nburst = 200",
        ) + &entry("bot", "s3cret-bot", "rate = 5")
            + &entry("plain", "s3cret-plain", "")),
    );
    let keys = ApiKeys::load(ApiKeySettings::new(&f.0)).unwrap();
    let auth = Authenticator::ApiKey(keys.clone());
    let id = auth.authenticate(&with_key("s3cret-ci")).await.unwrap();
    assert_eq!(id.method, AuthMethod::ApiKey);
    assert_eq!(id.subject, "ci");
    assert_eq!(id.tenant.as_deref(), Some("acme"));
    assert_eq!(id.scopes, ["read", "write"]);
    assert_eq!(
        id.limits,
        Some(KeyLimits {
            rate: 100,
            burst: 200
        })
    );
    let mut h = HeaderMap::new();
    id.apply(&mut h);
    assert_eq!(h["x-user-id"], "ci");
    assert_eq!(h["x-tenant-id"], "acme");
    assert_eq!(h["x-scopes"], "read write");
    assert_eq!(
        keys.lookup(b"s3cret-bot").unwrap().limits,
        Some(KeyLimits { rate: 5, burst: 5 })
    );
    let plain = keys.lookup(b"s3cret-plain").unwrap();
    assert_eq!(
        (plain.tenant.clone(), plain.limits, plain.scopes.len()),
        (None, None, 0)
    );

    for (headers, want) in [
        (with_key("S3CRET-CI"), reason::UNKNOWN_KEY),
        (with_key("s3cret-ci "), reason::UNKNOWN_KEY),
        (HeaderMap::new(), reason::MISSING),
        (with_key(""), reason::MALFORMED),
    ] {
        let f = auth.authenticate(&headers).await.unwrap_err();
        assert_eq!((f.status, f.reason), (StatusCode::UNAUTHORIZED, want));
        assert!(
            f.www_authenticate
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("ApiKey realm=\"lb\"")
        );
    }
    let mut two = with_key("s3cret-ci");
    two.append("x-api-key", HeaderValue::from_static("s3cret-bot"));
    assert_eq!(
        keys.authenticate(&two).unwrap_err().reason,
        reason::MALFORMED
    );

    // 403 on scopes.
    let f = id.require_scopes(&["admin".into()]).unwrap_err();
    assert_eq!(
        (f.status, f.reason),
        (StatusCode::FORBIDDEN, reason::INSUFFICIENT_SCOPE)
    );
    assert!(
        f.www_authenticate
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("ApiKey realm=\"lb\", error=\"insufficient_scope\"")
    );
}

#[tokio::test]
async fn custom_header() {
    let f = TempFile::new("keys.toml", &entry("ci", "k", ""));
    let mut s = ApiKeySettings::new(&f.0);
    s.header = HeaderName::from_static("x-token");
    let keys = ApiKeys::load(s).unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-token", HeaderValue::from_static("k"));
    assert!(keys.authenticate(&h).is_ok());
    assert_eq!(
        keys.authenticate(&with_key("k")).unwrap_err().reason,
        reason::MISSING
    );
}

#[tokio::test]
async fn removed_key_fails_after_reload() {
    let f = TempFile::new("keys.toml", &(entry("a", "ka", "") + &entry("b", "kb", "")));
    let stop = CancellationToken::new();
    let keys = ApiKeys::watch(
        ApiKeySettings::new(&f.0),
        Duration::from_millis(30),
        stop.clone(),
    )
    .unwrap();
    assert!(keys.lookup(b"kb").is_some());
    f.write(&entry("a", "ka", ""));
    eventually("the reload", || keys.status().keys == 1).await;
    assert_eq!(
        keys.authenticate(&with_key("kb")).unwrap_err().reason,
        reason::UNKNOWN_KEY
    );
    assert!(keys.authenticate(&with_key("ka")).is_ok());
    // Added back: works again.
    f.write(&(entry("a", "ka", "") + &entry("c", "kc", "")));
    eventually("the second reload", || keys.lookup(b"kc").is_some()).await;
    stop.cancel();

    // Manual reload reports whether anything changed.
    assert!(!keys.reload().await.unwrap());
    f.write(&entry("a", "ka", ""));
    assert!(keys.reload().await.unwrap());
    assert!(keys.lookup(b"kc").is_none());
}

#[tokio::test]
async fn bad_file_keeps_the_last_good_set_and_names_line_and_field() {
    let f = TempFile::new("keys.toml", &entry("a", "ka", ""));
    let keys = ApiKeys::load(ApiKeySettings::new(&f.0)).unwrap();
    f.write("[[key]]\nname = \"a\"\nsha256 = \"abc\"\n");
    let e = keys.reload().await.unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    let e = &e.0[0];
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (3, 10, "key[0].sha256"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3:10: key[0].sha256: ", f.0.display()))
    );
    assert!(keys.lookup(b"ka").is_some(), "last good set dropped");
    let st = keys.status();
    assert_eq!(st.keys, 1);
    assert!(st.last_error.unwrap().1.contains("key[0].sha256"));
    // Unchanged bad file: not an error again (not re-logged), still the old set.
    assert!(!keys.reload().await.unwrap());
    // Fixed: the error clears.
    f.write(&entry("a2", "ka2", ""));
    assert!(keys.reload().await.unwrap());
    assert!(keys.status().last_error.is_none());
    assert!(keys.lookup(b"ka").is_none() && keys.lookup(b"ka2").is_some());

    // The watcher keeps the last good set too.
    let stop = CancellationToken::new();
    let keys = ApiKeys::watch(
        ApiKeySettings::new(&f.0),
        Duration::from_millis(30),
        stop.clone(),
    )
    .unwrap();
    f.write("[[key]\n");
    eventually("the failed reload", || keys.status().last_error.is_some()).await;
    assert!(keys.lookup(b"ka2").is_some());
    stop.cancel();
    // A missing file too.
    let gone = f.0.clone();
    drop(f);
    assert!(keys.reload().await.is_err());
    assert!(keys.lookup(b"ka2").is_some());
    assert!(!gone.exists());
}

fn errors(text: &str) -> Vec<String> {
    let f = TempFile::new("bad.toml", text);
    let e: KeyFileErrors = ApiKeys::load(ApiKeySettings::new(&f.0)).err().unwrap();
    let prefix = format!("{}:", f.0.display());
    e.0.iter()
        .map(|e| e.to_string().strip_prefix(&prefix).unwrap().to_owned())
        .collect()
}

#[test]
fn key_file_errors() {
    let h = sha("k");
    assert_eq!(
        errors(&format!(
            "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nsha265 = \"x\"\nrate = 0\nburst = -1\n"
        )),
        [
            "4:1: key[0].sha265: unknown field `sha265`; expected one of name, sha256, tenant, \
             scopes, rate, burst",
            "5:8: key[0].rate: expected an integer from 1 to 4294967295",
            "6:9: key[0].burst: expected an integer from 1 to 4294967295",
        ]
    );
    assert_eq!(
        errors(&format!(
            "[[key]]\nsha256 = \"{h}\"\nburst = 3\nscopes = \"read\"\n"
        )),
        [
            "1:1: key[0].name: missing required field `name`",
            "3:9: key[0].burst: `burst` needs `rate`",
            "4:10: key[0].scopes: expected an array of strings",
        ]
    );
    assert_eq!(
        errors(&format!(
            "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\n\n[[key]]\nname = \"a\"\nsha256 = \"{h}\"\n"
        )),
        [
            "5:1: key[1].name: duplicate name `a` (first at line 1)",
            "5:1: key[1].sha256: duplicate sha256 (first at line 1)",
        ]
    );
    // Control characters can be written with TOML escapes; they never reach a header.
    assert_eq!(
        errors(&format!(
            "[[key]]\nname = \"a\\r\\nX-Admin: 1\"\nsha256 = \"{h}\"\ntenant = \"t\\u0000\"\nscopes = [\"a b\", 3]\n"
        )),
        [
            "2:8: key[0].name: must be non-empty, without control characters",
            "4:10: key[0].tenant: must be non-empty, without control characters",
            "5:11: key[0].scopes[0]: expected a non-empty string without spaces or control \
             characters",
            "5:18: key[0].scopes[1]: expected a non-empty string without spaces or control \
             characters",
        ]
    );
    let syntax = errors("[[key]\nname = 1\n");
    assert!(
        syntax.len() == 1 && syntax[0].starts_with("1:"),
        "{syntax:?}"
    );
    assert!(syntax[0].contains(": syntax: "), "{syntax:?}");
    assert_eq!(
        errors("keys = 1\n"),
        ["1:1: keys: unknown field `keys`; expected `[[key]]` tables"]
    );
    assert_eq!(errors("key = 1\n"), ["1:7: key: expected `[[key]]` tables"]);
}

#[test]
fn empty_file_is_an_empty_set() {
    let f = TempFile::new("empty.toml", "# no keys yet\n");
    let keys = ApiKeys::load(ApiKeySettings::new(&f.0)).unwrap();
    assert_eq!(keys.status().keys, 0);
    assert!(keys.lookup(b"").is_none());
}
