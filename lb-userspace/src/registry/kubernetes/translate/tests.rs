//! The translation of Services and EndpointSlices, object by object, from JSON as the API
//! server returns it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::registry::consul::tests::{bare, ep};

const NS: &str = "shop";

fn node() -> Node {
    Node {
        name: Some("node-1".into()),
        addresses: vec!["192.0.2.7".parse().unwrap()],
    }
}

/// A Service of `kind` with `spec` fields merged over a cluster IP and one named port.
fn k8s_service(name: &str, kind: &str, extra: Value) -> Value {
    let mut v = json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": kind,
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}]
        }
    });
    for (k, val) in extra.as_object().unwrap() {
        if k == "status" {
            v[k] = val.clone();
        } else {
            v["spec"][k] = val.clone();
        }
    }
    v
}

fn slice(name: &str, service: &str, family: &str, ports: Value, endpoints: Value) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service}
        },
        "addressType": family,
        "ports": ports,
        "endpoints": endpoints
    })
}

fn endpoint(addr: &str, node: &str) -> Value {
    json!({"addresses": [addr], "conditions": {"ready": true}, "nodeName": node})
}

/// `web`'s slice: the named target port resolved to 8080 on two pods, one per node.
fn web_slice() -> Value {
    slice(
        "web-1",
        "web",
        "IPv4",
        json!([{"name": "http", "protocol": "TCP", "port": 8080}]),
        json!([
            endpoint("10.1.0.1", "node-1"),
            endpoint("10.1.0.2", "node-2")
        ]),
    )
}

fn decode<T: serde::de::DeserializeOwned>(
    objects: &[Value],
) -> BTreeMap<String, Result<T, String>> {
    objects
        .iter()
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap().to_owned();
            (
                name,
                serde_json::from_value(o.clone()).map_err(|e| e.to_string()),
            )
        })
        .collect()
}

fn run(services: &[Value], slices: &[Value], node: &Node) -> Catalog {
    catalog(NS, &decode(services), &decode(slices), node)
}

fn names(c: &Catalog) -> Vec<&str> {
    c.services.iter().map(|s| s.name.as_str()).collect()
}

fn of<'a>(c: &'a Catalog, name: &str) -> &'a Service {
    c.services.iter().find(|s| s.name == name).unwrap()
}

fn backends_of(c: &Catalog, service: &str) -> Vec<Endpoint> {
    bare(&c.endpoints)
        .into_iter()
        .filter(|e| e.service == service)
        .collect()
}

#[test]
fn cluster_ip_with_a_named_target_port() {
    let c = run(
        &[k8s_service("web", "ClusterIP", json!({}))],
        &[web_slice()],
        &node(),
    );
    assert_eq!(names(&c), ["shop/web:http@10.96.0.10:80"]);
    let s = &c.services[0];
    assert_eq!(s.frontend, Some("10.96.0.10:80".parse().unwrap()));
    assert_eq!(
        (s.scope, s.mode, s.protocol),
        (Scope::Cluster, Mode::Nat, Protocol::Tcp)
    );
    assert!(!s.client_affinity && s.http.is_none());
    // targetPort "web" came resolved in the slice's port named like the Service's.
    assert_eq!(
        backends_of(&c, &s.name),
        [
            ep("shop/web:http@10.96.0.10:80", "10.1.0.1", 8080, 1),
            ep("shop/web:http@10.96.0.10:80", "10.1.0.2", 8080, 1),
        ]
    );
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    // Metadata from the slice, as for the file's services.
    assert_eq!(c.endpoints[0].metadata.get("k8s.node").unwrap(), "node-1");
}

#[test]
fn ports_match_slice_ports_by_name_and_families_by_address_type() {
    let svc = k8s_service(
        "api",
        "ClusterIP",
        json!({
            "clusterIPs": ["10.96.0.11", "fd00::11"],
            "clusterIP": "10.96.0.11",
            "ports": [
                {"name": "grpc", "protocol": "TCP", "port": 9090, "targetPort": 9090},
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": "dns"}
            ]
        }),
    );
    let ports = json!([
        {"name": "dns", "protocol": "UDP", "port": 5353},
        {"name": "grpc", "protocol": "TCP", "port": 19090}
    ]);
    let v4 = slice(
        "api-4",
        "api",
        "IPv4",
        ports.clone(),
        json!([endpoint("10.1.0.5", "node-1")]),
    );
    let v6 = slice(
        "api-6",
        "api",
        "IPv6",
        ports,
        json!([endpoint("fd01::5", "node-1")]),
    );
    let c = run(&[svc], &[v4, v6], &node());
    assert_eq!(
        names(&c),
        [
            "shop/api:grpc@10.96.0.11:9090",
            "shop/api:grpc@[fd00::11]:9090",
            "shop/api:dns@10.96.0.11:53",
            "shop/api:dns@[fd00::11]:53",
        ]
    );
    assert_eq!(of(&c, "shop/api:dns@10.96.0.11:53").protocol, Protocol::Udp);
    assert_eq!(
        backends_of(&c, "shop/api:dns@[fd00::11]:53"),
        [ep("shop/api:dns@[fd00::11]:53", "fd01::5", 5353, 1)]
    );
    assert_eq!(
        backends_of(&c, "shop/api:grpc@10.96.0.11:9090"),
        [ep("shop/api:grpc@10.96.0.11:9090", "10.1.0.5", 19090, 1)]
    );
}

