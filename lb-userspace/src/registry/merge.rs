//! Merges the config's services, their static backends and every source's endpoints into
//! one model [`Snapshot`], applying health (down backends take no new flows, unless all are
//! down: then fail open).
//!
//! Deterministic: the result depends only on the inputs, not on the order sources published
//! in. When two origins list the same address and port for a service, the first in this
//! order wins (its weight is used): the config file, then sources by name.
//!
//! Services that sources supply ([`with_source_services`]) join the config's before the
//! merge, by the same order: a name or frontend the config (or a source earlier by name)
//! already has is not added, and is reported. A service a source stops listing is gone
//! from the next snapshot, so from every data plane.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    config::{Config, Service},
    model::{Backend, BackendKey, Ignored, Snapshot},
};

/// A service a source supplied that was not added, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredService {
    pub source: String,
    pub service: String,
    pub why: String,
}

/// `config` with the services each source supplied (`services`: by source name) added after
/// its own. An added service takes the config's global Maglev table size and rate limit, no
/// health check (the source's readiness says which backends serve) and no static backends
/// (its backends are the source's endpoints). Not added: a name or a frontend (VIP, port,
/// protocol) already taken, or one past the data plane's service capacity. Returns `config`
/// itself when no source supplies a service.
pub fn with_source_services(
    config: &Arc<Config>,
    services: &BTreeMap<String, Vec<Service>>,
) -> (Arc<Config>, Vec<IgnoredService>) {
    if services.values().all(Vec::is_empty) {
        return (config.clone(), Vec::new());
    }
    let mut out = Config::clone(config);
    let mut ignored = Vec::new();
    let mut names: BTreeMap<String, String> = config
        .services
        .iter()
        .map(|s| (s.name.clone(), format!("the config's `{}`", s.name)))
        .collect();
    let key = |s: &Service| s.frontend.map(|f| (f, s.protocol.number()));
    let mut frontends: BTreeMap<_, String> = config
        .services
        .iter()
        .filter_map(|s| Some((key(s)?, format!("the config's `{}`", s.name))))
        .collect();
    // Service id 0 means "none": at most MAX_SERVICES - 1 services reach the kernel.
    let capacity = lb_common::MAX_SERVICES as usize - 1;
    for (source, list) in services {
        for s in list {
            let taken = names
                .get(&s.name)
                .map(|by| format!("name taken by {by}"))
                .or_else(|| {
                    let f = key(s)?;
                    frontends
                        .get(&f)
                        .map(|by| format!("frontend {} taken by {by}", f.0))
                })
                .or_else(|| {
                    (s.frontend.is_some() && frontends.len() >= capacity)
                        .then(|| format!("more than {capacity} services"))
                });
            if let Some(why) = taken {
                ignored.push(IgnoredService {
                    source: source.clone(),
                    service: s.name.clone(),
                    why,
                });
                continue;
            }
            let by = format!("source {source}'s `{}`", s.name);
            names.insert(s.name.clone(), by.clone());
            if let Some(f) = key(s) {
                frontends.insert(f, by);
            }
            out.services.push(Service {
                maglev_table_size: config.global.maglev_table_size,
                rate_limit: config.global.rate_limit,
                health: None,
                backends: Vec::new(),
                ..s.clone()
            });
        }
    }
    (Arc::new(out), ignored)
}

use super::Endpoint;

/// Name under which the config file's static backends appear as an origin.
pub const CONFIG_ORIGIN: &str = "config";

