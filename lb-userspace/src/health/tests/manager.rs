//! The manager against servers that stop, come back, or change answer.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::{self, UnboundedReceiver, error::TryRecvError};

use super::{
    bounded,
    servers::{HttpServer, Reply, TcpServer, closed_port},
};
use crate::{
    config::{HealthCheck, HealthKind},
    health::{HealthEvent, HealthManager, Target, TargetHealth},
    model::BackendKey,
};

const LIMIT: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_millis(50);
/// Room for a loaded 2-core machine on top of the times the checks need.
const SLACK: Duration = Duration::from_millis(400);

fn local(port: u16) -> BackendKey {
    BackendKey {
        addr: Ipv4Addr::LOCALHOST.into(),
        port,
    }
}

fn tcp_check(rise: u32, fall: u32) -> HealthCheck {
    HealthCheck {
        kind: HealthKind::Tcp,
        interval: INTERVAL,
        timeout: INTERVAL,
        rise,
        fall,
        port: None,
    }
}

fn target(service: &str, backend: BackendKey, check: &HealthCheck) -> Target {
    Target {
        service: service.to_owned(),
        backend,
        check: check.clone(),
    }
}

fn manager() -> (HealthManager, UnboundedReceiver<HealthEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (HealthManager::new(tx), rx)
}

fn health_of(manager: &HealthManager, service: &str, backend: BackendKey) -> Option<TargetHealth> {
    manager
        .snapshot()
        .into_iter()
        .find(|t| t.service == service && t.backend == backend)
}

/// Waits (polling every few ms) until `service`/`backend` has had at least `checks` checks.
async fn wait_for_checks(manager: &HealthManager, service: &str, backend: BackendKey, checks: u64) {
    loop {
        if health_of(manager, service, backend).is_some_and(|h| h.checks >= checks) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_event(events: &mut UnboundedReceiver<HealthEvent>, within: Duration) -> HealthEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no health event within {within:?}"))
        .expect("event channel closed")
}

/// Every event that arrives within `period`.
async fn events_during(
    events: &mut UnboundedReceiver<HealthEvent>,
    period: Duration,
) -> Vec<HealthEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + period;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        seen.push(event);
    }
    seen
}

#[tokio::test]
async fn detects_a_tcp_server_that_stops_and_comes_back() {
    bounded(LIMIT, async {
        let (rise, fall) = (2, 3);
        let server = TcpServer::start(0);
        let backend = local(server.addr.port());
        let (mut manager, mut events) = manager();
        manager.set_targets(vec![target("web", backend, &tcp_check(rise, fall))]);
        assert!(manager.is_up("web", &backend), "targets start up");
        wait_for_checks(&manager, "web", backend, 3).await;
        assert!(
            matches!(events.try_recv(), Err(TryRecvError::Empty)),
            "no event while up"
        );
        assert!(
            health_of(&manager, "web", backend)
                .unwrap()
                .last_error
                .is_none()
        );

        drop(server);
        let stopped = Instant::now();
        let down = next_event(&mut events, INTERVAL * (fall + 1) + SLACK).await;
        let took = stopped.elapsed();
        assert_eq!(
            (down.service.as_str(), down.backend, down.up),
            ("web", backend, false)
        );
        assert!(
            down.reason.contains("3 checks in a row failed"),
            "{}",
            down.reason
        );
        assert!(
            down.reason.contains("connection refused"),
            "{}",
            down.reason
        );
        // `fall` failures are one interval apart: the first cannot already take it down.
        assert!(
            took >= INTERVAL * (fall - 1) / 2,
            "down after only {took:?}"
        );
        assert!(!manager.is_up("web", &backend));

        let server = TcpServer::start(backend.port);
        let restarted = Instant::now();
        let up = next_event(&mut events, INTERVAL * (rise + 1) + SLACK).await;
        let took = restarted.elapsed();
        assert_eq!(
            (up.service.as_str(), up.backend, up.up),
            ("web", backend, true)
        );
        assert!(
            up.reason.contains("2 checks in a row passed"),
            "{}",
            up.reason
        );
        assert!(took >= INTERVAL * (rise - 1) / 2, "up after only {took:?}");
        assert!(manager.is_up("web", &backend));

        let health = health_of(&manager, "web", backend).unwrap();
        assert_eq!(health.transitions, 2);
        assert_eq!(health.last_error.as_deref(), Some("connection refused"));
        // Steady again: no more events.
        assert_eq!(events_during(&mut events, INTERVAL * 4).await, vec![]);
        drop(server);
    })
    .await;
}

