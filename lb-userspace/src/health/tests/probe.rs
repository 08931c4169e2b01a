//! One probe against each kind of server.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    bounded,
    servers::{HttpServer, Reply, TcpServer, closed_port},
};
use crate::{
    config::HealthKind,
    health::{ProbeError, probe},
};

const LIMIT: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_millis(500);

fn http(path: &str, host: Option<&str>, expect_status: u16) -> HealthKind {
    HealthKind::Http {
        path: path.to_owned(),
        host: host.map(str::to_owned),
        expect_status,
        tls: None,
    }
}

#[tokio::test]
async fn tcp_connect_to_a_listener_passes() {
    bounded(LIMIT, async {
        let server = TcpServer::start(0);
        probe(server.addr, &HealthKind::Tcp, TIMEOUT, None)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn tcp_connect_to_a_closed_port_is_refused() {
    bounded(LIMIT, async {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, closed_port()));
        let err = probe(addr, &HealthKind::Tcp, TIMEOUT, None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Refused), "{err:?}");
        assert_eq!(err.to_string(), "connection refused");
        // The HTTP check fails the same way before sending anything.
        let err = probe(addr, &http("/", None, 200), TIMEOUT, None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Refused), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn http_200_passes_and_sends_path_host_and_agent() {
    bounded(LIMIT, async {
        let server = HttpServer::start(Reply::Status(200));
        let kind = http("/healthz?deep=1", Some("example.test"), 200);
        probe(server.addr, &kind, TIMEOUT, None).await.unwrap();
        let requests = server.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let head = &requests[0];
        assert!(
            head.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"),
            "{head:?}"
        );
        assert!(head.contains("\r\nHost: example.test\r\n"), "{head:?}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head:?}");
        assert!(head.contains("\r\nUser-Agent: lb-health/1\r\n"), "{head:?}");
    })
    .await;
}

#[tokio::test]
async fn http_host_defaults_to_the_checked_address() {
    bounded(LIMIT, async {
        let server = HttpServer::start(Reply::Status(200));
        probe(server.addr, &http("/", None, 200), TIMEOUT, None)
            .await
            .unwrap();
        let head = &server.requests()[0];
        let expected = format!("\r\nHost: 127.0.0.1:{}\r\n", server.addr.port());
        assert!(head.contains(&expected), "{head:?}");
    })
    .await;
}

#[tokio::test]
async fn http_other_status_fails_unless_expected() {
    bounded(LIMIT, async {
        let server = HttpServer::start(Reply::Status(503));
        let err = probe(server.addr, &http("/", None, 200), TIMEOUT, None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProbeError::BadStatus {
                    got: 503,
                    expected: 200
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "status 503, expected 200");
        probe(server.addr, &http("/", None, 503), TIMEOUT, None)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn http_malformed_answers_fail() {
    bounded(LIMIT, async {
        for (reply, says) in [
            (Reply::Garbage, "status line \"SSH-2.0-OpenSSH_9.2\""),
            (Reply::Endless, "no status line in the first 1024 bytes"),
            (Reply::Close, "connection closed before any response"),
        ] {
            let server = HttpServer::start(reply);
            let err = probe(server.addr, &http("/", None, 200), TIMEOUT, None)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ProbeError::Malformed(_)),
                "{reply:?}: {err:?}"
            );
            assert!(err.to_string().contains(says), "{reply:?}: {err}");
        }
    })
    .await;
}

#[tokio::test]
async fn http_server_that_never_answers_times_out() {
    bounded(LIMIT, async {
        let server = HttpServer::start(Reply::Silent);
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = probe(server.addr, &http("/", None, 200), timeout, None)
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, ProbeError::Timeout(t) if t == timeout),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "no answer within 200 ms");
        assert!(took >= timeout, "gave up early: {took:?}");
        assert!(
            took < timeout + Duration::from_millis(500),
            "gave up late: {took:?}"
        );
        // It did connect and send: the time went waiting for the answer.
        assert_eq!(server.requests().len(), 1);
    })
    .await;
}
