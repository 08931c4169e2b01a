//! A verified token's claims: time, issuer and audience checks, then the [`Identity`].
//!
//! Done here rather than by jsonwebtoken's `Validation` because its checks pass a token that
//! lacks `iss`/`aud` when one is expected (unless listed as required), ignore a non-numeric
//! `exp`, and we need `exp` anyway for the cache.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::failure::reason;
use super::identity::{AuthMethod, Identity, header_value};

/// What a token's claims must satisfy, and how they map to headers.
pub(super) struct ClaimRules {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
    pub require_exp: bool,
    pub tenant_claim: String,
    pub claim_headers: Vec<(String, HeaderName)>,
}

/// A token that passed: who it is and when it expires (unix seconds).
pub(super) struct Checked {
    pub identity: Identity,
    pub exp: Option<u64>,
}

impl ClaimRules {
    /// Checks `claims` at unix time `now`; the error is a [`reason`] label.
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<Checked, &'static str> {
        let exp = time_claim(claims, "exp")?;
        let nbf = time_claim(claims, "nbf")?;
        match exp {
            None if self.require_exp => return Err(reason::MISSING_CLAIM),
            // RFC 7519 4.1.4: valid only *before* exp.
            Some(exp) if now >= exp.saturating_add(self.leeway_secs) => {
                return Err(reason::EXPIRED);
            }
            _ => {}
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway_secs)) {
            return Err(reason::NOT_YET_VALID);
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer)
        {
            return Err(reason::WRONG_ISSUER);
        }
        if !self.audiences.is_empty() && !self.audience_ok(claims.get("aud")) {
            return Err(reason::WRONG_AUDIENCE);
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(reason::MISSING_CLAIM),
        };
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(v) => Some(scalar_text(v).ok_or(reason::BAD_CLAIM)?),
        };
        let scopes = scopes(claims)?;
        let mut extra = Vec::with_capacity(self.claim_headers.len());
        for (claim, header) in &self.claim_headers {
            if let Some(v) = claims.get(claim).filter(|v| !v.is_null()) {
                extra.push((header.clone(), claim_header_value(v)?));
            }
        }
        let identity = Identity::new(AuthMethod::Jwt, subject, tenant, scopes, None, extra)?;
        Ok(Checked { identity, exp })
    }

    /// `aud` (a string or an array of strings) holds one of the accepted audiences.
    fn audience_ok(&self, aud: Option<&Value>) -> bool {
        let accepted = |s: &str| self.audiences.iter().any(|a| a == s);
        match aud {
            Some(Value::String(s)) => accepted(s),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        }
    }
}

/// A NumericDate claim: absent, or a non-negative number (fractions dropped).
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, &'static str> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(reason::MALFORMED),
        Some(_) => Err(reason::MALFORMED),
    }
}

/// `scope` (space-separated string) or, failing that, `scp` (array, or string as some IdPs
/// send it).
fn scopes(claims: &Map<String, Value>) -> Result<Vec<String>, &'static str> {
    let split = |s: &str| s.split_whitespace().map(str::to_owned).collect();
    match claims.get("scope").or_else(|| claims.get("scp")) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(split(s)),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(reason::BAD_CLAIM))
            .collect(),
        Some(_) => Err(reason::BAD_CLAIM),
    }
}

/// A string, number or boolean as text.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A scalar, or an array of scalars joined with `,`; objects are refused.
fn claim_header_value(v: &Value) -> Result<HeaderValue, &'static str> {
    let text = match v {
        Value::Array(items) => items
            .iter()
            .map(scalar_text)
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(",")),
        v => scalar_text(v),
    };
    text.as_deref()
        .and_then(header_value)
        .ok_or(reason::BAD_CLAIM)
}
