//! JWT bearer authentication: the provider that verifies tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::AuthError;
use super::cache::{TokenCache, TokenHash};
use super::claims::ClaimRules;
use super::failure::{AuthFailure, Scheme, reason};
use super::identity::Identity;
use super::jwks::{JwksStatus, JwksStore};
use super::jwt_settings::{JwtSettings, Keys, RESERVED, TokenSource};
use super::keyset::KeySet;

/// Longer tokens are refused before any work.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

enum KeySource {
    Static(Arc<KeySet>),
    Remote(JwksStore),
}

/// Verifies JWTs per [`JwtSettings`]; share it (`Arc`) across requests.
pub struct JwtProvider {
    rules: ClaimRules,
    /// One prepared signature-only `Validation` per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    source: TokenSource,
    keys: KeySource,
    cache: TokenCache,
    signature_checks: AtomicU64,
}

impl JwtProvider {
    /// Checks the settings, loads the key file or fetches the JWKS URL (a failed first fetch
    /// is not an error: see [`Self::jwks_status`]) and starts the refresh task, stopped by
    /// `stop`. Needs a tokio runtime.
    pub async fn new(settings: JwtSettings, stop: &CancellationToken) -> Result<Self, AuthError> {
        if settings.algorithms.is_empty() {
            return Err(AuthError::NoAlgorithm);
        }
        if let Some(alg) = settings.algorithms.iter().find(|a| is_hmac(**a)) {
            return Err(AuthError::HmacAlgorithm(*alg));
        }
        if let Some((_, h)) = settings
            .claim_headers
            .iter()
            .find(|(_, h)| RESERVED.contains(h))
        {
            return Err(AuthError::ReservedHeader(h.clone()));
        }
        let keys = match &settings.keys {
            Keys::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| AuthError::KeyFile {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let set =
                    KeySet::from_file_bytes(&bytes).map_err(|message| AuthError::KeyFile {
                        path: path.clone(),
                        message,
                    })?;
                KeySource::Static(Arc::new(set))
            }
            Keys::Jwks {
                url,
                refresh,
                min_refetch,
            } => KeySource::Remote(
                JwksStore::start(url, *refresh, *min_refetch, settings.fetch_timeout, stop)
                    .await
                    .map_err(|message| AuthError::JwksUrl {
                        url: url.clone(),
                        message,
                    })?,
            ),
        };
        let validations = settings
            .algorithms
            .iter()
            .map(|&alg| (alg, signature_only(alg)))
            .collect();
        Ok(Self {
            rules: ClaimRules {
                issuer: settings.issuer,
                audiences: settings.audiences,
                leeway_secs: settings.leeway.as_secs(),
                require_exp: settings.require_exp,
                tenant_claim: settings.tenant_claim,
                claim_headers: settings.claim_headers,
            },
            validations,
            source: settings.token_source,
            keys,
            cache: TokenCache::new(settings.cache_capacity, settings.cache_max_ttl),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// The header the token is read from (`Authorization` for bearer tokens).
    pub fn credential_header(&self) -> HeaderName {
        match &self.source {
            TokenSource::Bearer => header::AUTHORIZATION,
            TokenSource::Header(h) => h.clone(),
        }
    }

    /// Reads the token from `headers` and verifies it.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthFailure> {
        let token = self.token(headers).map_err(fail)?;
        self.verify(token).await
    }

    /// Verifies `token`: cache, then header, key, signature, claims.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(fail(reason::MALFORMED));
        }
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        let generation = self.generation();
        if let Some(hit) = self.cache.get(&hash, Instant::now(), generation) {
            return Ok(hit);
        }
        let (claims, generation) = self.verify_signature(token).await.map_err(fail)?;
        // Instant first: the deadline (instant + exp - wall) then falls at or before exp.
        let now = Instant::now();
        let wall = SystemTime::now();
        let checked = self.rules.check(&claims, unix_secs(wall)).map_err(fail)?;
        let identity = Arc::new(checked.identity);
        self.cache
            .insert(hash, identity.clone(), checked.exp, wall, now, generation);
        Ok(identity)
    }

