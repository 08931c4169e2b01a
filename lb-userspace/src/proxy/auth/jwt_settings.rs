//! A JWT provider's plain settings (the integrator maps `[[gateway]]` config onto these).

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, header};
use jsonwebtoken::Algorithm;

use super::identity::{SCOPES, TENANT_ID, USER_ID};

/// Where the verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// A file read once at start: a JWKS document (`{"keys": [...]}`, keys matched by `kid`)
    /// or one PEM public key (RSA, EC P-256/P-384 or Ed25519; matches any `kid`).
    File(PathBuf),
    /// A JWKS URL (http or https): fetched at start, every `refresh`, and on an unknown `kid`
    /// at most once per `min_refetch`.
    Jwks {
        url: String,
        refresh: Duration,
        min_refetch: Duration,
    },
}

/// Where the token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (scheme case-insensitive).
    Bearer,
    /// The whole value of this header.
    Header(HeaderName),
}

/// One JWT provider's settings (the integrator maps `[[gateway]]` config onto this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// If not empty, `aud` (string or array) must contain one of these.
    pub audiences: Vec<String>,
    /// Accepted `alg`s. HMAC algorithms are refused at construction; `none` never parses.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds).
    pub leeway: Duration,
    /// Refuse tokens without `exp` (default true).
    pub require_exp: bool,
    pub token_source: TokenSource,
    pub keys: Keys,
    /// Claim that becomes `X-Tenant-ID` (default `tenant`).
    pub tenant_claim: String,
    /// Extra claim -> header mappings (claim names are exact, dots included).
    pub claim_headers: Vec<(String, HeaderName)>,
    /// Verified tokens cached (0 disables the cache).
    pub cache_capacity: usize,
    /// Longest a verified token is trusted without re-verification.
    pub cache_max_ttl: Duration,
    /// Timeout of one JWKS fetch.
    pub fetch_timeout: Duration,
}

impl JwtSettings {
    /// Defaults: RS256 and ES256, 60 s leeway, `exp` required, `Authorization: Bearer`,
    /// tenant claim `tenant`, 10 000 cached tokens for at most 5 min, 5 s fetch timeout.
    pub fn new(keys: Keys) -> Self {
        Self {
            issuer: None,
            audiences: Vec::new(),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            leeway: Duration::from_secs(60),
            require_exp: true,
            token_source: TokenSource::Bearer,
            keys,
            tenant_claim: "tenant".into(),
            claim_headers: Vec::new(),
            cache_capacity: 10_000,
            cache_max_ttl: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Headers the gateway may refuse as claim targets: its own, and ones that would change how
/// the request is routed, framed or authenticated.
pub(super) const RESERVED: [HeaderName; 7] = [
    USER_ID,
    TENANT_ID,
    SCOPES,
    header::AUTHORIZATION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];
