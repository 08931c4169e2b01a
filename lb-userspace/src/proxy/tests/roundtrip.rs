//! Round trips through the proxy: HTTP/1.1, h2c, gRPC trailers, WebSocket, headers, errors,
//! graceful stop.

use std::{sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, Version, header};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::super::headers::TraceParent;
use super::*;

#[tokio::test]
async fn h1_keep_alive_round_trip_with_forwarding_headers() {
    let backend = Backend::start().await;
    let decide = One::new(backend.addr, false);
    let last_conn = decide.last_conn.clone();
    let proxy = start_proxy(
        decide,
        None,
        ServerSettings::default(),
        UpstreamSettings::default(),
    )
    .await;
    let mut c = h1(proxy.addr).await;
    for _ in 0..2 {
        let r = c.send_request(get("/hello?x=1")).await.unwrap();
        let (parts, body, _) = body_of(r).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "ok");
        assert_eq!(parts.headers["x-ratelimit-remaining"], "9");
        assert!(
            parts.headers.get("keep-alive").is_none(),
            "hop-by-hop leaked"
        );
        assert_eq!(parts.headers[super::super::headers::X_REQUEST_ID].len(), 32);
    }
    let seen = backend.requests();
    assert_eq!(seen.len(), 2);
    // One client connection, one pooled upstream connection.
    assert_eq!(backend.conns.load(Ordering::SeqCst), 1);
    let s = &seen[0];
    assert_eq!(s.path_query, "/hello?x=1");
    assert_eq!(s.headers[header::HOST], "api.test");
    assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(s.headers["x-forwarded-proto"], "http");
    assert_eq!(s.headers["x-forwarded-host"], "api.test");
    assert_eq!(
        s.headers[header::FORWARDED],
        "for=127.0.0.1;proto=http;host=api.test"
    );
    let snap = proxy.metrics.snapshot();
    assert_eq!(snap["r"].by_class[1], 2);
    let conn = last_conn.lock().unwrap().clone().unwrap();
    assert_eq!(conn.local, proxy.addr);
    assert_eq!(conn.peer.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert!(!conn.tls && conn.sni.is_none() && !conn.alpn_h2);
}

#[tokio::test]
async fn client_forwarding_headers_are_appended() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let mut c = h1(proxy.addr).await;
    let mut req = get("/");
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    req.headers_mut()
        .insert(header::FORWARDED, "for=203.0.113.9".parse().unwrap());
    let r = c.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let s = &backend.requests()[0];
    assert_eq!(s.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        s.headers[header::FORWARDED],
        "for=203.0.113.9, for=127.0.0.1;proto=http;host=api.test"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_to_h1_backend() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let mut c = h2c(proxy.addr).await;
    let req = Request::builder()
        .uri("http://api.test/h2?y=2")
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send_request(req).await.unwrap();
    assert_eq!(r.version(), Version::HTTP_2);
    let (parts, body, _) = body_of(r).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "ok");
    let s = &backend.requests()[0];
    assert_eq!(s.version, Version::HTTP_11);
    assert_eq!(s.path_query, "/h2?y=2");
    // :authority became Host.
    assert_eq!(s.headers[header::HOST], "api.test");
    assert_eq!(s.headers["x-forwarded-host"], "api.test");
}

#[tokio::test]
async fn grpc_trailers_pass_through_h2_backend() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, true).await;
    let mut c = h2c(proxy.addr).await;
    let req = Request::builder()
        .method("POST")
        .uri("http://api.test/grpc")
        .version(Version::HTTP_2)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x01q")))
        .unwrap();
    let r = c.send_request(req).await.unwrap();
    let (parts, body, trailers) = body_of(r).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers[header::CONTENT_TYPE], "application/grpc");
    assert_eq!(&body[..], b"\0\0\0\0\x01a\0\0\0\0\x01b");
    let trailers = trailers.expect("trailers lost");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    let s = &backend.requests()[0];
    assert_eq!(s.version, Version::HTTP_2);
    assert_eq!(s.headers[header::TE], "trailers");
    assert_eq!(&s.body[..], b"\0\0\0\0\x01q");
}

