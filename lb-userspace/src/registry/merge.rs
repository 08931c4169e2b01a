//! Merges the config's services, their static backends and every source's endpoints into
//! one [`DesiredState`], applying health (down backends leave the table, unless all are
//! down: then fail open).
//!
//! Deterministic: the result depends only on the inputs, not on the order sources published
//! in. When two origins list the same address and port for a service, the first in this
//! order wins (its weight is used): the config file, then sources by name.

use std::collections::BTreeMap;

use crate::{
    config::{Config, Service},
    reconcile::{BackendKey, DesiredBackend, DesiredService, DesiredState},
};

use super::Endpoint;

/// Name under which the config file's static backends appear as an origin.
pub const CONFIG_ORIGIN: &str = "config";

/// One backend of a merged service, with what the status page needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedBackend {
    pub key: BackendKey,
    /// Weight as configured or registered.
    pub weight: u32,
    /// `config` or the source's name.
    pub origin: String,
    /// Health as the checker last saw it (true when the service has no health check).
    pub up: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    pub desired: DesiredState,
    /// Service name -> its backends, sorted by key.
    pub backends: BTreeMap<String, Vec<MergedBackend>>,
    /// Services whose every backend is down: all are kept (fail open).
    pub fail_open: Vec<String>,
    /// Endpoints not used, with why (unknown service, wrong address family).
    pub ignored: Vec<(String, Endpoint, &'static str)>,
}

/// `sources` maps a source name to its last published endpoints; `is_up(service, backend)`
/// is the health checker's view.
pub fn merge(
    config: &Config,
    sources: &BTreeMap<String, Vec<Endpoint>>,
    is_up: impl Fn(&str, &BackendKey) -> bool,
) -> Merged {
    let mut merged = Merged::default();
    let by_name: BTreeMap<&str, &Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut found: BTreeMap<&str, BTreeMap<BackendKey, MergedBackend>> = BTreeMap::new();

    for s in &config.services {
        let entry = found.entry(&s.name).or_default();
        for b in &s.backends {
            let key = BackendKey {
                addr: b.address,
                port: b.port,
            };
            entry.entry(key).or_insert(MergedBackend {
                key,
                weight: b.weight,
                origin: CONFIG_ORIGIN.to_owned(),
                up: true,
            });
        }
    }
    for (source, endpoints) in sources {
        for e in endpoints {
            let Some(service) = by_name.get(e.service.as_str()) else {
                merged
                    .ignored
                    .push((source.clone(), e.clone(), "no such service in the config"));
                continue;
            };
            if service.vip.is_ipv4() != e.addr.is_ipv4() {
                merged.ignored.push((
                    source.clone(),
                    e.clone(),
                    "address family differs from the service's VIP",
                ));
                continue;
            }
            let key = BackendKey {
                addr: e.addr,
                port: e.port,
            };
            found
                .entry(&service.name)
                .or_default()
                .entry(key)
                .or_insert(MergedBackend {
                    key,
                    weight: e.weight.min(crate::config::MAX_WEIGHT),
                    origin: source.clone(),
                    up: true,
                });
        }
    }

    let mut services = Vec::new();
    for s in &config.services {
        let mut backends: Vec<MergedBackend> = found
            .remove(s.name.as_str())
            .unwrap_or_default()
            .into_values()
            .collect();
        if s.health.is_some() {
            for b in &mut backends {
                b.up = is_up(&s.name, &b.key);
            }
        }
        // Fail open: if no backend that would take flows is up, ignore health.
        let serving = |b: &&MergedBackend| b.weight > 0;
        let fail_open = backends.iter().filter(serving).count() > 0
            && !backends.iter().filter(serving).any(|b| b.up);
        if fail_open {
            merged.fail_open.push(s.name.clone());
        }
        let desired_backends = backends
            .iter()
            .map(|b| DesiredBackend {
                key: b.key,
                weight: if b.up || fail_open { b.weight } else { 0 },
            })
            .collect();
        services.push(DesiredService::with_backends(s, desired_backends));
        merged.backends.insert(s.name.clone(), backends);
    }
    merged.desired = DesiredState::from_services(services);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, HealthCheck};

    const CONFIG: &str = r#"