#[tokio::test]
async fn https_check_goes_up_then_down_when_the_server_stops() {
    bounded(LIMIT, async {
        let cert = super::tls::Cert::new("web.internal", "manager");
        let server = super::tls::TlsServer::start(&cert).await;
        let backend = local(server.addr.port());
        let check = HealthCheck {
            kind: HealthKind::Http {
                path: "/".to_owned(),
                host: None,
                expect_status: 200,
                tls: Some(crate::config::HealthTls {
                    ca_file: Some(cert.pem_file.clone()),
                    server_name: Some("web.internal".to_owned()),
                }),
            },
            ..tcp_check(1, 2)
        };
        let (mut manager, mut events) = manager();
        manager.set_targets(vec![target("web", backend, &check)]);
        wait_for_checks(&manager, "web", backend, 2).await;
        let h = health_of(&manager, "web", backend).unwrap();
        // Backends start up: what shows the TLS checks pass is that none failed.
        assert!(manager.is_up("web", &backend), "{h:?}");
        assert_eq!(h.last_error, None, "{h:?}");
        assert!(h.consecutive_successes >= 2, "{h:?}");

        drop(server);
        let down = next_event(&mut events, INTERVAL * 3 + SLACK).await;
        assert!(!down.up);
    })
    .await;
}

#[tokio::test]
async fn http_check_follows_the_status_the_server_answers() {
    bounded(LIMIT, async {
        let server = HttpServer::start(Reply::Status(200));
        let backend = local(server.addr.port());
        let check = HealthCheck {
            kind: HealthKind::Http {
                path: "/ready".to_owned(),
                host: Some("web.internal".to_owned()),
                expect_status: 200,
                tls: None,
            },
            ..tcp_check(1, 2)
        };
        let (mut manager, mut events) = manager();
        manager.set_targets(vec![target("web", backend, &check)]);
        wait_for_checks(&manager, "web", backend, 2).await;
        assert!(manager.is_up("web", &backend));

        server.set_reply(Reply::Status(503));
        let down = next_event(&mut events, INTERVAL * 3 + SLACK).await;
        assert!(!down.up);
        assert!(
            down.reason.contains("status 503, expected 200"),
            "{}",
            down.reason
        );

        server.set_reply(Reply::Status(200));
        let up = next_event(&mut events, INTERVAL * 2 + SLACK).await;
        assert!(up.up);
        let heads = server.requests();
        assert!(heads.len() >= 4, "{heads:?}");
        assert!(
            heads
                .iter()
                .all(|h| h.starts_with("GET /ready HTTP/1.1\r\n")
                    && h.contains("\r\nHost: web.internal\r\n"))
        );
    })
    .await;
}

#[tokio::test]
async fn check_port_overrides_the_backend_port() {
    bounded(LIMIT, async {
        let server = TcpServer::start(0);
        // Nothing listens on the backend's own port; the check goes to `port`.
        let backend = local(closed_port());
        let check = HealthCheck {
            port: Some(server.addr.port()),
            ..tcp_check(1, 1)
        };
        let (mut manager, mut events) = manager();
        manager.set_targets(vec![target("web", backend, &check)]);
        wait_for_checks(&manager, "web", backend, 3).await;
        let health = health_of(&manager, "web", backend).unwrap();
        assert!(health.up && health.last_error.is_none(), "{health:?}");
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
    })
    .await;
}

