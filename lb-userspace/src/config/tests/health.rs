//! `[service.health]`: values and defaults come out as written, and one test per kind of
//! error.

use std::time::Duration;

use super::super::{HealthCheck, HealthKind, parse};
use super::{GLOBAL, WEB, errors, one_error};

/// `WEB` with a `[service.health]` table (header at line 11) holding `fields` (from line 12).
fn with_health(fields: &str) -> String {
    format!("{WEB}[service.health]\n{fields}")
}

fn health(text: &str) -> Option<HealthCheck> {
    parse(text, "t.toml").expect("valid").services[0]
        .health
        .clone()
}

// ---- valid ----

#[test]
fn no_health_table_means_no_checks() {
    assert_eq!(health(WEB), None);
}

#[test]
fn empty_health_table_is_a_tcp_check_with_defaults() {
    let expected = HealthCheck {
        kind: HealthKind::Tcp,
        interval: Duration::from_millis(2000),
        timeout: Duration::from_millis(1000),
        rise: 2,
        fall: 3,
        port: None,
    };
    assert_eq!(health(&with_health("")), Some(expected.clone()));
    assert_eq!(HealthCheck::default(), expected);
}

#[test]
fn tcp_check_as_written() {
    let text = with_health(
        "kind = \"tcp\"\ninterval_ms = 500\ntimeout_ms = 200\nrise = 1\nfall = 100\nport = 9090\n",
    );
    assert_eq!(
        health(&text),
        Some(HealthCheck {
            kind: HealthKind::Tcp,
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(200),
            rise: 1,
            fall: 100,
            port: Some(9090),
        })
    );
}

#[test]
fn http_check_as_written() {
    let text = with_health(
        "kind = \"http\"\ninterval_ms = 3600000\ntimeout_ms = 3600000\nrise = 5\nfall = 1\n\
         port = 8081\npath = \"/healthz?full=1\"\nhost = \"web.internal\"\nexpect_status = 204\n",
    );
    assert_eq!(
        health(&text),
        Some(HealthCheck {
            kind: HealthKind::Http {
                path: "/healthz?full=1".into(),
                host: Some("web.internal".into()),
                expect_status: 204,
                tls: None,
            },
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(3600),
            rise: 5,
            fall: 1,
            port: Some(8081),
        })
    );
}

#[test]
fn http_check_defaults() {
    let text = format!(
        "{GLOBAL}[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
         health = {{ kind = \"http\" }}\n"
    );
    let h = health(&text).unwrap();
    assert_eq!(
        h.kind,
        HealthKind::Http {
            path: "/".into(),
            host: None,
            expect_status: 200,
            tls: None,
        }
    );
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
}

#[test]
fn default_timeout_fits_a_short_interval() {
    let h = health(&with_health("interval_ms = 10\n")).unwrap();
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_millis(10), Duration::from_millis(10))
    );
}

#[test]
fn health_on_a_service_without_backends() {
    let text = WEB.replace(
        "[[service.backend]]\naddress = \"10.0.1.1\"\nport = 8080\n",
        "",
    );
    let text = format!("{text}[service.health]\nkind = \"tcp\"\n");
    let config = parse(&text, "t.toml").unwrap();
    assert!(config.services[0].backends.is_empty());
    assert!(config.services[0].health.is_some());
}

#[test]
fn each_service_has_its_own_health() {
    let text = format!(
        "{}[[service]]\nname = \"dns\"\nvip = \"10.0.0.1\"\nport = 53\nprotocol = \"udp\"\n",
        with_health("rise = 7\n")
    );
    let config = parse(&text, "t.toml").unwrap();
    assert_eq!(config.services[0].health.as_ref().map(|h| h.rise), Some(7));
    assert_eq!(config.services[1].health, None);
}

// ---- errors ----

#[test]
fn unknown_field_in_health() {
    let e = one_error(
        &with_health("interval = 2000\n"),
        12,
        "service[0].health.interval",
        "unknown field `interval`",
    );
    assert!(e.message.contains("`interval_ms`"), "{}", e.message);
}

#[test]
fn health_wrong_type() {
    one_error(
        &with_health("interval_ms = \"2s\"\n"),
        12,
        "service[0].health.interval_ms",
        "expected an integer, found a string",
    );
    one_error(
        &WEB.replace(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\nhealth = true\n",
        ),
        8,
        "service[0].health",
        "expected a table, found a boolean",
    );
}

