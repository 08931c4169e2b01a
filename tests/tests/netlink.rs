//! The agent's rtnetlink layer against a real kernel, in namespaces this test makes: managed
//! neighbour entries resolve, routes are looked up, `local` routes come and go, and the
//! subscription reports neighbour and route changes. `ip` only checks what the agent did.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::Netns;
use lb_userspace::{
    neighbour::{Neighbours, route_to},
    netlink::{self, Event, Events},
    proxy::vip_routes::VipRoutes,
};

/// Two namespaces joined by a veth: `a` (10.77.0.1, fd00:77::1 on `va`) and `b`
/// (10.77.0.2, fd00:77::2 on `vb`, MAC 02:00:00:77:00:02).
struct Pair {
    a: Netns,
    /// Kept alive (and removed on drop) with `a`.
    _b: Netns,
}

const B_MAC: &str = "02:00:00:77:00:02";

fn pair() -> Pair {
    let a = Netns::new("nla").unwrap();
    let b = Netns::new("nlb").unwrap();
    for ns in [&a, &b] {
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0").unwrap();
    }
    a.ip([
        "link",
        "add",
        "va",
        "type",
        "veth",
        "peer",
        "name",
        "vb",
        "netns",
        b.name(),
    ])
    .unwrap();
    b.ip(["link", "set", "dev", "vb", "address", B_MAC])
        .unwrap();
    for (ns, dev, host) in [(&a, "va", 1), (&b, "vb", 2)] {
        ns.ip(["addr", "add", &format!("10.77.0.{host}/24"), "dev", dev])
            .unwrap();
        ns.ip([
            "addr",
            "add",
            &format!("fd00:77::{host}/64"),
            "dev",
            dev,
            "nodad",
        ])
        .unwrap();
        ns.ip(["link", "set", dev, "up"]).unwrap();
    }
    Pair { a, _b: b }
}

fn neigh_show(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.ip(["neigh", "show", "dev", "va"]).unwrap().stdout).into_owned()
        + &String::from_utf8_lossy(&ns.ip(["-6", "neigh", "show", "dev", "va"]).unwrap().stdout)
}

/// Routes are looked up (on-link and via a gateway), managed entries are added and resolve
/// to the peer's MAC, and `clear` removes exactly them.
#[test]
fn managed_neighbours_resolve_through_netlink() {
    let p = pair();
    p.a.ip(["route", "add", "10.99.0.0/24", "via", "10.77.0.2"])
        .unwrap();
    let b4: IpAddr = "10.77.0.2".parse().unwrap();
    let b6: IpAddr = "fd00:77::2".parse().unwrap();
    let behind: IpAddr = "10.99.0.7".parse().unwrap();
    let unroutable: IpAddr = "192.0.2.1".parse().unwrap();

    let (added, errors, unresolved, gw_route) = p.a.enter(|| {
        let gw_route = route_to(behind).unwrap();
        let mut n = Neighbours::default();
        let (added, errors) = n.ensure([b4, b6, behind, unroutable]);
        let unresolved = n.wait_resolved(&added, Duration::from_secs(3));
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        // Leaks nothing into the next test: the namespace goes anyway, but check `clear`.
        let before_clear = neigh_show(&p.a);
        n.clear();
        (added, errors, unresolved, (gw_route, before_clear))
    });
    let (gw_route, before_clear) = gw_route;
    assert_eq!(gw_route.hop.addr, b4, "via the gateway");
    assert_eq!(gw_route.hop.dev, "va");
    assert_eq!(gw_route.src, Some("10.77.0.1".parse().unwrap()));
    // 10.77.0.2 twice (directly and as the gateway of 10.99.0.7): one entry; and the IPv6 one.
    let hops: BTreeSet<IpAddr> = added.iter().map(|h| h.addr).collect();
    assert_eq!(hops, BTreeSet::from([b4, b6]), "{added:?}");
    assert!(unresolved.is_empty(), "not resolved: {unresolved:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("route get 192.0.2.1") && errors[0].contains("unreachable"),
        "the unroutable backend's error names the lookup: {}",
        errors[0]
    );
    for ip in ["10.77.0.2", "fd00:77::2"] {
        let line = before_clear
            .lines()
            .find(|l| l.starts_with(&format!("{ip} ")))
            .unwrap_or_else(|| panic!("no entry for {ip}:\n{before_clear}"));
        assert!(
            line.contains("managed") && line.contains("extern_learn") && line.contains(B_MAC),
            "{line}"
        );
    }
    let after = neigh_show(&p.a);
    assert!(
        !after.contains("managed"),
        "managed entries left after clear:\n{after}"
    );
}

