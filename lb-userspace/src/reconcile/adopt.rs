//! Taking over the state a previous agent left in pinned maps.
//!
//! Ids index kernel arrays (Maglev tables, counters) and conntrack entries carry them, so a
//! restarted agent must keep them: it seeds its allocators from the adopted `SERVICES` and
//! `BACKENDS` maps. It also records each adopted service as *applied*, with the hash of the
//! table really installed, so the first `apply` rewrites only what differs from the config
//! (nothing, when the config did not change) and removes services the config no longer has.

use std::collections::BTreeSet;

use lb_common::{MAX_BACKENDS, MAX_SERVICES};

use super::{
    AppliedService, BackendKey, DesiredBackend, DesiredService, ReconcileError, Reconciler,
    ServiceKeyOrd, fnv_u32s,
};
use crate::dataplane::Dataplane;

/// What [`Reconciler::adopt`] took over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    pub services: usize,
    pub backends: usize,
}

impl Reconciler {
    /// Seeds ids and applied state from the data plane's (adopted) maps. Call once, on a new
    /// reconciler, before the first `apply`. Records that do not make sense (an id out of
    /// range or used twice) are skipped: `apply` rewrites what they describe.
    pub fn adopt(&mut self, dp: &Dataplane) -> Result<Adopted, ReconcileError> {
        let backends = dp.read_backends()?;
        let key_of = |id: u32| {
            backends
                .binary_search_by_key(&id, |(i, _)| *i)
                .ok()
                .map(|i| {
                    let v = &backends[i].1;
                    BackendKey {
                        addr: v.addr.to_ip(v.family),
                        port: u16::from_be(v.port),
                    }
                })
        };

        for (key, value) in dp.read_services()? {
            let k = ServiceKeyOrd::from(&key);
            if value.id >= MAX_SERVICES || !self.service_ids.claim(&k, value.id) {
                continue;
            }
            // A service whose table is gone (the Maglev map was replaced) gets a hash no
            // table has, so `apply` installs one.
            let table = dp.read_table(value.id).ok();
            let table_hash = table.as_deref().map(fnv_u32s).unwrap_or(0);
            let ids: BTreeSet<u32> = table.iter().flatten().copied().collect();
            let mut members = Vec::new();
            for id in ids.into_iter().filter(|id| *id != 0 && *id < MAX_BACKENDS) {
                if let Some(bk) = key_of(id) {
                    // Another id for the same backend: the first one stays.
                    self.backend_ids.claim(&bk, id);
                    members.push(DesiredBackend { key: bk, weight: 1 });
                }
            }
            members.sort_by_key(|b| b.key);
            members.dedup_by_key(|b| b.key);
            let vip = key.vip.to_ip(key.family);
            self.applied.insert(
                k,
                AppliedService {
                    id: value.id,
                    desired: DesiredService {
                        name: format!("adopted-{}", value.id),
                        key,
                        vip,
                        port: u16::from_be(key.port),
                        table_size: value.maglev_size,
                        flags: value.flags,
                        rate_pps: value.rate_pps,
                        burst: value.burst,
                        backends: members,
                    },
                    table_hash,
                },
            );
        }

        // Backends in no table (drained to weight 0, or left over): keep their ids too, so
        // their flows' counters stay theirs. `apply` releases those no service wants.
        for (id, _) in &backends {
            if let Some(bk) = key_of(*id) {
                self.backend_ids.claim(&bk, *id);
            }
        }

        Ok(Adopted {
            services: self.applied.len(),
            backends: self.backend_ids.keys().count(),
        })
    }
}
