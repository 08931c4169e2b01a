//! A stand-in for the Kubernetes API server's EndpointSlice list and watch, for end-to-end
//! tests of the agent's Kubernetes source (no API server can be installed here). It answers
//! in the documented shapes: `EndpointSliceList` with `metadata.resourceVersion`, and for
//! `?watch=true` a chunked stream of `{"type": "MODIFIED", "object": EndpointSlice}` lines,
//! ended after a couple of seconds like a watch timeout.
//!
//! One slice for one service, and (for `discover_services`) at most one Service object at
//! `/api/v1/namespaces/default/services`, and Pods at `/api/v1/pods` (the mesh's pod
//! identities; served whatever the field selector, each re-sent as `MODIFIED` when they
//! change, never deleted); it runs inside a test namespace; threads, stopped on drop.

use std::{
    io::{BufReader, Write},
    net::TcpStream,
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::ns_server::{NsServer, query_param, read_request};
use serde_json::{Value, json};

/// How long one watch request stays open.
const WATCH_FOR: Duration = Duration::from_secs(2);

struct State {
    resource_version: u64,
    service: String,
    /// (address, ready, serving, terminating).
    endpoints: Vec<(String, bool, bool, bool)>,
    port: u16,
    /// The Service object served, if any, and the last one removed (for its DELETED event).
    k8s_service: Option<Value>,
    deleted: Option<Value>,
    /// Pod objects served at `/api/v1/pods`.
    pods: Vec<Value>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

pub struct FakeKubernetes {
    shared: Shared,
    server: NsServer,
}

impl FakeKubernetes {
    /// Serves one EndpointSlice of `service` (port `port`) on the loopback of the namespace
    /// at `netns`.
    pub fn start_in(netns: &Path, service: &str, port: u16) -> Result<FakeKubernetes> {
        let shared: Shared = Arc::new((
            Mutex::new(State {
                resource_version: 100,
                service: service.into(),
                endpoints: Vec::new(),
                port,
                k8s_service: None,
                deleted: None,
                pods: Vec::new(),
            }),
            Condvar::new(),
        ));
        let sh = shared.clone();
        let server = NsServer::start_in(
            netns,
            Arc::new(move |conn, stop: &AtomicBool| serve(conn, &sh, stop)),
        )?;
        Ok(FakeKubernetes { shared, server })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Replaces the slice's endpoints: (address, ready, serving, terminating).
    pub fn set(&self, endpoints: &[(&str, bool, bool, bool)]) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().unwrap();
        s.endpoints = endpoints
            .iter()
            .map(|(a, r, sv, t)| (a.to_string(), *r, *sv, *t))
            .collect();
        s.resource_version += 1;
        cv.notify_all();
    }
}

impl FakeKubernetes {
    /// Serves `service` (a Service object's JSON) from now on; `None` deletes it.
    pub fn set_service(&self, service: Option<Value>) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().unwrap();
        if let Some(old) = s.k8s_service.take() {
            s.deleted = Some(old);
        }
        s.k8s_service = service;
        s.resource_version += 1;
        cv.notify_all();
    }
}

impl FakeKubernetes {
    /// Serves these Pod objects at `/api/v1/pods` from now on.
    pub fn set_pods(&self, pods: Vec<Value>) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().unwrap();
        s.pods = pods;
        s.resource_version += 1;
        cv.notify_all();
    }
}

/// A running pod on `node` with address `ip`, as the API server returns it.
pub fn pod(name: &str, namespace: &str, service_account: &str, node: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "app:1"}]
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// A served pod stamped with the current version.
fn pod_object(s: &State, pod: &Value) -> Value {
    let mut o = pod.clone();
    o["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
    o
}

/// The served Service (or the deleted one) stamped with the current version.
fn service_object(s: &State, object: &Value) -> Value {
    let mut o = object.clone();
    o["apiVersion"] = json!("v1");
    o["kind"] = json!("Service");
    o["metadata"]["namespace"] = json!("default");
    o["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
    o
}

impl Drop for FakeKubernetes {
    fn drop(&mut self) {
        // Wake blocked requests so their threads see the stop flag.
        self.shared.1.notify_all();
        self.server.stop();
    }
}

fn slice(s: &State) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-abcde", s.service),
            "namespace": "default",
            "resourceVersion": s.resource_version.to_string(),
            "labels": {"kubernetes.io/service-name": s.service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv4",
        "endpoints": s.endpoints.iter().map(|(a, ready, serving, terminating)| json!({
            "addresses": [a],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "nodeName": "node-1",
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": s.port, "protocol": "TCP"}],
    })
}

fn serve(conn: TcpStream, shared: &Shared, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    loop {
        let Some(target) = read_request(&mut reader) else {
            return;
        };
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let services = path.ends_with("/api/v1/namespaces/default/services");
        let pods = path.ends_with("/api/v1/pods");
        if !services
            && !pods
            && !path.ends_with("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")
        {
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}).to_string();
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            continue;
        }
        let watch = matches!(query_param(query, "watch"), Some("true" | "1"));
        let (m, cv) = &**shared;
        if !watch {
            let s = m.lock().unwrap();
            let body = if pods {
                json!({
                    "apiVersion": "v1",
                    "kind": "PodList",
                    "metadata": {"resourceVersion": s.resource_version.to_string()},
                    "items": s.pods.iter().map(|p| pod_object(&s, p)).collect::<Vec<_>>(),
                })
            } else if services {
                json!({
                    "apiVersion": "v1",
                    "kind": "ServiceList",
                    "metadata": {"resourceVersion": s.resource_version.to_string()},
                    "items": s.k8s_service.iter().map(|o| service_object(&s, o)).collect::<Vec<_>>(),
                })
            } else {
                json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSliceList",
                    "metadata": {"resourceVersion": s.resource_version.to_string()},
                    "items": [slice(&s)],
                })
            }
            .to_string();
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            continue;
        }
        let mut seen: u64 = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").is_err() {
            return;
        }
        let deadline = Instant::now() + WATCH_FOR;
        let mut s = m.lock().unwrap();
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            if s.resource_version > seen {
                seen = s.resource_version;
                let events: Vec<Value> = if pods {
                    s.pods
                        .iter()
                        .map(|p| json!({"type": "MODIFIED", "object": pod_object(&s, p)}))
                        .collect()
                } else {
                    vec![match (services, &s.k8s_service, &s.deleted) {
                        (false, _, _) => json!({"type": "MODIFIED", "object": slice(&s)}),
                        (true, Some(o), _) => {
                            json!({"type": "MODIFIED", "object": service_object(&s, o)})
                        }
                        (true, None, Some(o)) => {
                            json!({"type": "DELETED", "object": service_object(&s, o)})
                        }
                        // Nothing ever served: no event.
                        (true, None, None) => {
                            json!({"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": s.resource_version.to_string()}}})
                        }
                    }]
                };
                for event in events {
                    let event = format!("{event}\n");
                    if write!(out, "{:x}\r\n{event}\r\n", event.len())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            }
            s = cv.wait_timeout(s, Duration::from_millis(50)).unwrap().0;
        }
        drop(s);
        let _ = write!(out, "0\r\n\r\n");
        let _ = out.flush();
    }
}