/// Open a WebSocket through the proxy (raw handshake); returns the stream after the 101.
async fn ws_open(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(LIMIT, async {
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed before 101");
            head.push(b[0]);
        }
    })
    .await
    .unwrap();
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s
}

async fn ws_echo(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(LIMIT, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
}

#[tokio::test]
async fn websocket_echo_through_proxy() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let mut s = ws_open(proxy.addr).await;
    ws_echo(&mut s, b"hello").await;
    ws_echo(&mut s, b"second frame").await;
    let seen = &backend.requests()[0];
    assert_eq!(seen.headers[header::UPGRADE], "websocket");
    assert_eq!(
        seen.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );
}

#[tokio::test]
async fn websocket_lives_through_drain_then_closes() {
    let backend = Backend::start().await;
    let mut proxy = start_proxy(
        One::new(backend.addr, false),
        None,
        ServerSettings {
            drain_timeout: Duration::from_millis(400),
            ..ServerSettings::default()
        },
        UpstreamSettings::default(),
    )
    .await;
    let mut s = ws_open(proxy.addr).await;
    proxy.stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    ws_echo(&mut s, b"still here").await;
    tokio::time::timeout(LIMIT, proxy.task.take().unwrap())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(LIMIT, s.read(&mut b)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "tunnel not closed: {n:?}");
}

#[tokio::test]
async fn h2c_upgrade_is_not_passed_through() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let (text, _) = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    let seen = &backend.requests()[0];
    assert!(seen.headers.get(header::UPGRADE).is_none());
    assert!(seen.headers.get("http2-settings").is_none());
}

#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let (text, _) = raw(
        proxy.addr,
        b"GET http://real.test/abs?q=1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    let seen = &backend.requests()[0];
    assert_eq!(seen.path_query, "/abs?q=1");
    assert_eq!(seen.headers[header::HOST], "real.test");
    assert_eq!(seen.headers["x-forwarded-host"], "real.test");
}

#[tokio::test]
async fn request_id_kept_or_generated_and_echoed() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let mut c = h1(proxy.addr).await;
    let mut req = get("/");
    req.headers_mut()
        .insert("x-request-id", "client-id-1".parse().unwrap());
    let r = c.send_request(req).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    let _ = body_of(r).await;
    let mut req = get("/");
    req.headers_mut()
        .insert("x-request-id", "bad id with spaces".parse().unwrap());
    let r = c.send_request(req).await.unwrap();
    let generated = r.headers()["x-request-id"].clone();
    assert_eq!(generated.len(), 32);
    let _ = body_of(r).await;
    let seen = backend.requests();
    assert_eq!(seen[0].headers["x-request-id"], "client-id-1");
    assert_eq!(seen[1].headers["x-request-id"], generated);
}

#[tokio::test]
async fn traceparent_propagated_or_started() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let mut c = h1(proxy.addr).await;
    let mut req = get("/");
    req.headers_mut().insert("traceparent", TP.parse().unwrap());
    req.headers_mut()
        .insert("tracestate", "v=1".parse().unwrap());
    let _ = body_of(c.send_request(req).await.unwrap()).await;
    let _ = body_of(c.send_request(get("/")).await.unwrap()).await;
    let seen = backend.requests();
    let parse =
        |i: usize| TraceParent::parse(seen[i].headers["traceparent"].to_str().unwrap()).unwrap();
    let incoming = TraceParent::parse(TP).unwrap();
    let (a, b) = (parse(0), parse(1));
    assert_eq!(a.trace_id, incoming.trace_id);
    assert_ne!(a.parent_id, incoming.parent_id);
    assert_eq!(a.flags, 0, "sampled flag kept");
    assert_eq!(seen[0].headers["tracestate"], "v=1");
    assert_ne!(b.trace_id, incoming.trace_id);
    assert_eq!(b.flags, 1, "new traces are sampled by default");
}