fn local_routes(ns: &Netns) -> String {
    let v4 = ns.ip(["route", "show", "table", "local"]).unwrap().stdout;
    let v6 = ns
        .ip(["-6", "route", "show", "table", "local"])
        .unwrap()
        .stdout;
    String::from_utf8_lossy(&v4).into_owned() + &String::from_utf8_lossy(&v6)
}

/// `local` routes for VIPs appear in the local table on `lo`, go when no longer wanted, and
/// a route the agent did not add is left alone.
#[test]
fn local_routes_are_added_and_removed() {
    let ns = Netns::new("nlr").unwrap();
    ns.ip([
        "route",
        "add",
        "local",
        "10.88.0.9/32",
        "dev",
        "lo",
        "table",
        "local",
    ])
    .unwrap();
    let v4: IpAddr = "10.88.0.1".parse().unwrap();
    let v6: IpAddr = "fd00:88::1".parse().unwrap();
    let (with_both, with_v6) = ns.enter(|| {
        let mut routes = VipRoutes::default();
        routes.sync(&BTreeSet::from([v4, v6])).unwrap();
        let with_both = local_routes(&ns);
        routes.sync(&BTreeSet::from([v6])).unwrap();
        let with_v6 = local_routes(&ns);
        routes.clear();
        (with_both, with_v6)
    });
    assert!(with_both.contains("local 10.88.0.1 dev lo"), "{with_both}");
    assert!(with_both.contains("local fd00:88::1 dev lo"), "{with_both}");
    assert!(!with_v6.contains("10.88.0.1 "), "{with_v6}");
    assert!(with_v6.contains("local fd00:88::1 dev lo"), "{with_v6}");
    let after = local_routes(&ns);
    assert!(!after.contains("fd00:88::1"), "{after}");
    assert!(
        after.contains("local 10.88.0.9 dev lo"),
        "not ours, kept: {after}"
    );
}

/// The subscription reports a neighbour's new MAC and a route change, within a second.
#[test]
fn events_report_neighbour_and_route_changes() {
    let p = pair();
    let got = p.a.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut events = Events::subscribe().unwrap();
            let va = netlink::ifindex("va").unwrap();
            p.a.ip([
                "neigh",
                "replace",
                "10.77.0.5",
                "lladdr",
                "02:00:00:77:00:05",
                "dev",
                "va",
            ])
            .unwrap();
            p.a.ip(["route", "add", "10.98.0.0/24", "via", "10.77.0.2"])
                .unwrap();
            let (mut neighbour, mut route) = (None, false);
            let deadline = Instant::now() + Duration::from_secs(2);
            while (neighbour.is_none() || !route) && Instant::now() < deadline {
                let batch = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
                for e in batch.into_iter().flatten().flatten() {
                    match e {
                        Event::Neighbour(n) if n.ifindex == va => neighbour = Some(n),
                        Event::Route(r) if r.covers("10.98.0.1".parse().unwrap()) => route = true,
                        _ => {}
                    }
                }
            }
            (neighbour, route)
        })
    });
    let (neighbour, route) = got;
    let n = neighbour.expect("no neighbour event");
    assert_eq!(n.addr, "10.77.0.5".parse::<IpAddr>().unwrap());
    assert_eq!(n.lladdr, Some([2, 0, 0, 0x77, 0, 5]));
    assert!(route, "no route event");
}
