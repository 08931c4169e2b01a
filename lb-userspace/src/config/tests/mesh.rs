//! `[mesh]` and each service's `mtls`: a valid config, defaults, and one test per mistake.

use std::path::PathBuf;
use std::time::Duration;

use super::{WEB, one_error};
use crate::config::{CertSource, MeshConfig, PolicyAction, PolicySource, parse};

/// `WEB` (lines 1-10), the socket LB on (lines 11-12), then `mesh` from line 13.
fn with(mesh: &str) -> String {
    format!("{WEB}[socket_lb]\nenabled = true\n{mesh}")
}

/// An enabled mesh with a CA (lines 13-16), then `extra` from line 17.
fn ca(extra: &str) -> String {
    with(&format!(
        "[mesh]\nenabled = true\nca_cert_file = \"/ca.pem\"\nca_key_file = \"/ca-key.pem\"\n{extra}"
    ))
}

#[test]
fn full_mesh_parses() {
    let text = with(
        r#"[mesh]
enabled = true
trust_domain = "example.org"
listen = "10.0.0.5:15008"
outbound = "127.0.0.1:15001"
ca_cert_file = "/etc/lb/ca.pem"
ca_key_file = "/etc/lb/ca-key.pem"
cert_ttl_s = 600
rotate_at_percent = 40
trust_bundles = [{ trust_domain = "other.org", file = "/etc/lb/other.pem" }]
node_identity = { namespace = "kube-system", service_account = "lb-agent" }
[[mesh.workload]]
cgroup = "/sys/fs/cgroup/app1"
namespace = "default"
service_account = "web"
[[mesh.policy]]
name = "deny-legacy"
service = "web"
action = "deny"
from = [{ principals = ["example.org/ns/legacy/sa/*"], namespaces = ["legacy"] }, { trust_domains = ["other.org"] }]
ports = [80, 8080]
"#,
    );
    let c = parse(&text, "t.toml").unwrap();
    let m = &c.mesh;
    assert!(m.enabled);
    assert_eq!(m.trust_domain, "example.org");
    assert_eq!(m.listen, "10.0.0.5:15008".parse().unwrap());
    assert_eq!(
        m.certs,
        Some(CertSource::Ca {
            cert_file: "/etc/lb/ca.pem".into(),
            key_file: "/etc/lb/ca-key.pem".into(),
            ttl: Duration::from_secs(600),
            rotate_at_percent: 40,
        })
    );
    assert_eq!(m.trust_bundles[0].trust_domain, "other.org");
    assert_eq!(m.node_identity.namespace, "kube-system");
    assert_eq!(m.workloads[0].cgroup, PathBuf::from("/sys/fs/cgroup/app1"));
    assert_eq!(m.workloads[0].name.service_account, "web");
    let p = &m.policies[0];
    assert_eq!(
        (p.name.as_str(), p.service.as_str()),
        ("deny-legacy", "web")
    );
    assert_eq!(p.action, PolicyAction::Deny);
    assert_eq!(p.ports, [80, 8080]);
    assert_eq!(
        p.from,
        [
            PolicySource {
                principals: vec!["example.org/ns/legacy/sa/*".into()],
                namespaces: vec!["legacy".into()],
                trust_domains: vec![],
            },
            PolicySource {
                trust_domains: vec!["other.org".into()],
                ..Default::default()
            },
        ]
    );
}

