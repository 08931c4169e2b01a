//! `discover_services = true`: follows the namespace's Services and all its EndpointSlices
//! (two list-and-watch loops) and publishes their [`translate::catalog`] as the source's
//! services and endpoints, first once both are listed, then after every change that alters
//! it. Objects are decoded one by one, so one that does not decode is reported and skipped
//! while the others are used.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service as K8sService, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    runtime::watcher,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use super::super::{Backoff, Endpoint, Service, SourceHandle};
use super::follow::follow;
use super::translate::{self, Node};

type Decoded<T> = BTreeMap<String, Result<T, String>>;

enum Update {
    Services(Decoded<K8sService>),
    Slices(Decoded<EndpointSlice>),
}

/// Runs until `out` closes.
pub(super) async fn run(
    client: Client,
    namespace: String,
    node: Node,
    backoff: Backoff,
    out: SourceHandle,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let services = watch::<K8sService>(
        &client,
        &namespace,
        "Services",
        backoff.clone(),
        &out,
        tx.clone(),
        Update::Services,
    );
    let slices = watch::<EndpointSlice>(
        &client,
        &namespace,
        "EndpointSlices",
        backoff,
        &out,
        tx,
        Update::Slices,
    );
    let publish = async {
        let (mut services, mut slices) = (None, None);
        let mut published: Option<(Vec<Service>, Vec<Endpoint>)> = None;
        let mut reported: BTreeSet<String> = BTreeSet::new();
        while let Some(update) = rx.recv().await {
            match update {
                Update::Services(s) => services = Some(s),
                Update::Slices(s) => slices = Some(s),
            }
            let (Some(services), Some(slices)) = (&services, &slices) else {
                continue;
            };
            let c = translate::catalog(&namespace, services, slices, &node);
            // Each problem once while it lasts, not at every event.
            let now: BTreeSet<String> = c.problems.into_iter().collect();
            for p in now.difference(&reported) {
                warn!(source = out.name(), "kubernetes: {p}");
            }
            reported = now;
            let next = (c.services, c.endpoints);
            if published.as_ref() != Some(&next) {
                out.publish_catalog(next.0.clone(), next.1.clone());
                published = Some(next);
            }
        }
    };
    tokio::select! {
        () = services => {}
        () = slices => {}
        () = publish => {}
        () = out.closed() => {}
    }
}

/// Follows every object of kind `K` in the namespace, decoded one by one, sending the
/// complete map (wrapped by `wrap`) after each list and change.
async fn watch<K>(
    client: &Client,
    namespace: &str,
    what: &str,
    backoff: Backoff,
    out: &SourceHandle,
    tx: mpsc::UnboundedSender<Update>,
    wrap: fn(Decoded<K>) -> Update,
) where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let decode = |o: &DynamicObject| -> Result<K, String> {
        serde_json::to_value(o)
            .and_then(serde_json::from_value)
            .map_err(|e| format!("does not decode: {e}"))
    };
    let publish = |objects: &Decoded<K>| tx.send(wrap(objects.clone())).is_ok();
    let config = watcher::Config::default();
    follow(api, config, what, backoff, out, decode, publish).await;
}

/// The addresses `interfaces` hold now (IPv6 link-local ones left out: no NodePort there).
pub(super) fn interface_addresses(interfaces: &[String]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read, then free once.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name, per getifaddrs.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if !interfaces.iter().any(|i| *i == name) {
            continue;
        }
        // SAFETY: `ifa_addr` points to a sockaddr of the family it names.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if let Some(a) = addr
            && !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}