#[test]
fn node_port_on_every_node_address() {
    let svc = k8s_service(
        "web",
        "NodePort",
        json!({"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
    );
    let two = Node {
        name: Some("node-1".into()),
        addresses: vec!["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()],
    };
    let c = run(&[svc], &[web_slice()], &two);
    assert_eq!(
        names(&c),
        [
            "shop/web:http@10.96.0.10:80",
            "shop/web:http@192.0.2.7:30080",
            "shop/web:http@[2001:db8::7]:30080",
        ]
    );
    assert_eq!(
        of(&c, "shop/web:http@192.0.2.7:30080").scope,
        Scope::External
    );
    assert_eq!(backends_of(&c, "shop/web:http@192.0.2.7:30080").len(), 2);
    // No IPv6 slice: the IPv6 node address has no backends.
    assert!(backends_of(&c, "shop/web:http@[2001:db8::7]:30080").is_empty());
}

#[test]
fn load_balancer_vips_from_status_spec_and_external_ips() {
    let svc = k8s_service(
        "web",
        "LoadBalancer",
        json!({
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}],
            "loadBalancerIP": "203.0.113.5",
            "externalIPs": ["198.51.100.9"],
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "lb.example.com"}]}}
        }),
    );
    let c = run(&[svc], &[web_slice()], &node());
    assert_eq!(
        names(&c),
        [
            "shop/web:http@10.96.0.10:80",
            "shop/web:http@203.0.113.10:80",
            "shop/web:http@203.0.113.5:80",
            "shop/web:http@198.51.100.9:80",
            "shop/web:http@192.0.2.7:30080",
        ]
    );
    for n in &names(&c)[1..] {
        assert_eq!(of(&c, n).scope, Scope::External, "{n}");
        assert_eq!(backends_of(&c, n).len(), 2, "{n}");
    }
}

#[test]
fn local_traffic_policy_keeps_this_nodes_endpoints() {
    let svc = k8s_service(
        "web",
        "NodePort",
        json!({
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}],
            "externalTrafficPolicy": "Local"
        }),
    );
    let c = run(std::slice::from_ref(&svc), &[web_slice()], &node());
    assert_eq!(
        backends_of(&c, "shop/web:http@192.0.2.7:30080"),
        [ep("shop/web:http@192.0.2.7:30080", "10.1.0.1", 8080, 1)]
    );
    // The ClusterIP follows internalTrafficPolicy (Cluster): every endpoint.
    assert_eq!(backends_of(&c, "shop/web:http@10.96.0.10:80").len(), 2);

    // Another node: none of its own.
    let other = Node {
        name: Some("node-3".into()),
        ..node()
    };
    let c = run(std::slice::from_ref(&svc), &[web_slice()], &other);
    assert!(backends_of(&c, "shop/web:http@192.0.2.7:30080").is_empty());

    // Unknown node name: every endpoint, and said so.
    let unknown = Node {
        name: None,
        ..node()
    };
    let c = run(&[svc], &[web_slice()], &unknown);
    assert_eq!(backends_of(&c, "shop/web:http@192.0.2.7:30080").len(), 2);
    assert!(
        c.problems[0].contains("node's name is unknown"),
        "{:?}",
        c.problems
    );

    let internal = k8s_service(
        "web",
        "ClusterIP",
        json!({"internalTrafficPolicy": "Local"}),
    );
    let c = run(&[internal], &[web_slice()], &node());
    assert_eq!(backends_of(&c, "shop/web:http@10.96.0.10:80").len(), 1);
}

#[test]
fn client_ip_affinity() {
    let svc = k8s_service(
        "web",
        "ClusterIP",
        json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
    );
    let c = run(&[svc], &[web_slice()], &node());
    assert!(c.services[0].client_affinity);
    let none = k8s_service("web", "ClusterIP", json!({"sessionAffinity": "None"}));
    assert!(!run(&[none], &[], &node()).services[0].client_affinity);
}