#[test]
fn https_check_with_a_ca_file_and_server_name() {
    let ca = std::env::temp_dir().join(format!("lb-cfg-ca-{}.pem", std::process::id()));
    let cert = rcgen::generate_simple_self_signed(vec!["web.internal".into()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let h = health(&with_health(&format!(
        "kind = \"https\"\nca_file = \"{}\"\nserver_name = \"web.internal\"\n",
        ca.display()
    )));
    let _ = std::fs::remove_file(&ca);
    assert_eq!(
        h.unwrap().kind,
        HealthKind::Http {
            path: "/".into(),
            host: None,
            expect_status: 200,
            tls: Some(crate::config::HealthTls {
                ca_file: Some(ca),
                server_name: Some("web.internal".into()),
            }),
        }
    );
}

#[test]
fn https_check_errors_name_the_field() {
    one_error(
        &with_health("kind = \"https\"\nca_file = \"/nonexistent/ca.pem\"\n"),
        13,
        "service[0].health.ca_file",
        "cannot read /nonexistent/ca.pem",
    );
    one_error(
        &with_health("kind = \"https\"\nserver_name = \"not a name\"\n"),
        13,
        "service[0].health.server_name",
        "neither a DNS name nor an IP address",
    );
    one_error(
        &with_health("kind = \"http\"\nserver_name = \"web.internal\"\n"),
        13,
        "service[0].health.server_name",
        "applies only to HTTPS checks, but this check's kind is `http`",
    );
}

#[test]
fn unknown_health_kind() {
    one_error(
        &with_health("kind = \"icmp\"\n"),
        12,
        "service[0].health.kind",
        "unknown health check kind `icmp`; expected `tcp`, `http` or `https`",
    );
}

#[test]
fn interval_out_of_range() {
    for bad in ["9", "3600001", "-1"] {
        one_error(
            &with_health(&format!("interval_ms = {bad}\n")),
            12,
            "service[0].health.interval_ms",
            &format!("interval_ms {bad} is out of range 10..=3600000"),
        );
    }
}

#[test]
fn timeout_zero() {
    one_error(
        &with_health("timeout_ms = 0\n"),
        12,
        "service[0].health.timeout_ms",
        "timeout_ms must be at least 1 (found 0)",
    );
}

#[test]
fn timeout_above_interval() {
    one_error(
        &with_health("interval_ms = 500\ntimeout_ms = 501\n"),
        13,
        "service[0].health.timeout_ms",
        "timeout_ms 501 is above interval_ms 500",
    );
    // Against the default interval.
    one_error(
        &with_health("timeout_ms = 2001\n"),
        12,
        "service[0].health.timeout_ms",
        "timeout_ms 2001 is above interval_ms 2000",
    );
    // A bad interval is reported alone.
    one_error(
        &with_health("interval_ms = 5\ntimeout_ms = 3000\n"),
        12,
        "service[0].health.interval_ms",
        "out of range",
    );
}

#[test]
fn rise_and_fall_out_of_range() {
    for (key, bad) in [("rise", 0), ("rise", 101), ("fall", 0), ("fall", -3)] {
        one_error(
            &with_health(&format!("{key} = {bad}\n")),
            12,
            &format!("service[0].health.{key}"),
            &format!("{key} {bad} is out of range 1..=100"),
        );
    }
}

#[test]
fn health_port_out_of_range() {
    one_error(
        &with_health("port = 0\n"),
        12,
        "service[0].health.port",
        "port must not be 0",
    );
    one_error(
        &with_health("port = 70000\n"),
        12,
        "service[0].health.port",
        "out of range 1..=65535",
    );
}

#[test]
fn http_path_must_start_with_slash() {
    one_error(
        &with_health("kind = \"http\"\npath = \"healthz\"\n"),
        13,
        "service[0].health.path",
        "path `healthz` must start with `/`",
    );
}

#[test]
fn http_path_without_spaces() {
    one_error(
        &with_health("kind = \"http\"\npath = \"/health z\"\n"),
        13,
        "service[0].health.path",
        "whitespace or control characters",
    );
}

#[test]
fn http_host_invalid() {
    for bad in ["", "web internal", "web\\r\\nX: 1"] {
        one_error(
            &with_health(&format!("kind = \"http\"\nhost = \"{bad}\"\n")),
            13,
            "service[0].health.host",
            "invalid host",
        );
    }
}

#[test]
fn expect_status_out_of_range() {
    for bad in [99, 600] {
        one_error(
            &with_health(&format!("kind = \"http\"\nexpect_status = {bad}\n")),
            13,
            "service[0].health.expect_status",
            &format!("expect_status {bad} is out of range 100..=599"),
        );
    }
}

#[test]
fn http_fields_in_a_default_tcp_check() {
    one_error(
        &with_health("path = \"/healthz\"\n"),
        12,
        "service[0].health.path",
        "`path` applies only to HTTP checks, but this check's kind is `tcp` (the default): \
         set `kind = \"http\"`",
    );
}

#[test]
fn http_fields_in_a_tcp_check_each_reported() {
    let text = with_health("kind = \"tcp\"\npath = \"/\"\nhost = \"web\"\nexpect_status = 200\n");
    let errs = errors(&text);
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (13, "service[0].health.path"),
            (14, "service[0].health.host"),
            (15, "service[0].health.expect_status"),
        ]
    );
    for e in &errs {
        assert!(
            e.message.contains("applies only to HTTP checks") && e.message.contains("is `tcp`:"),
            "{}",
            e.message
        );
    }
}

#[test]
fn http_fields_after_a_bad_kind_are_not_judged() {
    one_error(
        &with_health("kind = \"htp\"\npath = \"/\"\n"),
        12,
        "service[0].health.kind",
        "unknown health check kind `htp`",
    );
}
