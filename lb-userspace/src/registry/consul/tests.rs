//! The Consul source against a fake Consul agent on loopback that answers
//! `/v1/health/service/:service` as Consul documents it: a JSON array of
//! `{Node, Service, Checks}`, the `X-Consul-Index` header, and blocking queries that hold
//! `?index=N&wait=D` until the service's index passes N or the wait runs out.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path as UrlPath, Query as UrlQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::*;
use crate::registry::{SourceMessage, SourceUpdate};

/// Bound on any single wait for the source: a test fails rather than hangs.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// One request the fake agent received.
#[derive(Clone, Debug)]
struct Seen {
    service: String,
    query: HashMap<String, String>,
    token: Option<String>,
}

impl Seen {
    fn index(&self) -> Option<u64> {
        self.query.get("index").map(|i| i.parse().unwrap())
    }
}

#[derive(Default)]
struct Catalog {
    /// Service name -> (X-Consul-Index, health entries).
    services: BTreeMap<String, (u64, Value)>,
    /// Status codes to answer the next requests for a service with, in order.
    failures: BTreeMap<String, VecDeque<u16>>,
    /// Every request, in arrival order.
    seen: Vec<Seen>,
    /// Raise the service's index by one on every read (a loop that returns at once).
    bump_on_read: bool,
}

#[derive(Default)]
struct Fake {
    catalog: Mutex<Catalog>,
    changed: Notify,
}

/// The fake agent, served until dropped.
struct FakeConsul {
    url: String,
    state: Arc<Fake>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeConsul {
    async fn start() -> Self {
        let state = Arc::new(Fake::default());
        let app = Router::new()
            .route("/v1/health/service/{service}", get(health_service))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, task }
    }

    fn set(&self, service: &str, index: u64, entries: Value) {
        let mut c = self.state.catalog.lock().unwrap();
        c.services.insert(service.into(), (index, entries));
        drop(c);
        self.state.changed.notify_waiters();
    }

    fn fail_next(&self, service: &str, statuses: &[u16]) {
        let mut c = self.state.catalog.lock().unwrap();
        c.failures
            .entry(service.into())
            .or_default()
            .extend(statuses);
    }

    fn seen(&self, service: &str) -> Vec<Seen> {
        let c = self.state.catalog.lock().unwrap();
        c.seen
            .iter()
            .filter(|s| s.service == service)
            .cloned()
            .collect()
    }
}

async fn health_service(
    State(fake): State<Arc<Fake>>,
    UrlPath(service): UrlPath<String>,
    UrlQuery(query): UrlQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get("X-Consul-Token")
        .map(|v| v.to_str().unwrap().to_owned());
    let min_index: Option<u64> = query.get("index").map(|i| i.parse().unwrap());
    let wait = query
        .get("wait")
        .map_or(Duration::from_secs(300), |w| parse_wait(w));
    {
        let mut c = fake.catalog.lock().unwrap();
        c.seen.push(Seen {
            service: service.clone(),
            query: query.clone(),
            token,
        });
        if let Some(status) = c.failures.get_mut(&service).and_then(VecDeque::pop_front) {
            let status = StatusCode::from_u16(status).unwrap();
            return (status, "rpc error making call: injected failure").into_response();
        }
    }
    // A blocking query holds until the index passes `index` or `wait` runs out.
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = fake.changed.notified();
        let (index, entries) = {
            let mut c = fake.catalog.lock().unwrap();
            let bump = c.bump_on_read;
            let (index, entries) = c
                .services
                .entry(service.clone())
                .or_insert_with(|| (1, json!([])));
            if bump {
                *index += 1;
            }
            (*index, entries.clone())
        };
        let ready = min_index.is_none_or(|m| index > m);
        if ready || tokio::time::Instant::now() >= deadline {
            let mut response = axum::Json(entries).into_response();
            response
                .headers_mut()
                .insert("X-Consul-Index", index.to_string().parse().unwrap());
            return response;
        }
        let _ = tokio::time::timeout_at(deadline, changed).await;
    }
}

