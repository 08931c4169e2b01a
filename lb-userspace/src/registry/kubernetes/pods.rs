//! The mesh's pod identities (issue 14): which local pod address runs as which namespace and
//! service account, from the Pods of this node
//! (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`). The pod's cgroup is not in the
//! API, so the mesh maps pods by address.
//!
//! [`PodWatcher`] lists and watches them through a kubernetes source's connection settings
//! (API server, token, CA, node name) with the same loop as the source ([`follow_keyed`]):
//! resumes from the last version, lists again after `410 Gone`, backs off after errors, and
//! hands on the complete map after every list and change; on errors it hands on nothing, so
//! the last good map stays in use. Its service account needs `list` and `watch` on `pods`
//! across namespaces (a ClusterRole: a node runs pods of every namespace).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, runtime::watcher};
use tracing::{info, warn};

use super::super::{Backoff, SourceHandle};
use super::follow::follow_keyed;
use super::{KubernetesError, KubernetesWatcher};
use crate::config::KubernetesSource;

/// (namespace, service account).
pub type PodName = (String, String);

/// Pod address -> (namespace, service account).
pub type PodIdentities = HashMap<IpAddr, PodName>;

/// The field selector that lists only this node's pods.
pub fn node_field_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Pod address -> (namespace, service account) for the pods of `node`. Left out: pods of other
/// nodes, `hostNetwork` pods (their address is the node's, shared with everything else on
/// it), finished pods (`Succeeded`, `Failed`: their address may be reused), pods without an
/// address yet. A pod without `serviceAccountName` runs as `default`, as the API server
/// defaults it.
pub fn pod_identities(pods: &[Pod], node: &str) -> PodIdentities {
    pods.iter().flat_map(|p| pod_identity(p, node)).collect()
}

/// One pod's addresses with its (namespace, service account); empty if it is left out (see
/// [`pod_identities`]).
fn pod_identity(pod: &Pod, node: &str) -> Vec<(IpAddr, PodName)> {
    let (Some(spec), Some(status), Some(ns)) = (&pod.spec, &pod.status, &pod.metadata.namespace)
    else {
        return Vec::new();
    };
    if spec.node_name.as_deref() != Some(node)
        || spec.host_network == Some(true)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return Vec::new();
    }
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let ips = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref());
    ips.filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| (ip, (ns.clone(), sa.clone())))
        .collect()
}

/// Follows this node's Pods; see the module docs.
#[derive(Debug)]
pub struct PodWatcher {
    connection: KubernetesWatcher,
}

impl PodWatcher {
    /// Through `source`'s API server, credentials and node name (its services are not
    /// used).
    pub fn new(source: &KubernetesSource) -> Result<Self, KubernetesError> {
        Ok(Self {
            connection: KubernetesWatcher::connection(source)?,
        })
    }

