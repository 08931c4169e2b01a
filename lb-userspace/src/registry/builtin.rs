//! The built-in registry: instances register themselves through the admin API with a TTL,
//! renew it by heartbeat and deregister; an instance whose TTL runs out is removed.
//!
//! Registrations are persisted to `state_file` (JSON, written to a temporary file and
//! renamed over the old one, so a crash never leaves half a file). After a restart every
//! persisted instance gets a fresh TTL from the moment it is loaded: instances were
//! heartbeating to an agent that was not there, and a restart must lose none of them.
//!
//! The store is plain data behind a mutex; the admin API calls it, a reaper task calls
//! [`Registry::expire`], and every change is published to the agent as this source's
//! complete endpoint set.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Endpoint, SourceHandle};
use crate::config::{BuiltinRegistry as RegistryConfig, MAX_WEIGHT};

/// The source name of the built-in registry (reserved: no `[[source]]` may use it).
pub const SOURCE_NAME: &str = "registry";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no instance {0} is registered")]
    NotFound(InstanceId),
    #[error("weight {0} is above the maximum {MAX_WEIGHT}")]
    Weight(u32),
    #[error("ttl {0}s is outside 1..={1}s")]
    Ttl(u64, u64),
    #[error("port 0 is not a valid port")]
    Port,
    #[error("address {0} cannot be a backend (unspecified, multicast or broadcast)")]
    Address(IpAddr),
    #[error("invalid service name `{0}`: use 1 to 63 of A-Z a-z 0-9 _ . -")]
    Service(String),
    #[error("persisting registrations to {path}: {source}")]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading persisted registrations from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// An instance's identity: which service, which address and port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId {
    pub service: String,
    pub address: IpAddr,
    pub port: u16,
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.address {
            IpAddr::V6(a) => write!(f, "{}/[{a}]:{}", self.service, self.port),
            IpAddr::V4(a) => write!(f, "{}/{a}:{}", self.service, self.port),
        }
    }
}

/// What a registration asks for (the body of a register call).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Default 1.
    pub weight: Option<u32>,
    /// Seconds; default `[registry] default_ttl`.
    pub ttl: Option<u64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A registered instance, as the API shows it and as it is persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    #[serde(flatten)]
    pub id: InstanceId,
    pub weight: u32,
    /// Seconds.
    pub ttl: u64,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Seconds until it expires without a heartbeat (not persisted).
    #[serde(default, skip_deserializing)]
    pub expires_in: f64,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    instances: Vec<Instance>,
}

const STATE_VERSION: u32 = 1;

pub struct Registry {
    config: RegistryConfig,
    instances: BTreeMap<InstanceId, (Instance, Instant)>,
    out: SourceHandle,
}

impl Registry {
    /// An empty registry, or the one persisted in `config.state_file` (each instance with a
    /// fresh TTL). Publishes the initial set.
    pub fn open(config: RegistryConfig, out: SourceHandle) -> Result<Self, RegistryError> {
        let mut r = Self {
            config,
            instances: BTreeMap::new(),
            out,
        };
        if let Some(path) = r.config.state_file.clone() {
            let now = Instant::now();
            for i in load(&path)? {
                let expires = now + Duration::from_secs(i.ttl);
                r.instances.insert(i.id.clone(), (i, expires));
            }
        }
        r.publish();
        Ok(r)
    }

