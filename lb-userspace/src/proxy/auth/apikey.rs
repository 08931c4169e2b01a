//! API-key authentication (like Kong's key-auth), keys stored only as SHA-256 hashes.
//!
//! # Key file (TOML)
//!
//! ```toml
//! [[key]]
//! name = "ci"              # required, unique: becomes the subject (X-User-ID)
//! sha256 = "9f86d0...0f00a08"  # required, unique: 64 hex digits, SHA-256 of the key's bytes
//! tenant = "acme"          # optional: X-Tenant-ID
//! scopes = ["read"]        # optional: X-Scopes, and what `require_scopes` checks
//! rate = 100               # optional: requests/s for this key (the caller applies it)
//! burst = 200              # optional, needs `rate`; default = rate
//! ```
//!
//! `printf %s "$KEY" | sha256sum` gives the hash. Unknown fields, wrong types, bad hex and
//! duplicates are errors naming `file:line:column: key[i].field`.
//!
//! # Lookup
//!
//! The presented key (the configured header's value, default `X-API-Key`) is hashed and
//! looked up in a map keyed by the hash. No constant-time compare is needed: the only
//! comparison is of SHA-256 digests inside the map, and timing that reveals how many leading
//! bytes of a *digest* matched tells an attacker nothing usable about any key.
//!
//! # Reload
//!
//! [`ApiKeys::watch`] re-reads the file every interval; when its content changed and parses,
//! the new set replaces the old one atomically (a removed key fails from the next request
//! on). A bad file is logged, kept in [`ApiKeysStatus::last_error`], and the last good set
//! stays in use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::apikey_file::{self, KeyFileError, KeyFileErrors};
use super::failure::{AuthFailure, Scheme, reason};
use super::identity::{AuthMethod, Identity};

/// Where the keys are and where a request presents one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeySettings {
    pub file: PathBuf,
    /// Default `x-api-key`.
    pub header: HeaderName,
}

impl ApiKeySettings {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            header: HeaderName::from_static("x-api-key"),
        }
    }
}

/// The key file's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeysStatus {
    /// Keys in the set in use.
    pub keys: usize,
    /// When the set in use was loaded.
    pub loaded_at: SystemTime,
    /// The last reload that failed (when, and every error); it stays until a good reload.
    pub last_error: Option<(SystemTime, String)>,
}

type KeyMap = HashMap<[u8; 32], Arc<Identity>>;

/// The API keys of one file; cheap to clone (shared).
#[derive(Clone)]
pub struct ApiKeys {
    shared: Arc<Shared>,
}

struct Shared {
    file: PathBuf,
    header: HeaderName,
    keys: ArcSwap<KeyMap>,
    /// SHA-256 of the file text last looked at (good or bad), so an unchanged file is not
    /// parsed (or complained about) again.
    seen: Mutex<[u8; 32]>,
    status: Mutex<ApiKeysStatus>,
}

impl ApiKeys {
    /// Loads the key file; any problem is an error (a bad file at start is a config error).
    pub fn load(settings: ApiKeySettings) -> Result<Self, KeyFileErrors> {
        let text = read(&settings.file)?;
        let keys = build(&text, &settings.file)?;
        let count = keys.len();
        Ok(Self {
            shared: Arc::new(Shared {
                file: settings.file,
                header: settings.header,
                keys: ArcSwap::from_pointee(keys),
                seen: Mutex::new(Sha256::digest(text.as_bytes()).into()),
                status: Mutex::new(ApiKeysStatus {
                    keys: count,
                    loaded_at: SystemTime::now(),
                    last_error: None,
                }),
            }),
        })
    }

    /// [`Self::load`], then re-reads the file every `interval` until `stop` (see the module
    /// doc). Needs a tokio runtime.
    pub fn watch(
        settings: ApiKeySettings,
        interval: Duration,
        stop: CancellationToken,
    ) -> Result<Self, KeyFileErrors> {
        let keys = Self::load(settings)?;
        let weak = Arc::downgrade(&keys.shared);
        tokio::spawn(poll(weak, interval, stop));
        Ok(keys)
    }

