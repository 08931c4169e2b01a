//! What the Consul and Kubernetes sources share: each runs one loop per watched service and
//! publishes the union of the services' sets once every service has answered.

use std::collections::BTreeMap;

use tokio::sync::mpsc::UnboundedReceiver;

use super::{Endpoint, SourceHandle};

/// Publishes the union of the per-service sets arriving on `rx` (see [`ServiceSets`])
/// until every service loop ended or the agent stopped listening.
pub(super) async fn publish_union(
    services: &[String],
    mut rx: UnboundedReceiver<(String, Vec<Endpoint>)>,
    out: &SourceHandle,
) {
    let mut sets = ServiceSets::new(services.iter().cloned());
    loop {
        tokio::select! {
            set = rx.recv() => match set {
                Some((service, endpoints)) => {
                    if let Some(all) = sets.update(&service, endpoints) {
                        out.publish(all);
                    }
                }
                None => return,
            },
            () = out.closed() => return,
        }
    }
}

/// The latest set of each watched service, and the union last published.
#[derive(Debug)]
pub(super) struct ServiceSets {
    sets: BTreeMap<String, Option<Vec<Endpoint>>>,
    published: Option<Vec<Endpoint>>,
}

impl ServiceSets {
    pub(super) fn new(services: impl IntoIterator<Item = String>) -> Self {
        Self {
            sets: services.into_iter().map(|s| (s, None)).collect(),
            published: None,
        }
    }

    /// Records `service`'s new set; returns the union to publish once every service has a
    /// set and the union differs from the one published last.
    pub(super) fn update(
        &mut self,
        service: &str,
        endpoints: Vec<Endpoint>,
    ) -> Option<Vec<Endpoint>> {
        self.sets.insert(service.to_owned(), Some(endpoints));
        let mut all = Vec::new();
        for set in self.sets.values() {
            all.extend(set.as_ref()?.iter().cloned());
        }
        all.sort();
        all.dedup();
        if self.published.as_ref() == Some(&all) {
            return None;
        }
        self.published = Some(all.clone());
        Some(all)
    }
}