    /// Registers (or replaces) an instance and starts its TTL.
    pub fn register(
        &mut self,
        id: InstanceId,
        req: RegisterRequest,
    ) -> Result<Instance, RegistryError> {
        validate_id(&id)?;
        let weight = req.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(RegistryError::Weight(weight));
        }
        let max = self.config.max_ttl.as_secs();
        let ttl = req.ttl.unwrap_or(self.config.default_ttl.as_secs());
        if !(1..=max).contains(&ttl) {
            return Err(RegistryError::Ttl(ttl, max));
        }
        let instance = Instance {
            id: id.clone(),
            weight,
            ttl,
            metadata: req.metadata,
            expires_in: 0.0,
        };
        let previous = self.instances.insert(
            id.clone(),
            (instance, Instant::now() + Duration::from_secs(ttl)),
        );
        if let Err(e) = self.commit() {
            // Keep memory and file in step: undo.
            match previous {
                Some(p) => self.instances.insert(id, p),
                None => self.instances.remove(&id),
            };
            return Err(e);
        }
        Ok(self.view(&self.instances[&id]))
    }

    /// Renews an instance's TTL.
    pub fn heartbeat(&mut self, id: &InstanceId) -> Result<Instance, RegistryError> {
        let (instance, expires) = self
            .instances
            .get_mut(id)
            .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
        *expires = Instant::now() + Duration::from_secs(instance.ttl);
        Ok(self.view(&self.instances[id]))
    }

    pub fn deregister(&mut self, id: &InstanceId) -> Result<(), RegistryError> {
        let old = self
            .instances
            .remove(id)
            .ok_or_else(|| RegistryError::NotFound(id.clone()))?;
        if let Err(e) = self.commit() {
            self.instances.insert(id.clone(), old);
            return Err(e);
        }
        Ok(())
    }

    /// Removes every instance whose TTL ran out; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<InstanceId> {
        let gone: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(_, (_, expires))| *expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        if gone.is_empty() {
            return gone;
        }
        for id in &gone {
            self.instances.remove(id);
        }
        if let Err(e) = self.commit() {
            // The in-memory view is right (they did expire); the file catches up at the
            // next change. Say so rather than resurrecting dead instances.
            tracing::error!(error = %e, "registry: could not persist expiries");
        }
        gone
    }

    pub fn list(&self) -> Vec<Instance> {
        self.instances.values().map(|i| self.view(i)).collect()
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    fn view(&self, (instance, expires): &(Instance, Instant)) -> Instance {
        Instance {
            expires_in: expires
                .saturating_duration_since(Instant::now())
                .as_secs_f64(),
            ..instance.clone()
        }
    }

    /// Persists, then publishes: the agent never balances onto an instance the file lacks.
    fn commit(&mut self) -> Result<(), RegistryError> {
        if let Some(path) = &self.config.state_file {
            let state = StateFile {
                version: STATE_VERSION,
                instances: self.instances.values().map(|(i, _)| i.clone()).collect(),
            };
            save(path, &state)?;
        }
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.out.publish(
            self.instances
                .values()
                .map(|(i, _)| Endpoint {
                    service: i.id.service.clone(),
                    addr: i.id.address,
                    port: i.id.port,
                    weight: i.weight,
                    metadata: i.metadata.clone(),
                })
                .collect(),
        );
    }
}

fn validate_id(id: &InstanceId) -> Result<(), RegistryError> {
    let name_ok = (1..=63).contains(&id.service.len())
        && id
            .service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(RegistryError::Service(id.service.clone()));
    }
    if id.port == 0 {
        return Err(RegistryError::Port);
    }
    let bad = match id.address {
        IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    if bad {
        return Err(RegistryError::Address(id.address));
    }
    Ok(())
}

fn load(path: &Path) -> Result<Vec<Instance>, RegistryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RegistryError::Load {
                path: path.into(),
                message: e.to_string(),
            });
        }
    };
    let state: StateFile = serde_json::from_str(&text).map_err(|e| RegistryError::Load {
        path: path.into(),
        message: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(RegistryError::Load {
            path: path.into(),
            message: format!(
                "state version {} (this agent reads {STATE_VERSION})",
                state.version
            ),
        });
    }
    Ok(state.instances)
}

