//! Keeps the kernel maps equal to a desired state: stable ids, Maglev tables rebuilt only
//! when their inputs change, and an order of writes that never shows a packet a service
//! whose table or backends are not there yet.
//!
//! The XDP data plane's consumer of the model: [`DesiredState::from_snapshot`] turns a
//! snapshot into what the maps should hold, [`Reconciler::apply`] writes the difference
//! through [`MapWriter`] (implemented by the [`Dataplane`]; a recording fake in the tests).
//!
//! May depend on: `lb_common`, `config`, `model`, `dataplane`. Not on `registry`, `health`,
//! `control` or anything above them.

mod adopt;
mod desired;
mod ids;

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{BackendValue, MAX_BACKENDS, MAX_SERVICES, ServiceKey, ServiceValue, VipAddrKey};

pub use crate::model::BackendKey;
pub use adopt::Adopted;
pub use desired::{DesiredBackend, DesiredService, DesiredState, backend_value, maglev_key};
pub use ids::{Exhausted, IdAllocator};

use crate::dataplane::{Dataplane, DataplaneError};

/// The map writes [`Reconciler::apply`] makes, in the order it makes them: the seam between
/// the write-order rule and the kernel.
pub trait MapWriter {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), DataplaneError>;
    /// Installs service `id`'s whole Maglev table at once.
    fn install_table(&mut self, id: u32, table: &[u32]) -> Result<(), DataplaneError>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue)
    -> Result<(), DataplaneError>;
    fn put_vip_addr(&mut self, key: &VipAddrKey) -> Result<(), DataplaneError>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError>;
    fn remove_table(&mut self, id: u32) -> Result<(), DataplaneError>;
    fn remove_vip_addr(&mut self, key: &VipAddrKey) -> Result<(), DataplaneError>;
}

impl MapWriter for Dataplane {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), DataplaneError> {
        Dataplane::put_backend(self, id, value)
    }
    fn install_table(&mut self, id: u32, table: &[u32]) -> Result<(), DataplaneError> {
        Dataplane::install_table(self, id, table)
    }
    fn put_service(
        &mut self,
        key: &ServiceKey,
        value: &ServiceValue,
    ) -> Result<(), DataplaneError> {
        Dataplane::put_service(self, key, value)
    }
    fn put_vip_addr(&mut self, key: &VipAddrKey) -> Result<(), DataplaneError> {
        Dataplane::put_vip_addr(self, key)
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        Dataplane::remove_service(self, key)
    }
    fn remove_table(&mut self, id: u32) -> Result<(), DataplaneError> {
        Dataplane::remove_table(self, id)
    }
    fn remove_vip_addr(&mut self, key: &VipAddrKey) -> Result<(), DataplaneError> {
        Dataplane::remove_vip_addr(self, key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("service ids: {0}")]
    ServiceIds(Exhausted),
    #[error("backend ids: {0}")]
    BackendIds(Exhausted),
}

/// What is in the kernel for one service.
#[derive(Clone, Debug)]
pub struct AppliedService {
    pub id: u32,
    pub desired: DesiredService,
    pub table_hash: u64,
}

/// What one `apply` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub services_added: usize,
    pub services_removed: usize,
    pub tables_rebuilt: usize,
}

pub struct Reconciler {
    service_ids: IdAllocator<ServiceKeyOrd>,
    backend_ids: IdAllocator<BackendKey>,
    applied: BTreeMap<ServiceKeyOrd, AppliedService>,
}

/// `ServiceKey` ordered by its bytes (it has no `Ord` of its own: it is a kernel type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ServiceKeyOrd([u32; 4], u16, u8, u8);

impl From<&ServiceKey> for ServiceKeyOrd {
    fn from(k: &ServiceKey) -> Self {
        Self(k.vip.words, k.port, k.proto, k.family)
    }
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    pub fn new() -> Self {
        Self {
            service_ids: IdAllocator::new(0, MAX_SERVICES),
            // Backend id 0 means "no backend" in Maglev tables.
            backend_ids: IdAllocator::new(1, MAX_BACKENDS),
            applied: BTreeMap::new(),
        }
    }

