//! Workload identities (SPIFFE IDs), the certificates that prove them (issued by the agent from a
//! configured CA, or read from files an external issuer writes), trust bundles, and the rustls
//! configurations the tunnel uses; L4 authorization (`authz`).
//!
//! [`Identities`] is the one object the tunnel holds: it hands out client configs per local
//! identity and the server config, tells which identity a local cgroup or pod address runs as,
//! and keeps certificates fresh in background tasks that end when it is dropped.

mod authz;
mod files;
mod issuer;
mod spiffe;
mod store;
mod tls;
mod trust;
mod verify;
mod workloads;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, CommonState, ServerConfig};

use crate::config::{CertSource, MeshConfig};

pub use authz::{Authorizer, Decision};
pub use files::{BUNDLE_FILE, CERT_FILE, KEY_FILE};
pub use issuer::{Ca, IssueError, Issued};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::ALPN_H2;
pub use trust::{TrustStore, VerifyFailure};
pub use verify::failure_reason;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the mesh has no certificate source (`ca_cert_file`/`ca_key_file` or `cert_dir`)")]
    NoCertSource,
    #[error("reading {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Pem(PathBuf, String),
    #[error("CA: {0}")]
    Ca(#[from] IssueError),
    #[error("trust bundle of `{0}`: {1}")]
    Bundle(String, VerifyFailure),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no certificate for {0}")]
    NoCertificate(SpiffeId),
    #[error("{0} is not in this mesh's trust domain")]
    ForeignTrustDomain(SpiffeId),
}

/// Where certificates come from.
enum Source {
    Ca {
        /// Boxed: much larger than the other variant.
        ca: Box<Ca>,
        ttl: Duration,
        rotate_at_percent: u8,
    },
    Dir {
        dir: PathBuf,
        poll: Duration,
        state: Mutex<files::DirState>,
    },
}

