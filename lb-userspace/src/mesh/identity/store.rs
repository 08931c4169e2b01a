//! The current certificate and key of each identity this node holds. Replacing an entry is
//! all rotation does: TLS resolvers read the entry per handshake, so new handshakes get the
//! new certificate and established connections are not touched.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::SpiffeId;

#[derive(Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
    /// When the issuer replaces it (CA mode); unused for files.
    refresh_at: SystemTime,
}

#[derive(Debug, Default)]
pub(super) struct CertStore {
    certs: RwLock<HashMap<SpiffeId, Entry>>,
}

impl CertStore {
    pub fn get(&self, id: &SpiffeId) -> Option<Arc<CertifiedKey>> {
        read(&self.certs).get(id).map(|e| e.key.clone())
    }

    pub fn put(
        &self,
        id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'_>,
        not_after: SystemTime,
        refresh_at: SystemTime,
    ) -> Result<(), rustls::Error> {
        let signer = rustls::crypto::ring::sign::any_supported_type(key)?;
        let entry = Entry {
            key: Arc::new(CertifiedKey::new(chain, signer)),
            not_after,
            refresh_at,
        };
        write(&self.certs).insert(id, entry);
        Ok(())
    }

    pub fn remove(&self, id: &SpiffeId) {
        write(&self.certs).remove(id);
    }

    pub fn ids(&self) -> Vec<SpiffeId> {
        read(&self.certs).keys().cloned().collect()
    }

    /// Identities whose certificate is due for replacement at `now`.
    pub fn due(&self, now: SystemTime) -> Vec<SpiffeId> {
        read(&self.certs)
            .iter()
            .filter(|(_, e)| e.refresh_at <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn expiry(&self) -> Vec<(SpiffeId, SystemTime)> {
        let mut v: Vec<_> = read(&self.certs)
            .iter()
            .map(|(id, e)| (id.clone(), e.not_after))
            .collect();
        v.sort();
        v
    }
}

// A panic while holding the lock leaves a consistent map (every write is one insert/remove).
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
