//! The etcd source against a real etcd 3.4 (Debian's `etcd-server`) on loopback.
//!
//! Each test starts its own member (`lb_tests::etcd::EtcdServer`, removed on drop), runs
//! `EtcdWatcher` with a `SourceHandle` on a channel, and reads what it publishes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_tests::etcd::EtcdServer;
use lb_userspace::config::EtcdSource;
use lb_userspace::registry::etcd::{EtcdStats, EtcdWatcher};
use lb_userspace::registry::{
    Backoff, Endpoint, Source, SourceHandle, SourceMessage, SourceUpdate,
};
use std::sync::Arc;
use tokio::sync::mpsc;

const PREFIX: &str = "/lb/";
/// Bound on any single wait for the source; a test fails rather than hangs.
const WAIT: Duration = Duration::from_secs(10);

fn ep(service: &str, addr: &str, port: u16, weight: u32) -> Endpoint {
    Endpoint {
        service: service.into(),
        addr: addr.parse::<IpAddr>().unwrap(),
        port,
        weight,
        metadata: BTreeMap::new(),
    }
}

fn sorted(mut v: Vec<Endpoint>) -> Vec<Endpoint> {
    v.sort();
    v
}

/// The source running on a tokio task, and what it sent.
struct Running {
    rx: mpsc::UnboundedReceiver<SourceMessage>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<EtcdStats>,
}

impl Running {
    fn start(endpoints: Vec<String>, backoff: Backoff) -> Running {
        let config = EtcdSource {
            name: "etcd".into(),
            endpoints,
            prefix: PREFIX.into(),
        };
        let watcher = EtcdWatcher::new(&config)
            .expect("valid config")
            .with_backoff(backoff);
        let stats = watcher.stats();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(watcher.run(SourceHandle::new("etcd", tx)));
        Running { rx, task, stats }
    }

    fn on(server: &EtcdServer) -> Running {
        Self::start(
            vec![server.url()],
            Backoff::new(Duration::from_millis(100), Duration::from_millis(500)),
        )
    }

    async fn next(&mut self) -> SourceUpdate {
        let msg = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the source sent nothing within {WAIT:?}"))
            .expect("the source dropped its handle");
        assert_eq!(msg.source, "etcd");
        msg.update
    }

    /// The next published set, and how many errors came before it.
    async fn next_set(&mut self) -> (Vec<Endpoint>, usize) {
        let mut errors = 0;
        loop {
            match self.next().await {
                SourceUpdate::Endpoints(set) => return (set, errors),
                SourceUpdate::Catalog { .. } => panic!("the etcd source supplies no services"),
                SourceUpdate::Error(e) => {
                    eprintln!("source error: {e}");
                    errors += 1;
                }
            }
        }
    }

    /// The next published set, which must come without errors before it.
    async fn set(&mut self) -> Vec<Endpoint> {
        let (set, errors) = self.next_set().await;
        assert_eq!(errors, 0, "errors before {set:?}");
        set
    }

    /// Waits for an error, failing if a set is published first.
    async fn error(&mut self) -> String {
        match self.next().await {
            SourceUpdate::Error(e) => e,
            SourceUpdate::Endpoints(set) => panic!("expected an error, got the set {set:?}"),
            SourceUpdate::Catalog { .. } => panic!("the etcd source supplies no services"),
        }
    }

