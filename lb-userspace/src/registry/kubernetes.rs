//! Kubernetes source: backends from the EndpointSlices of Kubernetes services, or with
//! `discover_services = true` the Services themselves (ClusterIP, NodePort, LoadBalancer)
//! with their EndpointSlices: see [`translate`] for how they map onto the agent's services
//! and `discover` for how they are followed. The rest of this page is about the first mode.
//!
//! # What it reads
//!
//! For each watched service name, the `discovery.k8s.io/v1` EndpointSlices in the namespace
//! labelled `kubernetes.io/service-name=<name>`, listed and then watched. Each endpoint
//! becomes one [`Endpoint`] of the config service with the same name, chosen as kube-proxy
//! does:
//!
//! - `ready` (a missing condition counts as true): weight 1;
//! - not ready but `terminating` and `serving` (a missing `serving` follows `ready`): weight
//!   0, so the endpoint drains (no new flows, established ones stay) while the pod shuts down;
//! - anything else is left out.
//!
//! Address: the endpoint's first address (all of them are the same pod; kube-proxy uses the
//! first too); slices of `addressType: FQDN` are skipped. Port: the slice's only port, or, when
//! it lists several, its first TCP port (else its first); a slice without a port number
//! (headless service without ports) is skipped. Metadata: `k8s.node`, `k8s.zone` and `k8s.pod`
//! when present. An address that appears in two slices at once (it is moving between them)
//! is kept once, with the higher weight.
//!
//! The source publishes the union of all watched services as one complete set, first once
//! every service has been listed, then after every change.
//!
//! # Protocol
//!
//! `kube::runtime::watcher` does the list and watch: `GET .../endpointslices?labelSelector=...`
//! then `?watch=true&resourceVersion=<list's>&allowWatchBookmarks=true`, resuming from the last
//! event or bookmark when a watch ends, and listing again when the server answers `410 Gone`
//! (an `ERROR` event, as the API server sends it). A 410 as the HTTP status of the watch
//! request itself (which kube's watcher would retry with the same version) makes this source
//! start a new list too. A re-list replaces a service's set only once it is complete, so the
//! agent never sees a half-listed set. Other errors are reported through
//! [`SourceHandle::error`] and retried after [`Backoff`]; the agent keeps the last set.
//!
//! # Credentials
//!
//! Bearer token from `token_file` (default [`DEFAULT_TOKEN_FILE`], re-read by kube as the
//! kubelet rotates it; a file with white space around the token, such as a trailing newline,
//! is trimmed and read only once, since kube would send it verbatim); the API server's CA from `ca_file` (default [`DEFAULT_CA_FILE`], also
//! re-read). With `api_server` unset the URL is the in-cluster one from
//! `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`. When a file is not named in the
//! config and its default does not exist, it is not used (e.g. `api_server =
//! "http://127.0.0.1:8001"` through `kubectl proxy` needs neither); a named file must exist.
//! The service account needs `list` and `watch` on `endpointslices` in the `discovery.k8s.io`
//! API group, in the namespace (a Role and RoleBinding suffice), and with `discover_services`
//! on `services` in the core group too.
//!
//! # Client
//!
//! kube-rs with k8s-openapi: the maintained Kubernetes client for Rust (a CNCF project), for
//! its watcher state machine, token and CA rotation, and API types that follow Kubernetes.
//! Cost, measured on the project's 2-core machine: a clean release build needs 3.0 to 3.3 more
//! CPU-minutes (mostly k8s-openapi and kube-client; tokio, rustls and reqwest are also built
//! with kube's extra features), 2 min 42 s more wall time with the machine moderately busy.
//! Only `KubernetesWatcher::client_config` and `ServiceWatch` touch kube; the tests speak
//! plain HTTP, so a hand-written list/watch client could replace it under the same tests.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
use kube::{Api, Client, runtime::watcher};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{debug, info, warn};

use super::{Backoff, Endpoint, Source, SourceHandle, per_service::publish_union};
use crate::config::{KubernetesSource, NodeAddresses};
use follow::follow;

mod discover;
mod follow;
pub mod pods;
pub mod translate;

/// The service-account token the kubelet mounts into every pod.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA bundle the kubelet mounts next to it.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The label EndpointSlices carry naming their service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("api_server `{0}` is not an http:// or https:// URL")]
    BadApiServer(String),
    #[error("no Kubernetes services to watch")]
    NoServices,
    #[error(
        "no api_server configured and not in a cluster: \
         KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set"
    )]
    NotInCluster,
    #[error("reading {what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// The Kubernetes source: runs as a [`Source`].
#[derive(Debug)]
pub struct KubernetesWatcher {
    api_server: Option<String>,
    namespace: String,
    services: Vec<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    discover_services: bool,
    node_name: Option<String>,
    node_addresses: NodeAddresses,
    backoff: Backoff,
}