    /// Services as applied, in key order.
    pub fn applied(&self) -> impl Iterator<Item = &AppliedService> {
        self.applied.values()
    }

    pub fn backend_id(&self, k: &BackendKey) -> Option<u32> {
        self.backend_ids.get(k)
    }

    /// Checksum of every table and service record: equal inputs give equal checksums on any
    /// agent.
    pub fn checksum(&self) -> u64 {
        let mut h = Fnv::new();
        for s in self.applied.values() {
            h.write(&s.table_hash.to_le_bytes());
            h.write(format!("{:?}", s.desired.value(0)).as_bytes());
        }
        h.finish()
    }

    /// Makes the data plane hold `desired`. Order: backends, then tables, then service
    /// records (a packet can only find a service once its table is complete); removals go
    /// the other way.
    pub fn apply(
        &mut self,
        dp: &mut impl MapWriter,
        desired: &DesiredState,
    ) -> Result<ApplyReport, ReconcileError> {
        let mut report = ApplyReport::default();

        for b in desired.services.iter().flat_map(|s| &s.backends) {
            if self.backend_ids.get(&b.key).is_none() {
                let id = self
                    .backend_ids
                    .get_or_alloc(&b.key)
                    .map_err(ReconcileError::BackendIds)?;
                dp.put_backend(id, &backend_value(&b.key))?;
            }
        }

        let wanted: BTreeSet<ServiceKeyOrd> =
            desired.services.iter().map(|s| (&s.key).into()).collect();
        for s in &desired.services {
            let k = ServiceKeyOrd::from(&s.key);
            let id = self
                .service_ids
                .get_or_alloc(&k)
                .map_err(ReconcileError::ServiceIds)?;
            let previous = self.applied.get(&k);
            let table = s.table(|b| self.backend_ids.get(b).unwrap_or(0));
            let table_hash = fnv_u32s(&table);
            if previous.is_none_or(|p| p.table_hash != table_hash) {
                dp.install_table(id, &table)?;
                report.tables_rebuilt += 1;
            }
            if previous.is_none_or(|p| p.desired.value(id) != s.value(id)) {
                dp.put_service(&s.key, &s.value(id))?;
            }
            dp.put_vip_addr(&VipAddrKey::new(s.key.vip, s.key.family))?;
            if previous.is_none() {
                report.services_added += 1;
            }
            self.applied.insert(
                k,
                AppliedService {
                    id,
                    desired: s.clone(),
                    table_hash,
                },
            );
        }

        let gone: Vec<ServiceKeyOrd> = self
            .applied
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for k in gone {
            let Some(old) = self.applied.remove(&k) else {
                continue;
            };
            dp.remove_service(&old.desired.key)?;
            // After the service record: no new packet can reach the table any more.
            dp.remove_table(old.id)?;
            self.service_ids.release(&k);
            report.services_removed += 1;
            let vip = VipAddrKey::new(old.desired.key.vip, old.desired.key.family);
            let vip_still_used = self
                .applied
                .values()
                .any(|s| VipAddrKey::new(s.desired.key.vip, s.desired.key.family) == vip);
            if !vip_still_used {
                dp.remove_vip_addr(&vip)?;
            }
        }

        // Backends no longer in any service: release the id. Established flows keep working
        // (their conntrack entry carries the backend's address).
        let used: BTreeSet<BackendKey> = self
            .applied
            .values()
            .flat_map(|s| s.desired.backends.iter().map(|b| b.key))
            .collect();
        let unused: Vec<BackendKey> = self
            .backend_ids
            .keys()
            .filter(|k| !used.contains(k))
            .copied()
            .collect();
        for k in unused {
            self.backend_ids.release(&k);
        }
        Ok(report)
    }
}

/// FNV-1a: small, stable across versions and machines (unlike std's hasher).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn fnv_u32s(v: &[u32]) -> u64 {
    let mut h = Fnv::new();
    for x in v {
        h.write(&x.to_le_bytes());
    }
    h.finish()
}

#[cfg(test)]
mod tests;
