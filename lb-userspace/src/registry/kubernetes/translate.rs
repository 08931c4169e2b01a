//! Kubernetes Services as the agent's services (`discover_services = true`): pure functions
//! from the API's objects to [`Service`]s and their [`Endpoint`]s.
//!
//! Each port of a Service becomes one agent service per frontend address, named
//! `NAMESPACE/NAME:PORT@VIP:FRONTPORT` (`PORT` is the port's name, or its number when it
//! has none):
//!
//! - `ClusterIP` (every type but `ExternalName` has one; headless `None` has none): each
//!   of `spec.clusterIPs`, port `port`, scope `Cluster`;
//! - `NodePort` and `LoadBalancer`: each node address, port `nodePort`, scope `External`;
//! - `LoadBalancer`: each `status.loadBalancer.ingress[].ip` and `spec.loadBalancerIP`,
//!   and (any type) each of `spec.externalIPs`, port `port`, scope `External`.
//!
//! Backends: the endpoints of the Service's EndpointSlices (label
//! `kubernetes.io/service-name`) of the frontend's address family, on the port of the slice
//! whose name and protocol are the Service port's: the EndpointSlice controller resolves
//! `targetPort` (a number or a container port's name) per pod into it. Conditions as for
//! the file's services (ready: weight 1; terminating but serving: 0, draining).
//! `externalTrafficPolicy: Local` keeps only this node's endpoints (`nodeName`) on the
//! external frontends, `internalTrafficPolicy: Local` on the ClusterIPs.
//!
//! `sessionAffinity: ClientIP` sets [`Service::client_affinity`] (backend by the client's
//! address alone; `timeoutSeconds` is not kept: the affinity lasts while the backends stay).
//! The annotation [`GATEWAY_ANNOTATION`]` = "http"` makes the Service's TCP ports L7 gateway
//! services (`mode = "http"`), each with one route sending every request to its own
//! endpoints.
//!
//! A Service that cannot be read (no spec, an unknown type, annotation value or affinity,
//! a bad address or port) is skipped whole and reported in [`Catalog::problems`]; a port of
//! another protocol (SCTP) only loses that port.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::{
    core::v1::{Service as K8sService, ServicePort},
    discovery::v1::EndpointSlice,
};

use super::super::{Endpoint, Service};
use super::{SERVICE_NAME_LABEL, endpoint};
use crate::config::{
    HttpService, Mode, PathMatch, Protocol, RateLimit, Rewrite, Route, RouteTarget, Scope,
};

/// The annotation that makes a Service an L7 gateway service (value `http`).
pub const GATEWAY_ANNOTATION: &str = "lb.example/gateway";

/// What the source knows of the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// For the `Local` traffic policies; `None`: unknown, they keep every endpoint.
    pub name: Option<String>,
    /// Where NodePorts are served.
    pub addresses: Vec<IpAddr>,
}

/// The services and endpoints of a namespace's Services, and what could not be used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub services: Vec<Service>,
    pub endpoints: Vec<Endpoint>,
    /// One line per object (or part of one) skipped, and why.
    pub problems: Vec<String>,
}

/// The catalog of `namespace`'s `services` and `slices` (by object name; an `Err` is an
/// object that did not decode).
pub fn catalog(
    namespace: &str,
    services: &BTreeMap<String, Result<K8sService, String>>,
    slices: &BTreeMap<String, Result<EndpointSlice, String>>,
    node: &Node,
) -> Catalog {
    let mut out = Catalog::default();
    let mut by_service: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    for (name, slice) in slices {
        match slice {
            Ok(s) => {
                let labels = s.metadata.labels.as_ref();
                if let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                    by_service.entry(service).or_default().push(s);
                }
            }
            Err(e) => out
                .problems
                .push(format!("EndpointSlice `{namespace}/{name}` skipped: {e}")),
        }
    }
    for (name, service) in services {
        let slices = by_service.get(name.as_str()).map_or(&[][..], Vec::as_slice);
        let translated = service
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|s| translate(namespace, s, slices, node, &mut out));
        if let Err(why) = translated {
            out.problems
                .push(format!("Service `{namespace}/{name}` skipped: {why}"));
        }
    }
    out
}