pub struct Identities {
    trust_domain: String,
    node: SpiffeId,
    source: Source,
    store: Arc<store::CertStore>,
    trust: Arc<ArcSwap<TrustStore>>,
    /// `trust_bundles` of the config, read at start (kept to rebuild the store when the
    /// own bundle of `cert_dir` changes).
    other_bundles: Vec<(String, Vec<CertificateDer<'static>>)>,
    /// Server configs per presented identity (the node's made at start).
    servers: Mutex<HashMap<SpiffeId, Arc<ServerConfig>>>,
    /// Client configs per (local identity, expected server identity).
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
    workloads: workloads::Workloads,
}

/// A client config's (local identity, expected server identity).
type ClientKey = (SpiffeId, Option<SpiffeId>);

/// Backdating of issued certificates: peers' clocks may run a little behind ours.
const BACKDATE: Duration = Duration::from_secs(60);

impl Identities {
    /// Reads the CA (or the certificate directory) and the trust bundles, issues or loads the
    /// certificates of the node and the configured workloads, and spawns the rotation (or
    /// reload) task. Needs a tokio runtime.
    pub async fn start(cfg: &MeshConfig) -> Result<Arc<Identities>, IdentityError> {
        let td = cfg.trust_domain.clone();
        let mut other_bundles = Vec::new();
        for b in &cfg.trust_bundles {
            other_bundles.push((b.trust_domain.clone(), files::read_certs(&b.file)?));
        }
        let (source, own_bundle) = match cfg.certs.as_ref().ok_or(IdentityError::NoCertSource)? {
            CertSource::Ca {
                cert_file,
                key_file,
                ttl,
                rotate_at_percent,
            } => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p).map_err(|e| IdentityError::Read(p.clone(), e))
                };
                let ca = Ca::from_pem(&read(cert_file)?, &read(key_file)?)?;
                let bundle = ca.file_certs.clone();
                let source = Source::Ca {
                    ca: Box::new(ca),
                    ttl: *ttl,
                    rotate_at_percent: *rotate_at_percent,
                };
                (source, bundle)
            }
            CertSource::Dir { dir, poll } => {
                let bundle = files::read_certs(&dir.join(BUNDLE_FILE))?;
                let source = Source::Dir {
                    dir: dir.clone(),
                    poll: *poll,
                    state: Mutex::new(files::DirState::default()),
                };
                (source, bundle)
            }
        };
        let trust = Arc::new(ArcSwap::from_pointee(trust_store(
            &td,
            &own_bundle,
            &other_bundles,
        )?));
        let store = Arc::new(store::CertStore::default());
        let node = SpiffeId::new(
            &td,
            &cfg.node_identity.namespace,
            &cfg.node_identity.service_account,
        );
        let server = tls::server_config(store.clone(), trust.clone(), node.clone())?;
        let node_id_for_servers = node.clone();
        let me = Arc::new(Identities {
            workloads: workloads::Workloads::new(&td, &cfg.workloads),
            trust_domain: td,
            node,
            source,
            store,
            trust,
            other_bundles,
            servers: Mutex::new(HashMap::from([(node_id_for_servers, server)])),
            clients: Mutex::new(HashMap::new()),
        });
        match &me.source {
            Source::Ca { .. } => {
                me.issue(&me.node)?;
                for id in me.workloads.configured() {
                    me.issue(&id)?;
                }
            }
            Source::Dir { .. } => me.reload_dir(),
        }
        tokio::spawn(refresh(Arc::downgrade(&me)));
        Ok(me)
    }

    /// The client side of a tunnel connection for local identity `me`: presents `me`'s
    /// current certificate (issued now if the agent has a CA and none yet), verifies the
    /// server's chain and SPIFFE ID against the trust bundles; any server ID of a trusted
    /// domain is accepted. One config per identity, reused: rotation needs no new config.
    pub fn client_config(&self, me: &SpiffeId) -> Result<Arc<ClientConfig>, IdentityError> {
        self.client_config_expecting(me, None)
    }

    /// As [`Self::client_config`], and the server must present `expected` when it is
    /// known (the destination's identity); another ID fails the handshake with
    /// [`VerifyFailure::WrongServerIdentity`]. One config per (`me`, `expected`).
    pub fn client_config_expecting(
        &self,
        me: &SpiffeId,
        expected: Option<&SpiffeId>,
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        self.ensure_cert(me)?;
        let key = (me.clone(), expected.cloned());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let c = tls::client_config(
            self.store.clone(),
            self.trust.clone(),
            me.clone(),
            expected.cloned(),
        )?;
        clients.insert(key, c.clone());
        Ok(c)
    }

    /// The server side presenting the node identity: requires a client certificate chaining
    /// to the bundle of its SPIFFE ID's trust domain.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_for(&self.node)
            .expect("the node identity's server config is made at start")
    }

    /// The server side presenting `id` (a local workload's identity): its certificate is
    /// issued now if the agent has a CA and none yet, then rotated like every other; with
    /// `cert_dir`, the issuer must have written it. One config per identity, reused.
    pub fn server_config_for(&self, id: &SpiffeId) -> Result<Arc<ServerConfig>, IdentityError> {
        if let Some(c) = self
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(c.clone());
        }
        self.ensure_cert(id)?;
        let c = tls::server_config(self.store.clone(), self.trust.clone(), id.clone())?;
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        Ok(servers.entry(id.clone()).or_insert(c).clone())
    }

    /// `id` of this trust domain with a certificate in the store (issued now with a CA).
    fn ensure_cert(&self, id: &SpiffeId) -> Result<(), IdentityError> {
        if id.trust_domain != self.trust_domain {
            return Err(IdentityError::ForeignTrustDomain(id.clone()));
        }
        if self.store.get(id).is_none() {
            match self.source {
                Source::Ca { .. } => self.issue(id)?,
                Source::Dir { .. } => return Err(IdentityError::NoCertificate(id.clone())),
            }
        }
        Ok(())
    }

    /// The verified peer of a finished handshake.
    pub fn peer_id(conn: &CommonState) -> Option<SpiffeId> {
        SpiffeId::from_cert(conn.peer_certificates()?.first()?)
    }

    /// The identity of processes in cgroup `cgroup_id` (a cgroup v2 directory's inode), from
    /// `[[mesh.workload]]`; a cgroup below a configured one inherits nothing here: the
    /// caller passes the socket's own cgroup id.
    pub fn identity_of_cgroup(&self, cgroup_id: u64) -> Option<SpiffeId> {
        self.workloads.of_cgroup(cgroup_id)
    }

    /// The identity of the local pod with address `ip` (Kubernetes), see
    /// [`Self::set_pod_identities`].
    pub fn identity_of_ip(&self, ip: IpAddr) -> Option<SpiffeId> {
        self.workloads.of_ip(ip)
    }

    /// Replaces the pod address -> (namespace, service account) map (from the Kubernetes
    /// watch of this node's pods).
    pub fn set_pod_identities(&self, pods: HashMap<IpAddr, (String, String)>) {
        self.workloads.set_pods(pods);
    }

    pub fn node_id(&self) -> SpiffeId {
        self.node.clone()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// When each held certificate expires, for the expiry metric.
    pub fn expiry(&self) -> Vec<(SpiffeId, SystemTime)> {
        self.store.expiry()
    }

    /// Issues (or re-issues) `id`'s certificate from the CA.
    fn issue(&self, id: &SpiffeId) -> Result<(), IdentityError> {
        let Source::Ca {
            ca,
            ttl,
            rotate_at_percent,
        } = &self.source
        else {
            return Err(IdentityError::NoCertificate(id.clone()));
        };
        let now = SystemTime::now();
        let issued = ca.issue(id, now - BACKDATE, now + *ttl)?;
        let refresh_at = now + ttl.mul_f64(f64::from(*rotate_at_percent) / 100.0);
        self.store.put(
            id.clone(),
            vec![issued.cert],
            &issued.key,
            issued.not_after,
            refresh_at,
        )?;
        tracing::debug!(%id, "mesh: issued a certificate");
        Ok(())
    }

    /// Loads what changed in `cert_dir` since the last look.
    fn reload_dir(&self) {
        let Source::Dir { dir, state, .. } = &self.source else {
            return;
        };
        let now = files::scan(dir, &self.trust_domain);
        let mut old = state.lock().unwrap_or_else(|e| e.into_inner());
        if *old == now {
            return;
        }
        if old.bundle != now.bundle {
            match files::read_certs(&dir.join(BUNDLE_FILE))
                .and_then(|b| trust_store(&self.trust_domain, &b, &self.other_bundles))
            {
                Ok(t) => self.trust.store(Arc::new(t)),
                Err(e) => tracing::warn!("mesh: keeping the old trust bundle: {e}"),
            }
        }
        for (id, stamps) in &now.identities {
            if old.identities.get(id) == Some(stamps) {
                continue;
            }
            let d = files::identity_dir(dir, id);
            let loaded = files::read_certs(&d.join(CERT_FILE)).and_then(|chain| {
                let key = files::read_key(&d.join(KEY_FILE))?;
                if SpiffeId::from_cert(&chain[0]).as_ref() != Some(id) {
                    return Err(IdentityError::Pem(
                        d.join(CERT_FILE),
                        format!("the certificate is not {id}'s"),
                    ));
                }
                let not_after = files::not_after(&chain[0]).unwrap_or(SystemTime::UNIX_EPOCH);
                Ok(self
                    .store
                    .put(id.clone(), chain, &key, not_after, SystemTime::UNIX_EPOCH)?)
            });
            match loaded {
                Ok(()) => tracing::info!(%id, "mesh: loaded a certificate from {}", d.display()),
                // Half-written files: the next poll sees them again (their stamp changes).
                Err(e) => tracing::warn!(%id, "mesh: {e}"),
            }
        }
        for id in self.store.ids() {
            if !now.identities.contains_key(&id) {
                self.store.remove(&id);
            }
        }
        *old = now;
    }
}

