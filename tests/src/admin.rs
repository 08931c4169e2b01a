//! A blocking client for the agent's admin API over its unix socket (or, for reads, over TCP
//! in a namespace), for tests: raw HTTP/1.1 so a test sees exactly what an operator's curl
//! would.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::Netns;

/// The admin socket and the token for registry writes.
pub struct AdminClient {
    pub socket: PathBuf,
    pub token: String,
}

/// An HTTP answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub body: String,
}

impl AdminClient {
    pub fn new(socket: &Path, token: &str) -> Self {
        Self {
            socket: socket.into(),
            token: token.into(),
        }
    }

    /// `METHOD path` with `body`, authorised with the token when `auth`.
    pub fn request(&self, method: &str, path: &str, body: &str, auth: bool) -> Result<Answer> {
        let s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let auth = if auth {
            format!("Authorization: Bearer {}\r\n", self.token)
        } else {
            String::new()
        };
        exchange(s, method, path, &auth, body)
    }

    /// `GET path`, which must answer 200.
    pub fn get(&self, path: &str) -> Result<String> {
        let a = self.request("GET", path, "", false)?;
        if a.code != 200 {
            bail!("GET {path}: {} {}", a.code, a.body);
        }
        Ok(a.body)
    }

    /// Registers `addr:port` for `service` with `body` (JSON); must answer 200.
    pub fn register(&self, service: &str, addr: &str, port: u16, body: &str) -> Result<()> {
        let a = self.request(
            "PUT",
            &format!("/v1/registry/{service}/{addr}/{port}"),
            body,
            true,
        )?;
        if a.code != 200 {
            bail!("register {service}/{addr}:{port}: {} {}", a.code, a.body);
        }
        Ok(())
    }

    pub fn deregister(&self, service: &str, addr: &str, port: u16) -> Result<()> {
        let a = self.request(
            "DELETE",
            &format!("/v1/registry/{service}/{addr}/{port}"),
            "",
            true,
        )?;
        if a.code != 204 {
            bail!("deregister {service}/{addr}:{port}: {} {}", a.code, a.body);
        }
        Ok(())
    }

    pub fn heartbeat(&self, service: &str, addr: &str, port: u16) -> Result<()> {
        let a = self.request(
            "POST",
            &format!("/v1/registry/{service}/{addr}/{port}/heartbeat"),
            "",
            true,
        )?;
        if a.code != 200 {
            bail!("heartbeat {service}/{addr}:{port}: {} {}", a.code, a.body);
        }
        Ok(())
    }

    /// `GET /v1/status` as JSON.
    pub fn status(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.get("/v1/status")?)?)
    }

    /// The status entry of `backend` (`addr:port`) in `service`.
    pub fn backend(&self, service: &str, backend: &str) -> Result<serde_json::Value> {
        let st = self.status()?;
        let svc = st["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == service))
            .with_context(|| format!("no service {service} in {st}"))?;
        svc["backends"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["address"] == backend))
            .cloned()
            .with_context(|| format!("no backend {backend} in {svc}"))
    }
}

/// `GET path` from the admin API on TCP `addr` inside `ns` (the default `[admin] listen` is
/// the LB namespace's 127.0.0.1:9180); must answer 200.
pub fn get_tcp(ns: &Netns, addr: SocketAddr, path: &str) -> Result<String> {
    let s = ns
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let a = exchange(s, "GET", path, "", "")?;
    if a.code != 200 {
        bail!("GET {path}: {} {}", a.code, a.body);
    }
    Ok(a.body)
}

/// One HTTP/1.1 request on `s` (`auth`: a header line or nothing), and its answer.
fn exchange(
    mut s: impl Read + Write,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> Result<Answer> {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok(Answer {
        code,
        body: body.to_string(),
    })
}
