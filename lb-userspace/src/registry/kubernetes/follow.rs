//! One list-and-watch loop over a kind of object, as every part of the Kubernetes source
//! runs it: kube's watcher lists, watches from the list's version (with bookmarks), resumes
//! after a watch ends and lists again after `410 Gone`; this loop keeps the complete map of
//! objects and hands it on after every list (once complete) and every change.

use std::{collections::BTreeMap, fmt::Debug};

use futures_util::StreamExt as _;
use kube::{
    Api, Resource,
    runtime::watcher::{self, Event},
};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::super::{Backoff, SourceHandle};

/// Follows the objects `api` lists under `config`, each turned into a `T` by `map`, keyed by
/// name. `publish` gets the complete map after the (re-)list and after each change; it
/// returns false to stop. Errors are reported on `out` (as `kubernetes {what}: ...`) and
/// retried after `backoff`; the last map stays published meanwhile. Returns when `publish`
/// says so or `out` closes.
pub(super) async fn follow<K, T>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    backoff: Backoff,
    out: &SourceHandle,
    map: impl Fn(&K) -> T,
    publish: impl FnMut(&BTreeMap<String, T>) -> bool,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let name = |k: &K| k.meta().name.clone().unwrap_or_default();
    let entry = |k: &K| (name(k), map(k));
    follow_keyed(api, config, what, backoff, out, entry, publish).await;
}

/// [`follow`] with each object's key chosen by `entry` too (`namespace/name` for a watch
/// across namespaces, where names repeat).
pub(super) async fn follow_keyed<K, T>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    mut backoff: Backoff,
    out: &SourceHandle,
    entry: impl Fn(&K) -> (String, T),
    mut publish: impl FnMut(&BTreeMap<String, T>) -> bool,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    // Name -> its `T`; `listing` collects a (re-)list until it is complete.
    let mut objects: BTreeMap<String, T> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, T>> = None;
    loop {
        let mut events = watcher::watcher(api.clone(), config.clone()).boxed();
        while let Some(event) = events.next().await {
            let changed = match event {
                Ok(Event::Init) => {
                    listing = Some(BTreeMap::new());
                    false
                }
                Ok(Event::InitApply(k)) => {
                    if let Some(listing) = &mut listing {
                        let (key, value) = entry(&k);
                        listing.insert(key, value);
                    }
                    false
                }
                Ok(Event::InitDone) => {
                    objects = listing.take().unwrap_or_default();
                    true
                }
                Ok(Event::Apply(k)) => {
                    let (key, value) = entry(&k);
                    objects.insert(key, value);
                    true
                }
                Ok(Event::Delete(k)) => {
                    objects.remove(&entry(&k).0);
                    true
                }
                Err(e) if is_gone(&e) => {
                    // Routine: the resume point was compacted away. kube lists again
                    // after an ERROR event; after a 410 status it would not, so we do.
                    debug!(what, "kubernetes: {e}; listing again");
                    if matches!(e, watcher::Error::WatchStartFailed(_)) {
                        // Paced, in case a server keeps refusing fresh versions too.
                        if !out.sleep_unless_closed(backoff.next_delay()).await {
                            return;
                        }
                        break;
                    }
                    false
                }
                Err(e) => {
                    warn!(source = out.name(), "kubernetes {what}: {e}");
                    out.error(format!("kubernetes {what}: {e}"));
                    if !out.sleep_unless_closed(backoff.next_delay()).await {
                        return;
                    }
                    false
                }
            };
            if !changed {
                continue;
            }
            backoff.reset();
            if !publish(&objects) {
                return;
            }
        }
        // The watcher stream does not end by itself; a break means "list again".
        listing = None;
    }
}

/// A `410 Gone`, as an ERROR event or as the status of the watch or list request.
fn is_gone(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}
