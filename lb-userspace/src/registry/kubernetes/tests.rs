//! The Kubernetes source against a fake API server on loopback that serves
//! `discovery.k8s.io/v1` EndpointSlices as the API server documents it: a list with its
//! `resourceVersion`, then a watch (`?watch=true&resourceVersion=N`) streaming one JSON
//! event per line on a chunked response (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when
//! `allowWatchBookmarks=true`, and `ERROR` with a 410 Status once `N` is compacted away),
//! label selectors (`kubernetes.io/service-name=NAME`) applied on both. Pods too, across
//! namespaces (`/api/v1/pods`), with the `spec.nodeName=NODE` field selector; the mesh's
//! pod identities are tested against the same server (`crate::mesh::pods`).

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Path as UrlPath, Query as UrlQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::stream;
use k8s_openapi::api::discovery::v1::EndpointPort;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::*;
use crate::{
    config::KubernetesSource,
    registry::{
        SourceUpdate,
        consul::tests::{Running, TempFile, WAIT, bare, ep, fast},
    },
};

const NS: &str = "shop";

/// One request the fake API server received.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    /// `Service`, `EndpointSlice` or `Pod`.
    pub(crate) kind: &'static str,
    query: HashMap<String, String>,
    authorization: Option<String>,
}

impl Seen {
    pub(crate) fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
}

/// What live watches are told.
#[derive(Clone, Debug)]
pub(crate) enum Live {
    Event {
        rv: u64,
        kind: &'static str,
        object: Value,
    },
    Bookmark(u64),
    /// The server ends every open watch (as it does at `timeoutSeconds`).
    Close,
    /// Every open watch gets an ERROR 410 and ends.
    Gone,
}

#[derive(Default)]
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<String, Value>,
    /// Every change, for watches that resume from an older version.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a version below this one get 410 Gone.
    compacted: u64,
    seen: Vec<Seen>,
    /// Answer every request with this status.
    failing: Option<u16>,
    /// Refuse an expired watch with HTTP 410 instead of a 200 and an ERROR event.
    gone_as_status: bool,
}