/// Writes `state` next to `path` and renames it over: readers see the old or the new file.
fn save(path: &Path, state: &StateFile) -> Result<(), RegistryError> {
    let err = |source| RegistryError::Persist {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(state).map_err(|e| err(e.into()))?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::registry::{SourceMessage, SourceUpdate};

    fn id(service: &str, addr: &str, port: u16) -> InstanceId {
        InstanceId {
            service: service.into(),
            address: addr.parse().unwrap(),
            port,
        }
    }

    fn registry(state_file: Option<PathBuf>) -> (Registry, mpsc::UnboundedReceiver<SourceMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = RegistryConfig {
            state_file,
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(60),
        };
        (
            Registry::open(config, SourceHandle::new(SOURCE_NAME, tx)).unwrap(),
            rx,
        )
    }

    fn last_set(rx: &mut mpsc::UnboundedReceiver<SourceMessage>) -> Vec<(String, u16, u32)> {
        let mut last = None;
        while let Ok(m) = rx.try_recv() {
            if let SourceUpdate::Endpoints(e) = m.update {
                last = Some(e);
            }
        }
        last.expect("a published set")
            .into_iter()
            .map(|e| (e.addr.to_string(), e.port, e.weight))
            .collect()
    }

    #[test]
    fn register_heartbeat_deregister_publish_complete_sets() {
        let (mut r, mut rx) = registry(None);
        assert_eq!(last_set(&mut rx), vec![]);
        r.register(id("web", "10.0.0.1", 80), RegisterRequest::default())
            .unwrap();
        let req = RegisterRequest {
            weight: Some(3),
            ..Default::default()
        };
        r.register(id("web", "10.0.0.2", 80), req).unwrap();
        assert_eq!(
            last_set(&mut rx),
            vec![("10.0.0.1".into(), 80, 1), ("10.0.0.2".into(), 80, 3)]
        );
        let hb = r.heartbeat(&id("web", "10.0.0.2", 80)).unwrap();
        assert!(hb.expires_in > 29.0, "{hb:?}");
        r.deregister(&id("web", "10.0.0.1", 80)).unwrap();
        assert_eq!(last_set(&mut rx), vec![("10.0.0.2".into(), 80, 3)]);
        assert!(matches!(
            r.deregister(&id("web", "10.0.0.1", 80)),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            r.heartbeat(&id("web", "10.0.0.9", 80)),
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn bad_requests_are_refused() {
        let (mut r, _rx) = registry(None);
        let ttl = |t| RegisterRequest {
            ttl: Some(t),
            ..Default::default()
        };
        assert!(matches!(
            r.register(id("web", "10.0.0.1", 80), ttl(61)),
            Err(RegistryError::Ttl(61, 60))
        ));
        assert!(matches!(
            r.register(id("web", "10.0.0.1", 80), ttl(0)),
            Err(RegistryError::Ttl(0, 60))
        ));
        assert!(matches!(
            r.register(id("web", "10.0.0.1", 0), RegisterRequest::default()),
            Err(RegistryError::Port)
        ));
        assert!(matches!(
            r.register(id("web", "0.0.0.0", 80), RegisterRequest::default()),
            Err(RegistryError::Address(_))
        ));
        assert!(matches!(
            r.register(id("we b", "10.0.0.1", 80), RegisterRequest::default()),
            Err(RegistryError::Service(_))
        ));
        let heavy = RegisterRequest {
            weight: Some(MAX_WEIGHT + 1),
            ..Default::default()
        };
        assert!(matches!(
            r.register(id("web", "10.0.0.1", 80), heavy),
            Err(RegistryError::Weight(_))
        ));
        assert!(r.is_empty());
    }

    #[test]
    fn expired_instances_are_removed_and_heartbeats_keep_them() {
        let (mut r, mut rx) = registry(None);
        let short = RegisterRequest {
            ttl: Some(1),
            ..Default::default()
        };
        r.register(id("web", "10.0.0.1", 80), short.clone())
            .unwrap();
        r.register(id("web", "10.0.0.2", 80), short).unwrap();
        let later = Instant::now() + Duration::from_millis(1500);
        assert!(r.expire(Instant::now()).is_empty());
        let gone = r.expire(later);
        assert_eq!(gone.len(), 2);
        assert_eq!(last_set(&mut rx), vec![]);
    }

    #[test]
    fn persisted_registrations_survive_a_restart_with_a_fresh_ttl() {
        let dir = std::env::temp_dir().join(format!("lb-registry-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("registry.json");
        let _ = std::fs::remove_file(&file);
        {
            let (mut r, _rx) = registry(Some(file.clone()));
            let req = RegisterRequest {
                weight: Some(2),
                ttl: Some(5),
                metadata: BTreeMap::from([("zone".into(), "a".into())]),
            };
            r.register(id("web", "2001:db8::1", 443), req).unwrap();
            r.register(id("dns", "10.0.0.1", 53), RegisterRequest::default())
                .unwrap();
            r.deregister(&id("dns", "10.0.0.1", 53)).unwrap();
        }
        let (r, mut rx) = registry(Some(file.clone()));
        let list = r.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, id("web", "2001:db8::1", 443));
        assert_eq!(list[0].weight, 2);
        assert_eq!(list[0].metadata["zone"], "a");
        assert!(list[0].expires_in > 4.0);
        assert_eq!(last_set(&mut rx), vec![("2001:db8::1".into(), 443, 2)]);

        std::fs::write(&file, "{ not json").unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let cfg = RegistryConfig {
            state_file: Some(file.clone()),
            ..RegistryConfig::default()
        };
        let err = Registry::open(cfg, SourceHandle::new(SOURCE_NAME, tx))
            .err()
            .expect("a corrupt file is an error");
        assert!(err.to_string().contains("registry.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
