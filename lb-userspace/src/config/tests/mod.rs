//! Tests of the config module: one per error kind (`errors`), valid configs and the example
//! files (`valid`); the control-plane sections (`control`) and health checks (`health`) have
//! both kinds in their own file.

mod control;
mod errors;
mod gateway;
mod health;
mod mesh;
mod redis;
mod resilience;
mod socket_lb;
mod valid;

use super::{ConfigError, parse};

/// The errors `text` produces (panics if it parses).
fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, "t.toml") {
        Ok(c) => panic!("expected errors, parsed: {c:#?}"),
        Err(e) => e.0,
    }
}

/// Asserts `text` yields exactly one error, at `line`, on `field`, whose message contains
/// `message`. Exactly one: a mistake must not cascade into follow-up errors.
#[track_caller]
fn one_error(text: &str, line: usize, field: &str, message: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let e = errs.into_iter().next().unwrap();
    assert_eq!((e.line, e.field.as_str()), (line, field), "{e:#?}");
    assert!(
        e.message.contains(message),
        "message {:?} lacks {message:?}",
        e.message
    );
    assert_eq!(e.file, "t.toml");
    assert!(e.column >= 1);
    e
}

/// A valid `[global]` table of two lines, to put before the part a test is about.
const GLOBAL: &str = "[global]\ninterfaces = [\"eth0\"]\n";

/// `GLOBAL` plus a valid service (lines 3-10) named `web`; a test appends to it.
const WEB: &str = r#"[global]
interfaces = ["eth0"]
[[service]]
name = "web"
vip = "10.0.0.1"
port = 80
protocol = "tcp"
[[service.backend]]
address = "10.0.1.1"
port = 8080
"#;

/// Lines 3-13 after `GLOBAL`: a backend set `users` and a gateway `api` with one route to
/// it; the gateway tests append to the route (from line 14) or add tables.
const GW: &str = r#"[[service]]
name = "users"
backend = [{ address = "10.0.2.1", port = 8080 }]
[[service]]
name = "api"
vip = "10.0.0.2"
port = 80
protocol = "tcp"
mode = "http"
[[service.route]]
service = "users"
"#;

/// `GLOBAL`, `GW`, then `extra`.
fn gw(extra: &str) -> String {
    format!("{GLOBAL}{GW}{extra}")
}
