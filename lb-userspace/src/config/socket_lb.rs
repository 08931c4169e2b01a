//! `[socket_lb]` (read and judged at once, like `[gateway]`) and each service's `scope`.

use std::path::PathBuf;

use super::diag::Diag;
use super::doc::{Sp, Table};
use super::raw::RawService;
use super::{Mode, Service};

/// Where the socket LB attaches when `[socket_lb] cgroup` is not set: the cgroup v2 root, so
/// every process on the node is covered; the first of these that is a cgroup v2 mount (the
/// second is where hybrid hosts mount it).
pub const DEFAULT_SOCKET_LB_CGROUPS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// `[socket_lb]`: socket-level load balancing for processes on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLbSettings {
    /// `enabled` (default false).
    pub enabled: bool,
    /// `cgroup`: a cgroup v2 directory; processes in it and below are translated. `None`:
    /// the cgroup v2 root (see [`DEFAULT_SOCKET_LB_CGROUPS`]).
    pub cgroup: Option<PathBuf>,
    /// `namespaces`: whose sockets are translated.
    pub namespaces: NetnsScope,
}

impl Default for SocketLbSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            cgroup: None,
            namespaces: NetnsScope::Host,
        }
    }
}

/// `namespaces = "host" | "all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetnsScope {
    /// Only sockets of the agent's own network namespace (the host's, for a DaemonSet with
    /// hostNetwork): a proxy inside a pod that needs the original address is left alone.
    #[default]
    Host,
    /// Sockets of every network namespace.
    All,
}

/// A service's `scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Reachable on the wire at its VIP (XDP), and through the socket LB from this node.
    #[default]
    External,
    /// Reachable only through the socket LB (a ClusterIP): packets to it from the wire are
    /// dropped, and the VIP is never announced.
    Cluster,
}

pub(super) fn settings(root: &Table, d: &mut Diag) -> SocketLbSettings {
    let mut s = SocketLbSettings::default();
    let Some(t) = root.get("socket_lb").and_then(|n| n.table(d)) else {
        return s;
    };
    t.deny_unknown(&["enabled", "cgroup", "namespaces"], d);
    if let Some(e) = t.get("enabled").and_then(|n| n.bool(d)) {
        s.enabled = e.val;
    }
    if let Some(c) = t.get("cgroup").and_then(|n| n.str(d)) {
        if c.val.starts_with('/') {
            s.cgroup = Some(c.val.into());
        } else {
            d.error(&c.span, &t.field("cgroup"), "the path must be absolute");
        }
    }
    if let Some(n) = t.get("namespaces").and_then(|n| n.str(d)) {
        match n.val.as_str() {
            "host" => s.namespaces = NetnsScope::Host,
            "all" => s.namespaces = NetnsScope::All,
            other => d.error(
                &n.span,
                &t.field("namespaces"),
                format!("unknown namespaces `{other}`; expected `host` or `all`"),
            ),
        }
    }
    s
}

/// A service's `scope` value.
pub(super) fn scope(raw: &Sp<String>, field: &str, d: &mut Diag) -> Option<Scope> {
    match raw.val.as_str() {
        "external" => Some(Scope::External),
        "cluster" => Some(Scope::Cluster),
        other => {
            d.error(
                &raw.span,
                field,
                format!("unknown scope `{other}`; expected `external` or `cluster`"),
            );
            None
        }
    }
}

/// A cluster-scope service needs a VIP and port, plain NAT mode, and the socket LB on:
/// nothing else would ever serve it.
pub(super) fn check_scopes(
    raw: &[RawService],
    services: &[Service],
    socket_lb: &SocketLbSettings,
    d: &mut Diag,
) {
    for r in raw {
        let Some(scope) = r.scope.as_ref().filter(|s| s.val == "cluster") else {
            continue;
        };
        let field = format!("service[{}].scope", r.index);
        let Some(s) = services
            .iter()
            .find(|s| r.name.as_ref().is_some_and(|n| n.val == s.name))
        else {
            continue;
        };
        if s.frontend.is_none() {
            d.error(
                &scope.span,
                &field,
                "`scope = \"cluster\"` needs a `vip` and `port` (the cluster address)",
            );
        } else if s.mode != Mode::Nat {
            d.error(
                &scope.span,
                &field,
                "`scope = \"cluster\"` is for `mode = \"nat\"` services (the gateway has its own \
                 listener)",
            );
        } else if !socket_lb.enabled {
            d.error(
                &scope.span,
                &field,
                "`scope = \"cluster\"` services are served only by the socket LB: set \
                 `[socket_lb] enabled = true`",
            );
        }
    }
}