#[tokio::test]
async fn decide_can_answer_or_rewrite() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let mut c = h1(proxy.addr).await;
    let r = c.send_request(get("/deny")).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["x-request-id"].len(), 32);
    let _ = body_of(r).await;
    assert_eq!(backend.conns.load(Ordering::SeqCst), 0);
    let r = c.send_request(get("/rewrite")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(backend.requests()[0].path_query, "/rewritten?by=decide");
    assert_eq!(proxy.metrics.snapshot()["r"].by_class[3], 1);
}

#[tokio::test]
async fn backend_down_is_502() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = start_proxy(
        One::new(dead, false),
        None,
        ServerSettings::default(),
        UpstreamSettings::default(),
    )
    .await;
    let mut c = h1(proxy.addr).await;
    let r = c.send_request(get("/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let mut reg = prometheus_client::registry::Registry::default();
    proxy.metrics.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains(r#"lb_gateway_upstream_errors_total{service="svc",kind="connect"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let backend = Backend::start().await;
    let proxy = start_proxy(
        One::new(backend.addr, false),
        None,
        ServerSettings::default(),
        UpstreamSettings {
            response_timeout: Duration::from_millis(150),
            ..UpstreamSettings::default()
        },
    )
    .await;
    let mut c = h1(proxy.addr).await;
    let r = c.send_request(get("/slow")).await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn slowloris_header_timeout_closes() {
    let backend = Backend::start().await;
    let proxy = start_proxy(
        One::new(backend.addr, false),
        None,
        ServerSettings {
            header_read_timeout: Duration::from_millis(300),
            ..ServerSettings::default()
        },
        UpstreamSettings::default(),
    )
    .await;
    let started = std::time::Instant::now();
    let (text, closed) = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Slow: ").await;
    assert!(closed, "connection left open");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(text.is_empty() || status_of(&text) == 408, "{text}");
    assert_eq!(backend.conns.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn graceful_stop_lets_in_flight_request_finish() {
    let backend = Backend::start().await;
    let mut proxy = plain_proxy(&backend, false).await;
    let mut c = h1(proxy.addr).await;
    let in_flight = tokio::spawn(async move {
        let r = c.send_request(get("/slow")).await.unwrap();
        body_of(r).await
    });
    // Let the request reach the backend, then stop.
    tokio::time::timeout(LIMIT, async {
        while backend.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    proxy.stop.cancel();
    let (parts, body, _) = tokio::time::timeout(LIMIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "slow done");
    tokio::time::timeout(LIMIT, proxy.task.take().unwrap())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Not accepting any more.
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
}

#[tokio::test]
async fn drain_timeout_closes_what_remains() {
    let backend = Backend::start().await;
    let mut proxy = start_proxy(
        One::new(backend.addr, false),
        None,
        ServerSettings {
            drain_timeout: Duration::from_millis(100),
            ..ServerSettings::default()
        },
        UpstreamSettings::default(),
    )
    .await;
    let mut c = h1(proxy.addr).await;
    let in_flight = tokio::spawn(async move { c.send_request(get("/slow")).await });
    tokio::time::timeout(LIMIT, async {
        while backend.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    proxy.stop.cancel();
    let t = std::time::Instant::now();
    tokio::time::timeout(LIMIT, proxy.task.take().unwrap())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let r = tokio::time::timeout(LIMIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_err(), "the cut request cannot have completed");
}

#[tokio::test]
async fn access_log_line_per_request() {
    use super::super::access_log::{AccessLogSettings, LogFormat, LogTarget};
    let dir = std::env::temp_dir().join(format!("lb-gw-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let (log, writer) = AccessLog::start(AccessLogSettings {
        format: LogFormat::Json,
        target: LogTarget::File(path.clone()),
        capacity: 64,
    })
    .await
    .unwrap();
    let backend = Backend::start().await;
    let mut proxy = start_proxy_logging(
        One::new(backend.addr, false),
        None,
        ServerSettings::default(),
        UpstreamSettings::default(),
        log,
    )
    .await;
    let mut c = h1(proxy.addr).await;
    let mut req = get("/logged?secret=1");
    req.headers_mut()
        .insert("x-request-id", "rid-42".parse().unwrap());
    let _ = body_of(c.send_request(req).await.unwrap()).await;
    let _ = body_of(c.send_request(get("/deny")).await.unwrap()).await;
    drop(c);
    proxy.stop.cancel();
    tokio::time::timeout(LIMIT, proxy.task.take().unwrap())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The server dropped its handle: the writer drains and ends.
    tokio::time::timeout(LIMIT, writer).await.unwrap().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["route"], "r");
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["path"], "/logged");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["bytes"], 2);
    assert_eq!(lines[0]["request_id"], "rid-42");
    assert_eq!(lines[0]["backend"], backend.addr.to_string());
    assert!(lines[0]["upstream_ms"].as_f64().is_some());
    assert_eq!(lines[1]["status"], 403);
    assert!(lines[1]["backend"].is_null());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn request_bodies_arrive_whole() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    // Chunked: the first chunk is read before the backend is contacted, the rest streamed.
    let (text, _) = raw(
        proxy.addr,
        b"POST /chunked HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    // Content-Length, 1 MiB, over HTTP/1.1 and h2c.
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let mut c = h1(proxy.addr).await;
    let req = Request::post("/cl")
        .header(header::HOST, "api.test")
        .body(Full::new(big.clone()))
        .unwrap();
    assert_eq!(c.send_request(req).await.unwrap().status(), StatusCode::OK);
    let mut c = h2c(proxy.addr).await;
    let req = Request::post("http://api.test/h2-body")
        .version(Version::HTTP_2)
        .body(Full::new(big.clone()))
        .unwrap();
    assert_eq!(c.send_request(req).await.unwrap().status(), StatusCode::OK);
    let seen = backend.requests();
    assert_eq!(seen[0].body, "hello world");
    assert!(!seen[0].headers.contains_key(header::CONTENT_LENGTH));
    assert_eq!(seen[1].body, big);
    assert_eq!(seen[1].headers[header::CONTENT_LENGTH], "1048576");
    assert_eq!(seen[2].body, big);
}

#[tokio::test]
async fn stalled_upstream_body_is_cut() {
    let backend = Backend::start().await;
    let proxy = start_proxy(
        One::new(backend.addr, false),
        None,
        ServerSettings::default(),
        UpstreamSettings {
            body_idle_timeout: Some(Duration::from_millis(200)),
            ..UpstreamSettings::default()
        },
    )
    .await;
    let mut c = h1(proxy.addr).await;
    let r = c.send_request(get("/stall")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body();
    let first = tokio::time::timeout(LIMIT, http_body_util::BodyExt::frame(&mut body))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    let next = tokio::time::timeout(LIMIT, http_body_util::BodyExt::frame(&mut body))
        .await
        .expect("stalled body not cut");
    assert!(!matches!(next, Some(Ok(_))), "{next:?}");
    let mut reg = prometheus_client::registry::Registry::default();
    proxy.metrics.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains(r#"lb_gateway_upstream_errors_total{service="svc",kind="timeout"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn http10_without_host_gets_the_vip() {
    let backend = Backend::start().await;
    let proxy = plain_proxy(&backend, false).await;
    let (text, closed) = raw(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(closed);
    let seen = &backend.requests()[0];
    assert_eq!(seen.headers[header::HOST], proxy.addr.to_string().as_str());
    assert!(seen.headers.get("x-forwarded-host").is_none());
}