    /// Replaces the delays after an error (default: 200 ms doubling to 30 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.connection.backoff = backoff;
        self
    }

    /// Runs until `out` closes (or at once without a node name: without it every pod of
    /// the cluster would be listed, and none of the others is local). `publish` gets the
    /// complete map after the first list and after every change to it; errors go to `out`.
    pub async fn run(mut self, out: SourceHandle, mut publish: impl FnMut(PodIdentities) + Send) {
        let Some(node) = self.connection.node_name() else {
            let e = "no node name (set the kubernetes source's `node_name` or NODE_NAME): \
                     pod identities are not followed";
            warn!(source = out.name(), "kubernetes pods: {e}");
            out.error(format!("kubernetes pods: {e}"));
            return;
        };
        let Some(client) = self.connection.client(&out).await else {
            return;
        };
        info!(source = out.name(), %node, "kubernetes: following this node's pods");
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&node_field_selector(&node));
        let entry = |p: &Pod| {
            let m = &p.metadata;
            let key = format!(
                "{}/{}",
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default()
            );
            (key, pod_identity(p, &node))
        };
        let mut sent: Option<PodIdentities> = None;
        let forward = |pods: &BTreeMap<String, Vec<(IpAddr, PodName)>>| {
            let map: PodIdentities = pods.values().flatten().cloned().collect();
            if sent.as_ref() != Some(&map) {
                sent = Some(map.clone());
                publish(map);
            }
            true
        };
        let backoff = self.connection.backoff.clone();
        tokio::select! {
            () = follow_keyed(api, config, "pods", backoff, &out, entry, forward) => {}
            () = out.closed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::List;

    use super::*;

    /// A `GET /api/v1/pods?fieldSelector=spec.nodeName=node-a` response as the API server
    /// sends it (trimmed of fields the mapping does not read), with one pod of each kind the
    /// mapping must handle.
    const NODE_A_PODS: &str = r#"{
  "kind": "PodList",
  "apiVersion": "v1",
  "metadata": {"resourceVersion": "48211"},
  "items": [
    {"metadata": {"name": "web-7d9f", "namespace": "shop", "uid": "1"},
     "spec": {"nodeName": "node-a", "serviceAccountName": "web",
              "containers": [{"name": "web", "image": "web:1"}]},
     "status": {"phase": "Running", "podIP": "10.244.1.5",
                "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:244:1::5"}]}},
    {"metadata": {"name": "batch-x1", "namespace": "jobs", "uid": "2"},
     "spec": {"nodeName": "node-a", "containers": [{"name": "b", "image": "b:1"}]},
     "status": {"phase": "Running", "podIP": "10.244.1.6", "podIPs": [{"ip": "10.244.1.6"}]}},
    {"metadata": {"name": "kube-proxy-abc", "namespace": "kube-system", "uid": "3"},
     "spec": {"nodeName": "node-a", "hostNetwork": true, "serviceAccountName": "kube-proxy",
              "containers": [{"name": "p", "image": "p:1"}]},
     "status": {"phase": "Running", "podIP": "192.168.0.10", "podIPs": [{"ip": "192.168.0.10"}]}},
    {"metadata": {"name": "done-1", "namespace": "jobs", "uid": "4"},
     "spec": {"nodeName": "node-a", "serviceAccountName": "batch",
              "containers": [{"name": "d", "image": "d:1"}]},
     "status": {"phase": "Succeeded", "podIP": "10.244.1.7"}},
    {"metadata": {"name": "starting", "namespace": "shop", "uid": "5"},
     "spec": {"nodeName": "node-a", "serviceAccountName": "web",
              "containers": [{"name": "s", "image": "s:1"}]},
     "status": {"phase": "Pending"}},
    {"metadata": {"name": "elsewhere", "namespace": "shop", "uid": "6"},
     "spec": {"nodeName": "node-b", "serviceAccountName": "web",
              "containers": [{"name": "e", "image": "e:1"}]},
     "status": {"phase": "Running", "podIP": "10.244.2.9"}}
  ]
}"#;

    #[test]
    fn node_pods_map_to_namespace_and_service_account() {
        let list: List<Pod> = serde_json::from_str(NODE_A_PODS).unwrap();
        let ids = pod_identities(&list.items, "node-a");
        let id = |ns: &str, sa: &str| (ns.to_owned(), sa.to_owned());
        let want: HashMap<IpAddr, _> = [
            ("10.244.1.5", id("shop", "web")),
            ("fd00:244:1::5", id("shop", "web")),
            ("10.244.1.6", id("jobs", "default")),
        ]
        .into_iter()
        .map(|(ip, v)| (ip.parse().unwrap(), v))
        .collect();
        assert_eq!(ids, want);
        assert_eq!(node_field_selector("node-a"), "spec.nodeName=node-a");
        // The same list seen from another node: only its own pod.
        let b = pod_identities(&list.items, "node-b");
        assert_eq!(b.len(), 1);
        assert_eq!(
            b[&"10.244.2.9".parse::<IpAddr>().unwrap()],
            id("shop", "web")
        );
    }
}
