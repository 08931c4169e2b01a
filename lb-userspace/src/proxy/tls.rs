//! TLS termination: certificates per SNI name from PEM files, chosen by a rustls
//! `ResolvesServerCert`, reloaded when the files change.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often [`Tls::watch`] re-reads the files.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// One certificate and the names it serves.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Exact names (`api.example.com`) or wildcards (`*.example.com`, one label).
    pub names: Vec<String>,
    /// PEM, leaf first then intermediates.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Served for no or unknown SNI. If none is flagged, the first spec is the default.
    pub default: bool,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub certs: Vec<CertSpec>,
    pub reload_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificates configured")]
    NoCertificates,
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("{}: the private key does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("bad server name {name:?}: {what}")]
    BadName { name: String, what: &'static str },
    #[error("TLS setup: {0}")]
    Config(rustls::Error),
}

/// A loaded certificate set: the acceptor for [`super::server::serve`], and the reloader.
#[derive(Debug)]
pub struct Tls {
    specs: Vec<CertSpec>,
    resolver: Arc<SniResolver>,
    config: Arc<ServerConfig>,
    /// Per spec: the (cert, key) bytes last seen on disk, loaded or not.
    seen: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    reload_interval: Duration,
}

#[derive(Debug)]
struct SniResolver {
    table: RwLock<Arc<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    /// The key per spec, in spec order.
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl Table {
    fn new(specs: &[CertSpec], keys: Vec<Arc<CertifiedKey>>) -> Result<Self, TlsError> {
        let mut t = Table {
            keys,
            default: specs.iter().position(|s| s.default).unwrap_or(0),
            ..Table::default()
        };
        for (i, spec) in specs.iter().enumerate() {
            for name in &spec.names {
                let n = normalize(name);
                if let Some(suffix) = n.strip_prefix("*.") {
                    if suffix.is_empty() || suffix.contains('*') {
                        return Err(TlsError::BadName {
                            name: name.clone(),
                            what: "a wildcard is `*.` followed by a domain",
                        });
                    }
                    t.wildcard.entry(suffix.to_owned()).or_insert(i);
                } else if n.is_empty() || n.contains('*') {
                    return Err(TlsError::BadName {
                        name: name.clone(),
                        what: "empty, or `*` not as the whole first label",
                    });
                } else {
                    t.exact.entry(n).or_insert(i);
                }
            }
        }
        Ok(t)
    }

    fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let idx = sni
            .map(normalize)
            .and_then(|n| {
                self.exact.get(&n).copied().or_else(|| {
                    n.split_once('.')
                        .and_then(|(_, rest)| self.wildcard.get(rest).copied())
                })
            })
            .unwrap_or(self.default);
        self.keys[idx].clone()
    }
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        Some(table.lookup(hello.server_name()))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parse one spec's PEM bytes into a checked key pair.
fn certified_key(spec: &CertSpec, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let pem = |path: &Path, what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(&spec.cert_file, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem(&spec.cert_file, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| pem(&spec.key_file, format!("no usable private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| pem(&spec.key_file, format!("unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: spec.cert_file.clone(),
            key: spec.key_file.clone(),
        }),
        Err(e) => Err(pem(&spec.cert_file, format!("bad certificate: {e}"))),
    }
}

impl Tls {
    /// Read and check every certificate; ALPN offers `h2` and `http/1.1`.
    pub fn load(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        if settings.certs.is_empty() {
            return Err(TlsError::NoCertificates);
        }
        let mut keys = Vec::new();
        let mut seen = Vec::new();
        for spec in &settings.certs {
            let (c, k) = (read(&spec.cert_file)?, read(&spec.key_file)?);
            keys.push(Arc::new(certified_key(spec, &c, &k)?));
            seen.push((c, k));
        }
        let resolver = Arc::new(SniResolver {
            table: RwLock::new(Arc::new(Table::new(&settings.certs, keys)?)),
        });
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Config)?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            specs: settings.certs,
            resolver,
            config: Arc::new(config),
            seen: Mutex::new(seen),
            reload_interval: settings.reload_interval,
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Re-read the files; a spec whose files changed and load is swapped in, one that fails
    /// keeps its old certificate. Returns how many were swapped and the errors (each also
    /// logged). Unchanged files cost a read and a compare.
    pub fn reload(&self) -> (usize, Vec<TlsError>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors = Vec::new();
        let mut fresh = Vec::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let files = read(&spec.cert_file).and_then(|c| Ok((c, read(&spec.key_file)?)));
            let (c, k) = match files {
                Ok(f) => f,
                Err(e) => {
                    // A file briefly missing during a rename-into-place: keep serving.
                    errors.push(e);
                    continue;
                }
            };
            if seen[i].0 == c && seen[i].1 == k {
                continue;
            }
            match certified_key(spec, &c, &k) {
                Ok(ck) => fresh.push((i, Arc::new(ck))),
                Err(e) => errors.push(e),
            }
            seen[i] = (c, k);
        }
        for e in &errors {
            tracing::warn!("gateway TLS reload: {e}; keeping the certificate in use");
        }
        if fresh.is_empty() {
            return (0, errors);
        }
        let mut slot = self
            .resolver
            .table
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut keys = slot.keys.clone();
        for (i, ck) in &fresh {
            keys[*i] = ck.clone();
            tracing::info!(
                "gateway TLS: reloaded {}",
                self.specs[*i].cert_file.display()
            );
        }
        let table = Table::new(&self.specs, keys).expect("names were checked at load");
        *slot = Arc::new(table);
        (fresh.len(), errors)
    }

    /// Poll the files every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.reload_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            // File reads and PEM parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || this.reload()).await;
        }
    }

    #[cfg(test)]
    pub(super) fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        self.resolver.table.read().unwrap().clone().lookup(sni)
    }
}
