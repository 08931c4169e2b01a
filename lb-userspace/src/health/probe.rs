//! One health check of one backend: a TCP connect, or an HTTP/1.1 GET (over TLS for HTTPS)
//! whose status line is read and compared. The whole check, connect and handshake
//! included, is bounded by one timeout.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::config::HealthKind;

/// An HTTPS check's connector ([`super::tls::connector`]), or why it could not be built
/// (then every check fails with that reason).
pub type Tls = Result<TlsConnector, String>;

/// Bytes read at most while looking for the status line: a backend answering with
/// something endless must not make the checker buffer it.
pub const MAX_STATUS_LINE: usize = 1024;

/// Sent as `User-Agent`, so backends can tell checks from traffic in their logs.
pub const USER_AGENT: &str = "lb-health/1";

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connection refused")]
    Refused,
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
    #[error("status {got}, expected {expected}")]
    BadStatus { got: u16, expected: u16 },
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Checks `addr` as `kind` says, all within `timeout`; `tls` is the connector of an HTTPS
/// check (unused otherwise).
pub async fn probe(
    addr: SocketAddr,
    kind: &HealthKind,
    timeout: Duration,
    tls: Option<&Tls>,
) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, probe_unbounded(addr, kind, tls))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

async fn probe_unbounded(
    addr: SocketAddr,
    kind: &HealthKind,
    tls: Option<&Tls>,
) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        _ => ProbeError::Connect(e),
    })?;
    let HealthKind::Http {
        path,
        host,
        expect_status,
        tls: tls_options,
    } = kind
    else {
        return Ok(());
    };
    let host_header = host.clone().unwrap_or_else(|| addr.to_string());
    let got = match tls_options {
        None => get_status(stream, path, &host_header).await?,
        Some(options) => {
            let connector = match tls {
                Some(Ok(c)) => c,
                Some(Err(why)) => return Err(ProbeError::Tls(why.clone())),
                None => return Err(ProbeError::Tls("no TLS connector".into())),
            };
            let name = super::tls::server_name(options, host.as_deref(), addr.ip())
                .map_err(ProbeError::Tls)?;
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| ProbeError::Tls(e.to_string()))?;
            get_status(stream, path, &host_header).await?
        }
    };
    if got == *expect_status {
        Ok(())
    } else {
        Err(ProbeError::BadStatus {
            got,
            expected: *expect_status,
        })
    }
}

/// Sends the GET on `stream` and returns the status code of the answer.
async fn get_status<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    host: &str,
) -> Result<u16, ProbeError> {
    stream
        .write_all(request(path, host).as_bytes())
        .await
        .map_err(ProbeError::Io)?;
    let line = read_status_line(&mut stream).await?;
    parse_status_line(&line)
}

/// The GET a check sends. `Connection: close` so the backend does not keep an idle
/// connection around for a checker that never reuses it.
fn request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: {USER_AGENT}\r\n\r\n"
    )
}

/// Reads up to the first line end, at most [`MAX_STATUS_LINE`] bytes; returns the line
/// without its `\r\n` (or bare `\n`).
async fn read_status_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, ProbeError> {
    let mut buf = vec![0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
            return String::from_utf8(line.to_vec())
                .map_err(|_| ProbeError::Malformed("status line is not UTF-8".to_owned()));
        }
        if len == buf.len() {
            return Err(ProbeError::Malformed(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            )));
        }
        let n = stream.read(&mut buf[len..]).await.map_err(ProbeError::Io)?;
        if n == 0 {
            return Err(ProbeError::Malformed(if len == 0 {
                "connection closed before any response".to_owned()
            } else {
                "connection closed inside the status line".to_owned()
            }));
        }
        len += n;
    }
}

/// `HTTP/1.x SSS reason` -> `SSS`.
fn parse_status_line(line: &str) -> Result<u16, ProbeError> {
    let malformed = || ProbeError::Malformed(format!("status line {:?}", truncate(line)));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || status.len() != 3 {
        return Err(malformed());
    }
    if !status.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    status.parse().map_err(|_| malformed())
}

/// At most 64 characters of `s`, for error texts that end up in logs and status.
fn truncate(s: &str) -> &str {
    s.char_indices().nth(64).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK").unwrap(), 200);
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable").unwrap(),
            503
        );
        assert_eq!(parse_status_line("HTTP/1.1 204").unwrap(), 204);
        for bad in [
            "",
            "SSH-2.0-OpenSSH_9.2",
            "HTTP/1.1",
            "HTTP/1.1 20 OK",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 +20 OK",
            "HTTP/2 200 OK",
            "http/1.1 200 OK",
        ] {
            assert!(
                matches!(parse_status_line(bad), Err(ProbeError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_has_path_host_and_ends_the_headers() {
        assert_eq!(
            request("/healthz", "[::1]:8080"),
            "GET /healthz HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\
             User-Agent: lb-health/1\r\n\r\n"
        );
    }

    #[test]
    fn truncates_long_text_on_a_char_boundary() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(100);
        assert_eq!(truncate(&long).chars().count(), 64);
    }
}