#[test]
fn defaults_and_cert_dir() {
    let off = parse(WEB, "t.toml").unwrap();
    assert_eq!(off.mesh, MeshConfig::default());
    assert!(!off.mesh.enabled);
    assert!(!off.services[0].mtls);
    let c = parse(
        &with("[mesh]\nenabled = true\ncert_dir = \"/run/lb/certs\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.mesh.trust_domain, "cluster.local");
    assert_eq!(c.mesh.listen.port(), 15008);
    assert_eq!(c.mesh.outbound, "127.0.0.1:15001".parse().unwrap());
    assert_eq!(
        c.mesh.certs,
        Some(CertSource::Dir {
            dir: "/run/lb/certs".into(),
            poll: Duration::from_secs(1),
        })
    );
    assert_eq!(c.mesh.node_identity.service_account, "lb");
    let ca = parse(&ca(""), "t.toml").unwrap();
    let Some(CertSource::Ca {
        ttl,
        rotate_at_percent,
        ..
    }) = ca.mesh.certs
    else {
        panic!("{:?}", ca.mesh.certs)
    };
    assert_eq!((ttl, rotate_at_percent), (Duration::from_secs(3600), 50));
}

#[test]
fn mtls_service_parses() {
    let text = ca("").replace("protocol = \"tcp\"\n", "protocol = \"tcp\"\nmtls = true\n");
    assert!(parse(&text, "t.toml").unwrap().services[0].mtls);
}

#[test]
fn a_service_identity_names_who_its_backends_run_as() {
    let text = ca("").replace(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\nmtls = true\nidentity = \"shop/web-sa\"\n",
    );
    assert_eq!(
        parse(&text, "t.toml").unwrap().services[0].identity,
        Some(crate::config::WorkloadName {
            namespace: "shop".into(),
            service_account: "web-sa".into(),
        })
    );
    assert_eq!(parse(&ca(""), "t.toml").unwrap().services[0].identity, None);
    for bad in ["web", "shop/", "/web", "shop/web/x", "shop/w b"] {
        one_error(
            &ca("").replace(
                "protocol = \"tcp\"\n",
                &format!("protocol = \"tcp\"\nmtls = true\nidentity = \"{bad}\"\n"),
            ),
            9,
            "service[0].identity",
            "expected `<namespace>/<service account>`",
        );
    }
    one_error(
        &ca("").replace(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\nidentity = \"shop/web\"\n",
        ),
        8,
        "service[0].identity",
        "set `mtls = true` or remove it",
    );
}

#[test]
fn mtls_needs_the_mesh_and_the_socket_lb() {
    let mtls = |s: &str| s.replace("protocol = \"tcp\"\n", "protocol = \"tcp\"\nmtls = true\n");
    one_error(
        &mtls(&with("")),
        8,
        "service[0].mtls",
        "set `[mesh] enabled = true`",
    );
    one_error(
        &mtls(&format!("{WEB}[mesh]\nenabled = true\ncert_dir = \"/c\"\n")),
        8,
        "service[0].mtls",
        "set `[socket_lb] enabled = true`",
    );
    one_error(
        &ca(
            "[[service]]\nname = \"set\"\nmtls = true\nbackend = [{ address = \"10.0.1.2\", port = 80 }]\n",
        ),
        19,
        "service[1].mtls",
        "needs a `vip` and `port`",
    );
}

#[test]
fn enabled_mesh_needs_a_cert_source() {
    one_error(
        &with("[mesh]\nenabled = true\n"),
        13,
        "mesh.ca_cert_file",
        "needs `ca_cert_file` and `ca_key_file`",
    );
    one_error(
        &with("[mesh]\nenabled = true\nca_cert_file = \"/ca.pem\"\n"),
        15,
        "mesh.ca_key_file",
        "`ca_cert_file` needs `ca_key_file` too",
    );
    one_error(
        &ca("cert_dir = \"/run/certs\"\n"),
        15,
        "mesh.ca_cert_file",
        "exclude each other",
    );
    one_error(
        &ca("cert_dir_poll_ms = 100\n"),
        17,
        "mesh.cert_dir_poll_ms",
        "only with `cert_dir`",
    );
}

#[test]
fn bad_values() {
    one_error(
        &ca("cert_ttl_s = 0\n"),
        17,
        "mesh.cert_ttl_s",
        "expected 1 to",
    );
    one_error(
        &ca("rotate_at_percent = 95\n"),
        17,
        "mesh.rotate_at_percent",
        "expected 10 to 90",
    );
    one_error(
        &ca("trust_domain = \"Cluster.Local\"\n"),
        17,
        "mesh.trust_domain",
        "lower-case",
    );
    one_error(
        &ca("listen = \"0.0.0.0\"\n"),
        17,
        "mesh.listen",
        "address:port",
    );
    one_error(
        &with("[mesh]\ncert_dir = \"run/certs\"\n"),
        14,
        "mesh.cert_dir",
        "must be absolute",
    );
    one_error(&ca("enable = true\n"), 17, "mesh.enable", "unknown field");
}

#[test]
fn trust_bundle_mistakes() {
    one_error(
        &ca("trust_bundles = [{ trust_domain = \"cluster.local\", file = \"/x.pem\" }]\n"),
        17,
        "mesh.trust_bundles[0].trust_domain",
        "the mesh's own trust domain",
    );
    one_error(
        &ca(
            "trust_bundles = [{ trust_domain = \"a.org\", file = \"/a\" }, { trust_domain = \"a.org\", file = \"/b\" }]\n",
        ),
        17,
        "mesh.trust_bundles[1].trust_domain",
        "listed twice",
    );
    one_error(
        &ca("trust_bundles = [{ trust_domain = \"a.org\" }]\n"),
        17,
        "mesh.trust_bundles[0].file",
        "missing required field",
    );
}

#[test]
fn workload_mistakes() {
    one_error(
        &ca("[[mesh.workload]]\ncgroup = \"app\"\nnamespace = \"a\"\nservice_account = \"b\"\n"),
        18,
        "mesh.workload[0].cgroup",
        "must be absolute",
    );
    one_error(
        &ca("[[mesh.workload]]\ncgroup = \"/app\"\nnamespace = \"a/b\"\nservice_account = \"b\"\n"),
        19,
        "mesh.workload[0].namespace",
        "not a valid name",
    );
    one_error(
        &ca("[[mesh.workload]]\ncgroup = \"/app\"\nnamespace = \"a\"\n"),
        17,
        "mesh.workload[0].service_account",
        "missing required field",
    );
    one_error(
        &ca("node_identity = { namespace = \"a\", service_account = \"b\", sa = \"c\" }\n"),
        17,
        "mesh.node_identity.sa",
        "unknown field",
    );
}

/// A policy for `web` from line 17, with `rest` from line 20.
fn policy(rest: &str) -> String {
    ca(&format!(
        "[[mesh.policy]]\nname = \"p\"\nservice = \"web\"\n{rest}"
    ))
}

#[test]
fn policy_mistakes() {
    one_error(
        &policy(""),
        17,
        "mesh.policy[0].action",
        "missing required field",
    );
    one_error(
        &policy("action = \"reject\"\n"),
        20,
        "mesh.policy[0].action",
        "unknown action `reject`",
    );
    one_error(
        &policy("action = \"deny\"\n").replace("service = \"web\"", "service = \"db\""),
        19,
        "mesh.policy[0].service",
        "no `[[service]]` is named `db`",
    );
    one_error(
        &policy("action = \"deny\"\nports = [0]\n"),
        21,
        "mesh.policy[0].ports[0]",
        "expected a port",
    );
    one_error(
        &policy(
            "action = \"deny\"\nfrom = [{ principals = [\"spiffe://cluster.local/ns/a/sa/b\"] }]\n",
        ),
        21,
        "mesh.policy[0].from[0].principals",
        "without `spiffe://`",
    );
    one_error(
        &policy("action = \"deny\"\nfrom = [{ namespaces = [\"a*b\"] }]\n"),
        21,
        "mesh.policy[0].from[0].namespaces",
        "`*` may only",
    );
    one_error(
        &policy("action = \"deny\"\nfrom = [{ namespaces = [] }]\n"),
        21,
        "mesh.policy[0].from[0].namespaces",
        "an empty list matches nothing",
    );
    one_error(
        &policy("action = \"deny\"\nfrom = [{ users = [\"x\"] }]\n"),
        21,
        "mesh.policy[0].from[0].users",
        "unknown field",
    );
    one_error(
        &policy(
            "action = \"deny\"\n[[mesh.policy]]\nname = \"p\"\nservice = \"web\"\naction = \"allow\"\n",
        ),
        22,
        "mesh.policy[1].name",
        "defined twice",
    );
}

/// An enabled mesh with `keys` (from line 17), then kubernetes sources `a` and `b`.
fn with_k8s(keys: &str) -> String {
    let source = |name: &str| {
        format!("[[source]]\nkind = \"kubernetes\"\nname = \"{name}\"\nservices = [\"web\"]\n")
    };
    ca(&format!("{keys}{}{}", source("a"), source("b")))
}

#[test]
fn pod_identities_come_through_a_kubernetes_source() {
    let pod_source = |text: &str| parse(text, "t.toml").unwrap().mesh.pod_source;
    // Default: the file's first kubernetes source.
    assert_eq!(pod_source(&with_k8s("")).as_deref(), Some("a"));
    assert_eq!(
        pod_source(&with_k8s("pod_source = \"b\"\n")).as_deref(),
        Some("b")
    );
    assert_eq!(pod_source(&with_k8s("pod_identities = false\n")), None);
    // No kubernetes source, or no mesh: no pods followed.
    assert_eq!(pod_source(&ca("")), None);
    let off = with_k8s("").replace("enabled = true", "enabled = false");
    assert_eq!(pod_source(&off), None);
}

#[test]
fn pod_source_must_name_a_kubernetes_source() {
    one_error(
        &with_k8s("pod_source = \"c\"\n"),
        17,
        "mesh.pod_source",
        "no `kind = \"kubernetes\"` source is named `c`",
    );
    one_error(
        &with_k8s("pod_identities = false\npod_source = \"a\"\n"),
        18,
        "mesh.pod_source",
        "remove one of them",
    );
    one_error(
        &ca("pod_identities = \"yes\"\n"),
        17,
        "mesh.pod_identities",
        "",
    );
}
