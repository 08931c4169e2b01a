//! Who the caller is once authenticated, and the headers that tell the backend.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::failure::{AuthFailure, Scheme};

/// `sub` / the API key's name.
pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");
/// The tenant claim / the API key's tenant.
pub const TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
/// The scopes, space-separated.
pub const SCOPES: HeaderName = HeaderName::from_static("x-scopes");

/// How the identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
}

/// Per-key request limits from the key file (requests/s and burst); the caller applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    pub rate: u32,
    pub burst: u32,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub method: AuthMethod,
    /// JWT `sub`, or the API key's name.
    pub subject: String,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    /// API keys only: the key's `rate`/`burst`, if set.
    pub limits: Option<KeyLimits>,
    /// What to set on the upstream request: `X-User-ID`, `X-Tenant-ID` (if a tenant),
    /// `X-Scopes` (if any scope), then the configured claim headers. Every value was checked.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Identity {
    /// Builds an identity and its headers; `Err(reason::BAD_CLAIM)` if a value cannot be a
    /// header value (control characters).
    pub(super) fn new(
        method: AuthMethod,
        subject: String,
        tenant: Option<String>,
        scopes: Vec<String>,
        limits: Option<KeyLimits>,
        extra: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Self, &'static str> {
        let bad = || super::failure::reason::BAD_CLAIM;
        let mut headers = Vec::with_capacity(3 + extra.len());
        headers.push((USER_ID, header_value(&subject).ok_or_else(bad)?));
        if let Some(t) = &tenant {
            headers.push((TENANT_ID, header_value(t).ok_or_else(bad)?));
        }
        if !scopes.is_empty() {
            headers.push((SCOPES, header_value(&scopes.join(" ")).ok_or_else(bad)?));
        }
        headers.extend(extra);
        Ok(Self {
            method,
            subject,
            tenant,
            scopes,
            limits,
            headers,
        })
    }

    /// `Ok` if the identity has every scope in `required` (all of them, not any);
    /// else 403 `insufficient_scope`.
    pub fn require_scopes(&self, required: &[String]) -> Result<(), AuthFailure> {
        if required.iter().all(|r| self.scopes.contains(r)) {
            return Ok(());
        }
        let scheme = match self.method {
            AuthMethod::Jwt => Scheme::Bearer,
            AuthMethod::ApiKey => Scheme::ApiKey,
        };
        Err(AuthFailure::insufficient_scope(scheme, required))
    }

    /// Sets [`Self::headers`] on an upstream request, replacing any value already there.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// `text` as a header value, or `None` if it holds a control character (CR, LF, NUL, tab,
/// DEL, C1 ...). Non-ASCII UTF-8 is kept as bytes (obs-text), which backends commonly read as
/// UTF-8.
pub(super) fn header_value(text: &str) -> Option<HeaderValue> {
    if text.chars().any(char::is_control) {
        return None;
    }
    HeaderValue::from_bytes(text.as_bytes()).ok()
}

/// Removes every header in `names` (client-sent copies of the identity headers). Call it on
/// every request of every route, authenticated or not, so a client cannot pose as a user.
pub fn strip_identity_headers(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}
