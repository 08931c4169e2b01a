//! A real `redis-server` for tests: on a unix socket in its own temp dir (no port to race
//! for), no persistence; killed and its dir removed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, atomic::AtomicU32, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::{RedisClient, RedisStats};
use crate::config::RedisSettings;

pub struct TestRedis {
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl TestRedis {
    /// Starts one and waits (5 s at most) until it answers.
    pub fn start() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-redis-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("redis.sock");
        let child = spawn(&dir, &socket);
        let r = Self { child, dir, socket };
        r.wait_ready();
        r
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again (after `kill`), empty, on the same socket.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.dir, &self.socket);
        self.wait_ready();
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `redis-cli -s SOCKET ARGS`, its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A client with `timeout`, connected (waits 2 s at most).
    pub async fn client(&self, timeout: Duration) -> RedisClient {
        let c = RedisClient::start(
            RedisSettings {
                url: self.url(),
                timeout,
                connect_timeout: Duration::from_millis(500),
                prefix: "t:".into(),
            },
            Arc::new(RedisStats::default()),
            CancellationToken::new(),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !c.is_connected() {
            assert!(Instant::now() < deadline, "client never connected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c
    }

    /// SIGSTOP / SIGCONT: a Redis that accepts but never answers.
    pub fn pause(&self, paused: bool) {
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.pause(false);
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(dir: &std::path::Path, socket: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(socket)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (Debian package redis-server) must be installed")
}