[global]
interfaces = ["eth0"]
maglev_table_size = 251

[[service]]
name = "web"
vip = "192.0.2.1"
port = 80
protocol = "tcp"
backend = [{ address = "10.0.0.1", port = 80, weight = 2 }]

[[service]]
name = "empty"
vip = "192.0.2.1"
port = 81
protocol = "tcp"
"#;

    fn config(health: bool) -> Config {
        let mut c = config::parse(CONFIG, "test.toml").expect("valid config");
        if health {
            for s in &mut c.services {
                s.health = Some(HealthCheck::default());
            }
        }
        c
    }

    use crate::registry::ep;

    fn key(addr: &str, port: u16) -> BackendKey {
        BackendKey {
            addr: addr.parse().unwrap(),
            port,
        }
    }

    fn weights(m: &Merged, service: &str) -> Vec<(BackendKey, u32)> {
        let s = m
            .desired
            .services
            .iter()
            .find(|s| s.name == service)
            .unwrap();
        s.backends.iter().map(|b| (b.key, b.weight)).collect()
    }

    #[test]
    fn sources_add_backends_config_wins_duplicates_unknown_ignored() {
        let sources = BTreeMap::from([
            (
                "a".to_string(),
                vec![
                    ep("web", "10.0.0.1", 80, 9),
                    ep("web", "10.0.0.2", 80, 1),
                    ep("nope", "10.0.0.3", 80, 1),
                    ep("web", "2001:db8::1", 80, 1),
                ],
            ),
            ("b".to_string(), vec![ep("empty", "10.0.0.4", 81, 3)]),
        ]);
        let m = merge(&config(false), &sources, |_, _| true);
        assert_eq!(
            weights(&m, "web"),
            vec![(key("10.0.0.1", 80), 2), (key("10.0.0.2", 80), 1)]
        );
        assert_eq!(weights(&m, "empty"), vec![(key("10.0.0.4", 81), 3)]);
        let reasons: Vec<_> = m
            .ignored
            .iter()
            .map(|(s, e, _)| (s.as_str(), e.port, e.addr.is_ipv4()))
            .collect();
        assert_eq!(reasons, vec![("a", 80, true), ("a", 80, false)]);
        assert_eq!(m.backends["web"][1].origin, "a");
    }

    #[test]
    fn same_inputs_in_any_order_give_the_same_state() {
        let one = BTreeMap::from([(
            "a".to_string(),
            vec![ep("web", "10.0.0.3", 80, 1), ep("web", "10.0.0.2", 80, 1)],
        )]);
        let two = BTreeMap::from([(
            "a".to_string(),
            vec![ep("web", "10.0.0.2", 80, 1), ep("web", "10.0.0.3", 80, 1)],
        )]);
        let c = config(false);
        assert_eq!(merge(&c, &one, |_, _| true), merge(&c, &two, |_, _| true));
    }

    #[test]
    fn down_backends_leave_unless_all_are_down() {
        let sources = BTreeMap::from([("a".to_string(), vec![ep("web", "10.0.0.2", 80, 1)])]);
        let c = config(true);
        let down_one = merge(&c, &sources, |_, b| b.addr.to_string() != "10.0.0.2");
        assert_eq!(
            weights(&down_one, "web"),
            vec![(key("10.0.0.1", 80), 2), (key("10.0.0.2", 80), 0)]
        );
        assert!(down_one.fail_open.is_empty());
        let all_down = merge(&c, &sources, |_, _| false);
        assert_eq!(
            weights(&all_down, "web"),
            vec![(key("10.0.0.1", 80), 2), (key("10.0.0.2", 80), 1)]
        );
        assert_eq!(all_down.fail_open, vec!["web".to_string()]);
        // Without a health check, the checker's view is not asked.
        let unchecked = merge(&config(false), &sources, |_, _| false);
        assert!(unchecked.fail_open.is_empty());
        assert_eq!(weights(&unchecked, "web")[1].1, 1);
    }
}