    /// Nothing at all arrives for `quiet`.
    async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(msg) = tokio::time::timeout(quiet, self.rx.recv()).await {
            panic!("expected silence, got {msg:?}");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within 60 s"))
}

fn key(service: &str, addr: &str) -> String {
    format!("{PREFIX}{service}/{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_set_then_changes_with_latency() {
    within("test", async {
        let server = EtcdServer::start().expect("etcd starts");
        server.put(&key("web", "10.0.2.1:8080"), "").unwrap();
        server
            .put(
                &key("web", "[fd00::2]:8080"),
                r#"{"weight": 5, "metadata": {"zone": "b", "version": "1.2"}}"#,
            )
            .unwrap();
        server
            .put(&key("dns", "10.0.3.1:53"), r#"{"weight": 0}"#)
            .unwrap();
        // Outside the prefix: never part of the set.
        server.put("/other/web/10.0.9.9:80", "").unwrap();
        server.put("/lb", "").unwrap();

        let mut source = Running::on(&server);
        let mut v6 = ep("web", "fd00::2", 8080, 5);
        v6.metadata = [("version", "1.2"), ("zone", "b")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let initial = vec![
            ep("dns", "10.0.3.1", 53, 0),
            ep("web", "10.0.2.1", 8080, 1),
            v6.clone(),
        ];
        assert_eq!(source.set().await, sorted(initial.clone()));

        // Changes, one at a time: each must be published as the complete new set.
        let mut expected = initial;
        let mut latencies = Vec::new();
        for i in 0..25u16 {
            let k = key("web", &format!("10.0.4.{}:{}", i + 1, 9000 + i));
            let sent = Instant::now();
            server
                .put(&k, &format!(r#"{{"weight": {}}}"#, i + 1))
                .unwrap();
            expected.push(ep(
                "web",
                &format!("10.0.4.{}", i + 1),
                9000 + i,
                u32::from(i) + 1,
            ));
            assert_eq!(
                source.set().await,
                sorted(expected.clone()),
                "after put {k}"
            );
            latencies.push(sent.elapsed());

            let sent = Instant::now();
            server.delete(&k).unwrap();
            expected.pop();
            assert_eq!(
                source.set().await,
                sorted(expected.clone()),
                "after delete {k}"
            );
            latencies.push(sent.elapsed());
        }
        // An update of a value (weight 5 -> 7) is a change too.
        server
            .put(&key("web", "[fd00::2]:8080"), r#"{"weight": 7}"#)
            .unwrap();
        let set = source.set().await;
        let updated = set.iter().find(|e| e.addr == v6.addr).expect("v6 instance");
        assert_eq!((updated.weight, updated.metadata.len()), (7, 0));

        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "etcd put/delete -> publish latency over {} changes: min {:.2} ms, median {:.2} ms, \
             p90 {:.2} ms, max {:.2} ms",
            latencies.len(),
            ms(latencies[0]),
            ms(latencies[latencies.len() / 2]),
            ms(latencies[latencies.len() * 9 / 10]),
            ms(latencies[latencies.len() - 1]),
        );
        assert!(
            latencies[latencies.len() / 2] < Duration::from_millis(500),
            "median latency {:?}",
            latencies[latencies.len() / 2]
        );
        assert_eq!(source.stats.skipped_now(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_skipped_and_counted() {
    within("test", async {
        let server = EtcdServer::start().expect("etcd starts");
        server.put(&key("web", "10.0.2.1:80"), "").unwrap();
        for (k, v) in [
            (key("web", "10.0.2.2"), ""),                      // no port
            (key("web", "not-an-ip:80"), ""),                  // not an address
            (format!("{PREFIX}web"), ""),                      // no address at all
            (key("we b", "10.0.2.3:80"), ""),                  // bad service name
            (key("web", "10.0.2.4:80"), "{not json"),          // bad value
            (key("web", "10.0.2.5:80"), r#"{"weight": 1e9}"#), // bad weight
        ] {
            server.put(&k, v).unwrap();
        }
        let mut source = Running::on(&server);
        assert_eq!(source.set().await, vec![ep("web", "10.0.2.1", 80, 1)]);
        assert_eq!(source.stats.skipped_now(), 6);

        // A malformed entry arriving through the watch is skipped too; the rest stays.
        server
            .apply(
                &[
                    (&key("web", "10.0.2.6:80"), r#"{"weight": "heavy"}"#),
                    (&key("web", "10.0.2.7:80"), r#"{"weight": 3}"#),
                ],
                &[],
            )
            .unwrap();
        assert_eq!(
            source.set().await,
            vec![ep("web", "10.0.2.1", 80, 1), ep("web", "10.0.2.7", 80, 3)]
        );
        assert_eq!(source.stats.skipped_now(), 7);
        assert!(source.stats.skipped_total() >= 7);

        // A good instance overwritten with a bad value leaves the set; fixing it brings it back.
        server.put(&key("web", "10.0.2.7:80"), "[]").unwrap();
        assert_eq!(source.set().await, vec![ep("web", "10.0.2.1", 80, 1)]);
        server.put(&key("web", "10.0.2.7:80"), "").unwrap();
        assert_eq!(
            source.set().await,
            vec![ep("web", "10.0.2.1", 80, 1), ep("web", "10.0.2.7", 80, 1)]
        );
        // Deleting a malformed key changes no endpoint: nothing is published, the count drops.
        server.delete(&key("web", "10.0.2.2")).unwrap();
        source.assert_quiet(Duration::from_millis(500)).await;
        assert_eq!(source.stats.skipped_now(), 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_removes_the_instance() {
    within("test", async {
        let server = EtcdServer::start().expect("etcd starts");
        server.put(&key("web", "10.0.2.1:80"), "").unwrap();
        let mut source = Running::on(&server);
        assert_eq!(source.set().await, vec![ep("web", "10.0.2.1", 80, 1)]);

        // Nobody keeps the lease alive: the instance must vanish about 2 s later.
        let granted = Instant::now();
        server
            .put_with_lease(&key("web", "10.0.2.2:80"), "", 2)
            .unwrap();
        assert_eq!(
            source.set().await,
            vec![ep("web", "10.0.2.1", 80, 1), ep("web", "10.0.2.2", 80, 1)]
        );
        assert_eq!(source.set().await, vec![ep("web", "10.0.2.1", 80, 1)]);
        let gone = granted.elapsed();
        println!("lease of 2 s: instance removed after {gone:?}");
        assert!(
            gone >= Duration::from_millis(1500),
            "removed too early: {gone:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_watching_stays_correct() {
    within("test", async {
        let mut server = EtcdServer::start().expect("etcd starts");
        let mut source = Running::on(&server);
        assert_eq!(source.set().await, vec![]);

        let mut expected = Vec::new();
        for i in 1..=5u8 {
            server
                .put(&key("web", &format!("10.0.2.{i}:80")), "")
                .unwrap();
            expected.push(ep("web", &format!("10.0.2.{i}"), 80, 1));
            assert_eq!(source.set().await, expected);
        }
        server.delete(&key("web", "10.0.2.1:80")).unwrap();
        expected.remove(0);
        assert_eq!(source.set().await, expected);

        // Compact everything up to now while the watch is open: it must keep delivering.
        let revision = server.revision().unwrap();
        server.compact(revision).unwrap();
        server.put(&key("web", "10.0.2.9:80"), "").unwrap();
        expected.push(ep("web", "10.0.2.9", 80, 1));
        assert_eq!(source.set().await, expected);
        server.delete(&key("web", "10.0.2.2:80")).unwrap();
        expected.remove(0);
        assert_eq!(source.set().await, expected);

        // Compact again, then crash the server: reconnecting reads the compacted store afresh
        // (the history before the compaction is gone) and the watch goes on from there.
        server.compact(server.revision().unwrap()).unwrap();
        server.kill().unwrap();
        source.error().await;
        server.restart().unwrap();
        server.delete(&key("web", "10.0.2.3:80")).unwrap();
        expected.remove(0);
        let (set, _errors) = source.next_set().await;
        assert_eq!(set, expected);
        server.put(&key("web", "10.0.2.10:80"), "").unwrap();
        expected.push(ep("web", "10.0.2.10", 80, 1));
        let (set, _errors) = source.next_set().await;
        assert_eq!(set, sorted(expected));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_the_last_set_and_recovers() {
    within("test", async {
        let mut server = EtcdServer::start().expect("etcd starts");
        server.put(&key("web", "10.0.2.1:80"), "").unwrap();
        server.put(&key("web", "10.0.2.2:80"), "").unwrap();
        // Reconnect attempts 3 s apart: longer than a restart takes, so the changes below are
        // made while the source is still disconnected and must come from its fresh read.
        let mut source = Running::start(
            vec![server.url()],
            Backoff::new(Duration::from_secs(3), Duration::from_secs(3)),
        );
        let mut expected = vec![ep("web", "10.0.2.1", 80, 1), ep("web", "10.0.2.2", 80, 1)];
        assert_eq!(source.set().await, expected);

        // Round 1 stops etcd gracefully (it closes the watch stream), round 2 kills it (the
        // connection drops in the middle of the stream).
        for (round, crash) in [(1u8, false), (2, true)] {
            // A change seen through the watch: the watch is established before the outage.
            server
                .put(&key("web", &format!("10.0.5.{round}:80")), "")
                .unwrap();
            expected.push(ep("web", &format!("10.0.5.{round}"), 80, 1));
            expected.sort();
            assert_eq!(source.set().await, expected, "round {round}");

            let went_down = Instant::now();
            if crash {
                server.kill().unwrap();
            } else {
                server.stop().unwrap();
            }
            let error = source.error().await;
            println!(
                "round {round}: error {:?} after the server went down: {error}",
                went_down.elapsed()
            );
            server.restart().unwrap();
            // One transaction, so however the source learns of it, it is one new set.
            let added = format!("10.0.3.{round}");
            let removed = format!("10.0.2.{round}");
            server
                .apply(
                    &[(&key("web", &format!("{added}:80")), "")],
                    &[&key("web", &format!("{removed}:80"))],
                )
                .unwrap();
            expected.retain(|e| e.addr.to_string() != removed);
            expected.push(ep("web", &added, 80, 1));
            expected.sort();
            // While down only errors may come, never a set (the agent keeps the last one): the
            // first set after the outage must already be the changed one.
            let (set, errors) = source.next_set().await;
            println!(
                "round {round}: set back {:?} after going down, {errors} more errors",
                went_down.elapsed()
            );
            assert_eq!(set, expected, "round {round}");
        }
        assert!(source.stats.reconnects() >= 2);

        // And the watch works again after the outages.
        server.put(&key("web", "10.0.4.1:80"), "").unwrap();
        let set = source.set().await;
        assert!(set.contains(&ep("web", "10.0.4.1", 80, 1)), "{set:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_noticed_by_the_idle_probe() {
    within("test", async {
        let server = EtcdServer::start().expect("etcd starts");
        server.put(&key("web", "10.0.2.1:80"), "").unwrap();
        let config = EtcdSource {
            name: "etcd".into(),
            endpoints: vec![server.url()],
            prefix: PREFIX.into(),
        };
        let watcher = EtcdWatcher::new(&config)
            .unwrap()
            .with_backoff(Backoff::new(
                Duration::from_millis(100),
                Duration::from_millis(500),
            ))
            .with_idle_probe(Duration::from_secs(1));
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = watcher.stats();
        let task = tokio::spawn(watcher.run(SourceHandle::new("etcd", tx)));
        let mut source = Running { rx, task, stats };
        assert_eq!(source.set().await, vec![ep("web", "10.0.2.1", 80, 1)]);
        // Quiet but alive: probes succeed, nothing is reported.
        source.assert_quiet(Duration::from_millis(2500)).await;

        // Frozen: the connection stays open and silent; only the probe can tell.
        server.freeze();
        let frozen = Instant::now();
        let error = source.error().await;
        let noticed = frozen.elapsed();
        println!("frozen server noticed after {noticed:?}: {error}");
        assert!(
            noticed < Duration::from_secs(1 + 1 + 5 + 2),
            "idle 1 s + check 1 s + probe timeout 5 s, took {noticed:?}"
        );
        server.thaw();
        server.put(&key("web", "10.0.2.2:80"), "").unwrap();
        let (set, _errors) = source.next_set().await;
        assert_eq!(
            set,
            vec![ep("web", "10.0.2.1", 80, 1), ep("web", "10.0.2.2", 80, 1)]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tries_endpoints_in_turn_and_stops_with_the_agent() {
    within("test", async {
        let server = EtcdServer::start().expect("etcd starts");
        server.put(&key("web", "10.0.2.1:80"), "").unwrap();
        // The first endpoint refuses connections (a port nobody listens on).
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
        };
        let mut source = Running::start(
            vec![dead, server.url()],
            Backoff::new(Duration::from_millis(100), Duration::from_millis(500)),
        );
        let error = source.error().await;
        assert!(error.contains("127.0.0.1"), "{error}");
        assert_eq!(source.set().await, vec![ep("web", "10.0.2.1", 80, 1)]);

        // The agent stops listening: the source returns on its own (within its 1 s check).
        let Running { rx, task, .. } = &mut source;
        rx.close();
        let stopped = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the source returns after the agent stops listening")
            .expect("the source task did not panic");
        println!(
            "source returned {:?} after the channel closed",
            stopped.elapsed()
        );
    })
    .await;
}