    /// Re-reads the file now. `Ok(true)`: a new set is in use; `Ok(false)`: content
    /// unchanged; `Err`: the file is bad (logged, recorded) and the last good set stays.
    pub async fn reload(&self) -> Result<bool, KeyFileErrors> {
        let file = self.shared.file.clone();
        // Small file, but still off the async workers.
        let text = tokio::task::spawn_blocking(move || read(&file))
            .await
            .unwrap_or_else(|e| Err(one_error(&self.shared.file, e.to_string())));
        self.shared.apply(text)
    }

    /// Reads the configured header and looks the key up.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthFailure> {
        let fail = |r| AuthFailure::unauthorized(Scheme::ApiKey, r);
        let mut values = headers.get_all(&self.shared.header).iter();
        let value = match (values.next(), values.next()) {
            (None, _) => return Err(fail(reason::MISSING)),
            (Some(_), Some(_)) => return Err(fail(reason::MALFORMED)),
            (Some(v), None) if v.is_empty() => return Err(fail(reason::MALFORMED)),
            (Some(v), None) => v,
        };
        self.lookup(value.as_bytes())
            .ok_or_else(|| fail(reason::UNKNOWN_KEY))
    }

    /// The identity of `key` (its raw bytes), if it is in the current set. Allocation-free.
    pub fn lookup(&self, key: &[u8]) -> Option<Arc<Identity>> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.shared.keys.load().get(&digest).cloned()
    }

    pub fn status(&self) -> ApiKeysStatus {
        lock(&self.shared.status).clone()
    }

    /// The header keys are presented in.
    pub fn header(&self) -> &HeaderName {
        &self.shared.header
    }
}

impl Shared {
    fn apply(&self, text: Result<String, KeyFileErrors>) -> Result<bool, KeyFileErrors> {
        let result = text.and_then(|text| {
            let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            if *lock(&self.seen) == hash {
                return Ok(None);
            }
            *lock(&self.seen) = hash;
            build(&text, &self.file).map(Some)
        });
        let mut status = lock(&self.status);
        match result {
            Ok(None) => Ok(false),
            Ok(Some(keys)) => {
                tracing::info!(file = %self.file.display(), keys = keys.len(), "api keys reloaded");
                status.keys = keys.len();
                status.loaded_at = SystemTime::now();
                status.last_error = None;
                self.keys.store(Arc::new(keys));
                Ok(true)
            }
            Err(errors) => {
                tracing::warn!(%errors, "api keys: bad key file, keeping the last good set");
                status.last_error = Some((SystemTime::now(), errors.to_string()));
                Err(errors)
            }
        }
    }
}

async fn poll(shared: Weak<Shared>, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let keys = ApiKeys { shared };
        // Errors are logged and recorded by `apply`.
        let _ = keys.reload().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read(path: &Path) -> Result<String, KeyFileErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| one_error(path, format!("cannot read the key file: {e}")))
}

fn one_error(path: &Path, message: String) -> KeyFileErrors {
    KeyFileErrors(vec![KeyFileError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        field: "file".into(),
        message,
    }])
}

fn build(text: &str, path: &Path) -> Result<KeyMap, KeyFileErrors> {
    let entries = apikey_file::parse(text, &path.display().to_string())?;
    let mut keys = KeyMap::with_capacity(entries.len());
    for e in entries {
        // The file check refused control characters, so building cannot fail.
        let identity = Identity::new(
            AuthMethod::ApiKey,
            e.name,
            e.tenant,
            e.scopes,
            e.limits,
            Vec::new(),
        )
        .map_err(|_| {
            one_error(
                path,
                "a key holds a value that is not a valid header".into(),
            )
        })?;
        keys.insert(e.digest, Arc::new(identity));
    }
    Ok(keys)
}
