//! `[gateway.redis]`, shared route limits and Redis-stored API keys: a valid set, defaults,
//! and one test per mistake.

use std::time::Duration;

use super::{gw, one_error};
use crate::config::{ApiKeyStore, AuthKind, OnRedisError, SharedLimit, default_lease, parse};

const REDIS: &str = "[gateway.redis]\nurl = \"redis://127.0.0.1:6379\"\n";

#[test]
fn redis_settings_shared_limits_and_keys_parse() {
    let text = gw(
        r#"rate_limit = { rate = 100, burst = 200, key = "tenant", shared = "redis", on_redis_error = "closed", lease = 7 }
[[service.route]]
name = "b"
path_prefix = "/b"
service = "users"
auth = "rk"
rate_limit = { rate = 10, shared = "redis" }
[[auth]]
name = "rk"
kind = "api_key"
store = "redis"
cache_ttl_ms = 1500
[gateway.redis]
url = "unix:///run/redis/redis.sock"
timeout_ms = 40
connect_timeout_ms = 300
prefix = "fleet1:"
"#,
    );
    let c = parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let routes = &c.services[1].http.as_ref().unwrap().routes;
    assert_eq!(
        routes[0].rate_limit.unwrap().shared,
        Some(SharedLimit {
            lease: 7,
            on_error: OnRedisError::Closed
        })
    );
    assert_eq!(
        routes[1].rate_limit.unwrap().shared,
        Some(SharedLimit {
            lease: 1,
            on_error: OnRedisError::Local
        }),
        "defaults: lease burst/20 (at least 1), fail to local limits"
    );
    match &c.auth[0].kind {
        AuthKind::ApiKey(k) => assert_eq!(
            k.store,
            ApiKeyStore::Redis {
                cache_ttl: Duration::from_millis(1500)
            }
        ),
        other => panic!("{other:?}"),
    }
    let r = c.gateway.redis.unwrap();
    assert_eq!(r.url, "unix:///run/redis/redis.sock");
    assert_eq!(r.timeout, Duration::from_millis(40));
    assert_eq!(r.connect_timeout, Duration::from_millis(300));
    assert_eq!(r.prefix, "fleet1:");
}

#[test]
fn redis_defaults() {
    let c = parse(&gw(REDIS), "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let r = c.gateway.redis.unwrap();
    assert_eq!(r.timeout, Duration::from_millis(25));
    assert_eq!(r.connect_timeout, Duration::from_millis(200));
    assert_eq!(r.prefix, "lb:");
    assert_eq!(default_lease(1), 1);
    assert_eq!(default_lease(200), 10);
    assert_eq!(default_lease(1_000_000), 1000);
    let c = parse(&gw("rate_limit = { rate = 5 }\n"), "t.toml").unwrap();
    let l = c.services[1].http.as_ref().unwrap().routes[0].rate_limit;
    assert_eq!(l.unwrap().shared, None, "local unless asked");
}

#[test]
fn shared_limit_needs_redis() {
    one_error(
        &gw("rate_limit = { rate = 5, shared = \"redis\" }\n"),
        14,
        "service[1].route[0].rate_limit.shared",
        "needs a `[gateway.redis]` table",
    );
}

#[test]
fn redis_keys_need_redis() {
    one_error(
        &gw("[[auth]]\nname = \"k\"\nkind = \"api_key\"\nstore = \"redis\"\n"),
        17,
        "auth[0].store",
        "needs a `[gateway.redis]` table",
    );
}

#[test]
fn bad_fail_mode() {
    one_error(
        &gw(&format!(
            "rate_limit = {{ rate = 5, shared = \"redis\", on_redis_error = \"maybe\" }}\n{REDIS}"
        )),
        14,
        "service[1].route[0].rate_limit.on_redis_error",
        "expected `local`, `open` or `closed`",
    );
}

#[test]
fn lease_above_burst() {
    one_error(
        &gw(&format!(
            "rate_limit = {{ rate = 5, burst = 10, shared = \"redis\", lease = 11 }}\n{REDIS}"
        )),
        14,
        "service[1].route[0].rate_limit.lease",
        "out of range 1..=10",
    );
}

#[test]
fn fail_mode_without_shared() {
    one_error(
        &gw("rate_limit = { rate = 5, on_redis_error = \"open\" }\n"),
        14,
        "service[1].route[0].rate_limit.on_redis_error",
        "only applies to `shared = \"redis\"`",
    );
}

#[test]
fn bad_redis_url() {
    one_error(
        &gw("[gateway.redis]\nurl = \"http://127.0.0.1:6379\"\n"),
        15,
        "gateway.redis.url",
        "invalid Redis URL",
    );
}

#[test]
fn redis_timeout_out_of_range() {
    one_error(
        &gw(&format!("{REDIS}timeout_ms = 0\n")),
        16,
        "gateway.redis.timeout_ms",
        "out of range 1..=1000",
    );
}

#[test]
fn redis_store_with_a_file() {
    one_error(
        &gw(&format!(
            "[[auth]]\nname = \"k\"\nkind = \"api_key\"\nstore = \"redis\"\nfile = \"/k\"\n{REDIS}"
        )),
        18,
        "auth[0].file",
        "drop `file`",
    );
}

#[test]
fn cache_ttl_needs_redis_store() {
    one_error(
        &gw("[[auth]]\nname = \"k\"\nkind = \"api_key\"\nfile = \"/k\"\ncache_ttl_ms = 500\n"),
        18,
        "auth[0].cache_ttl_ms",
        "only applies to `store = \"redis\"`",
    );
}