#[test]
fn gateway_annotation_makes_tcp_ports_gateway_services() {
    let mut svc = k8s_service(
        "web",
        "ClusterIP",
        json!({"ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"},
            {"name": "q", "protocol": "UDP", "port": 81}
        ]}),
    );
    svc["metadata"]["annotations"] = json!({GATEWAY_ANNOTATION: "http"});
    let c = run(&[svc.clone()], &[web_slice()], &node());
    assert_eq!(names(&c), ["shop/web:http@10.96.0.10:80"]);
    let s = &c.services[0];
    assert_eq!(s.mode, Mode::Http);
    let http = s.http.as_ref().unwrap();
    assert!(http.tls.is_empty());
    assert_eq!(http.routes.len(), 1);
    assert_eq!(http.routes[0].path, PathMatch::Prefix("/".into()));
    assert_eq!(
        http.routes[0].targets,
        [RouteTarget {
            service: s.name.clone(),
            weight: 1
        }]
    );
    // Its own endpoints are the route's upstream.
    assert_eq!(backends_of(&c, &s.name).len(), 2);
    assert_eq!(c.problems.len(), 1);
    assert!(c.problems[0].contains("port q: UDP cannot go to the L7 gateway"));

    svc["metadata"]["annotations"] = json!({GATEWAY_ANNOTATION: "grpc"});
    let c = run(&[svc], &[web_slice()], &node());
    assert!(c.services.is_empty() && c.endpoints.is_empty());
    assert!(
        c.problems[0].contains("`grpc` is not a gateway mode"),
        "{:?}",
        c.problems
    );
}

#[test]
fn bad_objects_are_skipped_and_reported_the_rest_is_used() {
    let good = k8s_service("web", "ClusterIP", json!({}));
    let bad_ip = k8s_service(
        "a",
        "ClusterIP",
        json!({"clusterIP": "10.96.0.300", "clusterIPs": ["10.96.0.300"]}),
    );
    let bad_type = k8s_service("b", "Weird", json!({}));
    let bad_affinity = k8s_service("c", "ClusterIP", json!({"sessionAffinity": "Cookie"}));
    let bad_port = k8s_service(
        "d",
        "NodePort",
        json!({"ports": [{"name": "x", "port": 80, "nodePort": 70000}]}),
    );
    let no_spec = json!({"metadata": {"name": "e", "namespace": NS}});
    // Does not decode at all (a port that is not a number).
    let undecodable = json!({"metadata": {"name": "f"}, "spec": {"ports": [{"port": "eighty"}]}});
    let sctp = k8s_service(
        "g",
        "ClusterIP",
        json!({"clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"], "ports": [
            {"name": "s", "protocol": "SCTP", "port": 9},
            {"name": "t", "protocol": "TCP", "port": 10}
        ]}),
    );
    let external_name = json!({"metadata": {"name": "h"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
    let headless = k8s_service(
        "i",
        "ClusterIP",
        json!({"clusterIP": "None", "clusterIPs": ["None"]}),
    );
    let bad_slice = json!({"metadata": {"name": "web-x"}, "addressType": 4});
    let c = run(
        &[
            good,
            bad_ip,
            bad_type,
            bad_affinity,
            bad_port,
            no_spec,
            undecodable,
            sctp,
            external_name,
            headless,
        ],
        &[web_slice(), bad_slice],
        &node(),
    );
    assert_eq!(
        names(&c),
        ["shop/g:t@10.96.0.12:10", "shop/web:http@10.96.0.10:80"]
    );
    assert_eq!(backends_of(&c, "shop/web:http@10.96.0.10:80").len(), 2);
    let problems = c.problems.join("\n");
    for expected in [
        "EndpointSlice `shop/web-x` skipped",
        "Service `shop/a` skipped: clusterIP `10.96.0.300` is not an IP address",
        "Service `shop/b` skipped: unknown type `Weird`",
        "Service `shop/c` skipped: unknown sessionAffinity `Cookie`",
        "Service `shop/d` skipped: port x: nodePort 70000 is not a port number",
        "Service `shop/e` skipped: no spec",
        "Service `shop/f` skipped:",
        "Service `shop/g` port s: protocol SCTP is not supported",
    ] {
        assert!(
            problems.contains(expected),
            "missing {expected:?} in\n{problems}"
        );
    }
    assert_eq!(c.problems.len(), 8, "{problems}");
}
