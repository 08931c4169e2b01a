//! L4 authorization at the receiving node, with Istio's AuthorizationPolicy semantics: a
//! matching deny policy refuses; else a service with allow policies needs one to match; a
//! service without allow policies accepts every authenticated peer. Decisions are counted per
//! policy and reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::config::{Policy, PolicyAction, PolicySource};

use super::SpiffeId;

/// Reasons of [`Decision`]s (counter labels).
pub const DENIED_BY_POLICY: &str = "deny_policy";
pub const ALLOWED_BY_POLICY: &str = "allow_policy";
pub const NO_ALLOW_MATCHED: &str = "no_allow_match";
pub const NO_ALLOW_POLICY: &str = "no_allow_policy";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policy that decided, if one did.
    pub policy: Option<String>,
    pub reason: &'static str,
}

pub struct Authorizer {
    /// Policies per service, in file order.
    by_service: HashMap<String, Vec<Policy>>,
    /// (policy name, "" when none decided; reason) -> decisions.
    counts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Authorizer {
    pub fn new(policies: &[Policy]) -> Self {
        let mut by_service: HashMap<String, Vec<Policy>> = HashMap::new();
        for p in policies {
            by_service
                .entry(p.service.clone())
                .or_default()
                .push(p.clone());
        }
        Self {
            by_service,
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// May `peer` connect to `service` on destination `port`? Counted.
    pub fn decide(&self, service: &str, port: u16, peer: &SpiffeId) -> Decision {
        let d = self.judge(service, port, peer);
        let key = (d.policy.clone().unwrap_or_default(), d.reason);
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
        d
    }

    fn judge(&self, service: &str, port: u16, peer: &SpiffeId) -> Decision {
        let policies = self.by_service.get(service).map_or(&[][..], Vec::as_slice);
        let of = |action| policies.iter().filter(move |p| p.action == action);
        let decided = |allowed, p: &Policy, reason| Decision {
            allowed,
            policy: Some(p.name.clone()),
            reason,
        };
        if let Some(p) = of(PolicyAction::Deny).find(|p| matches(p, port, peer)) {
            return decided(false, p, DENIED_BY_POLICY);
        }
        if of(PolicyAction::Allow).next().is_none() {
            return Decision {
                allowed: true,
                policy: None,
                reason: NO_ALLOW_POLICY,
            };
        }
        match of(PolicyAction::Allow).find(|p| matches(p, port, peer)) {
            Some(p) => decided(true, p, ALLOWED_BY_POLICY),
            None => Decision {
                allowed: false,
                policy: None,
                reason: NO_ALLOW_MATCHED,
            },
        }
    }

    /// Decisions so far: (policy name or "", reason, count), sorted.
    pub fn counts(&self) -> Vec<(String, &'static str, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((p, r), n)| (p.clone(), *r, *n))
            .collect()
    }
}

fn matches(p: &Policy, port: u16, peer: &SpiffeId) -> bool {
    (p.ports.is_empty() || p.ports.contains(&port))
        && (p.from.is_empty() || p.from.iter().any(|s| source_matches(s, peer)))
}

/// Every list given must match; a list matches when one of its values does.
fn source_matches(s: &PolicySource, peer: &SpiffeId) -> bool {
    let any = |list: &[String], value: &str| {
        list.is_empty() || list.iter().any(|pat| wildcard(pat, value))
    };
    any(&s.principals, &peer.principal())
        && any(&s.namespaces, &peer.namespace)
        && any(&s.trust_domains, &peer.trust_domain)
}

/// Istio's string match: exact, `*` (anything), `prefix*` or `*suffix`.
pub(super) fn wildcard(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}
