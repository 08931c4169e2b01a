//! The client against a real `redis-server`: calls, timeouts against a paused server,
//! reconnects after a restart, and that no call waits without a connection.

use std::time::{Duration, Instant};

use super::{DROP_AFTER, RedisError, test_server::TestRedis};

async fn ping(c: &super::RedisClient) -> Result<String, RedisError> {
    c.call("test", |mut conn| async move {
        redis::cmd("PING").query_async(&mut conn).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_time_out_fail_fast_when_down_and_reconnect() {
    let mut server = TestRedis::start();
    let timeout = Duration::from_millis(30);
    let c = server.client(timeout).await;
    assert_eq!(ping(&c).await.unwrap(), "PONG");

    // A server that accepts but does not answer: each call ends at the timeout...
    server.pause(true);
    for _ in 0..DROP_AFTER {
        let t = Instant::now();
        let e = ping(&c).await.unwrap_err();
        assert!(matches!(e, RedisError::Timeout(_)), "{e}");
        assert!(
            t.elapsed() < timeout + Duration::from_millis(40),
            "{:?}",
            t.elapsed()
        );
    }
    // ...and after DROP_AFTER in a row the connection is dropped: no more waiting.
    assert!(!c.is_connected());
    let t = Instant::now();
    assert!(matches!(ping(&c).await, Err(RedisError::Down)));
    assert!(t.elapsed() < Duration::from_millis(5), "{:?}", t.elapsed());
    server.pause(false);

    // Killed: calls fail, then a new server is picked up by the backoff loop.
    server.kill();
    for _ in 0..DROP_AFTER + 1 {
        let _ = ping(&c).await;
    }
    assert!(!c.is_connected());
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(4);
    while ping(&c).await.is_err() {
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = c.stats().view().unwrap();
    assert!(v.up);
    assert!(v.reconnects >= 2, "{v:?}");
    let errors = |kind: &str| {
        v.errors
            .get(&("test".to_string(), kind.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert!(errors("timeout") >= u64::from(DROP_AFTER), "{v:?}");
    assert!(errors("down") >= 1, "{v:?}");
    assert!(
        v.calls["test"] > errors("timeout") + errors("down"),
        "{v:?}"
    );
}