/// Go durations as the source writes them.
fn parse_wait(w: &str) -> Duration {
    if let Some(ms) = w.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap())
    } else if let Some(s) = w.strip_suffix('s') {
        Duration::from_secs(s.parse().unwrap())
    } else if let Some(m) = w.strip_suffix('m') {
        Duration::from_secs(60 * m.parse::<u64>().unwrap())
    } else {
        panic!("wait `{w}` is not a Go duration")
    }
}

/// One health entry, shaped like the sample in Consul's health API documentation.
fn entry(node: &str, node_addr: &str, svc_addr: &str, port: u16, passing: u32) -> Value {
    json!({
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": node,
            "Address": node_addr,
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": node_addr, "wan": node_addr},
            "Meta": {"instance_type": "t2.medium"}
        },
        "Service": {
            "ID": format!("{node}-svc"),
            "Service": "web",
            "Tags": ["primary", "v1"],
            "Address": svc_addr,
            "TaggedAddresses": {
                "lan": {"address": svc_addr, "port": port},
                "wan": {"address": "198.18.1.2", "port": 80}
            },
            "Meta": {"version": "4.0"},
            "Port": port,
            "Weights": {"Passing": passing, "Warning": 1},
            "Namespace": "default"
        },
        "Checks": [{
            "Node": node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Namespace": "default"
        }]
    })
}

pub(crate) use crate::registry::ep;

/// Endpoints without metadata, for comparing sets.
pub(crate) fn bare(set: &[Endpoint]) -> Vec<Endpoint> {
    set.iter()
        .map(|e| Endpoint {
            metadata: BTreeMap::new(),
            ..e.clone()
        })
        .collect()
}

fn config(url: &str, services: &[&str]) -> ConsulSource {
    ConsulSource {
        name: "consul".into(),
        address: url.into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        datacenter: None,
        token_file: None,
    }
}

/// The source on a task, and the messages it sent. Dropping it stops the source.
pub(crate) struct Running {
    rx: mpsc::UnboundedReceiver<SourceMessage>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    pub(crate) fn start(source: impl Source) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(source.run(SourceHandle::new("test-source", tx)));
        Self { rx, task }
    }

    pub(crate) async fn next(&mut self) -> SourceUpdate {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("the source sent nothing in time")
            .expect("the source stopped")
            .update
    }

    pub(crate) async fn next_set(&mut self) -> Vec<Endpoint> {
        match self.next().await {
            SourceUpdate::Endpoints(set) => set,
            SourceUpdate::Error(e) => panic!("expected a set, got error {e}"),
            SourceUpdate::Catalog { .. } => panic!("expected a set, got a catalog"),
        }
    }

    /// Nothing arrives within `d`.
    pub(crate) async fn quiet_for(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("expected silence, got {m:?}");
        }
    }
}

pub(crate) fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_millis(200))
}

/// A token file, removed on drop.
pub(crate) struct TempFile(pub(crate) PathBuf);

