//! Why a request was refused: the status, a stable label and the `WWW-Authenticate` challenge.

use http::{HeaderValue, StatusCode};

/// Stable failure labels (metrics, logs). The set only grows.
pub mod reason {
    /// No credential in the request.
    pub const MISSING: &str = "missing";
    /// The credential is not a token / header value we can read.
    pub const MALFORMED: &str = "malformed";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const EXPIRED: &str = "expired";
    pub const NOT_YET_VALID: &str = "not_yet_valid";
    pub const WRONG_ISSUER: &str = "wrong_issuer";
    pub const WRONG_AUDIENCE: &str = "wrong_audience";
    /// The token names a `kid` no key (even after a refetch) has.
    pub const UNKNOWN_KID: &str = "unknown_kid";
    /// `alg` not in the allowed list, `none`, HMAC, or not the named key's type.
    pub const ALG_NOT_ALLOWED: &str = "alg_not_allowed";
    /// A required claim (`sub`, `exp`) is absent or of the wrong type.
    pub const MISSING_CLAIM: &str = "missing_claim";
    /// A claim that becomes a header holds control characters or a non-scalar.
    pub const BAD_CLAIM: &str = "bad_claim";
    /// The API key is not in the key set (never was, or revoked).
    pub const UNKNOWN_KEY: &str = "unknown_key";
    /// Valid identity, but not every required scope (403).
    pub const INSUFFICIENT_SCOPE: &str = "insufficient_scope";
    /// The key store (Redis) did not answer in time and nothing fresh was cached (503).
    pub const UNAVAILABLE: &str = "unavailable";
}

/// A refused request: answer `status` with `WWW-Authenticate: www_authenticate` (if any).
///
/// 401 for a missing or invalid credential, 403 for a valid identity lacking scopes.
/// `reason` is one of [`reason`]'s labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct AuthFailure {
    pub status: StatusCode,
    pub reason: &'static str,
    pub www_authenticate: Option<HeaderValue>,
}

/// Which challenge to send: RFC 6750 `Bearer` for JWTs, `ApiKey` for API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    ApiKey,
}

const REALM: &str = "lb";

/// A short human text per reason, safe inside a quoted-string (no `"` or `\`, as RFC 6750's
/// `error_description` syntax demands).
fn description(reason: &str) -> &'static str {
    match reason {
        reason::MALFORMED => "the credential is malformed",
        reason::BAD_SIGNATURE => "the token signature is invalid",
        reason::EXPIRED => "the token has expired",
        reason::NOT_YET_VALID => "the token is not valid yet",
        reason::WRONG_ISSUER => "the token issuer is not accepted",
        reason::WRONG_AUDIENCE => "the token audience is not accepted",
        reason::UNKNOWN_KID => "the token signing key is unknown",
        reason::ALG_NOT_ALLOWED => "the token algorithm is not allowed",
        reason::MISSING_CLAIM => "the token lacks a required claim",
        reason::BAD_CLAIM => "a token claim cannot be forwarded",
        reason::UNKNOWN_KEY => "the API key is not valid",
        reason::INSUFFICIENT_SCOPE => "the credential lacks a required scope",
        _ => "the credential is not valid",
    }
}

impl AuthFailure {
    /// 401 for `reason` (`missing` gets a bare challenge, as RFC 6750 3.1 says for requests
    /// without credentials).
    pub fn unauthorized(scheme: Scheme, reason: &'static str) -> Self {
        let challenge = match (scheme, reason) {
            (Scheme::Bearer, reason::MISSING) => format!("Bearer realm=\"{REALM}\""),
            (Scheme::Bearer, _) => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                description(reason)
            ),
            (Scheme::ApiKey, reason::MISSING) => format!("ApiKey realm=\"{REALM}\""),
            (Scheme::ApiKey, _) => format!(
                "ApiKey realm=\"{REALM}\", error=\"invalid_key\", error_description=\"{}\"",
                description(reason)
            ),
        };
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason,
            www_authenticate: HeaderValue::from_str(&challenge).ok(),
        }
    }

    /// 503: the credential could not be checked now (key store down). No challenge: the
    /// client's credential may well be good.
    pub fn unavailable() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: reason::UNAVAILABLE,
            www_authenticate: None,
        }
    }

    /// 403 `insufficient_scope`, naming the `required` scopes when they fit a header.
    pub fn insufficient_scope(scheme: Scheme, required: &[String]) -> Self {
        let name = match scheme {
            Scheme::Bearer => "Bearer",
            Scheme::ApiKey => "ApiKey",
        };
        let base = format!(
            "{name} realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\"",
            description(reason::INSUFFICIENT_SCOPE)
        );
        let scope = required.join(" ");
        // Scopes come from config; a quote or backslash would break the quoted-string.
        let with_scope = (!scope.contains(['"', '\\']))
            .then(|| HeaderValue::from_str(&format!("{base}, scope=\"{scope}\"")).ok())
            .flatten();
        Self {
            status: StatusCode::FORBIDDEN,
            reason: reason::INSUFFICIENT_SCOPE,
            www_authenticate: with_scope.or_else(|| HeaderValue::from_str(&base).ok()),
        }
    }
}
