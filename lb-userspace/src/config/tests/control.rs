//! `[global] pin_path`, `[admin]`, `[registry]` and `[[source]]`: values and defaults come out
//! as written, and one test per kind of error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::super::control::{HttpUrl, parse_http_url};
use super::super::{
    Admin, AdminListen, BuiltinRegistry, ConsulSource, DEFAULT_PIN_PATH, EtcdSource,
    KubernetesSource, NodeAddresses, SourceConfig, parse,
};
use super::{GLOBAL, WEB, errors, one_error};

fn sources(text: &str) -> Vec<SourceConfig> {
    parse(text, "t.toml").expect("valid").sources
}

// ---- valid ----

#[test]
fn control_sections_come_out_as_written() {
    let text = format!(
        r#"{WEB}[[service]]
name = "api"
vip = "10.0.0.2"
port = 80
protocol = "tcp"

[admin]
listen = "unix:/run/lb/admin.sock"
token_file = "/etc/lb/admin.token"

[registry]
state_file = "/var/lib/lb/registry.json"
default_ttl = 10
max_ttl = 60

[[source]]
kind = "etcd"
name = "etcd-main"
endpoints = ["http://10.0.0.5:2379", "http://[2001:db8::5]:2379/"]
prefix = "/prod/lb/"

[[source]]
kind = "consul"
address = "https://consul.example.com:8501"
services = ["web", "api"]
datacenter = "dc1"
token_file = "/etc/lb/consul.token"

[[source]]
kind = "kubernetes"
name = "k8s"
api_server = "https://10.96.0.1:443"
namespace = "shop"
services = ["api"]
token_file = "/etc/lb/k8s.token"
ca_file = "/etc/lb/k8s-ca.crt"
"#
    )
    .replace(
        "interfaces = [\"eth0\"]\n",
        "interfaces = [\"eth0\"]\npin_path = \"/sys/fs/bpf/lb-test\"\n",
    );
    let config = parse(&text, "t.toml").unwrap();
    assert_eq!(
        config.global.pin_path,
        Some(PathBuf::from("/sys/fs/bpf/lb-test"))
    );
    assert_eq!(
        config.admin,
        Admin {
            listen: AdminListen::Unix("/run/lb/admin.sock".into()),
            token_file: Some("/etc/lb/admin.token".into()),
        }
    );
    assert_eq!(
        config.registry,
        BuiltinRegistry {
            state_file: Some("/var/lib/lb/registry.json".into()),
            default_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(60),
        }
    );
    assert_eq!(
        config.sources,
        [
            SourceConfig::Etcd(EtcdSource {
                name: "etcd-main".into(),
                // The trailing `/` is dropped so clients can append their paths.
                endpoints: vec![
                    "http://10.0.0.5:2379".into(),
                    "http://[2001:db8::5]:2379".into()
                ],
                prefix: "/prod/lb/".into(),
            }),
            SourceConfig::Consul(ConsulSource {
                name: "consul".into(),
                address: "https://consul.example.com:8501".into(),
                services: vec!["web".into(), "api".into()],
                datacenter: Some("dc1".into()),
                token_file: Some("/etc/lb/consul.token".into()),
            }),
            SourceConfig::Kubernetes(KubernetesSource {
                name: "k8s".into(),
                api_server: Some("https://10.96.0.1:443".into()),
                namespace: "shop".into(),
                services: vec!["api".into()],
                token_file: Some("/etc/lb/k8s.token".into()),
                ca_file: Some("/etc/lb/k8s-ca.crt".into()),
                discover_services: false,
                node_name: None,
                node_addresses: NodeAddresses::Interfaces(vec!["eth0".into()]),
            }),
        ]
    );
    let names: Vec<&str> = config.sources.iter().map(SourceConfig::name).collect();
    assert_eq!(names, ["etcd-main", "consul", "k8s"]);
}

