//! Unit tests of the etcd source: key schema, wire decoding, and the session against a
//! fake gateway.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};

use super::*;
use super::{keys::*, wire::*};

use crate::registry::ep;

#[test]
fn entries_follow_the_key_schema() {
    assert_eq!(
        parse_entry(b"web/10.0.2.2:8080", b""),
        Ok(ep("web", "10.0.2.2", 8080, 1))
    );
    assert_eq!(
        parse_entry(b"web/[fd00::2]:80", b"  "),
        Ok(ep("web", "fd00::2", 80, 1))
    );
    let with_meta = parse_entry(
        b"api/10.0.0.1:9",
        br#"{"weight": 7, "metadata": {"zone": "a"}, "extra": true}"#,
    )
    .unwrap();
    assert_eq!(with_meta.weight, 7);
    assert_eq!(
        with_meta.metadata.get("zone").map(String::as_str),
        Some("a")
    );
    assert_eq!(parse_entry(b"api/10.0.0.1:9", b"{}").unwrap().weight, 1);
    assert_eq!(
        parse_entry(b"api/10.0.0.1:9", br#"{"weight":0}"#)
            .unwrap()
            .weight,
        0
    );
}

#[test]
fn malformed_entries_are_rejected() {
    type Case = (&'static [u8], &'static [u8], fn(&EntryError) -> bool);
    let bad: &[Case] = &[
        (b"web", b"", |e| *e == EntryError::KeyShape),
        (b"web/a/10.0.0.1:80", b"", |e| *e == EntryError::KeyShape),
        (b"/10.0.0.1:80", b"", |e| {
            matches!(e, EntryError::Service(_))
        }),
        (b"w b/10.0.0.1:80", b"", |e| {
            matches!(e, EntryError::Service(_))
        }),
        (b"web/10.0.0.1", b"", |e| {
            matches!(e, EntryError::Address(_))
        }),
        (b"web/fd00::1:80", b"", |e| {
            matches!(e, EntryError::Address(_))
        }),
        (b"web/10.0.0.1:0", b"", |e| {
            matches!(e, EntryError::Address(_))
        }),
        (b"web/0.0.0.0:80", b"", |e| {
            matches!(e, EntryError::Address(_))
        }),
        (b"web/10.0.0.1:80", b"{", |e| {
            matches!(e, EntryError::Value(_))
        }),
        (b"web/10.0.0.1:80", b"3", |e| {
            matches!(e, EntryError::Value(_))
        }),
        (b"web/10.0.0.1:80", br#"{"weight":-1}"#, |e| {
            matches!(e, EntryError::Value(_))
        }),
        (b"web/10.0.0.1:80", br#"{"metadata":{"k":1}}"#, |e| {
            matches!(e, EntryError::Value(_))
        }),
        (b"web/10.0.0.1:80", br#"{"weight":70000}"#, |e| {
            *e == EntryError::Weight(70000)
        }),
        (b"web/\xff:80", b"", |e| *e == EntryError::KeyShape),
    ];
    for (key, value, want) in bad {
        let got = parse_entry(key, value);
        assert!(
            matches!(&got, Err(e) if want(e)),
            "{:?} {:?} -> {got:?}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value)
        );
    }
}

#[test]
fn prefix_range_end_follows_etcd() {
    assert_eq!(prefix_range_end(b"/lb/"), b"/lb0");
    assert_eq!(prefix_range_end(b"a\xff"), b"b");
    assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
    assert_eq!(prefix_range_end(b""), b"\0");
    assert_eq!(range_key(b""), b"\0");
}

