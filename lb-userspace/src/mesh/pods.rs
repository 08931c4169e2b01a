//! The pod identities of [`Identities`] (issue 14), fed from this node's Kubernetes Pods: a
//! [`PodWatcher`] through the connection settings (API server, token, CA, node name) of the
//! kubernetes source `[mesh] pod_source` names (default: the file's first kubernetes
//! source). Every list and change replaces the whole map; API errors change nothing, so the
//! last good map stays. Started with the mesh and stopped with it; the `[mesh]` settings
//! are read once at start, like the rest of the mesh.

use std::sync::Arc;

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::identity::Identities;
use crate::{
    config::{Config, SourceConfig},
    registry::{SourceHandle, kubernetes::pods::PodWatcher},
};

/// Starts following the pods when the config names a source for them; the task ends at
/// `stop`.
pub fn start(
    config: &Config,
    ids: Arc<Identities>,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let name = config.mesh.pod_source.as_ref()?;
    let source = config.sources.iter().find_map(|s| match s {
        SourceConfig::Kubernetes(k) if &k.name == name => Some(k),
        _ => None,
    })?;
    let watcher = match PodWatcher::new(source) {
        Ok(w) => w,
        Err(e) => {
            warn!(source = %name, "mesh: pod identities are not followed: {e}");
            return None;
        }
    };
    Some(tokio::spawn(run(
        watcher,
        format!("{name}/pods"),
        ids,
        stop,
    )))
}

async fn run(watcher: PodWatcher, name: String, ids: Arc<Identities>, stop: CancellationToken) {
    // The watcher reports errors as a source does; it logs them itself, so they are only
    // drained here (the channel also ends the watch if this task goes away).
    let (tx, mut errors) = mpsc::unbounded_channel();
    let out = SourceHandle::with_stop(name, tx, stop.clone());
    let follow = watcher.run(out, move |pods| {
        info!(pods = pods.len(), "mesh: pod identities updated");
        ids.set_pod_identities(pods);
    });
    let drain = async { while errors.recv().await.is_some() {} };
    tokio::select! {
        () = follow => {}
        () = drain => {}
        () = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use serde_json::{Value, json};

    use super::*;
    use crate::{
        config::{KubernetesSource, NodeAddresses},
        mesh::identity::{
            SpiffeId,
            tests::{TempDir, ca_mesh, write_ca},
        },
        registry::{
            Backoff,
            kubernetes::tests::{FakeApiServer, Live, eventually},
        },
    };

    /// A running pod as the API server returns it (`sa: None`: no `serviceAccountName`).
    fn pod(name: &str, namespace: &str, node: &str, sa: Option<&str>, ip: &str) -> Value {
        let mut spec = json!({"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]});
        if let Some(sa) = sa {
            spec["serviceAccountName"] = json!(sa);
        }
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
            "spec": spec,
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        })
    }

    fn source(url: &str) -> KubernetesSource {
        KubernetesSource {
            name: "k8s".into(),
            api_server: Some(url.into()),
            namespace: "default".into(),
            services: vec!["web".into()],
            token_file: None,
            ca_file: None,
            discover_services: false,
            node_name: Some("node-a".into()),
            node_addresses: NodeAddresses::List(Vec::new()),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn id(ns: &str, sa: &str) -> Option<SpiffeId> {
        Some(SpiffeId::new("cluster.local", ns, sa))
    }

    /// Waits until `ip` runs as `want` (or has no identity: `None`).
    async fn until(ids: &Identities, ip_: &str, want: Option<SpiffeId>) {
        let what = format!("{ip_} to run as {want:?}");
        eventually(&what, || ids.identity_of_ip(ip(ip_)) == want).await;
    }

    #[tokio::test]
    async fn pod_identities_follow_the_list_watch_events_and_a_relist() {
        let api = FakeApiServer::start(vec![
            pod("web-1", "shop", "node-a", Some("web"), "10.244.1.5"),
            pod("elsewhere", "shop", "node-b", Some("web"), "10.244.2.9"),
        ])
        .await;
        let dir = TempDir::new();
        write_ca(&dir.0, "cluster.local");
        let ids = Identities::start(&ca_mesh(&dir.0, Duration::from_secs(3600)))
            .await
            .unwrap();
        let watcher = PodWatcher::new(&source(&api.url))
            .unwrap()
            .with_backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(200),
            ));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(watcher, "k8s/pods".into(), ids.clone(), stop.clone()));

        // The list: this node's pod only (another node's pod is not even sent).
        until(&ids, "10.244.1.5", id("shop", "web")).await;
        assert_eq!(ids.identity_of_ip(ip("10.244.2.9")), None);
        eventually("a watch", || api.seen().iter().any(|s| s.is_watch())).await;
        for s in api.seen() {
            assert_eq!(s.kind, "Pod");
            assert_eq!(
                s.get("fieldSelector"),
                Some("spec.nodeName=node-a"),
                "{s:?}"
            );
        }

        // Watch events: a pod added (no service account: `default`), its service account
        // changed (a pod re-created under the same name), another pod deleted.
        api.apply(pod("batch-1", "jobs", "node-a", None, "10.244.1.6"));
        until(&ids, "10.244.1.6", id("jobs", "default")).await;
        api.apply(pod(
            "batch-1",
            "jobs",
            "node-a",
            Some("batch"),
            "10.244.1.6",
        ));
        until(&ids, "10.244.1.6", id("jobs", "batch")).await;
        api.delete("web-1");
        until(&ids, "10.244.1.5", None).await;
        assert_eq!(ids.identity_of_ip(ip("10.244.1.6")), id("jobs", "batch"));

        // 410 Gone: what changed while the version was compacted away comes from a new list.
        let lists = |api: &FakeApiServer| api.seen().iter().filter(|s| !s.is_watch()).count();
        assert_eq!(lists(&api), 1);
        api.expire(Live::Gone, |store| {
            store.delete("batch-1");
            store.apply(pod("web-2", "shop", "node-a", Some("web"), "10.244.1.7"));
        });
        until(&ids, "10.244.1.7", id("shop", "web")).await;
        assert_eq!(ids.identity_of_ip(ip("10.244.1.6")), None);
        assert_eq!(lists(&api), 2, "listed once more after 410");

        // The API server fails: the last good map stays (never blanked)...
        let before = api.seen().len();
        api.set_failing(Some(500));
        eventually("two refused requests", || api.seen().len() >= before + 2).await;
        assert_eq!(ids.identity_of_ip(ip("10.244.1.7")), id("shop", "web"));
        // ...and it follows again once the server is back.
        api.set_failing(None);
        api.apply(pod("web-3", "shop", "node-a", Some("web"), "10.244.1.8"));
        until(&ids, "10.244.1.8", id("shop", "web")).await;
        assert_eq!(ids.identity_of_ip(ip("10.244.1.7")), id("shop", "web"));

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the pod watch stops with the mesh")
            .unwrap();
    }
}
