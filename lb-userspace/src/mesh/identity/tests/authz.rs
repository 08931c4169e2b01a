//! Authorization tables: deny wins, allow lists, no allow policy -> allow, namespaces, trust
//! domains, ports, wildcards; counts per policy and reason.

use super::super::authz::wildcard;
use super::super::{Authorizer, SpiffeId};
use crate::config::{Policy, PolicyAction, PolicySource};

fn policy(name: &str, action: PolicyAction, from: Vec<PolicySource>, ports: &[u16]) -> Policy {
    Policy {
        name: name.into(),
        service: "db".into(),
        action,
        from,
        ports: ports.to_vec(),
    }
}

fn principals(p: &[&str]) -> PolicySource {
    PolicySource {
        principals: p.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn namespaces(p: &[&str]) -> PolicySource {
    PolicySource {
        namespaces: p.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn id(s: &str) -> SpiffeId {
    format!("spiffe://{s}").parse().unwrap()
}

#[test]
fn wildcards_match_like_istio() {
    for (pat, value, want) in [
        ("*", "anything", true),
        ("cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/b", true),
        ("cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/bb", false),
        (
            "cluster.local/ns/legacy/*",
            "cluster.local/ns/legacy/sa/x",
            true,
        ),
        (
            "cluster.local/ns/legacy/*",
            "cluster.local/ns/legacy2/sa/x",
            false,
        ),
        ("*/sa/admin", "other.org/ns/x/sa/admin", true),
        ("*/sa/admin", "other.org/ns/x/sa/admins", false),
    ] {
        assert_eq!(wildcard(pat, value), want, "{pat} vs {value}");
    }
}

#[test]
fn no_policy_allows_every_authenticated_peer() {
    let a = Authorizer::new(&[]);
    let d = a.decide("db", 5432, &id("cluster.local/ns/a/sa/b"));
    assert!(d.allowed);
    assert_eq!((d.policy, d.reason), (None, "no_allow_policy"));
    // A deny policy alone does not turn the service into allow-listed.
    let a = Authorizer::new(&[policy(
        "deny-legacy",
        PolicyAction::Deny,
        vec![namespaces(&["legacy"])],
        &[],
    )]);
    assert!(
        a.decide("db", 5432, &id("cluster.local/ns/prod/sa/b"))
            .allowed
    );
    assert!(
        !a.decide("db", 5432, &id("cluster.local/ns/legacy/sa/b"))
            .allowed
    );
    // Another service is not concerned.
    assert!(
        a.decide("web", 80, &id("cluster.local/ns/legacy/sa/b"))
            .allowed
    );
}

#[test]
fn deny_wins_over_allow_and_allow_lists_are_exclusive() {
    let a = Authorizer::new(&[
        policy(
            "allow-prod",
            PolicyAction::Allow,
            vec![namespaces(&["prod", "staging-*"])],
            &[],
        ),
        policy(
            "deny-batch",
            PolicyAction::Deny,
            vec![principals(&["cluster.local/ns/prod/sa/batch"])],
            &[],
        ),
    ]);
    let d = a.decide("db", 5432, &id("cluster.local/ns/prod/sa/web"));
    assert!(d.allowed);
    assert_eq!(
        (d.policy.as_deref(), d.reason),
        (Some("allow-prod"), "allow_policy")
    );
    assert!(
        a.decide("db", 1, &id("cluster.local/ns/staging-eu/sa/web"))
            .allowed
    );
    let d = a.decide("db", 5432, &id("cluster.local/ns/prod/sa/batch"));
    assert!(!d.allowed, "deny wins though allow-prod matches too");
    assert_eq!(
        (d.policy.as_deref(), d.reason),
        (Some("deny-batch"), "deny_policy")
    );
    let d = a.decide("db", 5432, &id("cluster.local/ns/test/sa/web"));
    assert!(!d.allowed);
    assert_eq!((d.policy, d.reason), (None, "no_allow_match"));
    assert_eq!(
        a.counts(),
        [
            ("".to_owned(), "no_allow_match", 1),
            ("allow-prod".to_owned(), "allow_policy", 2),
            ("deny-batch".to_owned(), "deny_policy", 1),
        ]
    );
}

#[test]
fn trust_domains_ports_and_anded_fields() {
    let a = Authorizer::new(&[
        policy(
            "deny-other-org",
            PolicyAction::Deny,
            vec![PolicySource {
                trust_domains: vec!["other.org".into()],
                ..Default::default()
            }],
            &[5432],
        ),
        policy(
            "allow-admin",
            PolicyAction::Allow,
            // Both fields must match: namespace ops AND a principal ending in /sa/admin.
            vec![PolicySource {
                namespaces: vec!["ops".into()],
                principals: vec!["*/sa/admin".into()],
                ..Default::default()
            }],
            &[],
        ),
        policy("allow-all-on-9000", PolicyAction::Allow, vec![], &[9000]),
    ]);
    // Denied on 5432, but the deny policy does not cover port 9000.
    assert!(
        !a.decide("db", 5432, &id("other.org/ns/ops/sa/admin"))
            .allowed
    );
    assert!(a.decide("db", 9000, &id("other.org/ns/x/sa/y")).allowed);
    assert!(
        a.decide("db", 5432, &id("cluster.local/ns/ops/sa/admin"))
            .allowed
    );
    assert!(
        !a.decide("db", 5432, &id("cluster.local/ns/ops/sa/user"))
            .allowed
    );
    assert!(
        !a.decide("db", 5432, &id("cluster.local/ns/dev/sa/admin"))
            .allowed
    );
}
