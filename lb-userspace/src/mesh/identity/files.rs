//! PEM reading, and certificates an external issuer writes (SPIRE-style):
//! `<dir>/<namespace>/<service account>/{cert.pem,key.pem}` and `<dir>/bundle.pem`. A scan
//! notes each file's size and modification time, so a poll reloads only what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdentityError, SpiffeId};

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const BUNDLE_FILE: &str = "bundle.pem";

pub(super) fn certs_from_pem(
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect()
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| IdentityError::Read(path.to_owned(), e))
}

/// Every certificate of a PEM file; at least one.
pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = certs_from_pem(&read(path)?)
        .map_err(|e| IdentityError::Pem(path.to_owned(), e.to_string()))?;
    if certs.is_empty() {
        return Err(IdentityError::Pem(
            path.to_owned(),
            "no certificate".to_owned(),
        ));
    }
    Ok(certs)
}

pub(super) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(read(path)?.as_bytes())
        .map_err(|e| IdentityError::Pem(path.to_owned(), e.to_string()))
}

/// The end of a certificate's validity.
pub(super) fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let secs = u64::try_from(x509.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// A file's identity for change detection: (size, modification time).
pub(super) type Stamp = (u64, Option<SystemTime>);

pub(super) fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()))
}

/// What a directory holds now: the bundle's stamp, and each identity's cert and key stamps.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub(super) struct DirState {
    pub bundle: Option<Stamp>,
    pub identities: BTreeMap<SpiffeId, (Stamp, Stamp)>,
}

pub(super) fn scan(dir: &Path, trust_domain: &str) -> DirState {
    let mut state = DirState {
        bundle: stamp(&dir.join(BUNDLE_FILE)),
        ..Default::default()
    };
    for ns in subdirs(dir) {
        for sa in subdirs(&ns) {
            let (Some(n), Some(s)) = (name(&ns), name(&sa)) else {
                continue;
            };
            if let (Some(c), Some(k)) = (stamp(&sa.join(CERT_FILE)), stamp(&sa.join(KEY_FILE))) {
                state
                    .identities
                    .insert(SpiffeId::new(trust_domain, &n, &s), (c, k));
            }
        }
    }
    state
}

pub(super) fn identity_dir(dir: &Path, id: &SpiffeId) -> PathBuf {
    dir.join(&id.namespace).join(&id.service_account)
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

fn name(p: &Path) -> Option<String> {
    p.file_name()?
        .to_str()
        .filter(|n| crate::config::is_name(n))
        .map(str::to_owned)
}
