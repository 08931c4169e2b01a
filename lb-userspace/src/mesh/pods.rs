//! The pod identities of [`Identities`] (issue 14), fed from this node's Kubernetes Pods: a
//! [`PodWatcher`] through the connection settings (API server, token, CA, node name) of the
//! kubernetes source `[mesh] pod_source` names (default: the file's first kubernetes
//! source). Every list and change replaces the whole map; API errors change nothing, so the
//! last good map stays.
//!
//! [`follow`] reads those settings from every config generation (the snapshots carry it):
//! when a reload changes them (another `pod_source`, the source's API server, credentials
//! or node name), the old watch is stopped and a new one started; when no source is named
//! any more, the watch stops and the pod map is emptied (a map nobody keeps current would
//! name workloads that left).

use std::sync::Arc;

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::identity::Identities;
use crate::{
    config::{Config, KubernetesSource, SourceConfig},
    model::Snapshot,
    registry::{SourceHandle, kubernetes::pods::PodWatcher},
};

/// The kubernetes source whose connection settings the pods are followed through, if the
/// config names one.
fn watch_settings(config: &Config) -> Option<KubernetesSource> {
    let name = config.mesh.pod_source.as_ref()?;
    config.sources.iter().find_map(|s| match s {
        SourceConfig::Kubernetes(k) if &k.name == name => Some(k.clone()),
        _ => None,
    })
}

/// A running watch, and the settings it was started from.
struct Running {
    settings: KubernetesSource,
    /// `None`: the settings were refused (logged once; retried when they change).
    task: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Running {
    async fn stop(self) {
        if let Some((stop, task)) = self.task {
            stop.cancel();
            let _ = task.await;
        }
    }
}

/// Follows this node's pods through the source each config generation of `snapshots`
/// names, until `stop`.
pub fn follow(
    snapshots: watch::Receiver<Arc<Snapshot>>,
    ids: Arc<Identities>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(follow_configs(snapshots, ids, stop))
}

async fn follow_configs(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    ids: Arc<Identities>,
    stop: CancellationToken,
) {
    let mut running: Option<Running> = None;
    loop {
        let want = watch_settings(&snapshots.borrow_and_update().config);
        if running.as_ref().map(|r| &r.settings) != want.as_ref() {
            let had = running.is_some();
            if let Some(r) = running.take() {
                r.stop().await;
            }
            match want {
                Some(settings) => running = Some(start(settings, ids.clone(), &stop)),
                None if had => {
                    info!("mesh: pod identities are no longer followed");
                    ids.set_pod_identities(Default::default());
                }
                None => {}
            }
        }
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { break },
            () = stop.cancelled() => break,
        }
    }
    if let Some(r) = running {
        r.stop().await;
    }
}

