//! `[socket_lb]` and each service's `scope`: a valid config, and one test per mistake.

use super::{WEB, one_error};
use crate::config::{NetnsScope, Scope, parse};

/// `WEB` with `scope = "cluster"` on its service (line 8) and the socket LB on (lines 11-13).
fn cluster(socket_lb: &str) -> String {
    let web = WEB.replace(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\nscope = \"cluster\"\n",
    );
    format!("{web}{socket_lb}")
}

#[test]
fn socket_lb_and_cluster_scope_parse() {
    let c = parse(
        &cluster(
            "[socket_lb]\nenabled = true\ncgroup = \"/sys/fs/cgroup/pods\"\nnamespaces = \"all\"\n",
        ),
        "t.toml",
    )
    .unwrap();
    assert!(c.socket_lb.enabled);
    assert_eq!(
        c.socket_lb.cgroup.as_deref(),
        Some(std::path::Path::new("/sys/fs/cgroup/pods"))
    );
    assert_eq!(c.socket_lb.namespaces, NetnsScope::All);
    assert_eq!(c.services[0].scope, Scope::Cluster);
}

#[test]
fn defaults_are_off_root_cgroup_host_namespace_external_scope() {
    let c = parse(WEB, "t.toml").unwrap();
    assert!(!c.socket_lb.enabled);
    assert_eq!(c.socket_lb.cgroup, None);
    assert_eq!(c.socket_lb.namespaces, NetnsScope::Host);
    assert_eq!(c.services[0].scope, Scope::External);
    let on = parse(&format!("{WEB}[socket_lb]\nenabled = true\n"), "t.toml").unwrap();
    assert!(on.socket_lb.enabled);
    assert_eq!(on.socket_lb.namespaces, NetnsScope::Host);
}

#[test]
fn cluster_scope_needs_the_socket_lb() {
    one_error(
        &cluster(""),
        8,
        "service[0].scope",
        "set `[socket_lb] enabled = true`",
    );
    one_error(
        &cluster("[socket_lb]\nenabled = false\n"),
        8,
        "service[0].scope",
        "served only by the socket LB",
    );
}

#[test]
fn unknown_scope() {
    one_error(
        &WEB.replace(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\nscope = \"public\"\n",
        ),
        8,
        "service[0].scope",
        "unknown scope `public`; expected `external` or `cluster`",
    );
}

#[test]
fn cluster_scope_without_a_vip() {
    let text = format!(
        "{WEB}[[service]]\nname = \"set\"\nscope = \"cluster\"\nbackend = [{{ address = \"10.0.1.2\", port = 80 }}]\n[socket_lb]\nenabled = true\n"
    );
    one_error(&text, 13, "service[1].scope", "needs a `vip` and `port`");
}

#[test]
fn unknown_namespaces() {
    one_error(
        &format!("{WEB}[socket_lb]\nenabled = true\nnamespaces = \"pods\"\n"),
        13,
        "socket_lb.namespaces",
        "unknown namespaces `pods`; expected `host` or `all`",
    );
}

#[test]
fn relative_cgroup() {
    one_error(
        &format!("{WEB}[socket_lb]\ncgroup = \"sys/fs/cgroup\"\n"),
        12,
        "socket_lb.cgroup",
        "the path must be absolute",
    );
}

#[test]
fn unknown_socket_lb_field() {
    one_error(
        &format!("{WEB}[socket_lb]\nenable = true\n"),
        12,
        "socket_lb.enable",
        "unknown",
    );
}
