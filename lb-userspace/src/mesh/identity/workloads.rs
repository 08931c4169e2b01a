//! Which local workload runs as which identity: configured cgroups (plain hosts; a cgroup v2
//! directory's inode is its cgroup id) and pod addresses (Kubernetes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::Workload;

use super::SpiffeId;

/// Least time between two re-reads of the configured cgroups on a miss (a cgroup made after
/// start gets a new inode; a flood of unknown ids must not mean a flood of stat calls).
const RESTAT_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Workloads {
    configured: Vec<(PathBuf, SpiffeId)>,
    cgroups: Mutex<CgroupIds>,
    pods: RwLock<HashMap<IpAddr, SpiffeId>>,
    trust_domain: String,
}

struct CgroupIds {
    ids: HashMap<u64, SpiffeId>,
    read_at: Option<Instant>,
}

impl Workloads {
    pub fn new(trust_domain: &str, workloads: &[Workload]) -> Self {
        let configured = workloads
            .iter()
            .map(|w| {
                let id = SpiffeId::new(trust_domain, &w.name.namespace, &w.name.service_account);
                (w.cgroup.clone(), id)
            })
            .collect();
        let w = Self {
            configured,
            cgroups: Mutex::new(CgroupIds {
                ids: HashMap::new(),
                read_at: None,
            }),
            pods: RwLock::new(HashMap::new()),
            trust_domain: trust_domain.to_owned(),
        };
        w.restat(&mut w.cgroups.lock().unwrap_or_else(|e| e.into_inner()));
        w
    }

    pub fn configured(&self) -> Vec<SpiffeId> {
        let mut ids: Vec<_> = self.configured.iter().map(|(_, id)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn restat(&self, c: &mut CgroupIds) {
        c.ids = self
            .configured
            .iter()
            .filter_map(|(path, id)| Some((std::fs::metadata(path).ok()?.ino(), id.clone())))
            .collect();
        c.read_at = Some(Instant::now());
    }

    pub fn of_cgroup(&self, cgroup_id: u64) -> Option<SpiffeId> {
        let mut c = self.cgroups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = c.ids.get(&cgroup_id) {
            return Some(id.clone());
        }
        if c.read_at.is_none_or(|t| t.elapsed() >= RESTAT_EVERY) {
            self.restat(&mut c);
        }
        c.ids.get(&cgroup_id).cloned()
    }

    pub fn of_ip(&self, ip: IpAddr) -> Option<SpiffeId> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .cloned()
    }

    pub fn set_pods(&self, pods: HashMap<IpAddr, (String, String)>) {
        let map = pods
            .into_iter()
            .map(|(ip, (ns, sa))| (ip, SpiffeId::new(&self.trust_domain, &ns, &sa)))
            .collect();
        *self.pods.write().unwrap_or_else(|e| e.into_inner()) = map;
    }
}