#[test]
fn control_defaults() {
    let config = parse(GLOBAL, "t.toml").unwrap();
    assert_eq!(
        config.global.pin_path,
        Some(PathBuf::from(DEFAULT_PIN_PATH))
    );
    assert_eq!(
        config.admin.listen,
        AdminListen::Tcp("127.0.0.1:9180".parse().unwrap())
    );
    assert_eq!(config.admin, Admin::default());
    assert_eq!(
        config.registry,
        BuiltinRegistry {
            state_file: Some(PathBuf::from("/var/lib/lb/registry.json")),
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
        }
    );
    assert!(config.sources.is_empty());
    // Empty tables are the defaults too.
    let config = parse(&format!("{GLOBAL}[admin]\n[registry]\n"), "t.toml").unwrap();
    assert_eq!(
        (config.admin, config.registry),
        (Admin::default(), BuiltinRegistry::default())
    );
}

#[test]
fn source_defaults_name_is_the_kind() {
    let text = format!(
        "{WEB}[[source]]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n\
         [[source]]\nkind = \"consul\"\nservices = [\"web\"]\n\
         [[source]]\nkind = \"kubernetes\"\nservices = [\"web\"]\n"
    );
    assert_eq!(
        sources(&text),
        [
            SourceConfig::Etcd(EtcdSource {
                name: "etcd".into(),
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: "/lb/".into(),
            }),
            SourceConfig::Consul(ConsulSource {
                name: "consul".into(),
                address: "http://127.0.0.1:8500".into(),
                services: vec!["web".into()],
                datacenter: None,
                token_file: None,
            }),
            SourceConfig::Kubernetes(KubernetesSource {
                name: "kubernetes".into(),
                api_server: None,
                namespace: "default".into(),
                services: vec!["web".into()],
                token_file: None,
                ca_file: None,
                discover_services: false,
                node_name: None,
                node_addresses: NodeAddresses::Interfaces(vec!["eth0".into()]),
            }),
        ]
    );
}