fn start(settings: KubernetesSource, ids: Arc<Identities>, stop: &CancellationToken) -> Running {
    let name = settings.name.clone();
    let task = match PodWatcher::new(&settings) {
        Ok(w) => {
            info!(source = %name, "mesh: following this node's pods for their identities");
            let stop = stop.child_token();
            let task = tokio::spawn(run(w, format!("{name}/pods"), ids, stop.clone()));
            Some((stop, task))
        }
        Err(e) => {
            warn!(source = %name, "mesh: pod identities are not followed: {e}");
            None
        }
    };
    Running { settings, task }
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

    /// Identities from a fresh agent CA (the directory must outlive them).
    async fn identities() -> (TempDir, Arc<Identities>) {
        let dir = TempDir::new();
        write_ca(&dir.0, "cluster.local");
        let ids = Identities::start(&ca_mesh(&dir.0, Duration::from_secs(3600)))
            .await
            .unwrap();
        (dir, ids)
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
        let (_dir, ids) = identities().await;
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

    /// A config following the pods through source `a` or `b` (`pod_source`), or none.
    fn config(a: &str, b: &str, pod_source: Option<&str>) -> Config {
        let keys = match pod_source {
            Some(n) => format!("pod_source = \"{n}\"\n"),
            None => "pod_identities = false\n".into(),
        };
        let source = |name: &str, url: &str| {
            format!(
                "[[source]]\nkind = \"kubernetes\"\nname = \"{name}\"\napi_server = \"{url}\"\ndiscover_services = true\nnode_name = \"node-a\"\n"
            )
        };
        let text = format!(
            "[global]\ninterfaces = [\"eth0\"]\n[mesh]\nenabled = true\nca_cert_file = \"/ca.pem\"\nca_key_file = \"/ca-key.pem\"\n{keys}{}{}",
            source("a", a),
            source("b", b)
        );
        crate::config::parse(&text, "t.toml").unwrap()
    }

    fn snapshot(config: Config) -> Arc<Snapshot> {
        Arc::new(Snapshot::empty(Arc::new(config)))
    }

    #[tokio::test]
    async fn the_pod_watch_follows_config_reloads() {
        let api_a = FakeApiServer::start(vec![pod(
            "web-1",
            "shop",
            "node-a",
            Some("web"),
            "10.244.1.5",
        )])
        .await;
        let api_b = FakeApiServer::start(vec![pod(
            "cart-1",
            "shop",
            "node-a",
            Some("cart"),
            "10.244.1.9",
        )])
        .await;
        let (_dir, ids) = identities().await;
        let (tx, rx) = watch::channel(snapshot(config(&api_a.url, &api_b.url, Some("a"))));
        let stop = CancellationToken::new();
        let task = follow(rx, ids.clone(), stop.clone());

        // Generation 1 follows source `a`.
        until(&ids, "10.244.1.5", id("shop", "web")).await;
        eventually("a watch on a", || api_a.seen().iter().any(|s| s.is_watch())).await;
        assert!(api_b.seen().is_empty(), "b is not asked yet");

        // A snapshot with the same settings (a health change, say): the watch goes on.
        let before = api_a.seen().len();
        tx.send(snapshot(config(&api_a.url, &api_b.url, Some("a"))))
            .unwrap();
        api_a.apply(pod("web-2", "shop", "node-a", Some("web"), "10.244.1.6"));
        until(&ids, "10.244.1.6", id("shop", "web")).await;
        assert_eq!(api_a.seen().len(), before, "no new list or watch on a");

        // A reload names `b`: b's pods replace a's, and a's changes are no longer followed.
        tx.send(snapshot(config(&api_a.url, &api_b.url, Some("b"))))
            .unwrap();
        until(&ids, "10.244.1.9", id("shop", "cart")).await;
        assert_eq!(ids.identity_of_ip(ip("10.244.1.5")), None);
        let a_requests = api_a.seen().len();
        api_a.apply(pod("web-3", "shop", "node-a", Some("web"), "10.244.1.7"));
        api_b.apply(pod("cart-2", "shop", "node-a", Some("cart"), "10.244.1.10"));
        until(&ids, "10.244.1.10", id("shop", "cart")).await;
        assert_eq!(
            ids.identity_of_ip(ip("10.244.1.7")),
            None,
            "a is not followed"
        );
        assert_eq!(api_a.seen().len(), a_requests, "nothing more asked of a");

        // Source `b`'s API server changes (same name): the watch moves to the new address.
        let api_c = FakeApiServer::start(vec![pod(
            "pay-1",
            "shop",
            "node-a",
            Some("pay"),
            "10.244.1.11",
        )])
        .await;
        tx.send(snapshot(config(&api_a.url, &api_c.url, Some("b"))))
            .unwrap();
        until(&ids, "10.244.1.11", id("shop", "pay")).await;
        assert_eq!(ids.identity_of_ip(ip("10.244.1.9")), None);

        // A reload without pod identities: the watch stops and the map is emptied.
        tx.send(snapshot(config(&api_a.url, &api_c.url, None)))
            .unwrap();
        until(&ids, "10.244.1.11", None).await;

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the pod watch stops with the mesh")
            .unwrap();
    }
}