impl KubernetesWatcher {
    pub fn new(config: &KubernetesSource) -> Result<Self, KubernetesError> {
        if config.services.is_empty() && !config.discover_services {
            return Err(KubernetesError::NoServices);
        }
        Self::connection(config)
    }

    /// The source's connection settings (API server, credentials, namespace, node) without
    /// its services: what other watches of the same cluster (the mesh's pods) reuse.
    fn connection(config: &KubernetesSource) -> Result<Self, KubernetesError> {
        if let Some(url) = &config.api_server {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
            if !ok {
                return Err(KubernetesError::BadApiServer(url.clone()));
            }
        }
        let mut services = config.services.clone();
        services.sort();
        services.dedup();
        Ok(Self {
            api_server: config.api_server.clone(),
            namespace: config.namespace.clone(),
            services,
            token_file: config.token_file.clone(),
            ca_file: config.ca_file.clone(),
            discover_services: config.discover_services,
            node_name: config.node_name.clone(),
            node_addresses: config.node_addresses.clone(),
            backoff: Backoff::default(),
        })
    }

    /// Replaces the delays after an error (default: 200 ms doubling to 30 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// This node: its name from the config or `NODE_NAME`, its NodePort addresses.
    fn node(&self) -> translate::Node {
        let name = self.node_name();
        let addresses = match &self.node_addresses {
            NodeAddresses::List(list) => list.clone(),
            NodeAddresses::Interfaces(names) => discover::interface_addresses(names),
        };
        translate::Node { name, addresses }
    }

