//! A real `redis-server` (Debian's) for the fleet tests: on a unix socket in its own temp dir,
//! so agents in any network namespace reach the same server (a path is not scoped by the
//! network namespace); no persistence. Killed, and its dir removed, on drop (panics too).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::gateway_lab::TempDir;

pub struct RedisServer {
    child: Option<Child>,
    pub socket: PathBuf,
    // Last: removed after the server is gone.
    dir: TempDir,
}

impl RedisServer {
    /// Starts one and waits (5 s at most) until it answers `PING`.
    pub fn start() -> Result<Self> {
        let dir = TempDir::new("lbt-redis")?;
        let socket = dir.join("redis.sock");
        let mut r = Self {
            child: None,
            socket,
            dir,
        };
        r.restart()?;
        Ok(r)
    }

    /// `unix:///.../redis.sock`, for `[gateway.redis] url`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// (Re)starts the server (empty) on the same socket.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let child = spawn(self.dir.path(), &self.socket)?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.cli(&["PING"]).unwrap_or_default() != "PONG" {
            if Instant::now() > deadline {
                bail!("redis-server never answered on {}", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// `redis-cli -s SOCKET ARGS`: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("redis-cli (Debian package redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(dir: &Path, socket: &Path) -> Result<Child> {
    Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(socket)
        .args(["--unixsocketperm", "700"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server (Debian package redis-server)")
}