// Lines as etcd 3.4.23's gateway writes them.
#[test]
fn watch_lines_decode() {
    let created = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"2","raft_term":"2"},"created":true}}"#;
    let WatchMessage::Result(r) = parse_watch_line(created).unwrap() else {
        panic!()
    };
    assert!(r.created && !r.canceled && r.events.is_empty());

    let events = br#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2xiL3dlYi8xMC4wLjAuMjo4MA==","create_revision":"3","mod_revision":"3","version":"1","value":"eyJ3ZWlnaHQiOjN9"}},{"type":"DELETE","kv":{"key":"L2xiL3dlYi8xMC4wLjAuMTo4MA==","mod_revision":"4"}}]}}"#;
    let WatchMessage::Result(r) = parse_watch_line(events).unwrap() else {
        panic!()
    };
    assert_eq!(r.events.len(), 2);
    assert_eq!(r.events[0].kind, EventKind::Put);
    assert_eq!(
        r.events[0].kv.decode().unwrap(),
        (b"/lb/web/10.0.0.2:80".to_vec(), br#"{"weight":3}"#.to_vec())
    );
    assert_eq!(r.events[1].kind, EventKind::Delete);
    assert_eq!(r.events[1].kv.decode().unwrap().1, b"");

    let compacted = br#"{"result":{"header":{"cluster_id":"3","raft_term":"2"},"canceled":true,"compact_revision":"5"}}"#;
    let WatchMessage::Result(r) = parse_watch_line(compacted).unwrap() else {
        panic!()
    };
    assert!(r.canceled);
    assert_eq!(r.compact_revision, 5);

    let error = br#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#;
    assert!(matches!(
        parse_watch_line(error).unwrap(),
        WatchMessage::Error { code: 14, ref message } if message == "transport is closing"
    ));
    assert!(parse_watch_line(b"{}").is_err());
    assert!(parse_watch_line(b"not json").is_err());
}

#[test]
fn snapshot_skips_malformed_and_replaces_on_put() {
    let mut s = Snapshot::default();
    s.put("t", b"/lb/", b"/lb/web/10.0.0.1:80".to_vec(), b"");
    s.put("t", b"/lb/", b"/lb/web/bad".to_vec(), b"");
    assert_eq!(s.endpoints(), vec![ep("web", "10.0.0.1", 80, 1)]);
    assert_eq!((s.valid(), s.skipped(), s.take_new_skips()), (1, 1, 1));
    // A valid key overwritten with a bad value leaves the set; deleting the bad key
    // clears the skip.
    s.put("t", b"/lb/", b"/lb/web/10.0.0.1:80".to_vec(), b"{");
    assert!(s.endpoints().is_empty());
    s.delete(b"/lb/web/bad");
    s.delete(b"/lb/web/10.0.0.1:80");
    assert_eq!((s.valid(), s.skipped()), (0, 0));
}

/// A stand-in for the gateway that cancels the first watch as compacted, the one case a
/// real etcd cannot be made to produce on demand (a caught-up watch is never cancelled by
/// compaction; only one created below the compacted revision is). The JSON is etcd 3.4's.
mod compacted_watch {
    use super::*;
    use std::sync::Mutex;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    fn kv(key: &str) -> String {
        format!(
            r#"{{"key":"{}","mod_revision":"3","version":"1"}}"#,
            BASE64.encode(key)
        )
    }