#[test]
fn two_sources_of_one_kind_with_their_own_names() {
    let text = format!(
        "{WEB}[[source]]\nkind = \"etcd\"\nname = \"a\"\nendpoints = [\"http://127.0.0.1:2379\"]\n\
         [[source]]\nkind = \"etcd\"\nname = \"b\"\nendpoints = [\"http://127.0.0.1:2479\"]\n"
    );
    let names: Vec<String> = sources(&text).iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn sources_as_inline_tables() {
    // Top-level keys come before the first table header.
    let text = format!(
        "source = [{{ kind = \"etcd\", endpoints = [\"http://localhost:2379\"] }}]\n{GLOBAL}"
    );
    assert_eq!(sources(&text).len(), 1);
}

#[test]
fn empty_pin_path_means_no_pinning() {
    let text = GLOBAL.replace("[global]\n", "[global]\npin_path = \"\"\n");
    assert_eq!(parse(&text, "t.toml").unwrap().global.pin_path, None);
}

#[test]
fn admin_remote_listen_with_allow_remote() {
    for listen in ["0.0.0.0:9180", "192.0.2.1:9180", "[::]:9180"] {
        let text = format!("{GLOBAL}[admin]\nlisten = \"{listen}\"\nallow_remote = true\n");
        let want: SocketAddr = listen.parse().unwrap();
        assert_eq!(
            parse(&text, "t.toml").unwrap().admin.listen,
            AdminListen::Tcp(want)
        );
    }
}

#[test]
fn admin_loopback_listen_needs_no_allow_remote() {
    for listen in [
        "127.0.0.1:9000",
        "127.1.2.3:9000",
        "[::1]:9000",
        "[::ffff:127.0.0.1]:9000",
    ] {
        let text = format!("{GLOBAL}[admin]\nlisten = \"{listen}\"\n");
        let want: SocketAddr = listen.parse().unwrap();
        assert_eq!(
            parse(&text, "t.toml").unwrap().admin.listen,
            AdminListen::Tcp(want),
            "{listen}"
        );
    }
}

#[test]
fn http_urls() {
    let ok = |url: &str, https: bool, port: Option<u16>, normalized: &str| {
        assert_eq!(
            parse_http_url(url),
            Ok(HttpUrl {
                https,
                port,
                normalized: normalized.into()
            }),
            "{url}"
        );
    };
    ok(
        "http://127.0.0.1:2379",
        false,
        Some(2379),
        "http://127.0.0.1:2379",
    );
    ok(
        "http://etcd-1.local:2379/",
        false,
        Some(2379),
        "http://etcd-1.local:2379",
    );
    ok(
        "https://kubernetes.default.svc",
        true,
        None,
        "https://kubernetes.default.svc",
    );
    ok("http://[::1]:8500", false, Some(8500), "http://[::1]:8500");
    ok("https://[2001:db8::1]", true, None, "https://[2001:db8::1]");
    for (bad, why) in [
        ("127.0.0.1:2379", "not an `http://` or `https://` URL"),
        ("ftp://host:21", "not an `http://` or `https://` URL"),
        ("HTTP://host", "not an `http://` or `https://` URL"),
        ("http://", "no valid host"),
        ("http://:2379", "no valid host"),
        ("http://ho st:80", "no valid host"),
        ("http://::1:80", "no valid host"),
        ("http://[::1:80", "unclosed `[`"),
        ("http://[::1]x", "text after `]`"),
        ("http://[10.0.0.1]:80", "no valid host"),
        ("http://host:0", "invalid port `0`"),
        ("http://host:+80", "invalid port `+80`"),
        ("http://host:65536", "invalid port `65536`"),
        ("http://host:", "invalid port ``"),
        ("http://host:80/v3", "path, query or fragment"),
        ("http://host:80?x=1", "path, query or fragment"),
        ("http://user:pw@host:80", "credentials"),
    ] {
        let err = parse_http_url(bad).expect_err(bad);
        assert!(err.contains(why), "{bad}: {err:?} lacks {why:?}");
    }
}

// ---- pin_path ----

#[test]
fn pin_path_must_be_absolute() {
    let text = format!("{GLOBAL}pin_path = \"bpf/lb\"\n");
    one_error(
        &text,
        3,
        "global.pin_path",
        "`bpf/lb` is not an absolute path",
    );
}

#[test]
fn pin_path_wrong_type() {
    let text = format!("{GLOBAL}pin_path = false\n");
    one_error(
        &text,
        3,
        "global.pin_path",
        "expected a string, found a boolean",
    );
}

// ---- [admin] ----

#[test]
fn unknown_field_in_admin() {
    let text = format!("{GLOBAL}[admin]\nlisten = \"127.0.0.1:9180\"\nport = 9180\n");
    let e = one_error(&text, 5, "admin.port", "unknown field `port`");
    assert!(e.message.contains("`allow_remote`"), "{}", e.message);
}

#[test]
fn admin_as_array_of_tables() {
    let text = format!("{GLOBAL}[[admin]]\nlisten = \"127.0.0.1:9180\"\n");
    one_error(
        &text,
        3,
        "admin",
        "expected a table, found an array of tables",
    );
}

#[test]
fn admin_listen_not_an_address() {
    for bad in [
        "localhost:9180",
        "127.0.0.1",
        "9180",
        "127.0.0.1:99999",
        "::1:9180",
    ] {
        let text = format!("{GLOBAL}[admin]\nlisten = \"{bad}\"\n");
        one_error(
            &text,
            4,
            "admin.listen",
            &format!("invalid listen address `{bad}`: write IP:PORT"),
        );
    }
}

#[test]
fn admin_listen_port_zero() {
    let text = format!("{GLOBAL}[admin]\nlisten = \"127.0.0.1:0\"\n");
    one_error(&text, 4, "admin.listen", "port must not be 0");
}

#[test]
fn admin_remote_listen_needs_allow_remote() {
    let text = format!("{GLOBAL}[admin]\nlisten = \"0.0.0.0:9180\"\n");
    let e = one_error(
        &text,
        4,
        "admin.listen",
        "0.0.0.0:9180 is not a loopback address",
    );
    assert!(
        e.message.contains("`allow_remote = true` in [admin]"),
        "says how to allow it: {}",
        e.message
    );
    // Saying no explicitly is the same.
    let text = format!("{GLOBAL}[admin]\nallow_remote = false\nlisten = \"[2001:db8::1]:9180\"\n");
    one_error(&text, 5, "admin.listen", "is not a loopback address");
}

#[test]
fn admin_allow_remote_wrong_type() {
    let text = format!("{GLOBAL}[admin]\nallow_remote = \"yes\"\n");
    one_error(
        &text,
        4,
        "admin.allow_remote",
        "expected a boolean, found a string",
    );
}

#[test]
fn admin_unix_listen_must_be_absolute() {
    let text = format!("{GLOBAL}[admin]\nlisten = \"unix:admin.sock\"\n");
    one_error(
        &text,
        4,
        "admin.listen",
        "`admin.sock` is not an absolute path",
    );
    let text = format!("{GLOBAL}[admin]\nlisten = \"unix:\"\n");
    one_error(&text, 4, "admin.listen", "must not be empty");
}

#[test]
fn admin_unix_listen_too_long() {
    let long = format!("/run/{}", "a".repeat(103));
    let text = format!("{GLOBAL}[admin]\nlisten = \"unix:{long}\"\n");
    one_error(
        &text,
        4,
        "admin.listen",
        "unix socket path is 108 bytes; the kernel allows at most 107",
    );
    // 107 bytes fit.
    let text = format!("{GLOBAL}[admin]\nlisten = \"unix:{}\"\n", &long[..107]);
    parse(&text, "t.toml").expect("107 bytes fit");
}

#[test]
fn admin_token_file_must_be_absolute() {
    let text = format!("{GLOBAL}[admin]\ntoken_file = \"admin.token\"\n");
    one_error(&text, 4, "admin.token_file", "not an absolute path");
}

// ---- [registry] ----

#[test]
fn unknown_field_in_registry() {
    let text = format!("{GLOBAL}[registry]\nttl = 30\n");
    one_error(&text, 4, "registry.ttl", "unknown field `ttl`");
}

#[test]
fn registry_ttl_out_of_range() {
    for (key, value) in [
        ("default_ttl", "0"),
        ("max_ttl", "-5"),
        ("max_ttl", "31536001"),
    ] {
        let text = format!("{GLOBAL}[registry]\n{key} = {value}\n");
        one_error(
            &text,
            4,
            &format!("registry.{key}"),
            &format!("{key} {value} is out of range 1..=31536000 (seconds)"),
        );
    }
}

#[test]
fn registry_ttl_wrong_type() {
    let text = format!("{GLOBAL}[registry]\ndefault_ttl = \"30s\"\n");
    one_error(
        &text,
        4,
        "registry.default_ttl",
        "expected an integer, found a string",
    );
}

#[test]
fn registry_default_ttl_above_max_ttl() {
    let text = format!("{GLOBAL}[registry]\ndefault_ttl = 60\nmax_ttl = 30\n");
    one_error(
        &text,
        4,
        "registry.default_ttl",
        "default_ttl 60 s is above max_ttl 30 s:",
    );
    // Against the default max_ttl...
    let text = format!("{GLOBAL}[registry]\ndefault_ttl = 7200\n");
    one_error(
        &text,
        4,
        "registry.default_ttl",
        "default_ttl 7200 s is above max_ttl 3600 s (the default)",
    );
    // ...and a max_ttl below the default default_ttl.
    let text = format!("{GLOBAL}[registry]\nmax_ttl = 10\n");
    one_error(
        &text,
        4,
        "registry.max_ttl",
        "default_ttl 30 s is above max_ttl 10 s:",
    );
    // A bad value is not compared again.
    let text = format!("{GLOBAL}[registry]\ndefault_ttl = 60\nmax_ttl = 0\n");
    one_error(&text, 5, "registry.max_ttl", "out of range");
}

#[test]
fn registry_state_file_must_be_absolute_or_empty_for_memory_only() {
    let text = format!("{GLOBAL}[registry]\nstate_file = \"registry.json\"\n");
    one_error(&text, 4, "registry.state_file", "absolute");
    let text = format!("{GLOBAL}[registry]\nstate_file = \"\"\n");
    assert_eq!(parse(&text, "t.toml").unwrap().registry.state_file, None);
}

// ---- [[source]]: shape ----

#[test]
fn source_as_plain_table() {
    let text = format!("{GLOBAL}[source]\nkind = \"etcd\"\n");
    one_error(
        &text,
        3,
        "source",
        "expected an array of tables (`[[source]]`)",
    );
}

#[test]
fn source_without_kind() {
    let text = format!("{GLOBAL}[[source]]\nendpoints = [\"http://127.0.0.1:2379\"]\n");
    one_error(&text, 3, "source[0].kind", "missing required field `kind`");
}

#[test]
fn unknown_source_kind_is_the_only_error() {
    // Fields of any kind are not reported on top of the unknown kind.
    let text =
        format!("{GLOBAL}[[source]]\nkind = \"eureka\"\nendpoints = [\"http://127.0.0.1:2379\"]\n");
    one_error(
        &text,
        4,
        "source[0].kind",
        "unknown source kind `eureka`; expected `etcd`, `consul` or `kubernetes`",
    );
    // A field of no kind still is.
    let text = format!("{GLOBAL}[[source]]\nkind = \"eureka\"\nurl = \"x\"\n");
    let got: Vec<String> = errors(&text).into_iter().map(|e| e.field).collect();
    assert_eq!(got, ["source[0].kind", "source[0].url"]);
}

#[test]
fn field_of_another_source_kind() {
    let text = format!(
        "{WEB}[[source]]\nkind = \"consul\"\nservices = [\"web\"]\nendpoints = [\"http://127.0.0.1:2379\"]\n"
    );
    let e = one_error(
        &text,
        14,
        "source[0].endpoints",
        "unknown field `endpoints` for a `consul` source; expected one of",
    );
    assert!(e.message.contains("`datacenter`"), "{}", e.message);
    assert!(!e.message.contains("`prefix`"), "{}", e.message);
}

#[test]
fn etcd_endpoints_required() {
    let text = format!("{GLOBAL}[[source]]\nkind = \"etcd\"\n");
    one_error(
        &text,
        3,
        "source[0].endpoints",
        "missing required field `endpoints`",
    );
}

#[test]
fn consul_and_kubernetes_services_required() {
    for kind in ["consul", "kubernetes"] {
        let text = format!("{GLOBAL}[[source]]\nkind = \"{kind}\"\n");
        one_error(
            &text,
            3,
            "source[0].services",
            "missing required field `services`",
        );
    }
}

#[test]
fn source_endpoint_of_wrong_type() {
    let text = format!("{GLOBAL}[[source]]\nkind = \"etcd\"\nendpoints = [\"http://a:1\", 2379]\n");
    one_error(
        &text,
        5,
        "source[0].endpoints[1]",
        "expected a string, found an integer",
    );
}

// ---- [[source]]: names ----

#[test]
fn source_name_invalid() {
    let text = format!(
        "{GLOBAL}[[source]]\nkind = \"etcd\"\nname = \"main etcd\"\nendpoints = [\"http://a:1\"]\n"
    );
    one_error(
        &text,
        5,
        "source[0].name",
        "invalid source name `main etcd`",
    );
}

#[test]
fn source_name_reserved() {
    for (name, meaning) in [
        ("config", "the config file's static backends"),
        ("registry", "the built-in registry"),
    ] {
        let text = format!(
            "{GLOBAL}[[source]]\nkind = \"etcd\"\nname = \"{name}\"\nendpoints = [\"http://a:1\"]\n"
        );
        one_error(
            &text,
            5,
            "source[0].name",
            &format!("source name `{name}` is reserved: it names {meaning}"),
        );
    }
}

#[test]
fn duplicate_source_name() {
    let text = format!(
        "{WEB}[[source]]\nkind = \"etcd\"\nname = \"main\"\nendpoints = [\"http://a:1\"]\n\
         [[source]]\nkind = \"consul\"\nname = \"main\"\nservices = [\"web\"]\n"
    );
    let e = one_error(
        &text,
        17,
        "source[1].name",
        "duplicate source name `main` (first at line 13)",
    );
    assert!(!e.message.contains("its own `name`"), "{}", e.message);
}

#[test]
fn duplicate_default_source_name_says_to_name_them() {
    let text = format!(
        "{GLOBAL}[[source]]\nkind = \"etcd\"\nendpoints = [\"http://a:1\"]\n\
         [[source]]\nkind = \"etcd\"\nendpoints = [\"http://b:1\"]\n"
    );
    one_error(
        &text,
        6,
        "source[1].name",
        "duplicate source name `etcd` (first at line 3); give each `etcd` source its own `name`",
    );
}

#[test]
fn bad_name_does_not_hide_other_source_errors() {
    let text = format!(
        "{GLOBAL}[[source]]\nkind = \"etcd\"\nname = \"registry\"\nendpoints = [\"https://a:1\"]\n"
    );
    let got: Vec<String> = errors(&text).into_iter().map(|e| e.field).collect();
    assert_eq!(got, ["source[0].name", "source[0].endpoints[0]"]);
}

// ---- [[source]] kind = "etcd" ----

/// `GLOBAL` and an etcd source whose `endpoints` (line 5) is `endpoints`.
fn etcd(endpoints: &str) -> String {
    format!("{GLOBAL}[[source]]\nkind = \"etcd\"\nendpoints = {endpoints}\n")
}

#[test]
fn etcd_endpoints_empty() {
    one_error(&etcd("[]"), 5, "source[0].endpoints", "no endpoint listed");
}

#[test]
fn etcd_https_not_supported_yet() {
    one_error(
        &etcd("[\"https://10.0.0.5:2379\"]"),
        5,
        "source[0].endpoints[0]",
        "https endpoints are not supported yet",
    );
}

#[test]
fn etcd_endpoint_needs_a_port() {
    one_error(
        &etcd("[\"http://10.0.0.5\"]"),
        5,
        "source[0].endpoints[0]",
        "has no port: write http://host:port",
    );
}

#[test]
fn etcd_endpoint_not_a_url() {
    one_error(
        &etcd("[\"10.0.0.5:2379\"]"),
        5,
        "source[0].endpoints[0]",
        "`10.0.0.5:2379` is not an `http://` or `https://` URL",
    );
    one_error(
        &etcd("[\"http://10.0.0.5:2379/v3\"]"),
        5,
        "source[0].endpoints[0]",
        "path, query or fragment",
    );
}

#[test]
fn etcd_endpoint_listed_twice() {
    let text = etcd("[\n  \"http://a:2379\",\n  \"http://a:2379/\",\n]");
    one_error(
        &text,
        7,
        "source[0].endpoints[1]",
        "endpoint `http://a:2379/` is listed twice (first at line 6)",
    );
}

#[test]
fn etcd_prefix_must_start_and_end_with_slash() {
    for bad in ["lb/", "/lb", ""] {
        let text = format!("{}prefix = \"{bad}\"\n", etcd("[\"http://a:1\"]"));
        one_error(
            &text,
            6,
            "source[0].prefix",
            &format!("prefix `{bad}` must start and end with `/`"),
        );
    }
}

// ---- [[source]] kind = "consul" ----

/// `WEB` and a consul source (header at line 11, `services` at line 13) plus `extra` lines.
fn consul(services: &str, extra: &str) -> String {
    format!("{WEB}[[source]]\nkind = \"consul\"\nservices = {services}\n{extra}")
}

#[test]
fn consul_address_must_be_an_http_url() {
    one_error(
        &consul("[\"web\"]", "address = \"127.0.0.1:8500\"\n"),
        14,
        "source[0].address",
        "not an `http://` or `https://` URL",
    );
}

#[test]
fn consul_services_empty() {
    one_error(
        &consul("[]", ""),
        13,
        "source[0].services",
        "no service listed",
    );
}

#[test]
fn consul_service_not_in_config() {
    one_error(
        &consul("[\"web\", \"api\"]", ""),
        13,
        "source[0].services[1]",
        "no [[service]] named `api` in this file",
    );
}

#[test]
fn consul_service_listed_twice() {
    one_error(
        &consul("[\"web\", \"web\"]", ""),
        13,
        "source[0].services[1]",
        "service `web` is listed twice (first at line 13)",
    );
}

#[test]
fn consul_bad_datacenter() {
    one_error(
        &consul("[\"web\"]", "datacenter = \"dc 1\"\n"),
        14,
        "source[0].datacenter",
        "invalid datacenter `dc 1`",
    );
}

#[test]
fn consul_token_file_must_be_absolute() {
    one_error(
        &consul("[\"web\"]", "token_file = \"consul.token\"\n"),
        14,
        "source[0].token_file",
        "not an absolute path",
    );
}

#[test]
fn source_naming_a_bad_service_is_not_a_second_error() {
    // The service's own error is enough: it still counts as defined.
    let text = consul("[\"web\"]", "").replace("vip = \"10.0.0.1\"", "vip = \"nope\"");
    one_error(&text, 5, "service[0].vip", "invalid IP address");
}

// ---- [[source]] kind = "kubernetes" ----

/// `WEB` and a kubernetes source (header at line 11, `services` at line 13) plus `extra`.
fn kubernetes(services: &str, extra: &str) -> String {
    format!("{WEB}[[source]]\nkind = \"kubernetes\"\nservices = {services}\n{extra}")
}

#[test]
fn kubernetes_api_server_must_be_an_http_url() {
    one_error(
        &kubernetes("[\"web\"]", "api_server = \"https://10.96.0.1/api\"\n"),
        14,
        "source[0].api_server",
        "path, query or fragment",
    );
}

#[test]
fn kubernetes_bad_namespace() {
    for bad in ["Shop", "-shop", "shop_1", ""] {
        one_error(
            &kubernetes("[\"web\"]", &format!("namespace = \"{bad}\"\n")),
            14,
            "source[0].namespace",
            &format!("invalid namespace `{bad}`"),
        );
    }
}

#[test]
fn kubernetes_service_name_must_be_a_dns_label() {
    // The config may name services what Kubernetes cannot.
    let text = kubernetes("[\"web\", \"2fa\"]", "")
        .replace("[[service.backend]]", "[[service]]\nname = \"2fa\"\nvip = \"10.0.0.2\"\nport = 80\nprotocol = \"tcp\"\n[[service.backend]]");
    one_error(
        &text,
        18,
        "source[0].services[1]",
        "`2fa` is not a Kubernetes service name",
    );
}

#[test]
fn kubernetes_service_not_in_config() {
    one_error(
        &kubernetes("[\"api\"]", ""),
        13,
        "source[0].services[0]",
        "no [[service]] named `api`",
    );
}

#[test]
fn kubernetes_files_must_be_absolute() {
    let text = kubernetes("[\"web\"]", "token_file = \"t\"\nca_file = \"ca.crt\"\n");
    let got: Vec<(usize, String)> = errors(&text)
        .into_iter()
        .map(|e| (e.line, e.field))
        .collect();
    assert_eq!(
        got,
        [
            (14, "source[0].token_file".to_owned()),
            (15, "source[0].ca_file".to_owned())
        ]
    );
}

#[test]
fn kubernetes_discovery_needs_no_services_and_takes_node_settings() {
    let text = format!(
        "{WEB}[[source]]\nkind = \"kubernetes\"\ndiscover_services = true\n\
         node_name = \"node-1.example\"\nnode_addresses = [\"192.0.2.7\", \"2001:db8::7\"]\n"
    );
    let [SourceConfig::Kubernetes(k)] = &sources(&text)[..] else {
        panic!("one kubernetes source");
    };
    assert!(k.discover_services && k.services.is_empty());
    assert_eq!(k.node_name.as_deref(), Some("node-1.example"));
    assert_eq!(
        k.node_addresses,
        NodeAddresses::List(vec![
            "192.0.2.7".parse().unwrap(),
            "2001:db8::7".parse().unwrap()
        ])
    );
    let both = format!(
        "{WEB}[[source]]\nkind = \"kubernetes\"\ndiscover_services = true\nservices = [\"web\"]\n"
    );
    one_error(&both, 14, "source[0].services", "cannot be combined");
    // Without discovery, `services` is still required.
    let without = format!("{WEB}[[source]]\nkind = \"kubernetes\"\ndiscover_services = false\n");
    one_error(
        &without,
        11,
        "source[0].services",
        "missing required field `services`",
    );
}

#[test]
fn kubernetes_bad_node_settings() {
    let text = kubernetes(
        "[\"web\"]",
        "node_name = \"Node_1\"\nnode_addresses = [\"192.0.2.7\", \"nope\", \"192.0.2.7\"]\n",
    );
    let got: Vec<(usize, String)> = errors(&text)
        .into_iter()
        .map(|e| (e.line, e.field))
        .collect();
    assert_eq!(
        got,
        [
            (14, "source[0].node_name".to_owned()),
            (15, "source[0].node_addresses[1]".to_owned()),
            (15, "source[0].node_addresses[2]".to_owned()),
        ]
    );
    one_error(
        &kubernetes("[\"web\"]", "node_addresses = []\n"),
        14,
        "source[0].node_addresses",
        "no address listed",
    );
}

#[test]
fn session_affinity_is_none_or_client_ip() {
    let c = parse(
        &WEB.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nsession_affinity = \"client_ip\"",
        ),
        "t.toml",
    )
    .unwrap();
    assert!(c.services[0].client_affinity);
    let bad = WEB.replace(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\nsession_affinity = \"cookie\"",
    );
    let errs = errors(&bad);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "service[0].session_affinity");
}