/// Appends `svc`'s services and endpoints (and its ports' problems) to `out`; on an error
/// nothing of it is appended.
fn translate(
    namespace: &str,
    svc: &K8sService,
    slices: &[&EndpointSlice],
    node: &Node,
    out: &mut Catalog,
) -> Result<(), String> {
    let name = svc.metadata.name.as_deref().ok_or("no name")?;
    let spec = svc.spec.as_ref().ok_or("no spec")?;
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let (node_ports, load_balancer) = match kind {
        "ClusterIP" => (false, false),
        "NodePort" => (true, false),
        "LoadBalancer" => (true, true),
        "ExternalName" => return Ok(()),
        other => return Err(format!("unknown type `{other}`")),
    };
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GATEWAY_ANNOTATION));
    let mode = match annotation.map(String::as_str) {
        None => Mode::Nat,
        Some("http") => Mode::Http,
        Some(v) => {
            return Err(format!(
                "annotation {GATEWAY_ANNOTATION}: `{v}` is not a gateway mode (expected `http`)"
            ));
        }
    };
    let client_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => false,
        Some("ClientIP") => true,
        Some(v) => return Err(format!("unknown sessionAffinity `{v}`")),
    };
    let local = |policy: &Option<String>| policy.as_deref() == Some("Local");
    let (local_external, local_internal) = (
        local(&spec.external_traffic_policy),
        local(&spec.internal_traffic_policy),
    );
    if (local_external || local_internal) && node.name.is_none() {
        out.problems.push(format!(
            "Service `{namespace}/{name}`: a Local traffic policy, but this node's name is \
             unknown (set node_name or NODE_NAME): every endpoint is used"
        ));
    }
    let ip = |what: &str, s: &str| {
        s.parse::<IpAddr>()
            .map_err(|_| format!("{what} `{s}` is not an IP address"))
    };
    let mut cluster = Vec::new();
    let listed = spec.cluster_ips.clone().unwrap_or_default();
    for s in listed
        .iter()
        .chain(&spec.cluster_ip)
        .filter(|s| !s.is_empty() && *s != "None")
    {
        push_unique(&mut cluster, ip("clusterIP", s)?);
    }
    let mut external = Vec::new();
    if load_balancer {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        for i in ingress.into_iter().flatten() {
            if let Some(s) = &i.ip {
                push_unique(&mut external, ip("status.loadBalancer.ingress ip", s)?);
            }
        }
        if let Some(s) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()) {
            push_unique(&mut external, ip("loadBalancerIP", s)?);
        }
    }
    for s in spec.external_ips.iter().flatten() {
        push_unique(&mut external, ip("externalIPs", s)?);
    }

    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    let mut problems = Vec::new();
    for port in spec.ports.iter().flatten() {
        let label = port
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| port.port.to_string());
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" if mode == Mode::Http => {
                problems.push(format!(
                    "Service `{namespace}/{name}` port {label}: UDP cannot go to the L7 \
                     gateway; port skipped"
                ));
                continue;
            }
            "UDP" => Protocol::Udp,
            other => {
                problems.push(format!(
                    "Service `{namespace}/{name}` port {label}: protocol {other} is not \
                     supported; port skipped"
                ));
                continue;
            }
        };
        let number = |n: i32, what: &str| {
            u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(format!("port {label}: {what} {n} is not a port number"))
        };
        let service_port = number(port.port, "port")?;
        let mut frontends: Vec<(IpAddr, u16, Scope, bool)> = Vec::new();
        for vip in &cluster {
            frontends.push((*vip, service_port, Scope::Cluster, local_internal));
        }
        for vip in &external {
            frontends.push((*vip, service_port, Scope::External, local_external));
        }
        if node_ports && let Some(np) = port.node_port {
            let np = number(np, "nodePort")?;
            for addr in &node.addresses {
                frontends.push((*addr, np, Scope::External, local_external));
            }
        }
        for (vip, front_port, scope, local) in frontends {
            let frontend = SocketAddr::new(vip, front_port);
            let service_name = format!("{namespace}/{name}:{label}@{frontend}");
            let only_node = local.then_some(node.name.as_deref()).flatten();
            endpoints.extend(port_endpoints(
                &service_name,
                port,
                slices,
                vip.is_ipv4(),
                only_node,
            ));
            services.push(service(
                service_name,
                frontend,
                protocol,
                mode,
                scope,
                client_affinity,
            ));
        }
    }
    out.services.extend(services);
    out.endpoints.extend(endpoints);
    out.problems.extend(problems);
    Ok(())
}

fn push_unique(list: &mut Vec<IpAddr>, ip: IpAddr) {
    if !list.contains(&ip) {
        list.push(ip);
    }
}

/// The backends of Service port `port` for a frontend of one family (`v4`), only those of
/// node `only_node` if set: one per address and port, the higher weight winning when an
/// address is in two slices (moving between them).
fn port_endpoints(
    service: &str,
    port: &ServicePort,
    slices: &[&EndpointSlice],
    v4: bool,
    only_node: Option<&str>,
) -> Vec<Endpoint> {
    let name = port.name.as_deref().unwrap_or("");
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let family = if v4 { "IPv4" } else { "IPv6" };
    let mut by_address: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        // The slice's port of the same name and protocol carries the resolved targetPort.
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for e in &slice.endpoints {
            if only_node.is_some() && e.node_name.as_deref() != only_node {
                continue;
            }
            let Some(ep) = endpoint(service, e, target) else {
                continue;
            };
            if ep.addr.is_ipv4() != v4 {
                continue;
            }
            match by_address.get(&(ep.addr, ep.port)) {
                Some(have) if have.weight >= ep.weight => {}
                _ => {
                    by_address.insert((ep.addr, ep.port), ep);
                }
            }
        }
    }
    by_address.into_values().collect()
}

/// The agent's service for one frontend. Table size and rate limit are placeholders: the
/// merge gives a source's services the config's global ones.
fn service(
    name: String,
    frontend: SocketAddr,
    protocol: Protocol,
    mode: Mode,
    scope: Scope,
    client_affinity: bool,
) -> Service {
    let http = (mode == Mode::Http).then(|| HttpService {
        tls: Vec::new(),
        routes: vec![Route {
            name: "default".into(),
            hosts: Vec::new(),
            path: PathMatch::Prefix("/".into()),
            rewrite: Rewrite::None,
            methods: Vec::new(),
            headers: Vec::new(),
            // The service's own endpoints are its upstream.
            targets: vec![RouteTarget {
                service: name.clone(),
                weight: 1,
            }],
            http2: false,
            auth: None,
            scopes: Vec::new(),
            rate_limit: None,
            resilience: Default::default(),
        }],
    });
    Service {
        name,
        frontend: Some(frontend),
        protocol,
        mode,
        scope,
        client_affinity,
        // Kubernetes services join the mesh through the config file only (for now).
        mtls: false,
        identity: None,
        http,
        maglev_table_size: lb_common::DEFAULT_MAGLEV_SIZE,
        rate_limit: RateLimit::UNLIMITED,
        backends: Vec::new(),
        health: None,
    }
}

#[cfg(test)]
mod tests;
