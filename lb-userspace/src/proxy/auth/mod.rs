//! Gateway authentication: JWT bearer tokens (like Envoy's `jwt_authn`) and API keys (like
//! Kong's `key-auth`). Plain settings structs in, an [`Identity`] or an [`AuthFailure`] out.
//!
//! # Use
//!
//! ```text
//! // At start (inside the tokio runtime), per configured provider:
//! let stop = CancellationToken::new();              // cancel to stop refresh/reload tasks
//! let mut s = JwtSettings::new(Keys::Jwks { url, refresh: 300s, min_refetch: 30s });
//! s.issuer = Some(iss); s.audiences = vec![aud];
//! let strip = identity_headers([&s]);               // over every JwtSettings in use
//! let jwt = Authenticator::Jwt(Arc::new(JwtProvider::new(s, &stop).await?));
//! let keys = Authenticator::ApiKey(ApiKeys::watch(ApiKeySettings::new(path), 5s, stop.clone())?);
//!
//! // Per request, on EVERY route (with or without auth):
//! strip_identity_headers(req.headers_mut(), &strip);
//! // On routes with auth:
//! match auth.authenticate(req.headers()).await.and_then(|id| {
//!     id.require_scopes(&route_scopes)?; Ok(id) }) {
//!     Ok(id) => id.apply(req.headers_mut()),        // X-User-ID, X-Tenant-ID, X-Scopes, ...
//!     Err(f) => /* respond f.status, with WWW-Authenticate: f.www_authenticate; count f.reason */,
//! }
//! ```
//!
//! `authenticate` returns `Arc<Identity>` (not `Identity`) so a cache hit allocates nothing.
//! The token / key header itself is left on the request; dropping it before proxying is the
//! caller's choice.
//!
//! # JWT ([`JwtProvider`])
//!
//! * `alg` must be in [`JwtSettings::algorithms`] (RS256/384/512, PS256/384/512, ES256/384,
//!   EdDSA) *and* fit the key: RSA for RS/PS, the JWK's curve for ES, Ed25519 for EdDSA, and
//!   the JWK's own `alg` if it has one. HMAC algorithms cannot be configured and symmetric
//!   keys are never loaded, so "HS256 signed with the public key" fails; `alg: none` fails.
//! * Keys: [`Keys::File`] (JWKS JSON or one PEM public key) or [`Keys::Jwks`] (URL; see
//!   `jwks.rs` for fetch, refresh, rate-bounded refetch on unknown `kid`, last-good-set).
//! * Claims: `exp` (required by default) and `nbf` with leeway, `iss`, `aud` (string or array,
//!   one must match), `sub` required. Headers: `sub` -> `X-User-ID`, tenant claim ->
//!   `X-Tenant-ID`, `scope` (space-separated) or `scp` (array) -> `X-Scopes`, and
//!   [`JwtSettings::claim_headers`]. A value with control characters refuses the token
//!   (`bad_claim`).
//! * Verified tokens are cached by SHA-256 of the token, bounded, never past `exp` nor
//!   [`JwtSettings::cache_max_ttl`], and dropped when the JWKS key set changes.
//!
//! # API keys ([`ApiKeys`])
//!
//! Key file format, lookup and reload: see `apikey.rs`'s doc.
//!
//! # Failures
//!
//! 401 for missing/invalid credentials with `WWW-Authenticate: Bearer realm="lb",
//! error="invalid_token", error_description="..."` (RFC 6750; bare `Bearer realm="lb"` when
//! no token was sent) or `ApiKey realm="lb", error="invalid_key", ...`; 403
//! `insufficient_scope` from [`Identity::require_scopes`]. [`reason`] lists the labels.

mod apikey;
mod apikey_file;
mod cache;
mod claims;
mod failure;
mod identity;
mod jwks;
mod jwt;
mod jwt_settings;
mod keyset;
mod redis_keys;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

pub use apikey::{ApiKeySettings, ApiKeys, ApiKeysStatus};
pub use apikey_file::{KeyFileError, KeyFileErrors};
pub use failure::{AuthFailure, Scheme, reason};
pub use identity::{
    AuthMethod, Identity, KeyLimits, SCOPES, TENANT_ID, USER_ID, strip_identity_headers,
};
pub use jsonwebtoken::Algorithm;
pub use jwks::JwksStatus;
pub use jwt::JwtProvider;
pub use jwt_settings::{JwtSettings, Keys, TokenSource};
pub use redis_keys::RedisApiKeys;

/// A provider could not be set up (bad settings or key file).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("jwt: no algorithm allowed")]
    NoAlgorithm,
    #[error("jwt: {0:?} is an HMAC algorithm; only public-key algorithms are accepted")]
    HmacAlgorithm(Algorithm),
    #[error("jwt: claim header `{0}` is reserved (set by the gateway or framing)")]
    ReservedHeader(HeaderName),
    #[error("{}: {message}", path.display())]
    KeyFile { path: PathBuf, message: String },
    #[error("jwks url `{url}`: {message}")]
    JwksUrl { url: String, message: String },
    #[error(transparent)]
    ApiKeys(#[from] KeyFileErrors),
    #[error("api keys in redis need `[gateway.redis]` (read at start)")]
    NoRedis,
}

/// The header names the gateway sets from an identity: `X-User-ID`, `X-Tenant-ID`,
/// `X-Scopes` and every claim header of `jwt`. Strip these from every client request
/// ([`strip_identity_headers`]), on every route.
pub fn identity_headers<'a>(jwt: impl IntoIterator<Item = &'a JwtSettings>) -> Vec<HeaderName> {
    let mut names = vec![USER_ID, TENANT_ID, SCOPES];
    for settings in jwt {
        for (_, h) in &settings.claim_headers {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
    }
    names
}

/// One route's authentication.
#[derive(Clone)]
pub enum Authenticator {
    Jwt(Arc<JwtProvider>),
    ApiKey(ApiKeys),
    /// Keys in Redis (fleet-wide), cached per node.
    RedisApiKey(Arc<RedisApiKeys>),
}

impl Authenticator {
    /// The request header carrying the credential. The gateway removes it once the request
    /// is authenticated, so backends never see the secret (Envoy's jwt_authn default,
    /// `forward: false`; Kong's `hide_credentials`).
    pub fn credential_header(&self) -> HeaderName {
        match self {
            Self::Jwt(p) => p.credential_header(),
            Self::ApiKey(k) => k.header().clone(),
            Self::RedisApiKey(k) => k.header().clone(),
        }
    }

    /// The caller's identity from the request `headers`, or why not (401).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthFailure> {
        match self {
            Self::Jwt(p) => p.authenticate(headers).await,
            Self::ApiKey(k) => k.authenticate(headers),
            Self::RedisApiKey(k) => k.authenticate(headers).await,
        }
    }
}