impl Store {
    /// Writes a slice (ADDED or MODIFIED) and returns the event.
    pub(crate) fn apply(&mut self, mut slice: Value) -> Live {
        self.rv += 1;
        let name = slice["metadata"]["name"].as_str().unwrap().to_owned();
        slice["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let kind = if self.objects.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(name, slice.clone());
        self.history.push((self.rv, kind, slice.clone()));
        Live::Event {
            rv: self.rv,
            kind,
            object: slice,
        }
    }

    pub(crate) fn delete(&mut self, name: &str) -> Live {
        self.rv += 1;
        let mut slice = self
            .objects
            .remove(name)
            .expect("deleting a slice that exists");
        slice["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.history.push((self.rv, "DELETED", slice.clone()));
        Live::Event {
            rv: self.rv,
            kind: "DELETED",
            object: slice,
        }
    }
}

struct Fake {
    store: Mutex<Store>,
    live: broadcast::Sender<Live>,
}

/// The fake API server, served until dropped.
pub(crate) struct FakeApiServer {
    pub(crate) url: String,
    state: Arc<Fake>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    pub(crate) async fn start(slices: Vec<Value>) -> Self {
        let mut store = Store {
            rv: 1000,
            ..Store::default()
        };
        for s in slices {
            store.apply(s);
        }
        let state = Arc::new(Fake {
            store: Mutex::new(store),
            live: broadcast::channel(64).0,
        });
        let app = Router::new()
            .route(
                "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                get(endpoint_slices),
            )
            .route("/api/v1/namespaces/{namespace}/services", get(services))
            .route("/api/v1/pods", get(pods))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, task }
    }

    pub(crate) fn apply(&self, slice: Value) {
        let event = self.state.store.lock().unwrap().apply(slice);
        let _ = self.state.live.send(event);
    }

    pub(crate) fn delete(&self, name: &str) {
        let event = self.state.store.lock().unwrap().delete(name);
        let _ = self.state.live.send(event);
    }

    /// Other objects changed (the version moved on) and a bookmark says so; returns it.
    fn bookmark(&self) -> u64 {
        let rv = {
            let mut store = self.state.store.lock().unwrap();
            store.rv += 5;
            store.rv
        };
        let _ = self.state.live.send(Live::Bookmark(rv));
        rv
    }

    /// Changes slices while every watcher's version is compacted away (so no watch can
    /// resume and see them), then ends the open watches with `how`.
    pub(crate) fn expire(&self, how: Live, changes: impl FnOnce(&mut Store)) {
        {
            let mut store = self.state.store.lock().unwrap();
            changes(&mut store);
            store.compacted = store.rv;
        }
        let _ = self.state.live.send(how);
    }

    pub(crate) fn set_failing(&self, status: Option<u16>) {
        self.state.store.lock().unwrap().failing = status;
        let _ = self.state.live.send(Live::Close);
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.store.lock().unwrap().seen.clone()
    }

    fn rv(&self) -> u64 {
        self.state.store.lock().unwrap().rv
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

fn line(value: &Value) -> String {
    format!("{value}\n")
}

async fn endpoint_slices(
    state: State<Arc<Fake>>,
    namespace: UrlPath<String>,
    query: UrlQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    objects("EndpointSlice", state, Some(namespace), query, headers)
}

async fn services(
    state: State<Arc<Fake>>,
    namespace: UrlPath<String>,
    query: UrlQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    objects("Service", state, Some(namespace), query, headers)
}

/// `/api/v1/pods`: every namespace's.
async fn pods(
    state: State<Arc<Fake>>,
    query: UrlQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    objects("Pod", state, None, query, headers)
}

/// The group/version objects of `kind` belong to.
fn api_version(kind: &str) -> &'static str {
    match kind {
        "Service" | "Pod" => "v1",
        _ => "discovery.k8s.io/v1",
    }
}

/// List or watch the stored objects of `kind` in the namespace (every namespace: `None`)
/// (an `ADDED` etc. event per line), selected by the equality label selector and the
/// `spec.nodeName` field selector if the request has them.
fn objects(
    kind: &'static str,
    State(fake): State<Arc<Fake>>,
    namespace: Option<UrlPath<String>>,
    UrlQuery(query): UrlQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let seen = Seen {
        kind,
        query: query.clone(),
        authorization,
    };
    let is_watch = seen.is_watch();
    // Equality selectors only, as the source sends: `key=value`.
    let label = query.get("labelSelector").map(|s| {
        let (k, v) = s.split_once('=').expect("an equality selector");
        (k.to_owned(), v.to_owned())
    });
    // The one field selector the agent sends: `spec.nodeName=NODE`.
    let node = query.get("fieldSelector").map(|s| {
        let node = s.strip_prefix("spec.nodeName=");
        node.expect("a spec.nodeName selector").to_owned()
    });
    let namespace = namespace.map(|UrlPath(n)| n);
    let selected = move |o: &Value| {
        o["kind"] == json!(kind)
            && namespace
                .as_ref()
                .is_none_or(|n| o["metadata"]["namespace"] == json!(n))
            && node
                .as_ref()
                .is_none_or(|n| o["spec"]["nodeName"] == json!(n))
            && label
                .as_ref()
                .is_none_or(|(label, value)| o["metadata"]["labels"][label] == json!(value))
    };

    let mut store = fake.store.lock().unwrap();
    store.seen.push(seen);
    if let Some(code) = store.failing {
        let body = status_body(code, "InternalError", "injected failure");
        return (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response();
    }
    if !is_watch {
        let items: Vec<Value> = store
            .objects
            .values()
            .filter(|o| selected(o))
            .map(|o| {
                // List items carry no kind or apiVersion.
                let mut o = o.clone();
                let map = o.as_object_mut().unwrap();
                map.remove("kind");
                map.remove("apiVersion");
                o
            })
            .collect();
        return axum::Json(json!({
            "kind": format!("{kind}List"),
            "apiVersion": api_version(kind),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items
        }))
        .into_response();
    }

    let from: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .expect("the source watches from a version");
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let too_old = || {
        let message = format!("too old resource version: {from} ({})", store.compacted);
        status_body(410, "Expired", &message)
    };
    if from < store.compacted {
        if store.gone_as_status {
            return (StatusCode::GONE, axum::Json(too_old())).into_response();
        }
        let error = json!({"type": "ERROR", "object": too_old()});
        return watch_response(vec![line(&error)], None);
    }
    let backlog = store
        .history
        .iter()
        .filter(|(rv, _, o)| *rv > from && selected(o))
        .map(|(_, kind, o)| line(&json!({"type": kind, "object": o})))
        .collect();
    // Subscribed under the lock: no change falls between the backlog and the live events.
    let live = fake.live.subscribe();
    drop(store);
    let gone = status_body(410, "Expired", "too old resource version");
    let next_line = move |event: Live| -> Option<Option<String>> {
        match event {
            Live::Event { rv, kind, object } if rv > from && selected(&object) => {
                Some(Some(line(&json!({"type": kind, "object": object}))))
            }
            Live::Event { .. } => Some(None),
            Live::Bookmark(rv) if bookmarks => Some(Some(line(&json!({
                "type": "BOOKMARK",
                "object": {
                    "kind": kind,
                    "apiVersion": api_version(kind),
                    "metadata": {"resourceVersion": rv.to_string()}
                }
            })))),
            Live::Bookmark(_) => Some(None),
            Live::Close => None,
            Live::Gone => Some(Some(line(&json!({"type": "ERROR", "object": gone})))),
        }
    };
    watch_response(backlog, Some((live, Box::new(next_line))))
}

type LineOf = Box<dyn FnMut(Live) -> Option<Option<String>> + Send>;

/// A chunked 200 response: `backlog` lines, then one line per live event until the filter
/// says stop (`None`) or after an ERROR.
fn watch_response(
    backlog: Vec<String>,
    live: Option<(broadcast::Receiver<Live>, LineOf)>,
) -> Response {
    struct Feed {
        backlog: std::vec::IntoIter<String>,
        live: Option<(broadcast::Receiver<Live>, LineOf)>,
    }
    let feed = Feed {
        backlog: backlog.into_iter(),
        live,
    };
    let lines = stream::unfold(feed, |mut feed| async move {
        if let Some(l) = feed.backlog.next() {
            return Some((Ok::<_, Infallible>(l), feed));
        }
        let (rx, next_line) = feed.live.as_mut()?;
        loop {
            let event = rx.recv().await.ok()?;
            let ends = matches!(event, Live::Gone);
            match next_line(event)? {
                Some(l) => {
                    if ends {
                        feed.live = None;
                    }
                    return Some((Ok(l), feed));
                }
                None => continue,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .unwrap()
}

/// An EndpointSlice as the EndpointSlice controller writes it.
fn slice(name: &str, service: &str, ports: Value, endpoints: Value) -> Value {
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "generateName": format!("{service}-"),
            "namespace": NS,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": service,
                "uid": "0b7a5c3e-6d3f-4e0a-9a57-5ac1d3b4c001",
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints
    })
}

fn http_port(port: u16) -> Value {
    json!([{"name": "http", "protocol": "TCP", "port": port}])
}

/// An endpoint; each condition is left out when `None`, as the API server may.
fn endpoint(
    addr: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> Value {
    let mut conditions = serde_json::Map::new();
    for (k, v) in [
        ("ready", ready),
        ("serving", serving),
        ("terminating", terminating),
    ] {
        if let Some(v) = v {
            conditions.insert(k.into(), json!(v));
        }
    }
    let pod = format!("pod-{}", addr.replace('.', "-"));
    json!({
        "addresses": [addr],
        "conditions": conditions,
        "nodeName": "node-1",
        "zone": "zone-a",
        "targetRef": {
            "kind": "Pod",
            "namespace": NS,
            "name": pod,
            "uid": "1f0c4b8e-0000-4000-8000-000000000001"
        }
    })
}

fn ready(addr: &str) -> Value {
    endpoint(addr, Some(true), Some(true), Some(false))
}

fn config(url: &str, services: &[&str], token: Option<&TempFile>) -> KubernetesSource {
    KubernetesSource {
        name: "kubernetes".into(),
        api_server: Some(url.into()),
        namespace: NS.into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        token_file: token.map(|t| t.0.clone()),
        ca_file: None,
        discover_services: false,
        node_name: None,
        node_addresses: crate::config::NodeAddresses::List(Vec::new()),
    }
}

pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn lists_then_follows_watch_events() {
    let api = FakeApiServer::start(vec![
        slice(
            "web-abc12",
            "web",
            http_port(8080),
            json!([
                ready("10.0.0.1"),
                // No conditions at all: ready.
                endpoint("10.0.0.2", None, None, None),
                // Terminating but still serving: drains.
                endpoint("10.0.0.3", Some(false), Some(true), Some(true)),
                // Terminating and no longer serving: out.
                endpoint("10.0.0.4", Some(false), Some(false), Some(true)),
                // Not ready: out.
                endpoint("10.0.0.5", Some(false), Some(false), Some(false)),
            ]),
        ),
        // Several ports: the first TCP one.
        slice(
            "api-xyz89",
            "api",
            json!([
                {"name": "dns", "protocol": "UDP", "port": 53},
                {"name": "grpc", "protocol": "TCP", "port": 9090},
                {"name": "metrics", "protocol": "TCP", "port": 9100}
            ]),
            json!([ready("10.0.1.1")]),
        ),
        // Another service in the namespace: not selected.
        slice(
            "other-1",
            "other",
            http_port(80),
            json!([ready("10.0.9.9")]),
        ),
    ])
    .await;
    let token = TempFile::new("k8s-token", "eyJhbGciOiJSUzI1NiJ9.test\n");
    let watcher = KubernetesWatcher::new(&config(&api.url, &["web", "api"], Some(&token)))
        .unwrap()
        .with_backoff(fast());
    let mut source = Running::start(watcher);

    let first = source.next_set().await;
    assert_eq!(
        bare(&first),
        vec![
            ep("api", "10.0.1.1", 9090, 1),
            ep("web", "10.0.0.1", 8080, 1),
            ep("web", "10.0.0.2", 8080, 1),
            ep("web", "10.0.0.3", 8080, 0),
        ]
    );
    let meta = &first
        .iter()
        .find(|e| e.addr.to_string() == "10.0.0.1")
        .unwrap()
        .metadata;
    assert_eq!(
        meta.get("k8s.pod").map(String::as_str),
        Some("pod-10-0-0-1")
    );
    assert_eq!(meta.get("k8s.node").map(String::as_str), Some("node-1"));
    assert_eq!(meta.get("k8s.zone").map(String::as_str), Some("zone-a"));

    // Both services listed and are being watched from the list's version, with bookmarks.
    let list_rv = api.rv();
    eventually("two watches", || {
        api.seen().iter().filter(|s| s.is_watch()).count() >= 2
    })
    .await;
    for s in api.seen() {
        assert_eq!(
            s.authorization.as_deref(),
            Some("Bearer eyJhbGciOiJSUzI1NiJ9.test")
        );
        let selector = s.get("labelSelector").unwrap();
        assert!(
            [
                "kubernetes.io/service-name=web",
                "kubernetes.io/service-name=api"
            ]
            .contains(&selector),
            "{selector}"
        );
        if s.is_watch() {
            assert_eq!(s.get("allowWatchBookmarks"), Some("true"));
            assert_eq!(s.get("resourceVersion"), Some(list_rv.to_string().as_str()));
        }
    }

    // ADDED: a second slice of web.
    api.apply(slice(
        "web-def34",
        "web",
        http_port(8080),
        json!([ready("10.0.2.1")]),
    ));
    assert_eq!(
        bare(&source.next_set().await),
        vec![
            ep("api", "10.0.1.1", 9090, 1),
            ep("web", "10.0.0.1", 8080, 1),
            ep("web", "10.0.0.2", 8080, 1),
            ep("web", "10.0.0.3", 8080, 0),
            ep("web", "10.0.2.1", 8080, 1),
        ]
    );

    // MODIFIED: 10.0.0.1 starts terminating (drains), 10.0.0.3 is gone.
    api.apply(slice(
        "web-abc12",
        "web",
        http_port(8080),
        json!([
            endpoint("10.0.0.1", Some(false), Some(true), Some(true)),
            endpoint("10.0.0.2", None, None, None),
        ]),
    ));
    assert_eq!(
        bare(&source.next_set().await),
        vec![
            ep("api", "10.0.1.1", 9090, 1),
            ep("web", "10.0.0.1", 8080, 0),
            ep("web", "10.0.0.2", 8080, 1),
            ep("web", "10.0.2.1", 8080, 1),
        ]
    );

    // A change to an unwatched service publishes nothing.
    api.apply(slice(
        "other-1",
        "other",
        http_port(80),
        json!([ready("10.0.9.8")]),
    ));
    source.quiet_for(Duration::from_millis(300)).await;

    // DELETED: api's only slice.
    api.delete("api-xyz89");
    assert_eq!(
        bare(&source.next_set().await),
        vec![
            ep("web", "10.0.0.1", 8080, 0),
            ep("web", "10.0.0.2", 8080, 1),
            ep("web", "10.0.2.1", 8080, 1),
        ]
    );
}

#[tokio::test]
async fn bookmark_moves_the_resume_point() {
    let api = FakeApiServer::start(vec![slice(
        "web-1",
        "web",
        http_port(80),
        json!([ready("10.0.0.1")]),
    )])
    .await;
    // A token file as the kubelet writes it (no newline): kube reads it, and re-reads it.
    let token = TempFile::new("k8s-token-rotated", "rotating-token");
    let watcher = KubernetesWatcher::new(&config(&api.url, &["web"], Some(&token)))
        .unwrap()
        .with_backoff(fast());
    let mut source = Running::start(watcher);
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("web", "10.0.0.1", 80, 1)]
    );
    eventually("a watch", || api.seen().iter().any(Seen::is_watch)).await;
    for s in api.seen() {
        assert_eq!(s.authorization.as_deref(), Some("Bearer rotating-token"));
    }

    let mark = api.bookmark();
    // Give the bookmark time to arrive, then end the watch as the server's timeout would.
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.state.live.send(Live::Close).unwrap();
    let resumed = mark.to_string();
    eventually("a watch resumed from the bookmark", || {
        api.seen()
            .iter()
            .any(|s| s.is_watch() && s.get("resourceVersion") == Some(&resumed))
    })
    .await;
    // A bookmark is no change, and resuming is no re-list.
    source.quiet_for(Duration::from_millis(200)).await;
    assert_eq!(api.seen().iter().filter(|s| !s.is_watch()).count(), 1);
}

/// After 410 Gone (`how` says how it arrives) the source lists again and publishes what
/// changed while its version was compacted away, without an empty set in between.
async fn relists_after_gone(gone_as_status: bool, how: Live) {
    let api = FakeApiServer::start(vec![
        slice("web-1", "web", http_port(80), json!([ready("10.0.0.1")])),
        slice("web-2", "web", http_port(80), json!([ready("10.0.0.2")])),
    ])
    .await;
    api.state.store.lock().unwrap().gone_as_status = gone_as_status;
    let watcher = KubernetesWatcher::new(&config(&api.url, &["web"], None))
        .unwrap()
        .with_backoff(fast());
    let mut source = Running::start(watcher);
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("web", "10.0.0.1", 80, 1), ep("web", "10.0.0.2", 80, 1)]
    );
    eventually("a watch", || api.seen().iter().any(Seen::is_watch)).await;

    api.expire(how, |store| {
        store.delete("web-1");
        store.apply(slice(
            "web-3",
            "web",
            http_port(80),
            json!([ready("10.0.0.3")]),
        ));
    });
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("web", "10.0.0.2", 80, 1), ep("web", "10.0.0.3", 80, 1)]
    );
    let lists = api.seen().iter().filter(|s| !s.is_watch()).count();
    assert_eq!(lists, 2, "listed once more after 410");