#[tokio::test]
async fn set_targets_keeps_unchanged_restarts_changed_and_stops_removed() {
    bounded(LIMIT, async {
        let (a, b, c) = (
            TcpServer::start(0),
            TcpServer::start(0),
            TcpServer::start(0),
        );
        let (ka, kb, kc) = (
            local(a.addr.port()),
            local(b.addr.port()),
            local(c.addr.port()),
        );
        let dead = local(closed_port());
        let check = tcp_check(1, 1);
        let changed = tcp_check(3, 1);
        let (mut manager, mut events) = manager();
        manager.set_targets(vec![
            target("web", ka, &check),
            target("web", kb, &check),
            target("api", kc, &check),
            target("api", dead, &check),
        ]);
        let first = next_event(&mut events, INTERVAL * 2 + SLACK).await;
        assert_eq!(
            (first.service.as_str(), first.backend, first.up),
            ("api", dead, false)
        );
        for k in [ka, kb] {
            wait_for_checks(&manager, "web", k, 3).await;
        }
        wait_for_checks(&manager, "api", kc, 3).await;
        let before_a = health_of(&manager, "web", ka).unwrap();
        let before_b = health_of(&manager, "web", kb).unwrap();

        // a: same check; b and dead: changed check; c: gone; d: new (and dead).
        let kd = local(closed_port());
        manager.set_targets(vec![
            target("web", ka, &check),
            target("web", kb, &changed),
            target("api", dead, &changed),
            target("db", kd, &check),
        ]);
        let after_a = health_of(&manager, "web", ka).unwrap();
        assert!(
            after_a.checks >= before_a.checks,
            "{before_a:?} -> {after_a:?}"
        );
        let after_b = health_of(&manager, "web", kb).unwrap();
        assert!(
            after_b.checks < before_b.checks,
            "b restarts: {before_b:?} -> {after_b:?}"
        );
        assert!(after_b.up);
        // A restarted target keeps its view: dead stays down, without an event.
        assert!(!manager.is_up("api", &dead));
        assert!(health_of(&manager, "api", kc).is_none());
        assert!(manager.is_up("api", &kc), "unknown targets are up");
        let names: Vec<(String, BackendKey)> = manager
            .snapshot()
            .into_iter()
            .map(|t| (t.service, t.backend))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "snapshot is sorted");
        assert_eq!(names.len(), 4);

        // c's check would take it down now (fall 1) if its task still ran.
        drop(c);
        let seen = events_during(&mut events, INTERVAL * 6 + SLACK).await;
        assert_eq!(seen.len(), 1, "only d's down, nothing from c: {seen:?}");
        assert_eq!(
            (seen[0].service.as_str(), seen[0].backend, seen[0].up),
            ("db", kd, false)
        );
        // a's task kept going.
        assert!(health_of(&manager, "web", ka).unwrap().checks > after_a.checks + 2);
        assert_eq!(health_of(&manager, "web", ka).unwrap().transitions, 0);
        drop((a, b));
    })
    .await;
}

#[tokio::test]
async fn a_target_listed_twice_is_checked_once_and_keeps_its_state() {
    bounded(LIMIT, async {
        let server = TcpServer::start(0);
        let backend = local(server.addr.port());
        let check = tcp_check(1, 1);
        let (mut manager, _events) = manager();
        manager.set_targets(vec![target("web", backend, &check)]);
        wait_for_checks(&manager, "web", backend, 3).await;
        let twice = vec![
            target("web", backend, &check),
            target("web", backend, &check),
        ];
        manager.set_targets(twice);
        let snapshot = manager.snapshot();
        assert_eq!(snapshot.len(), 1, "{snapshot:?}");
        assert!(snapshot[0].checks >= 3, "state was reset: {snapshot:?}");
    })
    .await;
}

#[tokio::test]
async fn dropping_the_manager_stops_every_task() {
    bounded(LIMIT, async {
        let server = TcpServer::start(0);
        let (mut manager, mut events) = manager();
        let targets = (0..3)
            .map(|i| {
                target(
                    &format!("s{i}"),
                    local(server.addr.port()),
                    &tcp_check(1, 1),
                )
            })
            .collect();
        manager.set_targets(targets);
        wait_for_checks(&manager, "s0", local(server.addr.port()), 2).await;
        drop(manager);
        // Each task holds a sender: the channel closes only once every task is gone.
        let closed = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
        assert_eq!(
            closed,
            Ok(None),
            "tasks still running after the manager was dropped"
        );
    })
    .await;
}