impl TempFile {
    pub(crate) fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("lb-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn publishes_union_then_follows_a_blocking_query() {
    let consul = FakeConsul::start().await;
    consul.set(
        "web",
        40,
        json!([
            entry("node-a", "10.1.10.12", "10.1.10.100", 8000, 10),
            // Empty Service.Address: the node's address is the instance's.
            entry("node-b", "10.1.10.13", "", 8001, 1),
            // A host name is not an address the data plane can use: skipped.
            entry("node-c", "10.1.10.14", "web.example.internal", 8002, 1),
        ]),
    );
    consul.set(
        "api",
        7,
        json!([entry("node-a", "10.1.10.12", "", 9000, 3)]),
    );
    let token = TempFile::new("consul-token", "s3cr3t-token\n");
    let mut cfg = config(&consul.url, &["web", "api"]);
    cfg.datacenter = Some("dc1".into());
    cfg.token_file = Some(token.0.clone());
    let watcher = ConsulWatcher::new(&cfg)
        .unwrap()
        .with_timing(Duration::from_secs(3), Duration::from_millis(50));
    let mut source = Running::start(watcher);

    let first = source.next_set().await;
    assert_eq!(
        bare(&first),
        vec![
            ep("api", "10.1.10.12", 9000, 3),
            ep("web", "10.1.10.13", 8001, 1),
            ep("web", "10.1.10.100", 8000, 10),
        ]
    );
    let a = first.iter().find(|e| e.port == 8000).unwrap();
    let want: BTreeMap<String, String> = [
        ("version", "4.0"),
        ("consul.node", "node-a"),
        ("consul.service_id", "node-a-svc"),
        ("consul.tags", "primary,v1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(a.metadata, want);

    // The second query for web blocks on index 40; a change after 400 ms ends it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    consul.set(
        "web",
        41,
        json!([entry("node-b", "10.1.10.13", "", 8001, 5)]),
    );
    assert_eq!(
        bare(&source.next_set().await),
        vec![
            ep("api", "10.1.10.12", 9000, 3),
            ep("web", "10.1.10.13", 8001, 5)
        ]
    );

    tokio::time::timeout(WAIT, async {
        while consul.seen("web").len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a third query for web");
    let web = consul.seen("web");
    for s in &web {
        assert_eq!(s.query.get("passing").map(String::as_str), Some("1"));
        assert_eq!(s.query.get("dc").map(String::as_str), Some("dc1"));
        assert_eq!(s.token.as_deref(), Some("s3cr3t-token"));
    }
    assert_eq!(web[0].index(), None, "the first read does not block");
    assert_eq!(web[1].index(), Some(40));
    assert_eq!(web[1].query.get("wait").map(String::as_str), Some("3s"));
    assert_eq!(web[2].index(), Some(41));
}

#[tokio::test]
async fn index_going_backwards_restarts_from_zero() {
    let consul = FakeConsul::start().await;
    consul.set("web", 100, json!([entry("n1", "10.0.0.1", "", 80, 1)]));
    let watcher = ConsulWatcher::new(&config(&consul.url, &["web"]))
        .unwrap()
        .with_timing(Duration::from_millis(500), Duration::from_millis(20));
    let mut source = Running::start(watcher);
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("web", "10.0.0.1", 80, 1)]
    );

    // A restored server: the index is now below the one the source holds. Consul holds
    // the query (5 is not past 100) until the wait runs out, then answers with index 5.
    consul.set("web", 5, json!([entry("n2", "10.0.0.2", "", 80, 1)]));
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("web", "10.0.0.2", 80, 1)]
    );
    // After the reset: a plain read, then blocking on the new index.
    tokio::time::timeout(WAIT, async {
        while consul.seen("web").len() < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the source kept querying");
    let indexes: Vec<_> = consul.seen("web").iter().map(Seen::index).collect();
    assert_eq!(
        indexes[..4],
        [None, Some(100), None, Some(5)],
        "{indexes:?}"
    );
}

#[tokio::test]
async fn index_zero_is_raised_to_one() {
    let consul = FakeConsul::start().await;
    consul.set("web", 0, json!([entry("n1", "10.0.0.1", "", 80, 1)]));
    let watcher = ConsulWatcher::new(&config(&consul.url, &["web"]))
        .unwrap()
        .with_timing(Duration::from_millis(300), Duration::from_millis(20));
    let mut source = Running::start(watcher);
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("web", "10.0.0.1", 80, 1)]
    );
    tokio::time::timeout(WAIT, async {
        while consul.seen("web").len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(consul.seen("web")[1].index(), Some(1));
}

#[tokio::test]
async fn errors_are_reported_and_the_last_set_stays() {
    let consul = FakeConsul::start().await;
    consul.set("web", 10, json!([entry("n1", "10.0.0.1", "", 80, 1)]));
    consul.set("api", 10, json!([entry("n1", "10.0.0.1", "", 81, 1)]));
    // api's first query fails: nothing is published until it answers, so a restarted
    // source does not drop api's backends.
    consul.fail_next("api", &[403]);
    let watcher = ConsulWatcher::new(&config(&consul.url, &["web", "api"]))
        .unwrap()
        .with_backoff(fast())
        .with_timing(Duration::from_millis(400), Duration::from_millis(20));
    let mut source = Running::start(watcher);
    match source.next().await {
        SourceUpdate::Error(e) => assert!(e.contains("api") && e.contains("403"), "{e}"),
        other => panic!("expected the 403 first, got {other:?}"),
    }
    let both = vec![ep("api", "10.0.0.1", 81, 1), ep("web", "10.0.0.1", 80, 1)];
    assert_eq!(bare(&source.next_set().await), both);

    // The server fails twice: errors, no empty set, and no republish of an unchanged set.
    consul.fail_next("web", &[500, 500]);
    consul.set("web", 11, json!([entry("n1", "10.0.0.1", "", 80, 1)]));
    for _ in 0..2 {
        match source.next().await {
            SourceUpdate::Error(e) => assert!(e.contains("HTTP 500"), "{e}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    source.quiet_for(Duration::from_millis(600)).await;

    // It recovered: a change is published again.
    consul.set("web", 12, json!([entry("n9", "10.0.0.9", "", 80, 2)]));
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("api", "10.0.0.1", 81, 1), ep("web", "10.0.0.9", 80, 2)]
    );
}

#[tokio::test]
async fn unreachable_agent_is_an_error_not_an_empty_set() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let watcher = ConsulWatcher::new(&config(&url, &["web"]))
        .unwrap()
        .with_backoff(fast());
    let mut source = Running::start(watcher);
    for _ in 0..2 {
        assert!(matches!(source.next().await, SourceUpdate::Error(_)));
    }
}

#[tokio::test]
async fn queries_that_return_at_once_are_rate_limited() {
    let consul = FakeConsul::start().await;
    consul.set("web", 1, json!([entry("n1", "10.0.0.1", "", 80, 1)]));
    consul.state.catalog.lock().unwrap().bump_on_read = true;
    // Default spacing (MIN_QUERY_INTERVAL, 1 s) between queries.
    let watcher = ConsulWatcher::new(&config(&consul.url, &["web"])).unwrap();
    let mut source = Running::start(watcher);
    assert_eq!(
        bare(&source.next_set().await),
        vec![ep("web", "10.0.0.1", 80, 1)]
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = consul.seen("web").len();
    assert!((2..=4).contains(&n), "{n} queries in 2.5 s");
    // Same data at every new index: published once.
    source.quiet_for(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn unreadable_token_file_is_reported() {
    let consul = FakeConsul::start().await;
    let mut cfg = config(&consul.url, &["web"]);
    cfg.token_file = Some("/nonexistent/lb-consul-token".into());
    let watcher = ConsulWatcher::new(&cfg).unwrap().with_backoff(fast());
    let mut source = Running::start(watcher);
    match source.next().await {
        SourceUpdate::Error(e) => assert!(e.contains("token file"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(consul.seen("web").is_empty(), "no query without the token");
}

#[test]
fn next_index_follows_consuls_rules() {
    assert_eq!(next_index(0, 0), 1, "never below 1 after a reply");
    assert_eq!(next_index(0, 17), 17);
    assert_eq!(next_index(17, 17), 17, "a timeout returns the same index");
    assert_eq!(next_index(17, 30), 30);
    assert_eq!(next_index(30, 12), 0, "went backwards: reset");
}

#[test]
fn documented_entry_shapes_parse() {
    // Go's nil slices and maps arrive as null, and Weights may be missing.
    let entries: Vec<HealthEntry> = serde_json::from_value(json!([
        {
            "Node": {"Node": "n", "Address": "fd00::5"},
            "Service": {"ID": "x", "Service": "web", "Tags": null, "Address": "",
                        "Meta": null, "Port": 443},
            "Checks": []
        },
        entry("node-a", "10.1.10.12", "10.1.10.100", 8000, 70000),
    ]))
    .unwrap();
    let v6 = entries[0].endpoint("web").unwrap();
    assert_eq!(v6.addr, "fd00::5".parse::<IpAddr>().unwrap());
    assert_eq!((v6.port, v6.weight), (443, 1));
    assert!(!v6.metadata.contains_key("consul.tags"));
    assert_eq!(entries[1].endpoint("web").unwrap().weight, MAX_WEIGHT);
}

#[test]
fn constructor_checks_the_config() {
    let bad = config("consul.local:8500", &["web"]);
    assert!(matches!(
        ConsulWatcher::new(&bad),
        Err(ConsulError::BadAddress(_))
    ));
    let none = config("http://127.0.0.1:8500", &[]);
    assert!(matches!(
        ConsulWatcher::new(&none),
        Err(ConsulError::NoServices)
    ));
    assert_eq!(go_duration(DEFAULT_WAIT), "5m");
    assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
}