    // Watching again from the new list: changes flow.
    api.apply(slice(
        "web-4",
        "web",
        http_port(80),
        json!([ready("10.0.0.4")]),
    ));
    assert_eq!(
        bare(&source.next_set().await),
        vec![
            ep("web", "10.0.0.2", 80, 1),
            ep("web", "10.0.0.3", 80, 1),
            ep("web", "10.0.0.4", 80, 1),
        ]
    );
}

#[tokio::test]
async fn gone_error_event_on_an_open_watch_relists() {
    relists_after_gone(false, Live::Gone).await;
}

#[tokio::test]
async fn gone_error_event_on_resume_relists() {
    relists_after_gone(false, Live::Close).await;
}

#[tokio::test]
async fn gone_http_status_on_resume_relists() {
    relists_after_gone(true, Live::Close).await;
}

#[tokio::test]
async fn server_errors_are_reported_and_the_last_set_stays() {
    let api = FakeApiServer::start(vec![slice(
        "web-1",
        "web",
        http_port(80),
        json!([ready("10.0.0.1")]),
    )])
    .await;
    // Forbidden first (RBAC not granted yet): an error, nothing published.
    api.set_failing(Some(403));
    let watcher = KubernetesWatcher::new(&config(&api.url, &["web"], None))
        .unwrap()
        .with_backoff(fast());
    let mut source = Running::start(watcher);
    match source.next().await {
        SourceUpdate::Error(e) => assert!(e.contains("web") && e.contains("403"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    api.set_failing(None);
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("web", "10.0.0.1", 80, 1)]
    );
    eventually("a watch", || api.seen().iter().any(Seen::is_watch)).await;

    // The server breaks: errors only, never an empty set.
    api.set_failing(Some(500));
    for _ in 0..2 {
        match source.next().await {
            SourceUpdate::Error(e) => assert!(e.contains("500"), "{e}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    // It comes back with a change.
    api.apply(slice(
        "web-1",
        "web",
        http_port(80),
        json!([ready("10.0.0.7")]),
    ));
    api.set_failing(None);
    loop {
        match source.next().await {
            SourceUpdate::Error(_) => continue,
            SourceUpdate::Endpoints(set) => {
                assert_eq!(bare(&set), vec![ep("web", "10.0.0.7", 80, 1)]);
                break;
            }
            SourceUpdate::Catalog { .. } => panic!("a catalog without discover_services"),
        }
    }
}

#[tokio::test]
async fn missing_token_file_is_reported() {
    let api = FakeApiServer::start(vec![]).await;
    let mut cfg = config(&api.url, &["web"], None);
    cfg.token_file = Some("/nonexistent/lb-k8s-token".into());
    let watcher = KubernetesWatcher::new(&cfg).unwrap().with_backoff(fast());
    let mut source = Running::start(watcher);
    match source.next().await {
        SourceUpdate::Error(e) => assert!(e.contains("token file"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(api.seen().is_empty());
}

#[test]
fn endpoint_conditions_follow_kube_proxy() {
    let c = |ready, serving, terminating| EndpointConditions {
        ready,
        serving,
        terminating,
    };
    assert_eq!(endpoint_weight(None), Some(1), "no conditions: ready");
    assert_eq!(endpoint_weight(Some(&c(None, None, None))), Some(1));
    assert_eq!(
        endpoint_weight(Some(&c(Some(true), Some(true), Some(false)))),
        Some(1)
    );
    assert_eq!(
        endpoint_weight(Some(&c(Some(false), Some(true), Some(true)))),
        Some(0)
    );
    assert_eq!(
        endpoint_weight(Some(&c(Some(false), None, Some(true)))),
        None,
        "serving follows ready"
    );
    assert_eq!(
        endpoint_weight(Some(&c(Some(false), Some(false), Some(true)))),
        None
    );
    assert_eq!(
        endpoint_weight(Some(&c(Some(false), Some(true), None))),
        None,
        "not terminating, not ready"
    );
}

#[test]
fn slice_port_and_address_rules() {
    let port = |protocol: Option<&str>, port: Option<i32>| EndpointPort {
        protocol: protocol.map(str::to_owned),
        port,
        ..Default::default()
    };
    let mut s = EndpointSlice {
        address_type: "IPv4".into(),
        ports: Some(vec![port(Some("UDP"), Some(53))]),
        ..Default::default()
    };
    assert_eq!(slice_port(&s), Some(53), "one port, whatever its protocol");
    s.ports = Some(vec![port(Some("UDP"), Some(53)), port(None, Some(8080))]);
    assert_eq!(slice_port(&s), Some(8080), "protocol defaults to TCP");
    s.ports = Some(vec![
        port(Some("UDP"), Some(53)),
        port(Some("SCTP"), Some(9)),
    ]);
    assert_eq!(slice_port(&s), Some(53), "no TCP port: the first");
    s.ports = Some(vec![port(Some("TCP"), None)]);
    assert_eq!(slice_port(&s), None, "no port number (all ports)");
    s.ports = None;
    assert_eq!(slice_port(&s), None);

    s.ports = Some(vec![port(None, Some(80))]);
    s.endpoints = vec![k8s_openapi::api::discovery::v1::Endpoint {
        addresses: vec!["fd00::1".into(), "fd00::2".into()],
        ..Default::default()
    }];
    let eps = slice_endpoints("web", &s);
    assert_eq!(
        bare(&eps),
        vec![ep("web", "fd00::1", 80, 1)],
        "first address only"
    );
    s.address_type = "FQDN".into();
    assert!(slice_endpoints("web", &s).is_empty());
}

#[test]
fn in_cluster_url_from_the_environment() {
    assert_eq!(
        in_cluster_url(Some("10.96.0.1"), Some("443")).unwrap(),
        "https://10.96.0.1:443"
    );
    assert_eq!(
        in_cluster_url(Some("fd00::1"), Some("6443")).unwrap(),
        "https://[fd00::1]:6443"
    );
    assert!(matches!(
        in_cluster_url(None, Some("443")),
        Err(KubernetesError::NotInCluster)
    ));
    assert!(matches!(
        in_cluster_url(Some("h"), Some("x")),
        Err(KubernetesError::NotInCluster)
    ));
}

#[test]
fn constructor_checks_the_config() {
    let bad = config("kubernetes.local:6443", &["web"], None);
    assert!(matches!(
        KubernetesWatcher::new(&bad),
        Err(KubernetesError::BadApiServer(_))
    ));
    let none = config("https://127.0.0.1:6443", &[], None);
    assert!(matches!(
        KubernetesWatcher::new(&none),
        Err(KubernetesError::NoServices)
    ));
}

#[test]
fn ca_bundle_must_hold_a_certificate() {
    let not_pem = TempFile::new("k8s-ca-empty", "not a certificate\n");
    assert!(matches!(
        read_ca(&not_pem.0),
        Err(KubernetesError::NoCertificate(_))
    ));
    assert!(matches!(
        read_ca(Path::new("/nonexistent/ca.crt")),
        Err(KubernetesError::File { .. })
    ));
}

// ---- discover_services = true ----

/// A Service as the API server stores it.
fn k8s_service(name: &str, spec: Value) -> Value {
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": spec
    })
}

fn cluster_ip(ip: &str, target: Value) -> Value {
    json!({
        "type": "ClusterIP",
        "clusterIP": ip,
        "clusterIPs": [ip],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": target}]
    })
}

fn discovering(url: &str) -> KubernetesSource {
    KubernetesSource {
        services: Vec::new(),
        discover_services: true,
        node_name: Some("node-1".into()),
        node_addresses: crate::config::NodeAddresses::List(vec!["192.0.2.7".parse().unwrap()]),
        ..config(url, &[], None)
    }
}

/// The next update, which must be a catalog: its services and bare endpoints.
async fn next_catalog(source: &mut Running) -> (Vec<crate::config::Service>, Vec<Endpoint>) {
    match source.next().await {
        SourceUpdate::Catalog {
            services,
            endpoints,
        } => (services, bare(&endpoints)),
        other => panic!("expected a catalog, got {other:?}"),
    }
}

fn names(services: &[crate::config::Service]) -> Vec<&str> {
    services.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test]
async fn discovered_services_follow_adds_changes_and_deletes() {
    let mut bad = k8s_service("bad", cluster_ip("10.96.0.99", json!(80)));
    bad["metadata"]["annotations"] = json!({translate::GATEWAY_ANNOTATION: "grpc"});
    let api = FakeApiServer::start(vec![
        k8s_service("web", cluster_ip("10.96.0.10", json!("web"))),
        k8s_service(
            "api",
            json!({
                "type": "NodePort",
                "clusterIP": "10.96.0.11",
                "ports": [{"name": "grpc", "protocol": "TCP", "port": 9090, "targetPort": 9090, "nodePort": 30090}],
                "externalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP"
            }),
        ),
        bad.clone(),
        // The named targetPort `web` resolved by the EndpointSlice controller.
        slice("web-1", "web", http_port(8080), json!([ready("10.0.0.1")])),
        slice(
            "api-1",
            "api",
            json!([{"name": "grpc", "protocol": "TCP", "port": 9090}]),
            json!([ready("10.0.1.1"), {
                "addresses": ["10.0.1.2"], "conditions": {"ready": true}, "nodeName": "node-2"
            }]),
        ),
    ])
    .await;
    let watcher = KubernetesWatcher::new(&discovering(&api.url))
        .unwrap()
        .with_backoff(fast());
    let mut source = Running::start(watcher);

    let (services, endpoints) = next_catalog(&mut source).await;
    assert_eq!(
        names(&services),
        [
            "shop/api:grpc@10.96.0.11:9090",
            "shop/api:grpc@192.0.2.7:30090",
            "shop/web:http@10.96.0.10:80",
        ]
    );
    assert!(services[0].client_affinity);
    assert_eq!(services[1].scope, crate::config::Scope::External);
    assert_eq!(services[0].scope, crate::config::Scope::Cluster);
    assert_eq!(
        endpoints,
        [
            // The ClusterIP: both pods; the NodePort (Local): only this node's.
            ep("shop/api:grpc@10.96.0.11:9090", "10.0.1.1", 9090, 1),
            ep("shop/api:grpc@10.96.0.11:9090", "10.0.1.2", 9090, 1),
            ep("shop/api:grpc@192.0.2.7:30090", "10.0.1.1", 9090, 1),
            ep("shop/web:http@10.96.0.10:80", "10.0.0.1", 8080, 1),
        ]
    );
    // Every Service and every slice of the namespace, no selector.
    eventually("both watches", || {
        let seen = api.seen();
        ["Service", "EndpointSlice"]
            .iter()
            .all(|k| seen.iter().any(|s| s.kind == *k && s.is_watch()))
    })
    .await;
    assert!(api.seen().iter().all(|s| s.get("labelSelector").is_none()));

    // A slice added to web.
    api.apply(slice(
        "web-2",
        "web",
        http_port(8080),
        json!([ready("10.0.0.2")]),
    ));
    let (_, endpoints) = next_catalog(&mut source).await;
    let web: Vec<_> = endpoints
        .iter()
        .filter(|e| e.service.starts_with("shop/web"))
        .collect();
    assert_eq!(web.len(), 2);

    // web becomes a LoadBalancer with an address.
    let mut lb = k8s_service(
        "web",
        json!({
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web", "nodePort": 30080}]
        }),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
    api.apply(lb);
    let (services, _) = next_catalog(&mut source).await;
    assert_eq!(
        names(&services),
        [
            "shop/api:grpc@10.96.0.11:9090",
            "shop/api:grpc@192.0.2.7:30090",
            "shop/web:http@10.96.0.10:80",
            "shop/web:http@192.0.2.7:30080",
            "shop/web:http@203.0.113.10:80",
        ]
    );

    // api deleted: its services and endpoints go.
    api.delete("api");
    let (services, endpoints) = next_catalog(&mut source).await;
    assert!(names(&services).iter().all(|n| n.starts_with("shop/web")));
    assert!(endpoints.iter().all(|e| e.service.starts_with("shop/web")));

    // The bad Service fixed: it comes in, as a gateway service.
    bad["metadata"]["annotations"] = json!({translate::GATEWAY_ANNOTATION: "http"});
    api.apply(bad);
    let (services, _) = next_catalog(&mut source).await;
    let gateway = services
        .iter()
        .find(|s| s.name == "shop/bad:http@10.96.0.99:80")
        .unwrap();
    assert_eq!(gateway.mode, crate::config::Mode::Http);

    // A slice deleted: its endpoints go, the services stay.
    api.delete("web-1");
    let (services, endpoints) = next_catalog(&mut source).await;
    assert_eq!(services.len(), 4);
    assert!(!endpoints.iter().any(|e| e.addr.to_string() == "10.0.0.1"));
    // A change to nothing the catalog uses publishes nothing.
    api.bookmark();
    source.quiet_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn discovery_errors_are_reported_and_recovered_from() {
    let api = FakeApiServer::start(vec![k8s_service(
        "web",
        cluster_ip("10.96.0.10", json!(8080)),
    )])
    .await;
    api.set_failing(Some(403));
    let watcher = KubernetesWatcher::new(&discovering(&api.url))
        .unwrap()
        .with_backoff(fast());
    let mut source = Running::start(watcher);
    match source.next().await {
        SourceUpdate::Error(e) => assert!(e.contains("403"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    api.set_failing(None);
    loop {
        match source.next().await {
            SourceUpdate::Error(_) => continue,
            SourceUpdate::Catalog {
                services,
                endpoints,
            } => {
                assert_eq!(names(&services), ["shop/web:http@10.96.0.10:80"]);
                // No slices yet: a service without backends.
                assert!(endpoints.is_empty());
                break;
            }
            other => panic!("expected a catalog, got {other:?}"),
        }
    }
}

#[test]
fn node_addresses_from_interfaces() {
    let lo = discover::interface_addresses(&["lo".to_owned()]);
    assert!(lo.contains(&"127.0.0.1".parse().unwrap()), "{lo:?}");
    assert!(discover::interface_addresses(&["no-such-if0".to_owned()]).is_empty());
}