/// `sources` maps a source name to its last published endpoints; `is_up(service, backend)`
/// is the health checker's view. The snapshot is of config generation `generation`.
pub fn merge(
    config: &Arc<Config>,
    generation: u64,
    sources: &BTreeMap<String, Vec<Endpoint>>,
    is_up: impl Fn(&str, &BackendKey) -> bool,
) -> Snapshot {
    let mut snapshot = Snapshot::empty(config.clone());
    snapshot.generation = generation;
    let by_name: BTreeMap<&str, &Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut found: BTreeMap<&str, BTreeMap<BackendKey, Backend>> = BTreeMap::new();
    let backend = |key, weight, origin: &str| Backend {
        key,
        weight,
        effective_weight: weight,
        origin: origin.to_owned(),
        up: true,
    };

    for s in &config.services {
        let entry = found.entry(&s.name).or_default();
        for b in &s.backends {
            let key = BackendKey {
                addr: b.address,
                port: b.port,
            };
            entry
                .entry(key)
                .or_insert_with(|| backend(key, b.weight, CONFIG_ORIGIN));
        }
    }
    for (source, endpoints) in sources {
        for e in endpoints {
            let ignored = |why| Ignored {
                source: source.clone(),
                endpoint: e.clone(),
                why,
            };
            let Some(service) = by_name.get(e.service.as_str()) else {
                snapshot
                    .ignored
                    .push(ignored("no such service in the config"));
                continue;
            };
            if service
                .frontend
                .is_some_and(|f| f.is_ipv4() != e.addr.is_ipv4())
            {
                snapshot
                    .ignored
                    .push(ignored("address family differs from the service's VIP"));
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
                .or_insert_with(|| backend(key, e.weight.min(crate::config::MAX_WEIGHT), source));
        }
    }

    for s in &config.services {
        let mut backends: Vec<Backend> = found
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
        let serving = |b: &&Backend| b.weight > 0;
        let fail_open = backends.iter().filter(serving).count() > 0
            && !backends.iter().filter(serving).any(|b| b.up);
        for b in &mut backends {
            b.effective_weight = if b.up || fail_open { b.weight } else { 0 };
        }
        snapshot.services.push(crate::model::Service {
            name: s.name.clone(),
            frontend: s.frontend,
            protocol: s.protocol,
            mode: s.mode,
            scope: s.scope,
            health_checked: s.health.is_some(),
            fail_open,
            backends,
        });
    }
    snapshot
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

    fn config(health: bool) -> Arc<Config> {
        let mut c = config::parse(CONFIG, "test.toml").expect("valid config");
        if health {
            for s in &mut c.services {
                s.health = Some(HealthCheck::default());
            }
        }
        Arc::new(c)
    }

    use crate::registry::ep;

    fn key(addr: &str, port: u16) -> BackendKey {
        BackendKey {
            addr: addr.parse().unwrap(),
            port,
        }
    }

    fn weights(m: &Snapshot, service: &str) -> Vec<(BackendKey, u32)> {
        let s = m.service(service).unwrap();
        s.backends
            .iter()
            .map(|b| (b.key, b.effective_weight))
            .collect()
    }

    fn fail_open(m: &Snapshot) -> Vec<&str> {
        m.fail_open().collect()
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
        let m = merge(&config(false), 1, &sources, |_, _| true);
        assert_eq!(
            weights(&m, "web"),
            vec![(key("10.0.0.1", 80), 2), (key("10.0.0.2", 80), 1)]
        );
        assert_eq!(weights(&m, "empty"), vec![(key("10.0.0.4", 81), 3)]);
        let reasons: Vec<_> = m
            .ignored
            .iter()
            .map(|i| {
                (
                    i.source.as_str(),
                    i.endpoint.port,
                    i.endpoint.addr.is_ipv4(),
                )
            })
            .collect();
        assert_eq!(reasons, vec![("a", 80, true), ("a", 80, false)]);
        assert_eq!(m.service("web").unwrap().backends[1].origin, "a");
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
        assert_eq!(
            merge(&c, 1, &one, |_, _| true),
            merge(&c, 1, &two, |_, _| true)
        );
    }

    /// A service as a source supplies it.
    fn supplied(name: &str, vip: &str, port: u16) -> Service {
        let mut s = config(false).services[0].clone();
        s.name = name.into();
        s.frontend = Some(std::net::SocketAddr::new(vip.parse().unwrap(), port));
        s.maglev_table_size = 7;
        s.backends.clear();
        s.client_affinity = true;
        s.scope = crate::config::Scope::Cluster;
        s
    }

    #[test]
    fn source_services_join_the_config_unless_their_name_or_frontend_is_taken() {
        let c = config(false);
        let (same, none) = with_source_services(&c, &BTreeMap::from([("k".into(), vec![])]));
        assert!(Arc::ptr_eq(&same, &c) && none.is_empty());

        let services = BTreeMap::from([
            (
                "a".to_string(),
                vec![
                    supplied("ns/api:80@10.96.0.1", "10.96.0.1", 80),
                    // The config's name, the config's frontend.
                    supplied("web", "10.96.0.2", 80),
                    supplied("ns/x:80@192.0.2.1", "192.0.2.1", 80),
                ],
            ),
            // A name source `a` took first.
            (
                "b".to_string(),
                vec![supplied("ns/api:80@10.96.0.1", "10.96.0.9", 80)],
            ),
        ]);
        let (merged, ignored) = with_source_services(&c, &services);
        let names: Vec<&str> = merged.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "empty", "ns/api:80@10.96.0.1"]);
        let added = &merged.services[2];
        assert_eq!(added.maglev_table_size, 251, "the global table size");
        assert!(added.client_affinity && added.health.is_none());
        let why: Vec<(&str, &str)> = ignored
            .iter()
            .map(|i| (i.source.as_str(), i.why.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                ("a", "name taken by the config's `web`"),
                ("a", "frontend 192.0.2.1:80 taken by the config's `web`"),
                ("b", "name taken by source a's `ns/api:80@10.96.0.1`"),
            ]
        );

        // Its endpoints merge like any other, and its scope reaches the model.
        let endpoints = BTreeMap::from([(
            "a".to_string(),
            vec![ep("ns/api:80@10.96.0.1", "10.1.0.5", 8080, 1)],
        )]);
        let m = merge(&merged, 1, &endpoints, |_, _| true);
        let api = m.service("ns/api:80@10.96.0.1").unwrap();
        assert_eq!(api.scope, crate::config::Scope::Cluster);
        assert_eq!(
            weights(&m, "ns/api:80@10.96.0.1"),
            [(key("10.1.0.5", 8080), 1)]
        );
        assert!(m.ignored.is_empty());
    }

    #[test]
    fn down_backends_leave_unless_all_are_down() {
        let sources = BTreeMap::from([("a".to_string(), vec![ep("web", "10.0.0.2", 80, 1)])]);
        let c = config(true);
        let down_one = merge(&c, 1, &sources, |_, b| b.addr.to_string() != "10.0.0.2");
        assert_eq!(
            weights(&down_one, "web"),
            vec![(key("10.0.0.1", 80), 2), (key("10.0.0.2", 80), 0)]
        );
        assert!(fail_open(&down_one).is_empty());
        let all_down = merge(&c, 1, &sources, |_, _| false);
        assert_eq!(
            weights(&all_down, "web"),
            vec![(key("10.0.0.1", 80), 2), (key("10.0.0.2", 80), 1)]
        );
        assert_eq!(fail_open(&all_down), vec!["web"]);
        // Without a health check, the checker's view is not asked.
        let unchecked = merge(&config(false), 1, &sources, |_, _| false);
        assert!(fail_open(&unchecked).is_empty());
        assert_eq!(weights(&unchecked, "web")[1].1, 1);
    }
}