    /// This node's name: the config's `node_name`, else `NODE_NAME`.
    fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
    }

    /// kube's client configuration: URL, bearer token file and CA bundle.
    fn client_config(&self) -> Result<kube::Config, KubernetesError> {
        let url = match &self.api_server {
            Some(url) => url.clone(),
            None => in_cluster_url(
                std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
                std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
            )?,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| KubernetesError::BadApiServer(url.clone()))?;
        let https = uri.scheme_str() == Some("https");
        let mut config = kube::Config::new(uri);
        config.default_namespace = self.namespace.clone();
        if let Some(path) = credential(self.token_file.as_deref(), DEFAULT_TOKEN_FILE) {
            // Read here to fail with the path rather than inside kube with a vaguer message.
            let token = std::fs::read_to_string(&path).map_err(|source| KubernetesError::File {
                what: "token file",
                path: path.clone(),
                source,
            })?;
            if token.trim() == token {
                // kube re-reads it every minute, following the kubelet's rotation.
                config.auth_info.token_file = Some(path.to_string_lossy().into_owned());
            } else {
                // kube sends a file's token verbatim (client-go trims it): a hand-written
                // file ending in a newline would be refused, so its token is used as read.
                debug!(path = %path.display(), "token file has surrounding white space; read once");
                config.auth_info.token = Some(token.trim().to_owned().into());
            }
        }
        if https && let Some(ca) = credential(self.ca_file.as_deref(), DEFAULT_CA_FILE) {
            config.root_cert = Some(read_ca(&ca)?);
            // kube re-reads it to follow CA rotation.
            config.root_cert_file = Some(ca);
        }
        Ok(config)
    }

    /// The client, retried after [`Backoff`] while its files cannot be read; `None` once
    /// `out` closes.
    async fn client(&mut self, out: &SourceHandle) -> Option<Client> {
        loop {
            match self
                .client_config()
                .and_then(|c| Client::try_from(c).map_err(KubernetesError::Client))
            {
                Ok(client) => {
                    self.backoff.reset();
                    return Some(client);
                }
                Err(e) => {
                    warn!(source = out.name(), "kubernetes: {e}");
                    out.error(format!("kubernetes: {e}"));
                    if !out.sleep_unless_closed(self.backoff.next_delay()).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn run_loop(mut self, out: SourceHandle) {
        let Some(client) = self.client(&out).await else {
            return;
        };
        if self.discover_services {
            let node = self.node();
            info!(source = out.name(), node = ?node.name, addresses = ?node.addresses, "kubernetes: discovering Services");
            discover::run(client, self.namespace, node, self.backoff, out).await;
            return;
        }
        let api: Api<EndpointSlice> = Api::namespaced(client, &self.namespace);
        let (tx, rx) = mpsc::unbounded_channel();
        // Dropping the set (when this future returns or is aborted) stops every watch.
        let mut watches = JoinSet::new();
        for service in &self.services {
            let watch = ServiceWatch {
                service: service.clone(),
                api: api.clone(),
                backoff: self.backoff.clone(),
            };
            watches.spawn(watch.run(tx.clone(), out.clone()));
        }
        drop(tx);
        publish_union(&self.services, rx, &out).await;
    }
}

impl Source for KubernetesWatcher {
    fn run(self, out: SourceHandle) -> impl Future<Output = ()> + Send + 'static {
        self.run_loop(out)
    }
}

/// The list-and-watch loop of one Kubernetes service.
struct ServiceWatch {
    service: String,
    api: Api<EndpointSlice>,
    backoff: Backoff,
}

impl ServiceWatch {
    async fn run(self, sets: mpsc::UnboundedSender<(String, Vec<Endpoint>)>, out: SourceHandle) {
        let selector = format!("{SERVICE_NAME_LABEL}={}", self.service);
        // Bookmarks are on by default: the resume point moves even when nothing changes.
        let config = watcher::Config::default().labels(&selector);
        let service = self.service;
        let mut sent: Option<Vec<Endpoint>> = None;
        let what = format!("service `{service}`");
        let map = |slice: &EndpointSlice| slice_endpoints(&service, slice);
        let publish = |slices: &BTreeMap<String, Vec<Endpoint>>| {
            let set = service_set(slices);
            if sent.as_ref() == Some(&set) {
                return true;
            }
            sent = Some(set.clone());
            sets.send((service.clone(), set)).is_ok()
        };
        follow(self.api, config, &what, self.backoff, &out, map, publish).await;
    }
}

/// A service's set from its slices: one entry per address and port, the higher weight
/// winning when an address is in two slices.
fn service_set(slices: &BTreeMap<String, Vec<Endpoint>>) -> Vec<Endpoint> {
    let mut by_address: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for e in slices.values().flatten() {
        let key = (e.addr, e.port);
        match by_address.get(&key) {
            Some(have) if have.weight >= e.weight => {}
            _ => {
                by_address.insert(key, e.clone());
            }
        }
    }
    by_address.into_values().collect()
}

/// The usable endpoints of one slice (see the module docs for the rules).
pub fn slice_endpoints(service: &str, slice: &EndpointSlice) -> Vec<Endpoint> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    let Some(port) = slice_port(slice) else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter_map(|e| endpoint(service, e, port))
        .collect()
}

/// Endpoint `e` of a slice as a backend of `service` on `port`, if its conditions let it
/// take (or drain) traffic.
fn endpoint(
    service: &str,
    e: &k8s_openapi::api::discovery::v1::Endpoint,
    port: u16,
) -> Option<Endpoint> {
    let weight = endpoint_weight(e.conditions.as_ref())?;
    let addr: IpAddr = e.addresses.first()?.parse().ok()?;
    let mut metadata = BTreeMap::new();
    if let Some(node) = &e.node_name {
        metadata.insert("k8s.node".to_owned(), node.clone());
    }
    if let Some(zone) = &e.zone {
        metadata.insert("k8s.zone".to_owned(), zone.clone());
    }
    if let Some(target) = &e.target_ref
        && target.kind.as_deref() == Some("Pod")
        && let Some(pod) = &target.name
    {
        metadata.insert("k8s.pod".to_owned(), pod.clone());
    }
    Some(Endpoint {
        service: service.to_owned(),
        addr,
        port,
        weight,
        metadata,
    })
}

/// Weight 1 when ready, 0 when terminating but still serving (drain), `None` to leave out.
pub fn endpoint_weight(conditions: Option<&EndpointConditions>) -> Option<u32> {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if ready {
        Some(1)
    } else if terminating && serving {
        Some(0)
    } else {
        None
    }
}

/// The slice's only port; with several, its first TCP one (protocol defaults to TCP), else
/// its first.
pub fn slice_port(slice: &EndpointSlice) -> Option<u16> {
    let ports = slice.ports.as_deref()?;
    let is_tcp = |p: &&k8s_openapi::api::discovery::v1::EndpointPort| {
        p.protocol.as_deref().unwrap_or("TCP") == "TCP"
    };
    let chosen = ports.iter().find(is_tcp).or(ports.first())?;
    u16::try_from(chosen.port?).ok().filter(|p| *p != 0)
}

/// `https://HOST:PORT` from the in-cluster environment (IPv6 hosts in brackets).
fn in_cluster_url(host: Option<&str>, port: Option<&str>) -> Result<String, KubernetesError> {
    let (Some(host), Some(port)) = (host, port) else {
        return Err(KubernetesError::NotInCluster);
    };
    let port: u16 = port.parse().map_err(|_| KubernetesError::NotInCluster)?;
    Ok(match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("https://[{v6}]:{port}"),
        _ => format!("https://{host}:{port}"),
    })
}

/// The configured file, or the default one if it exists.
fn credential(configured: Option<&Path>, default: &str) -> Option<PathBuf> {
    match configured {
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from(default)).filter(|p| p.exists()),
    }
}

/// The DER certificates of a PEM bundle.
fn read_ca(path: &Path) -> Result<Vec<Vec<u8>>, KubernetesError> {
    let pem = std::fs::read(path).map_err(|source| KubernetesError::File {
        what: "CA file",
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    if certs.is_empty() {
        return Err(KubernetesError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod tests;