fn trust_store(
    td: &str,
    own: &[CertificateDer<'static>],
    others: &[(String, Vec<CertificateDer<'static>>)],
) -> Result<TrustStore, IdentityError> {
    let mut t = TrustStore::default();
    t.add(td, own)
        .map_err(|e| IdentityError::Bundle(td.to_owned(), e))?;
    for (d, certs) in others {
        t.add(d, certs)
            .map_err(|e| IdentityError::Bundle(d.clone(), e))?;
    }
    Ok(t)
}

/// The background task: re-issues certificates due for rotation, or polls `cert_dir`. Ends
/// when the [`Identities`] is dropped.
async fn refresh(me: Weak<Identities>) {
    let tick = match me.upgrade().map(|m| match &m.source {
        Source::Ca {
            ttl,
            rotate_at_percent,
            ..
        } => ttl
            .mul_f64(f64::from(*rotate_at_percent) / 400.0)
            .clamp(Duration::from_millis(50), Duration::from_secs(5)),
        Source::Dir { poll, .. } => *poll,
    }) {
        Some(t) => t,
        None => return,
    };
    loop {
        tokio::time::sleep(tick).await;
        let Some(me) = me.upgrade() else { return };
        match &me.source {
            Source::Ca { .. } => {
                for id in me.store.due(SystemTime::now()) {
                    if let Err(e) = me.issue(&id) {
                        tracing::warn!(%id, "mesh: rotating the certificate failed: {e}");
                    }
                }
            }
            Source::Dir { .. } => me.reload_dir(),
        }
    }
}
