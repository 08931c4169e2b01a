//! A minimal HTTP/1.1 client for the admin API, over TCP or a unix socket (what `lb status`
//! uses; reqwest cannot speak over unix sockets).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::AdminListen;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {at}: {source} (is `lb run` running with this admin listener?)"
    )]
    Connect {
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {at}: {source}")]
    Io {
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {0} did not answer within 15 s")]
    Timeout(String),
    #[error("malformed HTTP response from {0}")]
    Malformed(String),
    #[error("{at} answered {code}: {body}")]
    Status { at: String, code: u16, body: String },
}

/// `GET path` on the admin listener; the body of a 2xx answer.
pub async fn get(listen: &AdminListen, path: &str) -> Result<String, ClientError> {
    let at = listen.to_string();
    let work = async {
        match listen {
            AdminListen::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|source| ClientError::Connect {
                        at: at.clone(),
                        source,
                    })?;
                exchange(s, &addr.to_string(), path, &at).await
            }
            AdminListen::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(|source| {
                    ClientError::Connect {
                        at: at.clone(),
                        source,
                    }
                })?;
                exchange(s, "localhost", path, &at).await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), work)
        .await
        .map_err(|_| ClientError::Timeout(at.clone()))?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
    at: &str,
) -> Result<String, ClientError> {
    let io = |source| ClientError::Io {
        at: at.to_owned(),
        source,
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Malformed(at.to_owned()))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Malformed(at.to_owned()))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| ClientError::Malformed(at.to_owned()))?
    } else {
        body.to_owned()
    };
    if (200..300).contains(&code) {
        Ok(body)
    } else {
        Err(ClientError::Status {
            at: at.to_owned(),
            code,
            body,
        })
    }
}

/// Decodes a chunked body.
fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        s = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_deref(),
            Some("hello world")
        );
        assert_eq!(dechunk("5\r\nhel"), None);
    }
}