    /// Signatures checked so far (cache misses that got as far as a key).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// The JWKS URL's state; `None` for a key file.
    pub fn jwks_status(&self) -> Option<JwksStatus> {
        match &self.keys {
            KeySource::Static(_) => None,
            KeySource::Remote(r) => Some(r.status()),
        }
    }

    fn generation(&self) -> u64 {
        match &self.keys {
            KeySource::Static(_) => 0,
            KeySource::Remote(r) => r.generation(),
        }
    }

    fn token<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, &'static str> {
        let name = match &self.source {
            TokenSource::Bearer => &header::AUTHORIZATION,
            TokenSource::Header(name) => name,
        };
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            // None, or several (ambiguous: which one would the backend read?).
            return Err(if headers.contains_key(name) {
                reason::MALFORMED
            } else {
                reason::MISSING
            });
        };
        let value = value.to_str().map_err(|_| reason::MALFORMED)?.trim();
        let token = match &self.source {
            TokenSource::Bearer => match value.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                // Another scheme (Basic ...): no bearer credential at all.
                _ if !value.eq_ignore_ascii_case("bearer") => return Err(reason::MISSING),
                _ => "",
            },
            TokenSource::Header(_) => value,
        };
        if token.is_empty() {
            return Err(reason::MALFORMED);
        }
        Ok(token)
    }

    /// The token's claims once its signature checks out with an allowed algorithm and a
    /// matching key; and the key-set generation used.
    async fn verify_signature(
        &self,
        token: &str,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, u64), &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_failure(token))?;
        // RFC 7515 4.1.11: `crit` lists extensions the recipient must understand; we know none.
        if header_json(token).is_some_and(|h| h.contains_key("crit")) {
            return Err(reason::MALFORMED);
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == header.alg)
            .map(|(_, v)| v)
            .ok_or(reason::ALG_NOT_ALLOWED)?;
        let kid = header.kid.as_deref();
        let (mut set, mut generation) = (self.key_set(), self.generation());
        if set.candidates(kid).next().is_none()
            && let KeySource::Remote(remote) = &self.keys
        {
            remote.refetch_for_unknown_kid().await;
            (set, generation) = (self.key_set(), self.generation());
        }
        let (mut last_error, mut other_type) = (None, false);
        for key in set.candidates(kid) {
            if !key.accepts(header.alg) {
                other_type = true;
                continue;
            }
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            match jsonwebtoken::decode(token, &key.decoding, validation) {
                Ok(data) => return Ok((data.claims, generation)),
                Err(e) => last_error = Some(decode_failure(e.kind())),
            }
        }
        Err(match (last_error, other_type) {
            (Some(e), _) => e,
            // The key(s) the token may use are of another type: its alg is what is wrong.
            (None, true) => reason::ALG_NOT_ALLOWED,
            (None, false) => reason::UNKNOWN_KID,
        })
    }

    fn key_set(&self) -> Arc<KeySet> {
        match &self.keys {
            KeySource::Static(set) => set.clone(),
            KeySource::Remote(r) => r.keys(),
        }
    }
}

fn fail(reason: &'static str) -> AuthFailure {
    AuthFailure::unauthorized(Scheme::Bearer, reason)
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A `Validation` that checks only the signature and `alg`: claims are checked by
/// [`ClaimRules`].
fn signature_only(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

fn decode_failure(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            reason::BAD_SIGNATURE
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => reason::ALG_NOT_ALLOWED,
        _ => reason::MALFORMED,
    }
}

/// The token's JOSE header as JSON, read on the slow path only (jsonwebtoken's `Header`
/// drops the fields we look at here).
fn header_json(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let part = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Why the header did not parse: an `alg` jsonwebtoken does not know (`none` above all) is
/// `alg_not_allowed`, anything else is `malformed`.
fn header_failure(token: &str) -> &'static str {
    let alg = header_json(token).and_then(|h| h.get("alg")?.as_str().map(str::to_owned));
    match alg {
        Some(alg) if alg.parse::<Algorithm>().is_err() => reason::ALG_NOT_ALLOWED,
        _ => reason::MALFORMED,
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