    /// Reads one request; returns its path and body.
    async fn read_request(conn: &mut TcpStream) -> Option<(String, serde_json::Value)> {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let path = head.split_whitespace().nth(1)?.to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + length]).ok()?;
        Some((path, body))
    }

    async fn serve(conn: TcpStream, starts: Arc<Mutex<Vec<String>>>, ranges: Arc<AtomicU64>) {
        let mut conn = conn;
        while let Some((path, body)) = read_request(&mut conn).await {
            let header = |rev: u32| {
                format!(
                    r#"{{"cluster_id":"1","member_id":"2","revision":"{rev}","raft_term":"2"}}"#
                )
            };
            if path == "/v3/kv/range" {
                let body = if ranges.fetch_add(1, Ordering::SeqCst) == 0 {
                    format!(
                        r#"{{"header":{},"kvs":[{}],"count":"1"}}"#,
                        header(5),
                        kv("/lb/web/10.0.0.1:80")
                    )
                } else {
                    format!(
                        r#"{{"header":{},"kvs":[{}],"count":"1"}}"#,
                        header(9),
                        kv("/lb/web/10.0.0.2:80")
                    )
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(resp.as_bytes()).await.unwrap();
                continue;
            }
            assert_eq!(path, "/v3/watch");
            let start = body["create_request"]["start_revision"]
                .as_str()
                .unwrap()
                .to_owned();
            let first = {
                let mut s = starts.lock().unwrap();
                s.push(start);
                s.len() == 1
            };
            let mut lines =
                format!(r#"{{"result":{{"header":{},"created":true}}}}"#, header(9)) + "\n";
            if first {
                // etcd keeps the stream open after cancelling; the source must not wait on it.
                lines += r#"{"result":{"header":{"cluster_id":"1","member_id":"2","raft_term":"2"},"canceled":true,"compact_revision":"8"}}"#;
            } else {
                lines += &format!(
                    r#"{{"result":{{"header":{},"events":[{{"kv":{}}}]}}}}"#,
                    header(10),
                    kv("/lb/web/10.0.0.3:80")
                );
            }
            lines += "\n";
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{lines}"
            );
            conn.write_all(resp.as_bytes()).await.unwrap();
            // Hold the stream open until the client goes away.
            let mut sink = [0u8; 64];
            while conn.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            return;
        }
    }

    #[tokio::test]
    async fn compacted_watch_reads_again_and_watches_from_the_new_revision() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let starts = Arc::new(Mutex::new(Vec::new()));
        let ranges = Arc::new(AtomicU64::new(0));
        let server = {
            let (starts, ranges) = (Arc::clone(&starts), Arc::clone(&ranges));
            tokio::spawn(async move {
                loop {
                    let (conn, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(conn, Arc::clone(&starts), Arc::clone(&ranges)));
                }
            })
        };
        let watcher = EtcdWatcher::new(&EtcdSource {
            name: "etcd".into(),
            endpoints: vec![url],
            prefix: "/lb/".into(),
        })
        .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(watcher.run(SourceHandle::new("etcd", tx)));
        let mut sets = Vec::new();
        while sets.len() < 3 {
            let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a message within 10 s")
                .unwrap();
            match msg.update {
                crate::registry::SourceUpdate::Endpoints(set) => sets.push(set),
                crate::registry::SourceUpdate::Error(e) => panic!("unexpected error: {e}"),
                crate::registry::SourceUpdate::Catalog { .. } => panic!("unexpected catalog"),
            }
        }
        assert_eq!(
            sets,
            vec![
                vec![ep("web", "10.0.0.1", 80, 1)],
                vec![ep("web", "10.0.0.2", 80, 1)],
                vec![ep("web", "10.0.0.2", 80, 1), ep("web", "10.0.0.3", 80, 1)],
            ]
        );
        assert_eq!(*starts.lock().unwrap(), vec!["6", "10"]);
        assert_eq!(ranges.load(Ordering::SeqCst), 2);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("returns once the agent stops listening")
            .unwrap();
        server.abort();
    }
}

#[test]
fn constructor_checks_endpoints() {
    let cfg = |endpoints: &[&str]| EtcdSource {
        name: "etcd".into(),
        endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
        prefix: "/lb/".into(),
    };
    assert!(matches!(
        EtcdWatcher::new(&cfg(&[])),
        Err(EtcdError::NoEndpoints)
    ));
    assert!(matches!(
        EtcdWatcher::new(&cfg(&["127.0.0.1:2379"])),
        Err(EtcdError::BadEndpoint(_))
    ));
    let w = EtcdWatcher::new(&cfg(&["http://127.0.0.1:2379/"])).unwrap();
    assert_eq!(w.endpoints, vec!["http://127.0.0.1:2379"]);
}
